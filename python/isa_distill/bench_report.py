"""Headline performance ratios, measured side by side in one run, printed as a Markdown table.

    python -m isa_distill.bench_report [--quick] [--device cpu|cuda] [--out FILE]

Each row times two implementations on the same cached inputs (median of repeats, after a warm-up)
and reports their ratio beside the target. The asv suite in benches/ holds the full grids; this
script answers the questions a reader of the README asks first.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

from . import __version__, isa_krr_loss
from .baselines import monte_carlo_isa_loss, naive_isa_krr_loss

EPSILON, DISCARD = 1.0, 0.2
TARGET_RELATIVE_ERROR = 1e-3
SPREAD_DRAWS = 64
GRADIENT_DRAWS = 16
HOLDS = {True: "yes", False: "no", None: "-"}


@dataclass(frozen=True)
class Row:
    claim: str
    measured: str
    target: str
    holds: bool | None  # None: shown for information, no target


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_seconds(fn: Callable[[], object], device: str, repeats: int) -> float:
    """Median wall time of fn() over `repeats` calls after one warm-up call."""
    return interleaved_medians([fn], device, repeats)[0]


def interleaved_medians(
    fns: list[Callable[[], object]], device: str, repeats: int
) -> list[float]:
    """Median wall time of each fn, timed in turn (f1, f2, ..., f1, f2, ...) after a warm-up.

    Interleaving exposes every contender to the same load on a shared machine, so their ratio
    is steadier than that of two back-to-back series.
    """
    for fn in fns:
        fn()
    _sync(device)
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, series in zip(fns, times):
            start = time.perf_counter()
            fn()
            _sync(device)
            series.append(time.perf_counter() - start)
    return [statistics.median(series) for series in times]


def problem(n, m, d, c, dtype, device, seed=1234):
    """ReLU features (like a conv net's) and centred one-hot labels."""
    gen = torch.Generator().manual_seed(seed)
    fs = torch.randn(m, d, generator=gen).relu_()
    ft = torch.randn(n, d, generator=gen).relu_()
    eye = torch.eye(c)
    ys = eye[torch.arange(m) % c] - 1.0 / c
    yt = eye[torch.randint(0, c, (n,), generator=gen)] - 1.0 / c
    return tuple(t.to(dtype=dtype, device=device) for t in (fs, ys, ft, yt))


def forward_backward(loss_fn: Callable[..., torch.Tensor], tensors,
                     requires_grad: tuple[bool, ...] = (True,) * 4) -> Callable[[], None]:
    """fwd+bwd with gradients for the inputs flagged in `requires_grad`."""
    def run():
        leaves = [t.detach().clone().requires_grad_(g) for t, g in zip(tensors, requires_grad)]
        loss_fn(*leaves).backward()

    return run


def closed_form(backend: str, **options) -> Callable[..., torch.Tensor]:
    return lambda *t: isa_krr_loss(*t, epsilon=EPSILON, discard=DISCARD, backend=backend, **options)


def default_backend(device: str) -> str:
    """What `backend="auto"` picks: the Rust kernel on CPU, the torch backend on CUDA."""
    return "rust" if device == "cpu" else "torch"


def monte_carlo_rows(device: str, repeats: int) -> list[Row]:
    """Closed form vs Monte-Carlo: at S = 64 (measured), and at equal accuracy (extrapolated).

    The Monte-Carlo estimate is a mean over n_keep targets of S draws each, so its relative
    error is sigma_1 / sqrt(S), with sigma_1 the relative spread of single-sample (S = 1)
    estimates. Equal accuracy means sigma_1 / sqrt(S) <= 1e-3; its time is extrapolated as
    S * (S=64 time) / 64, which slightly favours Monte-Carlo (its fixed cost is counted S/64 times).
    """
    tensors = problem(1024, 100, 2048, 10, torch.float64, device)
    backend = default_backend(device)
    exact = float(isa_krr_loss(*tensors, epsilon=EPSILON, discard=DISCARD, backend="torch"))
    def mc(samples: int, seed: int = 0):
        gen = torch.Generator(device=device).manual_seed(seed)
        return lambda *t: monte_carlo_isa_loss(
            *t, samples=samples, epsilon=EPSILON, discard=DISCARD, generator=gen
        )

    with torch.no_grad():
        single = [float(mc(1, seed)(*tensors)) for seed in range(SPREAD_DRAWS)]
    t_closed, t_mc64 = interleaved_medians(
        [forward_backward(closed_form(backend), tensors), forward_backward(mc(64), tensors)],
        device, repeats,
    )
    spread = statistics.stdev(single) / exact
    samples_needed = max(1, math.ceil((spread / TARGET_RELATIVE_ERROR) ** 2))
    t_equal = t_mc64 / 64 * samples_needed
    grad_spread = gradient_spread(tensors, mc)
    grad_samples = max(1, math.ceil((grad_spread / TARGET_RELATIVE_ERROR) ** 2))
    t_equal_grad = t_mc64 / 64 * grad_samples
    shape = "N=1024, M=100, d=2048, C=10, f64"
    return [
        Row(
            f"closed form ({backend}) vs Monte-Carlo S=64, fwd+bwd ({shape})",
            f"{t_mc64 / t_closed:.0f}x ({t_closed * 1e3:.1f} ms vs {t_mc64 * 1e3:.0f} ms)",
            ">= 30x",
            t_mc64 / t_closed >= 30,
        ),
        Row(
            f"closed form vs Monte-Carlo at {TARGET_RELATIVE_ERROR:g} relative error of the "
            f"loss: extrapolated, S = {samples_needed} from the single-sample spread "
            f"{spread:.2%} ({SPREAD_DRAWS} S=1 draws) times the S=64 time / 64",
            f"{t_equal / t_closed:.0f}x",
            ">= 1000x",
            t_equal / t_closed >= 1000,
        ),
        Row(
            f"closed form vs Monte-Carlo at {TARGET_RELATIVE_ERROR:g} relative error of the "
            f"gradient dLoss/dF_S (what distillation consumes): extrapolated, S = "
            f"{grad_samples} from the single-sample relative error {grad_spread:.1%} "
            f"({GRADIENT_DRAWS} S=1 draws)",
            f"{t_equal_grad / t_closed:.0f}x",
            ">= 1000x",
            t_equal_grad / t_closed >= 1000,
        ),
    ]


def gradient_spread(tensors, mc: Callable[..., Callable[..., torch.Tensor]]) -> float:
    """Root-mean-square relative error ||g_1 - g|| / ||g|| of single-sample Monte-Carlo
    gradients g_1 with respect to F_S against the exact g. The estimator is unbiased, so with
    S samples the error is this divided by sqrt(S)."""
    def grad_fs(loss_fn) -> torch.Tensor:
        fs = tensors[0].detach().clone().requires_grad_(True)
        loss_fn(fs, *tensors[1:]).backward()
        return fs.grad

    exact = grad_fs(closed_form("torch"))
    squared = [
        float((grad_fs(mc(1, seed)) - exact).square().sum() / exact.square().sum())
        for seed in range(GRADIENT_DRAWS)
    ]
    return math.sqrt(statistics.fmean(squared))


# Which inputs need a gradient: distillation differentiates the support set only (the targets
# are data), a generic caller may want all four.
GRADIENT_CASES = {
    "the support set only (distillation)": (True, True, False, False),
    "all four inputs": (True, True, True, True),
}


def backend_rows(device: str, repeats: int, dims: tuple[int, ...] = (8192, 2048)) -> list[Row]:
    """Our op vs naive autograd at FRePo-like shapes N=1024, M=100, C=10, float32.

    Targets: the Rust backend on CPU >= 1.5x, the torch backend on CUDA >= 1.3x; the torch
    backend on CPU is shown for information. The Rust rows also give the GFLOP/s of the flops
    the kernel performs.
    """
    n, m, c = 1024, 100, 10
    backends = ["rust", "torch"] if device == "cpu" else ["torch"]
    rows = []
    for d in dims:
        tensors = problem(n, m, d, c, torch.float32, device)
        for case, flags in GRADIENT_CASES.items():
            naive_fn = forward_backward(
                lambda *t: naive_isa_krr_loss(*t, epsilon=EPSILON, discard=DISCARD), tensors,
                flags)
            naive, *ours = interleaved_medians(
                [naive_fn] + [forward_backward(closed_form(b), tensors, flags)
                              for b in backends],
                device, repeats,
            )
            for backend, mine in zip(backends, ours):
                target = {"rust": 1.5, "torch": 1.3 if device != "cpu" else None}[backend]
                throughput = ""
                if backend == "rust":
                    flops = forward_flops(n, m, d, c) + backward_flops(n, m, d, c, flags[2])
                    throughput = f", {flops / mine / 1e9:.0f} GFLOP/s"
                rows.append(Row(
                    f"{backend} backend vs naive autograd, fwd+bwd, gradients for {case} "
                    f"(N={n}, M={m}, d={d}, C={c}, f32)",
                    f"{naive / mine:.2f}x ({mine * 1e3:.1f} ms vs {naive * 1e3:.1f} ms"
                    f"{throughput})",
                    "(info)" if target is None else f">= {target}x",
                    None if target is None else naive / mine >= target,
                ))
    return rows


def forward_flops(n: int, m: int, d: int, c: int) -> float:
    """Multiply-adds x 2 that the Rust dual forward performs, so GFLOP/s are honest.

    Symmetric Gram K = F_S F_S^T (lower triangle: m(m+1)/2 d), F_T F_S^T (n m d), its product
    with W (n m c) and the cosine Gram of the kept targets (strict lower triangle: k(k-1)/2 d).
    """
    n_keep = n - int(DISCARD * n)
    return 2.0 * (d * (m * (m + 1) / 2 + n * m + n_keep * (n_keep - 1) / 2) + n * m * c)


def backward_flops(n: int, m: int, d: int, c: int, target_grad: bool) -> float:
    """Multiply-adds x 2 of the Rust dual backward: Z = F_T^T G (n d c), F_S Z, W^T F_S,
    V^T F_S and the two products forming dF_S (m d c each), and dF_T = G W^T F_S (n d c)
    when the targets need a gradient."""
    return 2.0 * d * c * (n + 5 * m + (n if target_grad else 0))


def gemm_rows(device: str, repeats: int, m: int) -> list[Row]:
    """Throughput of the Rust forward on the largest dual shape vs torch's own GEMM."""
    n, d, c = 1024, 8192, 100
    tensors = problem(n, m, d, c, torch.float32, device)
    a = torch.randn(m, d)
    b = torch.randn(d, m)
    t_rust, t_mm = interleaved_medians(
        [lambda: isa_krr_loss(*tensors, solver="dual", backend="rust"), lambda: a @ b],
        device, repeats,
    )
    rust_gflops = forward_flops(n, m, d, c) / t_rust / 1e9
    torch_gflops = 2.0 * m * m * d / t_mm / 1e9
    return [Row(
        f"Rust forward throughput on the dual shape N={n}, M={m}, d={d}, C={c} (f32; flops "
        f"performed, Cholesky and checks not counted) vs torch {m}x{d} @ {d}x{m} in this run",
        f"{rust_gflops:.1f} GFLOP/s = {rust_gflops / torch_gflops:.0%} of torch GEMM "
        f"({torch_gflops:.1f} GFLOP/s)",
        ">= 50%",
        rust_gflops / torch_gflops >= 0.5,
    )]


def solver_rows(device: str, repeats: int, sizes: list[int]) -> list[Row]:
    """`auto` against the better of primal and dual, over support sizes around d."""
    rows = []
    for m in sizes:
        tensors = problem(1024, m, 2048, 10, torch.float32, device)
        solvers = ("dual", "primal", "auto")
        medians = interleaved_medians(
            [lambda s=s, t=tensors: isa_krr_loss(*t, solver=s, backend="rust") for s in solvers],
            device, repeats,
        )
        times = dict(zip(solvers, medians))
        best = min(times["dual"], times["primal"])
        rows.append(Row(
            f"solver auto vs best of dual/primal (M={m}, d=2048)",
            f"{times['auto'] / best:.2f}x of best (dual {times['dual'] * 1e3:.0f} ms, "
            f"primal {times['primal'] * 1e3:.0f} ms)",
            "<= 1.10x",
            times["auto"] <= 1.10 * best,
        ))
    return rows


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo where there is one."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def rust_threads() -> str:
    """Where the Rust kernel computes: torch's OpenMP team, or rayon threads of its own."""
    try:
        from . import _rust_backend
    except ImportError:
        return "no native module"
    if _rust_backend.OPENMP_TEAM_RUNTIME is not None:
        return "torch's OpenMP threads"
    return "its own rayon threads"


def machine_description(device: str) -> str:
    if device.startswith("cuda"):
        hardware = torch.cuda.get_device_name(device)
    else:
        # OpenMP workers spin after each torch op and compete with the Rust kernel's threads,
        # unless the kernel computes on torch's OpenMP team.
        omp = "".join(f", {name}={os.environ.get(name, 'unset')}"
                      for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"))
        omp += f", Rust kernel on {rust_threads()}"
        hardware = (f"{cpu_model()}, {os.cpu_count()} cores, torch threads "
                    f"{torch.get_num_threads()}{omp}")
    load = ""
    if hasattr(os, "getloadavg"):
        load = ", load average at start {:.1f} / {:.1f} / {:.1f} (1 / 5 / 15 min)".format(
            *os.getloadavg())
    return (f"isa-distill {__version__}, torch {torch.__version__}, Python "
            f"{platform.python_version()}, {hardware}{load}")


def render(rows: list[Row], description: str) -> str:
    lines = [
        f"Machine: {description}",
        "",
        "Each ratio compares medians measured side by side in this one run.",
        "",
        "| claim | measured | target | holds |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r.claim} | {r.measured} | {r.target} | {HOLDS[r.holds]} |"
              for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m isa_distill.bench_report",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--quick", action="store_true", help="fewer repeats, smaller shapes")
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    repeats = 3 if args.quick else 7
    rows = monte_carlo_rows(args.device, repeats) + backend_rows(args.device, repeats)
    if args.device == "cpu":
        rows += gemm_rows(args.device, repeats, m=500 if args.quick else 2000)
        rows += solver_rows(args.device, repeats, [100, 1000, 4000] if not args.quick else [100])
    table = render(rows, machine_description(args.device))
    print(table)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
