"""``isa-distill <experiment>`` subcommands: argument parsing and error reporting only.

``add_subcommands(subparsers)`` adds ablate, module, hardness, diversity, cross-arch, continual
and mia
to the main parser; each sets ``handler`` (args -> exit code). A handler prints one line to
stderr and returns 2 for errors a user can fix (bad arguments, unknown variants, missing data
or run directories). ``main`` runs the subcommands alone:
``python -m isa_distill.experiments.cli ablate --variants baseline easy20``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

USAGE_ERROR = 2


def _common(parser: argparse.ArgumentParser, *, dataset: bool = True) -> None:
    if dataset:
        parser.add_argument("--dataset", default="digits", help="dataset (default: %(default)s)")
        parser.add_argument("--ipc", type=int, help="images per class (default: 10)")
    parser.add_argument("--data-root", help="where the dataset files are")
    parser.add_argument("--preset", choices=("cpu", "paper"), default="cpu",
                        help="cpu: minutes on 2 cores; paper: the paper's GPU settings "
                        "(default: %(default)s)")
    parser.add_argument("--steps", type=int, help="outer distillation steps")
    parser.add_argument("--batch-size", type=int, help="target batch of the distillation")
    parser.add_argument("--seeds", type=int, nargs="+", help="paired seeds (cpu: 0 1 2)")
    parser.add_argument("--eval-models", type=int, help="networks per evaluated set")
    parser.add_argument("--eval-steps", type=int, help="training steps per evaluation network")
    parser.add_argument("--optimizer", choices=("lamb", "adam"),
                        help="optimiser of the synthetic set (default: the preset's: LAMB for "
                        "FRePo, Adam for RFAD)")
    parser.add_argument("--lr", type=float, help="its peak learning rate "
                        "(default: the preset's, or 3e-4 for LAMB, 1e-3 for Adam)")
    parser.add_argument("--device", help="auto (default: CUDA when available, else the CPU), "
                        "cpu, cuda, ...")
    parser.add_argument("--out", type=Path, help="output directory "
                        "(default: experiments/<command>-<dataset>-ipc<N>)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (1 avoids oversubscribing "
                        "a small shared machine; default: torch's)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _variants_option(parser: argparse.ArgumentParser, default: str) -> None:
    from .variants import VARIANTS

    # The names here: a wheel user has no docs/ folder to look them up in.
    parser.add_argument("--variants", nargs="+", metavar="VARIANT",
                        help=f"variants to run, of {' '.join(VARIANTS)} (default: {default}); "
                        "docs/experiments/ablate.md describes them")


def _settings(args: argparse.Namespace):
    from .settings import experiment_settings

    return experiment_settings(
        args.preset, dataset=getattr(args, "dataset", None), data_root=args.data_root,
        ipc=getattr(args, "ipc", None), steps=args.steps, batch_size=args.batch_size,
        seeds=args.seeds, eval_models=args.eval_models, eval_steps=args.eval_steps,
        device=args.device, progress=not args.quiet, optimizer=args.optimizer, lr=args.lr,
    )


def _out_dir(args: argparse.Namespace, settings) -> Path:
    return args.out or Path("experiments") / f"{args.command}-{settings.dataset}-ipc{settings.ipc}"


def _ablate(args):
    from .ablate import run_ablation

    settings = _settings(args)
    out = _out_dir(args, settings)
    run_ablation(settings, out, args.variants, resume=args.resume)
    return out


def _module(args):
    from .module import run_module_study

    settings = _settings(args)
    out = _out_dir(args, settings)
    run_module_study(settings, out, args.arms,
                     overrides=dict(optimizer=args.optimizer, lr=args.lr))
    return out


def _hardness(args):
    from .hardness import run_hardness

    settings = _settings(args)
    out = _out_dir(args, settings)
    run_hardness(settings, out, args.variants, batches=args.batches, classes=tuple(args.classes))
    return out


def _diversity(args):
    from .diversity import run_diversity

    settings = _settings(args)
    out = _out_dir(args, settings)
    run_diversity(settings, out, args.variants, k=args.k, max_real=args.max_real)
    return out


def _cross_arch(args):
    from .cross_arch import run_cross_arch

    settings = _settings(args)
    out = args.out or Path("experiments") / f"cross-arch-{Path(args.run_dir).name}"
    run_cross_arch(args.run_dir, settings, out, args.architectures,
                   random_baseline=args.random_baseline)
    return out


def _continual(args):
    from .continual import run_continual

    settings = _settings(args)
    out = _out_dir(args, settings)
    run_continual(settings, out, num_steps=args.num_steps, methods=args.methods)
    return out


def _mia(args):
    from .mia import run_mia

    settings = _settings(args)
    out = _out_dir(args, settings)
    epochs = {} if args.target_epochs is None else {"target_epochs": args.target_epochs}
    run_mia(settings, out, members=args.members, budgets=args.budgets,
            target_augment=args.target_augment, **epochs)
    return out


def _handler(run: Callable[[argparse.Namespace], Path]) -> Callable[[argparse.Namespace], int]:
    """Run an experiment; user-fixable errors become one stderr line and exit status 2."""

    def handle(args: argparse.Namespace) -> int:
        from ..cli import INTERRUPTED, os_error_line
        from ..data import DatasetError
        from ..runs import RunInUseError, RunNotFoundError

        try:
            if args.threads is not None:
                cores = os.cpu_count() or 1
                if not 1 <= args.threads <= cores:
                    raise ValueError(f"--threads must lie in [1, {cores}] (this machine's "
                                     f"cores), got {args.threads}")
                import torch

                torch.set_num_threads(args.threads)
            out = run(args)
        except (ValueError, DatasetError, RunNotFoundError, RunInUseError) as error:
            print(f"isa-distill {args.command}: error: {error}", file=sys.stderr)
            return USAGE_ERROR
        except OSError as error:  # --out refused by the file system: a file, read-only, ...
            print(f"isa-distill {args.command}: error: {os_error_line(error)}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            again = (" (add --resume to continue where it stopped)"
                     if hasattr(args, "resume") else "")
            print(f"isa-distill {args.command}: interrupted{again}", file=sys.stderr)
            return INTERRUPTED
        written = sorted(p.name for p in out.iterdir() if p.suffix in (".md", ".csv", ".png"))
        print(f"wrote {out}/: {', '.join(written)}")
        return 0

    return handle


def add_subcommands(subparsers) -> None:
    """Add the experiment subcommands to ``subparsers`` (from ``add_subparsers``)."""
    ablate = subparsers.add_parser("ablate", help="paired ablation of the loss variants")
    _common(ablate)
    _variants_option(ablate, "every variant this installation can distil")
    ablate.add_argument("--resume", action="store_true",
                        help="reuse the per-seed results in --out (seeds.csv) of an earlier run "
                        "with the same settings and run only the missing ones")
    ablate.set_defaults(handler=_handler(_ablate))

    module = subparsers.add_parser("module", help="the ISA module on RFAD and FRePo, with and "
                                   "without multi-formation (paired seeds)")
    _common(module)
    module.add_argument("--arms", nargs="+", help="arms to run (default: rfad rfad+isa frepo "
                        "frepo+isa frepo-f2 frepo+isa-f2); see docs/experiments/module.md")
    module.set_defaults(handler=_handler(_module))

    hardness = subparsers.add_parser("hardness", help="Figure 1: hard vs easy targets, PCA")
    _common(hardness)
    _variants_option(hardness, "baseline isa+easy20")
    hardness.add_argument("--batches", type=int, default=5, help="target batches per seed")
    hardness.add_argument("--classes", type=int, nargs=3, default=[0, 1, 2],
                          help="three classes for the PCA (default: 0 1 2)")
    hardness.set_defaults(handler=_handler(_hardness))

    diversity = subparsers.add_parser("diversity", help="k-NN precision / recall / coverage")
    _common(diversity)
    _variants_option(diversity, "baseline easy10 easy20 easy30 isa+easy20")
    diversity.add_argument("--k", type=int, default=5, help="nearest neighbours (default: 5)")
    diversity.add_argument("--max-real", type=int, default=2000, help="real samples used")
    diversity.set_defaults(handler=_handler(_diversity))

    cross = subparsers.add_parser("cross-arch", help="evaluate a run on six architectures")
    cross.add_argument("run_dir", type=Path, help="a run directory written by distill")
    _common(cross, dataset=False)
    cross.add_argument("--architectures", nargs="+", help="subset of Conv Conv-NN ResNet-DN "
                       "ResNet-BN VGG-BN AlexNet")
    cross.add_argument("--random-baseline", action=argparse.BooleanOptionalAction, default=True,
                       help="also evaluate a random real subset of the same IPC")
    cross.set_defaults(handler=_handler(_cross_arch))

    continual = subparsers.add_parser("continual", help="class-incremental GDumb memories")
    _common(continual)
    continual.add_argument("--num-steps", type=int, default=5, help="class groups (5 or 10)")
    continual.add_argument("--methods", nargs="+", help="random herding frepo isa (default all)")
    continual.set_defaults(handler=_handler(_continual))

    mia = subparsers.add_parser("mia", help="membership inference attacks")
    _common(mia)
    mia.add_argument("--members", type=int, default=500,
                     help="member images, as many non-members (default: 500)")
    mia.add_argument("--target-epochs", type=int,
                     help="passes of each target model over its own training set; "
                     "--eval-steps/--eval-models do not apply (default: 1000)")
    mia.add_argument("--target-augment", action="store_true",
                     help="train the target models with the protocol's augmentation")
    mia.add_argument("--budgets", type=int, default=4,
                     help="epoch budgets on the AUC curve (halving; default: 4)")
    mia.set_defaults(handler=_handler(_mia))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="isa-distill")
    add_subcommands(parser.add_subparsers(dest="command", required=True, metavar="EXPERIMENT"))
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
