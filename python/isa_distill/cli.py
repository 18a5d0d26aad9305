"""``isa-distill``: distil, evaluate and inspect runs from the command line.

    isa-distill distill              digits, IPC 10, CPU preset; then a table of test accuracy:
                                     distilled set vs random subset vs full data
    isa-distill evaluate RUN_DIR     the protocol's 5-network evaluation of a run (options:
                                     --eval-batches shuffled|class-sorted, --select last|best-val)
    isa-distill show RUN_DIR         re-render images.png / curves.png and print a summary
    isa-distill export RUN_DIR --format png|image-folder|npz --out DIR
                                     the distilled set for other tools
    isa-distill import --from dc|mtt|kip|frepo FILE RUN_DIR --dataset NAME
                                     a set published by another project, as a run directory
    isa-distill info                 versions, backends, devices, datasets found

``distill`` and ``evaluate`` also run under ``torchrun --nproc_per_node N -m isa_distill ...``:
the ranks share the work, rank 0 alone prints and writes the run (docs/distributed.md).

Errors a user can fix (unknown dataset or preset, IPC too large, missing data, an existing run
directory, a damaged run, a resume with changed settings) print one line to stderr and exit
with status 2.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from collections.abc import Sequence
from pathlib import Path

PROG = "isa-distill"
USAGE_ERROR = 2
INTERRUPTED = 130  # 128 + SIGINT, as shells report it
DEFAULT_DATASET = "digits"
DEFAULT_IPC = 10
# ``distill`` flags that set the DistillConfig field of the same name.
CONFIG_FLAGS = ("ipc", "epsilon", "discard", "partner", "steps", "batch_size", "width", "depth",
                "optimizer", "lr", "flip", "zca", "seed", "backend", "device", "autocast",
                "class_reduction", "compile", "compile_mode", "channels_last", "checkpoint_every",
                "eval_steps", "shard_semantics", "source", "random_models", "random_width",
                "random_depth", "krr_loss", "formation", "label_margin")
RESUMABLE_FLAGS_TEXT = ("--steps, --device, --checkpoint-every, --data-root and the evaluation and "
                        "output options (--eval-*, --select*, --full-data, --no-eval, --quiet)")


class CliError(Exception):
    """A problem with the user's request, reported as one line and exit status 2."""


# ----------------------------------------------------------------------------- parser


def _parser() -> argparse.ArgumentParser:
    from .data import KNOWN_DATASETS
    from .presets import DEFAULT_PRESET, PRESETS

    parser = argparse.ArgumentParser(prog=PROG, description="Dataset distillation with crucial "
                                     "samples (FRePo kernel loss + Infinite Semantic Augmentation).")
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("distill", help="distil a dataset (default: digits, IPC 10, CPU)")
    run.add_argument("--preset", choices=PRESETS,
                     help=f"settings to start from (default: {DEFAULT_PRESET})")
    run.add_argument("--dataset", help=f"one of {', '.join(KNOWN_DATASETS)} "
                     f"(default: {DEFAULT_DATASET})")
    run.add_argument("--data-root", help="where the dataset files are: the folder of an "
                     "image-folder dataset, or a folder holding the dataset's usual folder or "
                     "archive (default: $ISA_DISTILL_DATA, else ~/data; with --resume, the root "
                     "stored in the run)")
    run.add_argument("--image-size", type=_positive_int, metavar="N",
                     help="image-folder only: resize the images to N x N pixels (default: 32)")
    run.add_argument("--grayscale", action="store_true",
                     help="image-folder only: read the images as one grey channel (default: RGB)")
    run.add_argument("--ipc", type=int, help=f"images per class (default: {DEFAULT_IPC})")
    run.add_argument("--epsilon", type=float, help="ISA segment length (0 = FRePo baseline)")
    run.add_argument("--discard", type=float, help="fraction of easiest targets dropped")
    run.add_argument("--partner", choices=("nearest", "random"))
    run.add_argument("--steps", type=int, help="outer steps")
    run.add_argument("--batch-size", type=int, help="target batch size")
    run.add_argument("--width", type=int, help="base width of the Conv network")
    run.add_argument("--depth", type=int, help="blocks of the Conv network")
    run.add_argument("--optimizer", choices=("lamb", "adam"))
    run.add_argument("--lr", type=float, help="peak learning rate of the synthetic set")
    run.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                     help="flip trick (default: the protocol's rule for the dataset)")
    run.add_argument("--zca", action=argparse.BooleanOptionalAction, default=None,
                     help="ZCA whitening (default: the protocol's rule for the dataset)")
    run.add_argument("--backend", choices=("auto", "rust", "torch"),
                     help="loss backend (default: auto = rust on CPU, torch elsewhere)")
    run.add_argument("--seed", type=int,
                     help="seed of every random draw, 0 to 2^32 - 1 (default: 0)")
    run.add_argument("--device", help="auto (default: CUDA when available, else the CPU; the "
                     "run records the device used), cpu, cuda, cuda:1, ...")
    run.add_argument("--autocast", action=argparse.BooleanOptionalAction, default=None,
                     help="bfloat16 feature extraction on CUDA")
    run.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                     help="NHWC memory layout for the pool models and target images (default: "
                     "off)")
    run.add_argument("--class-reduction", choices=("half_sum", "mean"),
                     help="per-target ISA loss: 1/2 sum over classes (paper's Eq. 5) or mean "
                     "over classes (the paper's public code; default: the preset's)")
    run.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                     help="torch.compile the outer step's forward computations (needs partner "
                     "'nearest'; default: off)")
    run.add_argument("--compile-mode", choices=("default", "reduce-overhead",
                                                "max-autotune-no-cudagraphs"),
                     help="torch.compile mode with --compile; reduce-overhead uses CUDA graphs")
    run.add_argument("--source", choices=("pool", "random"),
                     help="feature networks: pool = FRePo's pool of models trained online (the "
                     "protocol's); random = RFAD's fresh random ConvNets every step, never "
                     "trained (default: the preset's)")
    run.add_argument("--random-models", type=_positive_int, metavar="R",
                     help="with --source random: networks per step, their features concatenated "
                     "and scaled by 1/sqrt(R) (RFAD: 8)")
    run.add_argument("--random-width", type=_positive_int, metavar="W",
                     help="with --source random: channels of every block (RFAD: 256)")
    run.add_argument("--random-depth", type=_positive_int, metavar="D",
                     help="with --source random: conv blocks (RFAD: 3)")
    run.add_argument("--krr-loss", choices=("mse", "platt"),
                     help="loss on the KRR predictions: mse (FRePo's, the ISA closed form) or "
                     "platt (RFAD's cross-entropy with a learned temperature; ISA by quadrature, "
                     "needs 0 <= epsilon <= 1)")
    run.add_argument("--label-margin", action=argparse.BooleanOptionalAction, default=None,
                     help="FRePo's label-margin term on learned labels (default: the preset's)")
    run.add_argument("--formation", type=_positive_int, metavar="F",
                     help="multi-formation (IDC): each stored image decodes to F x F upsampled "
                     "tiles, IPC x F^2 training images per class at the storage of IPC; F must "
                     "divide the image size (default: 1)")
    run.add_argument("--checkpoint-every", type=int, help="steps between checkpoints")
    run.add_argument("--shard-semantics", choices=("global", "local"),
                     help="under torchrun: discard and partners over the global target batch "
                     "(global, the default: the single-process result) or within each rank's "
                     "shard (local, as the official pmap code)")
    run.add_argument("--run-dir", type=Path,
                     help="where to write the run (default: runs/<dataset>-ipc<N>-<time>)")
    run.add_argument("--resume", action="store_true",
                     help="continue the run in --run-dir from its last checkpoint, with its "
                     f"stored settings; only {RESUMABLE_FLAGS_TEXT} may change (a larger --steps "
                     "extends the run at its final learning rate)")
    _add_eval_options(run)
    run.add_argument("--tensorboard", action="store_true",
                     help="also write the loss terms, lr and validation accuracy as TensorBoard "
                     "scalars to <run>/tensorboard/ (needs `pip install tensorboard`)")
    run.add_argument("--no-eval", action="store_true", help="skip the final evaluation table")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_timeout_option(run)

    evaluate = commands.add_parser("evaluate", help="evaluate a run with the protocol")
    evaluate.add_argument("run_dir", type=Path)
    evaluate.add_argument("--data-root", help="where the dataset files are (default: the root "
                          "stored in the run, else $ISA_DISTILL_DATA or ~/data)")
    evaluate.add_argument("--device", default="auto",
                          help="auto (default: CUDA when available, else the CPU), cpu, cuda, "
                          "cuda:1, ...")
    _add_eval_options(evaluate)
    evaluate.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_timeout_option(evaluate)

    show = commands.add_parser("show", help="re-render a run's pictures and print its summary")
    show.add_argument("run_dir", type=Path)

    export = commands.add_parser("export", help="write a run's distilled set as PNG files, an "
                                 "image folder or .npz (docs/using-a-distilled-set.md)")
    export.add_argument("run_dir", type=Path)
    export.add_argument("--format", required=True, choices=("png", "image-folder", "npz"),
                        help="png: one picture per image and labels.csv; image-folder: one "
                        "sub-folder per class; npz: network-input images, labels and the "
                        "preprocessor")
    export.add_argument("--out", type=Path, required=True,
                        help="folder to write (must not exist or be empty)")

    imported = commands.add_parser(
        "import", help="convert a distilled set published by DC/DSA/DM, MTT, KIP or FRePo into a "
        "run directory, to evaluate it like a distilled run")
    imported.add_argument("file", type=Path, help="the published file (DC: res_*.pt; MTT: "
                          "images_best.pt; KIP, FRePo: .npz)")
    imported.add_argument("run_dir", type=Path, help="the run directory to create")
    imported.add_argument("--from", dest="source", required=True,
                          choices=("dc", "mtt", "kip", "frepo"), help="the project that wrote it")
    imported.add_argument("--dataset", required=True,
                          choices=("mnist", "fashion-mnist", "cifar10", "cifar100"),
                          help="the dataset it was distilled from")
    imported.add_argument("--data-root", help="where the dataset files are (default: "
                          "$ISA_DISTILL_DATA, else ~/data); stored in the run")
    imported.add_argument("--labels", type=Path, help="mtt: the labels file (default: FILE with "
                          "'images' replaced by 'labels')")
    imported.add_argument("--experiment", type=int, default=0,
                          help="dc: which of the file's experiments (default: %(default)s)")
    imported.add_argument("--zca", action=argparse.BooleanOptionalAction, default=None,
                          help="whether the set is ZCA-whitened (mtt: required; kip, frepo: "
                          "default on except for MNIST and Fashion-MNIST)")
    imported.add_argument("--zca-reg", type=float, help="ZCA ridge the set was made with (mtt: "
                          "kornia's eps, default 0.1; kip, frepo: relative to trace / D, "
                          "default 0.1)")

    commands.add_parser("info", help="versions, backends, devices and datasets found")
    from .experiments.cli import add_subcommands

    add_subcommands(commands)  # ablate, hardness, diversity, cross-arch, continual, mia
    return parser


def _version() -> str:
    from .runs import library_version

    return library_version()


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _model_count(text: str) -> int:
    from .evaluate import MAX_MODELS

    value = _positive_int(text)
    if value > MAX_MODELS:
        raise argparse.ArgumentTypeError(f"expected at most {MAX_MODELS} networks, got {text!r}")
    return value


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _add_timeout_option(parser: argparse.ArgumentParser) -> None:
    from .distributed import DEFAULT_TIMEOUT

    parser.add_argument("--dist-timeout", type=_positive_seconds, default=DEFAULT_TIMEOUT,
                        help="under torchrun: seconds a rank waits for the others before the "
                        "launch fails (default: %(default)g)")


def _add_eval_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--eval-models", type=_model_count, default=5,
                        help="networks trained per set (default: %(default)s)")
    parser.add_argument("--eval-steps", type=_positive_int,
                        help="training steps per network (default: the run's, else the protocol's)")
    parser.add_argument("--eval-batches", choices=("shuffled", "class-sorted"), default="shuffled",
                        help="batches of the evaluation networks: fresh random subsets, or the "
                        "set sorted by class cycled in order as the official code does "
                        "(default: %(default)s)")
    parser.add_argument("--select", choices=("last", "best-val"), default="last",
                        help="weights scored on test: after the last step, or those with the best "
                        "validation accuracy (never test) (default: %(default)s)")
    parser.add_argument("--select-every", type=_positive_int, metavar="N",
                        help="with --select best-val: steps between validation scores (default: "
                        "a tenth of the evaluation steps)")
    parser.add_argument("--full-data", action=argparse.BooleanOptionalAction, default=True,
                        help="also train on the whole train split (default: on)")


# ----------------------------------------------------------------------------- commands


def _load_data(name: str, root: str | None, seed: int, args: argparse.Namespace):
    from .data import CLI_NAMES, load_dataset

    return load_dataset(name, root, seed=seed, image_size=args.image_size,
                        grayscale=args.grayscale, argument_names=CLI_NAMES)


def _load_run_data(meta: dict, data_root: str | None):
    """The dataset of a run: from ``data_root`` when given, else from the root the run stored
    (if any), else from the default locations; image folders at the run's image size."""
    from .data import CLI_NAMES, DatasetNotFoundError, load_dataset

    root = data_root if data_root is not None else meta.get("data_root")
    options = {}
    if meta["dataset"] == "image-folder":
        options = dict(image_size=meta["image_size"], grayscale=meta["channels"] == 1)
    try:
        return load_dataset(meta["dataset"], root, seed=meta["config"]["seed"],
                            argument_names=CLI_NAMES, **options)
    except DatasetNotFoundError as error:
        if data_root is not None or root is None:
            raise
        raise DatasetNotFoundError(f"{error} ({root} is the data root stored in the run; pass "
                                   "--data-root to read the data from elsewhere)") from error


def _default_run_dir(dataset: str, ipc: int) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{dataset}-ipc{ipc}-{stamp}"
    path, suffix = base, 1
    while path.exists():
        suffix += 1
        path = base.with_name(f"{base.name}-{suffix}")
    return path


def _check_eval_options(args: argparse.Namespace) -> None:
    """Catch contradictory evaluation flags before any distillation time is spent."""
    if args.select_every is not None and args.select != "best-val":
        raise CliError("--select-every applies to --select best-val only")
    if None not in (args.select_every, args.eval_steps) and args.select_every > args.eval_steps:
        raise CliError(f"--select-every {args.select_every} exceeds --eval-steps "
                       f"{args.eval_steps}: best-val would have only the final weights")


def cmd_distill(args: argparse.Namespace, parallel) -> int:
    from .distill import distill

    say = _say(parallel)
    # Rank 0 checks the request and picks the run directory; every rank gets its answer.
    config, meta, run_dir = parallel.from_writer(lambda: _distill_request(args))
    if args.tensorboard:
        parallel.from_writer(_require_tensorboard)  # every rank stops when it is missing
    if args.resume:
        data = _load_run_data(meta, args.data_root)
    else:
        data = _load_data(_dataset_name(args), args.data_root, config.seed, args)
        parallel.from_writer(lambda: _check_data_fits(data, config))
        say(_describe_config(data, config, run_dir, parallel.world_size))
    on_log = _tensorboard(args, run_dir) if parallel.writes else None
    try:
        result = distill(data, config, run_dir=run_dir, resume=args.resume,
                         progress=not args.quiet, parallel=parallel, on_log=on_log)
    except KeyboardInterrupt:
        if parallel.writes:
            print(f"{PROG}: {_interrupted(Path(run_dir))}", file=sys.stderr)
        return INTERRUPTED
    finally:
        if on_log is not None:
            on_log.close()
    pictures = parallel.from_writer(lambda: _render_pictures(run_dir, names_only=True))
    say(f"\ndistilled {result.steps_done} steps in {result.elapsed:.1f} s; run written to "
        f"{run_dir}/ (pictures: {pictures})")
    if not args.no_eval:
        _print_evaluation(run_dir, data, args, device=result.config.device, parallel=parallel)
    return 0


def _render_pictures(run_dir, *, names_only: bool = False) -> str:
    """(Re-)draw the run's pictures; which were written, or why none were (a read-only run is
    still shown, a finished run still reported)."""
    from .plots import render_run

    try:
        pictures = render_run(run_dir)
    except OSError as error:
        return f"not written: {os_error_line(error)}"
    return ", ".join(p.name if names_only else str(p) for p in pictures)


def _interrupted(run_dir: Path) -> str:
    """What an interrupted distillation leaves, and how to go on."""
    from .runs import CHECKPOINT

    if (run_dir / CHECKPOINT).is_file():
        return f"interrupted; continue with: {PROG} distill --resume --run-dir {run_dir}"
    if run_dir.is_dir() and any(run_dir.iterdir()):
        return (f"interrupted before the first checkpoint, so there is nothing to resume; "
                f"delete {run_dir} and run the same command again")
    return "interrupted"


def _check_data_fits(data, config) -> None:
    """IPC and --formation against the loaded data, before a run directory is made."""
    from .distill import check_ipc
    from .formation import check_formation

    try:
        check_formation(config.formation, data.image_size)
    except ValueError as error:
        raise CliError(f"--formation {config.formation}: {error}") from error
    try:
        check_ipc(data.train, config.ipc, data.num_classes, config.formation,
                  data.class_names)
    except ValueError as error:
        raise CliError(_in_flag_words(error)) from error


def _dataset_name(args: argparse.Namespace) -> str:
    return args.dataset or DEFAULT_DATASET


def _say(parallel):
    """``print`` on the writing process, nothing on the other ranks."""
    return print if parallel.writes else (lambda *args, **kwargs: None)


def _distill_request(args: argparse.Namespace):
    """(config, meta of the run to resume or None, run directory), every check passed."""
    import dataclasses

    from .presets import DEFAULT_PRESET, preset_config

    _check_eval_options(args)
    if args.resume:
        return _resume_request(args)
    config = preset_config(_dataset_name(args), args.preset or DEFAULT_PRESET,
                           **_config_flags(args))
    config = dataclasses.replace(config, device=_resolve_device(config.device))
    if args.run_dir is not None:
        from .runs import Run

        Run.check_creatable(args.run_dir)  # before the data is loaded and the plan printed
    return config, None, args.run_dir or _default_run_dir(_dataset_name(args), config.ipc)


def _require_tensorboard() -> None:
    from .tensorboard_log import TensorBoardMissingError, summary_writer_class

    try:
        summary_writer_class()
    except TensorBoardMissingError as error:
        raise CliError(str(error)) from error


def _tensorboard(args: argparse.Namespace, run_dir: Path):
    """The TensorBoard writer of ``--tensorboard`` (None without it); a resumed run drops the
    events logged after its checkpoint."""
    if not args.tensorboard:
        return None
    from .runs import Run
    from .tensorboard_log import TensorBoardLog, TensorBoardMissingError

    purge_step = Run.open(run_dir).meta["steps_done"] + 1 if args.resume else None
    try:
        return TensorBoardLog(run_dir, purge_step=purge_step)
    except TensorBoardMissingError as error:
        raise CliError(str(error)) from error


def _config_flags(args: argparse.Namespace) -> dict:
    """The config flags as ``preset_config`` keywords (None: not given)."""
    flags = {name: getattr(args, name) for name in CONFIG_FLAGS}
    flags["ipc"] = DEFAULT_IPC if args.ipc is None else args.ipc
    return flags


def _resume_request(args: argparse.Namespace):
    """(config, meta, run_dir) to resume ``--run-dir`` with: the stored config with the flags
    that may change applied; CliError naming the flags given that would change the result."""
    import dataclasses

    from .distill import RESUMABLE_FIELDS, DistillConfig
    from .runs import Run

    if args.run_dir is None:
        raise CliError("--resume needs --run-dir (the run to continue)")
    run = Run.open(args.run_dir)
    if "source" in run.meta:
        raise CliError(f"{args.run_dir} holds a set imported from "
                       f"{run.meta['source'].get('method', 'another project')}: there is no "
                       "distillation to resume (evaluate it with isa-distill evaluate)")
    run.check_resumable()
    stored = DistillConfig.from_dict(run.meta["config"])
    conflicts = _resume_conflicts(args, run.meta, stored)
    if conflicts:
        raise CliError(
            f"cannot resume {args.run_dir} with changed settings: {'; '.join(conflicts)}. Leave "
            f"them out to continue the run as it was (its settings are in "
            f"{run.path / 'meta.json'}); only {RESUMABLE_FLAGS_TEXT} may change on resume"
        )
    changes = {name: getattr(args, name) for name in RESUMABLE_FIELDS
               if name in CONFIG_FLAGS and getattr(args, name) is not None}
    config = dataclasses.replace(stored, **changes)
    if config.steps < run.meta["steps_done"]:
        raise CliError(f"--steps {config.steps} is fewer than the {run.meta['steps_done']} steps "
                       f"{args.run_dir} has done; pass --steps {run.meta['steps_done']} or more")
    if args.device is None and not _available(config.device):
        print(f"{args.run_dir} ran on {config.device}, which this machine does not have; "
              "resuming with --device auto")
        config = dataclasses.replace(config, device="auto")
    config = dataclasses.replace(config, device=_resolve_device(config.device))
    print(f"resuming {args.run_dir}: {run.meta['steps_done']} of {config.steps} steps done")
    return config, run.meta, args.run_dir


def _resume_conflicts(args: argparse.Namespace, meta: dict, stored) -> list[str]:
    """The flags given with --resume that differ from the run's settings and may not change."""
    from .distill import RESUMABLE_FIELDS

    conflicts = []
    if args.dataset is not None and args.dataset != meta["dataset"]:
        conflicts.append(f"--dataset {args.dataset} (the run has {meta['dataset']})")
    if args.image_size is not None and args.image_size != meta["image_size"]:
        conflicts.append(f"--image-size {args.image_size} (the run has {meta['image_size']})")
    if args.grayscale and meta["channels"] != 1:
        conflicts.append(f"--grayscale (the run has {meta['channels']} channels)")
    for name in CONFIG_FLAGS:
        value = getattr(args, name)
        if value is None or name in RESUMABLE_FIELDS:
            continue
        if not _same_setting(name, value, stored, meta):
            run_value = _run_setting(name, stored, meta)
            conflicts.append(f"{_flag(name, value)} (the run has {run_value})")
    if args.preset is not None:
        conflicts += _preset_conflicts(args, meta, stored)
    return conflicts


def _same_setting(name: str, value, stored, meta: dict) -> bool:
    """Whether a flag's value is the run's, also where the run left it to a default."""
    if value == getattr(stored, name):
        return True
    if name == "lr":
        return value == stored.peak_lr
    if name == "flip" and stored.flip is None:
        return value == meta["flip"]
    if name == "zca" and stored.zca is None:
        return value == meta["preprocessing"].get("zca")
    return False


def _run_setting(name: str, stored, meta: dict) -> str:
    """The run's value of a config flag in words, defaults resolved."""
    if name == "lr" and stored.lr is None:
        return f"{stored.peak_lr:g}, the {stored.optimizer} default"
    resolved = {"flip": meta["flip"], "zca": meta["preprocessing"].get("zca")}
    if name in resolved and getattr(stored, name) is None:
        return f"{_flag(name, resolved[name])}, the dataset's default"
    value = getattr(stored, name)
    return _flag(name, value) if isinstance(value, bool) else str(value)


def _preset_conflicts(args: argparse.Namespace, meta: dict, stored) -> list[str]:
    """--preset with --resume is only checked: the settings it (with the other flags given)
    would choose must be the run's."""
    import dataclasses

    from .distill import RESUMABLE_FIELDS
    from .presets import preset_config

    flags = {**_config_flags(args), "ipc": stored.ipc if args.ipc is None else args.ipc}
    expected = preset_config(meta["dataset"], args.preset, **flags)
    differing = [
        f"{field.name} {getattr(expected, field.name)} where the run has "
        f"{getattr(stored, field.name)}"
        for field in dataclasses.fields(expected)
        if field.name not in RESUMABLE_FIELDS and flags.get(field.name) is None
        and getattr(expected, field.name) != getattr(stored, field.name)
    ]
    return [f"--preset {args.preset} (sets {', '.join(differing)})"] if differing else []


def _in_flag_words(error: Exception) -> str:
    """The error's message, naming the command-line flag where it names a config field."""
    from .distill import ConfigError

    message = str(error)
    if isinstance(error, ConfigError) and error.field in CONFIG_FLAGS:
        if message.startswith(error.field):
            return "--" + error.field.replace("_", "-") + message[len(error.field):]
    return message


def _flag(name: str, value) -> str:
    option = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return option if value else "--no-" + option[2:]
    return f"{option} {value}"


def _check_device(device: str) -> None:
    import torch

    from .devices import parse_device

    if device == "auto":
        return
    try:
        kind = parse_device(device).type
    except ValueError:
        raise CliError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise CliError(f"--device {device} requested but CUDA is not available; use --device cpu")


def _available(device: str) -> bool:
    import torch

    return device == "auto" or torch.device(device).type != "cuda" or torch.cuda.is_available()


def _resolve_device(requested: str) -> str:
    """The device ``--device`` (default auto) asks for, checked; prints a note when auto chose
    a GPU."""
    from .devices import describe_choice, resolve_device

    _check_device(requested)
    device = resolve_device(requested)
    note = describe_choice(requested, device)
    if note is not None:
        print(note)
    return device


def cmd_evaluate(args: argparse.Namespace, parallel) -> int:
    from .runs import load_distilled

    def request() -> tuple[dict, str]:
        _check_eval_options(args)
        return load_distilled(args.run_dir).meta, _resolve_device(args.device)

    meta, device = parallel.from_writer(request)
    done, planned = meta["steps_done"], meta["config"]["steps"]
    if "source" not in meta and done < planned:  # an imported set has no steps of ours
        _say(parallel)(f"note: {args.run_dir} stopped at step {done} of {planned}; this "
                       f"evaluates the set as it was then (finish it with: {PROG} distill "
                       f"--resume --run-dir {args.run_dir})")
    data = _load_run_data(meta, args.data_root)
    _print_evaluation(args.run_dir, data, args, device=device, parallel=parallel)
    return 0


def _print_evaluation(run_dir: Path, data, args: argparse.Namespace, *, device: str,
                      parallel) -> None:
    """Train the protocol's networks on the distilled set, a random subset and all data;
    under torchrun the ranks share each set's networks and rank 0 prints the table."""
    from .data import Split, allows_flip
    from .evaluate import evaluate_full_data, evaluate_random_subset, evaluate_set
    from .runs import load_distilled

    distilled = parallel.from_writer(lambda: load_distilled(run_dir))
    config = distilled.meta["config"]
    steps = args.eval_steps or config.get("eval_steps")
    prep = distilled.preprocessor
    train = Split(prep.transform(data.train.images), data.train.labels)
    test = Split(prep.transform(data.test.images), data.test.labels)
    val = None
    if args.select == "best-val":
        if len(data.val) == 0:
            raise CliError(f"--select best-val needs a validation split; {data.name} has none")
        val = Split(prep.transform(data.val.images), data.val.labels)
    options = dict(
        test=test, arch=config["arch"], norm="none", width=config["width"],
        depth=config["depth"], num_models=args.eval_models, steps=steps,
        flip=allows_flip(data.name), seed=config["seed"], device=device,
        progress=not args.quiet, num_classes=data.num_classes, batches=args.eval_batches,
        select=args.select, val=val, select_every=args.select_every,
    )
    ipc = int(distilled.meta["ipc"])
    label = _set_name(distilled.meta)
    evaluate = parallel.evaluate
    # With multi-formation the networks train on the decoded images; the random subset keeps
    # the stored IPC: the comparison at equal storage.
    training = distilled.training_images
    rows = [(f"distilled ({label})", len(training),
             evaluate(evaluate_set, training, distilled.training_labels, **options))]
    rows.append(("random subset", ipc * data.num_classes,
                 evaluate(evaluate_random_subset, train, ipc, **options)))
    if args.full_data:
        rows.append(("full train data", len(train), evaluate(evaluate_full_data, train,
                                                             **options)))
    if not parallel.writes:
        return
    budget = f"{steps} steps" if steps else "protocol step budget"
    recipe = f"{args.eval_batches} batches, {args.select} weights"
    networks = "1 Conv-NN network" if args.eval_models == 1 else f"{args.eval_models} Conv-NN networks"
    print(f"\n{data.name}, IPC {ipc}: test accuracy over {networks} "
          f"(width {config['width']}, depth {config['depth']}, {budget}, {recipe}; "
          f"{len(test)} test images)")
    width = max(len("training set"), *(len(name) for name, _, _ in rows))
    print(f"  {'training set':<{width}}  {'images':>7}   accuracy (%)")
    for name, size, result in rows:
        print(f"  {name:<{width}}  {size:>7}   {100 * result.mean:5.1f} ± {100 * result.std:.1f}")


def _set_name(meta: dict) -> str:
    """What made the set: the method and settings, or the project it was imported from."""
    if "source" in meta:
        return f"{meta['source'].get('method', '?')}, imported"
    return _method_name(meta["config"])


def _method_name(config: dict) -> str:
    """FRePo / ISA for the pool source (as before the sources existed), RFAD / RFAD + ISA for
    random networks; the Platt loss and multi-formation are named when used."""
    reduction = config.get("class_reduction", "half_sum")
    random = config.get("source", "pool") == "random"
    platt = config.get("krr_loss", "mse") == "platt"
    if config["epsilon"] == 0 and config["discard"] == 0:
        name = "RFAD" if random else "FRePo"
    else:
        name = f"ISA eps={config['epsilon']:g}, discard={config['discard']:g}"
        name = f"RFAD + {name}" if random else name
    if reduction != "half_sum" and not platt:
        name += ", class mean"
    if platt:
        name += ", Platt"
    factor = config.get("formation", 1)
    return name if factor == 1 else f"{name}, formation {factor}x{factor}"


def cmd_show(args: argparse.Namespace) -> int:
    from .runs import LOG, load_distilled, read_log

    distilled = load_distilled(args.run_dir)
    pictures = _render_pictures(args.run_dir)
    meta = distilled.meta
    config = meta["config"]
    rows = read_log(Path(args.run_dir) / LOG)
    measured = [row for row in rows if row["val_acc"] is not None]
    print(f"run        {args.run_dir}")
    print(f"dataset    {meta['dataset']} ({meta['num_classes']} classes), IPC {meta['ipc']}, "
          f"{len(distilled.images)} images of {tuple(distilled.images.shape[1:])}"
          + ("" if distilled.formation == 1 else
             f" stored, decoded to {len(distilled.training_images)} (formation "
             f"{distilled.formation}x{distilled.formation})"))
    if "source" in meta:
        source = meta["source"]
        print(f"method     {source.get('method', '?')} (imported from {source.get('file', '?')})")
        print(f"preprocess {source.get('preprocessing', '?')}")
        print(f"evaluation {config['arch']} width {config['width']} depth {config['depth']}, "
              f"no normalisation")
        print(f"pictures   {pictures}")
        return 0
    print(f"method     {_method_name(config)}, partner={config['partner']}, "
          f"optimizer={config['optimizer']}, flip={meta['flip']}, "
          f"zca={_zca_description(meta['preprocessing'])}")
    if config.get("source", "pool") == "random":
        source = (f"{config['random_models']} random ConvNets per step (width "
                  f"{config['random_width']}, depth {config['random_depth']})")
    else:
        source = f"pool {config['pool_size']}"
    print(f"network    {config['arch']} width {config['width']} depth {config['depth']} "
          f"norm {config['norm']}, {source}")
    print(f"progress   {meta['steps_done']} / {config['steps']} steps, "
          f"{meta.get('elapsed_seconds', 0):.0f} s, seed {meta['seed']}, "
          f"isa-distill {meta.get('version', '?')}")
    if rows:
        first, last = rows[0], rows[-1]
        if first["kernel_loss"] is not None and last["kernel_loss"] is not None:
            print(f"kernel     {first['kernel_loss']:.4g} (step {first['step']}) -> "
                  f"{last['kernel_loss']:.4g} (step {last['step']}); label margin "
                  f"{first['margin_loss']:.3g} -> {last['margin_loss']:.3g}")
        else:
            print(f"loss       {first['loss']:.4g} (step {first['step']}) -> "
                  f"{last['loss']:.4g} (step {last['step']})")
    if measured:
        history = ", ".join(f"{100 * r['val_acc']:.1f}% @ {r['step']}" for r in measured[-5:])
        print(f"val acc    {history}")
    print(f"pictures   {pictures}")
    return 0


def _zca_description(preprocessing: dict) -> str:
    block = preprocessing.get("zca_block")
    return str(preprocessing.get("zca")) + ("" if block is None else f" ({block}-pixel blocks)")


def cmd_export(args: argparse.Namespace) -> int:
    from .export import LABELS_CSV, export_run

    try:
        files = export_run(args.run_dir, args.format, args.out)
    except FileExistsError as error:
        raise CliError(f"--out {error}") from error
    pictures = [f for f in files if f.suffix == ".png"]
    what = f"{len(pictures)} PNG files and {LABELS_CSV}" if pictures else files[0].name
    print(f"wrote {what} to {args.out}/")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from .data import CLI_NAMES
    from .importers import SOURCE_NAMES, import_set

    run = import_set(args.source, args.file, args.run_dir, dataset=args.dataset,
                     data_root=args.data_root, labels_file=args.labels,
                     experiment=args.experiment, zca=args.zca, zca_reg=args.zca_reg,
                     argument_names=CLI_NAMES)  # fmt: skip
    meta = run.meta
    print(f"imported {meta['ipc'] * meta['num_classes']} {meta['dataset']} images (IPC "
          f"{meta['ipc']}) distilled by {SOURCE_NAMES[args.source]} into {args.run_dir}/\n"
          f"  preprocessing: {meta['source']['preprocessing']}\n"
          f"  evaluate: isa-distill evaluate {args.run_dir}   (or cross-arch, show, export)")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    import platform

    import torch

    from .data import CLI_NAMES, KNOWN_DATASETS, DatasetError, DatasetNotFoundError, load_dataset
    from .runs import library_version

    print(f"isa-distill {library_version()}  (python {platform.python_version()})")
    print(f"torch       {torch.__version__}, threads {torch.get_num_threads()}")
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        print(f"cuda        {torch.version.cuda}: {names}")
    else:
        print(f"cuda        not available (torch built with CUDA {torch.version.cuda})")
    try:
        from . import _core

        rust = f"available (isa_distill._core {getattr(_core, '__version__', '?')})"
    except ImportError as error:
        rust = f"not built ({error}); run `maturin develop`"
    print("backends    torch (any device); rust (CPU): " + rust)
    print("datasets (distill holds 10% of the train images out for validation, stratified by "
          "class, and trains on the rest; the test split is never used to train or select)")
    for name in KNOWN_DATASETS:
        if name == "image-folder":
            print(f"  {name:<14} pass --data-root (and --image-size, --grayscale)")
            continue
        try:
            data = load_dataset(name, argument_names=CLI_NAMES)  # with the validation hold-out
            status = (f"found: {len(data.train) + len(data.val)} train images = {len(data.train)} "
                      f"+ {len(data.val)} validation, {len(data.test)} test, "
                      f"{data.num_classes} classes")
        except DatasetNotFoundError as error:
            status = "not found (" + str(error).splitlines()[-1] + ")"
        except (DatasetError, ValueError, OSError) as error:  # found, but not readable as it is
            status = "unusable: " + " ".join(str(error).split())
        print(f"  {name:<14} {status}")
    return 0


def _describe_config(data, config, run_dir: Path, world_size: int = 1) -> str:
    from .distill import resolved_flip, resolved_zca

    ranks = "" if world_size == 1 else (
        f"\n  {world_size} ranks (torchrun), {config.shard_semantics} shard semantics")
    return (
        f"distilling {data.name} ({len(data.train)} train images, {data.num_classes} classes) "
        f"to IPC {config.ipc} with {_method_name(config.__dict__)}\n"
        f"  {config.steps} steps, {_source_words(config)}, batch "
        f"{config.batch_size}, {config.optimizer} lr {config.peak_lr:g}, flip "
        f"{resolved_flip(config, data.name, data.num_classes)}, zca "
        f"{resolved_zca(config, data.name)}, device {config.device}"
        f"{', compiled' if config.compile else ''}{ranks}\n  run directory: {run_dir}"
    )


def _source_words(config) -> str:
    if config.source == "random":
        return (f"{config.random_models} random ConvNets per step (width {config.random_width}, "
                f"depth {config.random_depth})")
    return f"Conv-BN width {config.width} depth {config.depth}"


# Commands that run under torchrun (their ranks share the work); the others run in one process.
DISTRIBUTED_COMMANDS = {"distill": cmd_distill, "evaluate": cmd_evaluate}
COMMANDS = {"show": cmd_show, "export": cmd_export, "import": cmd_import, "info": cmd_info}


def main(argv: Sequence[str] | None = None) -> int:
    from .distributed import launched

    if launched():
        # torchrun's failure summary then shows the exception of a rank that raised.
        from torch.distributed.elastic.multiprocessing.errors import record

        return record(_main)(argv)
    return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    from .distributed import launched

    if launched() and args.command not in DISTRIBUTED_COMMANDS:
        print(f"{PROG}: error: {args.command} runs in one process; run it without torchrun "
              f"(under torchrun: {', '.join(DISTRIBUTED_COMMANDS)})", file=sys.stderr)
        return USAGE_ERROR
    if hasattr(args, "handler"):  # an experiment subcommand handles its own errors
        return args.handler(args)
    if args.command in COMMANDS:
        return _reporting_errors(lambda parallel: COMMANDS[args.command](args), None)
    return _reporting_errors(lambda parallel: DISTRIBUTED_COMMANDS[args.command](args, parallel),
                             args.dist_timeout)


def _reporting_errors(command, timeout: float | None) -> int:
    """Run ``command(parallel)``; errors a user can fix print one line and give status 2.

    Under torchrun each rank reports its own errors, except those rank 0 raised and shared
    (``from_writer``), which rank 0 alone prints."""
    from .data import DatasetError
    from .distributed import DEFAULT_TIMEOUT, DistributedError, launch, reported_elsewhere
    from .runs import RunExistsError, RunInUseError, RunNotFoundError

    with launch(DEFAULT_TIMEOUT if timeout is None else timeout) as parallel:
        where = "" if parallel.writes else f" (rank {parallel.rank})"
        try:
            return command(parallel)
        except (CliError, ValueError, DatasetError, RunExistsError, RunNotFoundError,
                RunInUseError) as error:
            if not reported_elsewhere(error):
                message = " ".join(_in_flag_words(error).split())  # one line, even for many
                print(f"{PROG}: error{where}: {message}", file=sys.stderr)
            return USAGE_ERROR
        except DistributedError as error:
            print(f"{PROG}: error{where}: {error}", file=sys.stderr)
            return 1
        except OSError as error:  # the system refused: disk full, read-only, permissions, ...
            print(f"{PROG}: error{where}: {os_error_line(error)}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            if parallel.writes:
                print(f"{PROG}: interrupted", file=sys.stderr)
            return INTERRUPTED


def os_error_line(error: OSError) -> str:
    """'REASON: PATH' when the error names a file, else its own text; one line."""
    text = error.strerror or str(error)
    if error.filename is not None:
        text = f"{text}: {error.filename}"
    return " ".join(text.split())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
