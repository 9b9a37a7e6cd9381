"""Command line: thin subcommands that parse arguments and call the modules.

Each subcommand is one ``_cmd_<name>`` function that registers its parser and sets ``func``;
heavy imports happen inside the handlers so that ``kdlandmark --help`` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

FORMATS = ("300w", "wflw", "cofw")
DATASETS = (*FORMATS, "folder")


def _cmd_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write a synthetic face dataset in a native benchmark format")
    p.add_argument("--format", choices=FORMATS, default="300w", help="native format to write")
    p.add_argument("--count", type=int, default=1000, help="number of faces (train + test)")
    p.add_argument("--out", type=Path, required=True, help="dataset root to create")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=256, help="image side in pixels")
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--contact-sheet", type=Path, default=None, help="also write a PNG of the first faces")

    def run(a: argparse.Namespace) -> int:
        from kdlandmark.data import synth

        summary = synth.synthesize(a.format, a.count, a.out, seed=a.seed, size=a.size,
                                   test_fraction=a.test_fraction, workers=a.workers)
        print(synth.format_summary(summary))
        if a.contact_sheet is not None:
            synth.contact_sheet(a.format, a.contact_sheet, seed=a.seed, size=a.size)
            print(f"contact sheet: {a.contact_sheet}")
        return 0

    p.set_defaults(func=run)


def _cmd_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="crop, resize and store a dataset as memory-mappable arrays")
    p.add_argument("--dataset", choices=DATASETS, required=True)
    p.add_argument("--root", type=Path, required=True, help="dataset root folder")
    p.add_argument("--out", type=Path, required=True, help="prepared-set folder to write")
    p.add_argument("--size", type=int, default=256, help="working crop side (larger than the model input)")
    p.add_argument("--splits", nargs="*", default=None, help="splits to prepare (default: all present)")
    p.add_argument("--skip-bad", action="store_true", help="skip malformed samples and report them")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")

    def run(a: argparse.Namespace) -> int:
        from kdlandmark.data.prepare import format_summary, prepare_dataset

        prepared = prepare_dataset(a.dataset, a.root, a.out, size=a.size, splits=a.splits,
                                   skip_bad=a.skip_bad, workers=a.workers)
        print(format_summary(prepared))
        return 0

    p.set_defaults(func=run)


def _cmd_asm(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("asm", help="fit the shape model, store soft landmarks")
    p.add_argument("--data", type=Path, required=True, help="prepared-set folder")
    p.add_argument("--variance", type=float, default=0.9, help="share of shape variance kept (0-1]")
    p.add_argument("--no-procrustes", action="store_true", help="PCA on crop shapes as the authors' code")
    p.add_argument("--out", type=Path, default=None, help="model and picture folder (default DATA/asm)")

    def run(a: argparse.Namespace) -> int:
        from kdlandmark.shape.soften import soften_prepared

        soften_prepared(a.data, a.variance, procrustes=not a.no_procrustes, out=a.out)
        return 0

    p.set_defaults(func=run)


def _cmd_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train one role (tough, tolerant, kd, l2) from a config")
    p.add_argument("--config", required=True, help="experiment preset/YAML, or a run's config.yaml")
    p.add_argument("--role", choices=["tough", "tolerant", "kd", "l2"], default=None)
    p.add_argument("--data", type=Path, default=None, help="prepared-set folder")
    p.add_argument("--out", type=Path, default=None, help="run folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. optim.epochs=5")

    def run(a: argparse.Namespace) -> int:
        from kdlandmark.pipeline import resolve_preset
        from kdlandmark.train.trainer import train_main

        result = train_main(resolve_preset(a.config), a.overrides, a.role, data=a.data, out=a.out,
                            resume=True if a.resume else None)
        print(f"best {result['best_metric']:.5f} at epoch {result['best_epoch']}: {result['best']}")
        return 0

    p.set_defaults(func=run)


_JOBS_HELP = "training stages side by side, each in its own process (default: the config's jobs)"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _cmd_pipeline(sub: argparse._SubParsersAction) -> None:
    from kdlandmark.pipeline import STAGES

    p = sub.add_parser("pipeline", help="prepare, ASM, both teachers, KD and L2 students, evaluation, report")
    p.add_argument("--config", required=True, help="preset name (paper-300w, ...) or YAML file")
    p.add_argument("--data-root", type=Path, default=None, help="dataset folder (native files)")
    p.add_argument("--out", type=Path, default=None, help="experiment folder")
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    p.add_argument("--jobs", type=_positive_int, default=None, help=_JOBS_HELP)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")

    def run(a: argparse.Namespace) -> int:
        from kdlandmark.pipeline import run_pipeline

        run_pipeline(a.config, a.overrides, data_root=a.data_root, out=a.out, stages=a.stages, jobs=a.jobs)
        return 0

    p.set_defaults(func=run)


def _cmd_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the whole recipe on built-in synthetic faces, sized for a CPU")
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--count", type=int, default=1500, help="synthetic faces (train + test)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", default="demo", help="preset or YAML (default: the CPU demo preset)")
    p.add_argument("--jobs", type=_positive_int, default=None, help=_JOBS_HELP)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")

    def run(a: argparse.Namespace) -> int:
        from kdlandmark.pipeline import run_demo

        run_demo(a.out, count=a.count, seed=a.seed, overrides=a.overrides, config=a.config, jobs=a.jobs)
        return 0

    p.set_defaults(func=run)


def _cmd_evaluate(sub: argparse._SubParsersAction) -> None:
    from kdlandmark.evaluate.evaluator import add_evaluate_arguments, evaluate_main

    p = sub.add_parser("evaluate", help="score a checkpoint by a benchmark's protocol (NME, FR, AUC)")
    add_evaluate_arguments(p)
    p.set_defaults(func=evaluate_main)


def _cmd_compare(sub: argparse._SubParsersAction) -> None:
    from kdlandmark.evaluate.compare import add_compare_arguments, compare_main

    p = sub.add_parser("compare", help="several evaluations side by side, with significance tests")
    add_compare_arguments(p)
    p.set_defaults(func=compare_main)


def _cmd_bench(sub: argparse._SubParsersAction) -> None:
    from kdlandmark.infer.bench import add_bench_infer_arguments, bench_infer_main

    p = sub.add_parser("bench", help="print throughput and latency figures of this machine")
    targets = p.add_subparsers(dest="target", required=True, metavar="TARGET")

    d = targets.add_parser("data", help="synthesis, prepare and augmentation rates")
    d.add_argument("--count", type=int, default=300, help="faces to synthesise and prepare")
    d.add_argument("--size", type=int, default=256, help="image / stored crop side")
    d.add_argument("--input-size", type=int, default=224, help="model input side for augmentation")
    d.add_argument("--batch", type=int, default=64)
    d.add_argument("--device", default=None, help="augmentation device (default: cuda if available)")
    d.add_argument("--workers", type=int, default=None, help="prepare processes (default: all cores)")

    def run_data(a: argparse.Namespace) -> int:
        from kdlandmark.bench import bench_data

        bench_data(count=a.count, size=a.size, input_size=a.input_size, batch=a.batch, device=a.device,
                   workers=a.workers)
        return 0

    d.set_defaults(func=run_data)

    t = targets.add_parser("train", help="model-only ceiling vs the real data path (teacher, KD student)")
    t.add_argument("--config", default="paper-300w", help="experiment preset or YAML")
    t.add_argument("--data", type=Path, default=None, help="prepared set (default: synthetic faces)")
    t.add_argument("--count", type=int, default=1000, help="synthetic faces when --data is not given")
    t.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    t.add_argument("--roles", nargs="+", default=["tough", "kd"], choices=["tough", "tolerant", "kd", "l2"])
    t.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")

    def run_train(a: argparse.Namespace) -> int:
        from kdlandmark.bench import bench_train

        bench_train(a.config, tuple(a.overrides), data=a.data, count=a.count, steps=a.steps,
                    roles=tuple(a.roles))
        return 0

    t.set_defaults(func=run_train)

    i = targets.add_parser("infer", help="CPU latency and throughput: PyTorch eager/compiled, ONNX Runtime")
    add_bench_infer_arguments(i)
    i.set_defaults(func=bench_infer_main)


def _cmd_predict(sub: argparse._SubParsersAction) -> None:
    from kdlandmark.infer.predict import add_predict_arguments, predict_main

    p = sub.add_parser("predict", help="landmarks on images, folders or videos")
    add_predict_arguments(p)
    p.set_defaults(func=predict_main)


def _cmd_export(sub: argparse._SubParsersAction) -> None:
    from kdlandmark.infer.export import add_export_arguments, export_main

    p = sub.add_parser("export", help="export a checkpoint to ONNX (with JSON metadata)")
    add_export_arguments(p)
    p.set_defaults(func=export_main)


_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _cmd_synth,
    _cmd_prepare,
    _cmd_asm,
    _cmd_train,
    _cmd_pipeline,
    _cmd_demo,
    _cmd_evaluate,
    _cmd_compare,
    _cmd_predict,
    _cmd_export,
    _cmd_bench,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kdlandmark",
        description="Facial landmark detectors trained by knowledge distillation (KD-Loss).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in _COMMANDS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from kdlandmark.config import ConfigError
    from kdlandmark.data.samples import DatasetError

    try:
        return int(args.func(args) or 0)
    except (DatasetError, ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
