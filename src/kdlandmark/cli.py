"""Command line: thin subcommands that parse arguments and call the modules.

Every command's arguments are declared here, and building the parser imports nothing heavy (no torch,
no NumPy, no OpenCV), so ``kdlandmark --help`` and ``kdlandmark COMMAND --help`` answer at once; a
handler imports what it needs when its command runs.

Errors: bad input of any kind (a missing or malformed file, a bad config or override, an unreadable
image, a bad option) ends as one ``error: ...`` line on stderr naming the file and the problem, with
exit status 2 and no traceback.  Argparse reports bad options the same way (after its usage line).
Set ``KDLANDMARK_TRACEBACK=1`` to get the traceback of such an error (debugging).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from kdlandmark.errors import UserError

FORMATS = ("300w", "wflw", "cofw")
#: Dataset readers and evaluation protocols (``kdlandmark.evaluate.protocols.SUBSETS``; a test checks).
DATASETS = (*FORMATS, "folder")
#: NME normalisations (``kdlandmark.evaluate.protocols.NORMALISATIONS``; a test checks).
NORMALISATIONS = ("inter-ocular", "inter-pupil", "box")
ROLES = ("tough", "tolerant", "kd", "l2")

Registrar = Callable[[argparse._SubParsersAction], None]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _upright_angle(text: str) -> float:
    value = float(text)
    if not 0 <= value < 180:
        raise argparse.ArgumentTypeError(f"must be an angle in [0, 180) degrees, got {value}")
    return value


#: ``Landmarker``'s ``DEFAULT_UPRIGHT_DEG``, written here so that building the parser imports no OpenCV
#: (tests/test_cli.py checks that the two agree).
UPRIGHT_DEG = 10.0


def _add_upright(p: argparse.ArgumentParser) -> None:
    """``--upright DEG`` / ``--no-upright`` (dest ``upright``; default: the Landmarker's)."""
    p.add_argument("--upright", type=_upright_angle, default=UPRIGHT_DEG, metavar="DEG",
                   help="a face whose eye line is tilted by more than DEG degrees runs again from a crop "
                        f"turned upright (default: {UPRIGHT_DEG:g}; docs/INFERENCE.md)")
    p.add_argument("--no-upright", dest="upright", action="store_const", const=None,
                   help="never run a tilted face again (one pass per face, or two with flip averaging)")


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


_JOBS_HELP = "training stages side by side, each in its own process (default: the config's jobs)"


# ------------------------------------------------------------------------------------------------ data
def _cmd_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write a synthetic face dataset in a native benchmark format")
    p.add_argument("--format", choices=FORMATS, default="300w", help="native format to write")
    p.add_argument("--count", type=_positive_int, default=None,
                   help="number of faces, train + test (default 1000); with --video: clips (default 10)")
    p.add_argument("--out", type=Path, required=True, help="dataset root to create")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=_positive_int, default=256, help="image side in pixels")
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--workers", type=_positive_int, default=None, help="processes (default: all cores)")
    p.add_argument("--contact-sheet", type=Path, default=None, help="also write a PNG of the first faces")
    p.add_argument("--pool", type=Path, default=None,
                   help="folder of real faces (images + 68-point .pts) lending their appearance (300w only)")
    p.add_argument("--pool-fraction", type=float, default=1.0,
                   help="with --pool: share of pool faces warped onto new shapes and poses")
    p.add_argument("--hybrid-fraction", type=float, default=0.0,
                   help="with --pool: share of rendered heads with a pool face's skin and features")
    v = p.add_argument_group("video clips (--video: --count clips of one moving face, each an .mp4 with "
                             "a JSON of per-frame landmarks in every layout; --format, --test-fraction "
                             "and --pool do not apply)")
    v.add_argument("--video", action="store_true", help="write video clips instead of a dataset")
    v.add_argument("--frames", type=_positive_int, default=100, help="frames per clip")
    v.add_argument("--fps", type=_positive_float, default=25.0, help="frame rate written into the clips")
    v.add_argument("--key-every", type=_positive_float, default=40.0,
                   help="mean distance of the key poses in frames (smaller: faster motion)")
    v.add_argument("--motion", type=float, default=1.0,
                   help="how far the key poses move from the first one (0 still .. 1)")
    v.add_argument("--cuts", action="store_true", help="a scene cut (another face) mid-clip")
    v.add_argument("--exits", action="store_true", help="the face slides out of the picture near the end")
    v.add_argument("--from-photos", type=Path, default=None, metavar="DIR",
                   help="one clip per labelled photo of DIR (images with .pts files): the real face moved in "
                        "the image plane (size, position, roll), fresh sensor noise per frame; --count: the "
                        "first N photos (default all); --cuts and --exits do not apply")

    def run(a: argparse.Namespace) -> int:
        from kdlandmark.data import synth

        if a.video and a.from_photos is not None:
            from kdlandmark.data.synth.photo_video import photo_videos
            from kdlandmark.data.synth.video import format_video_summary

            if a.cuts or a.exits:
                raise UserError("--cuts and --exits are for rendered clips, not --from-photos")
            summary = photo_videos(a.from_photos, a.out, count=a.count, seed=a.seed, frames=a.frames,
                                   size=a.size, fps=a.fps, key_every=a.key_every, motion=a.motion)
            print(format_video_summary(summary))
            return 0
        if a.from_photos is not None:
            raise UserError("--from-photos makes video clips: add --video")
        if a.video:
            from kdlandmark.data.synth.video import format_video_summary, synthesize_videos

            summary = synthesize_videos(a.count or 10, a.out, seed=a.seed, frames=a.frames, size=a.size,
                                        fps=a.fps, key_every=a.key_every, motion=a.motion, cuts=a.cuts,
                                        exits=a.exits, workers=a.workers)
            print(format_video_summary(summary))
            return 0
        summary = synth.synthesize(a.format, a.count or 1000, a.out, seed=a.seed, size=a.size,
                                   test_fraction=a.test_fraction, workers=a.workers, pool=a.pool,
                                   pool_fraction=a.pool_fraction, hybrid_fraction=a.hybrid_fraction)
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
    p.add_argument("--size", type=_positive_int, default=256,
                   help="working crop side (larger than the model input)")
    p.add_argument("--splits", nargs="*", default=None, help="splits to prepare (default: all present)")
    p.add_argument("--skip-bad", action="store_true", help="skip malformed samples and report them")
    p.add_argument("--workers", type=_positive_int, default=None, help="processes (default: all cores)")

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


# ------------------------------------------------------------------------------------------------ training
def _cmd_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train one role (tough, tolerant, kd, l2) from a config")
    p.add_argument("--config", required=True, help="experiment preset/YAML, or a run's config.yaml")
    p.add_argument("--role", choices=ROLES, default=None)
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


def _cmd_pipeline(sub: argparse._SubParsersAction) -> None:
    from kdlandmark.pipeline import STAGES  # torch-free (a test checks)

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
    p.add_argument("--count", type=_positive_int, default=None,
                   help="synthetic faces, train + test (default: the preset's synth.count; demo: 1500)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", default="demo",
                   help="preset or YAML that makes its own data (default: the CPU demo preset)")
    p.add_argument("--jobs", type=_positive_int, default=None, help=_JOBS_HELP)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")

    def run(a: argparse.Namespace) -> int:
        from kdlandmark.pipeline import run_demo

        run_demo(a.out, count=a.count, seed=a.seed, overrides=a.overrides, config=a.config, jobs=a.jobs)
        return 0

    p.set_defaults(func=run)


# ------------------------------------------------------------------------------------------------ evaluation
def _cmd_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score a checkpoint by a benchmark's protocol (NME, FR, AUC)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", type=Path, help="checkpoint folder (e.g. runs/x/kd/best) or its model.json; "
                     "with --photos also an exported .onnx (default there: the shipped model)")
    src.add_argument("--rescore", type=Path, metavar="EVAL_DIR",
                     help="score an earlier evaluation's predictions again (no model, no images)")
    p.add_argument("--photos", type=Path, default=None, metavar="ROOT",
                   help="whole photographs end to end instead of a benchmark: ROOT holds photos/ and "
                        "photos.json (e.g. ../shared/realfaces): faces found, false positives, NME of the "
                        "found faces against the same faces from their true boxes")
    p.add_argument("--detector", default=None,
                   help="with --photos: the face detector (as predict's; default auto); with --video: "
                        "truth-jitter (default: the true landmark box with 3 %% edge jitter per frame, a "
                        "simulated detector) or a detector name (auto, mtcnn, haar)")
    p.add_argument("--refine", type=_non_negative_int, default=0, help="with --photos: refine passes")
    _add_upright(p)
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="flip averaging: each face also runs mirrored and the two answers are averaged "
                        "(twice the model's work; default: off, except --photos with the shipped model, "
                        "which uses predict's default)")
    p.add_argument("--dataset", choices=DATASETS, default=None,
                   help="benchmark protocol (default: the prepared set's dataset)")
    p.add_argument("--root", type=Path, default=None,
                   help="dataset root (native files; test splits are prepared first) or a prepared set")
    p.add_argument("--split", nargs="+", default=None, dest="splits",
                   help="prepared splits to evaluate (default: every test split of the protocol)")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: <checkpoint's run>/eval-<dataset>; "
                        "with --rescore: print only)")
    p.add_argument("--normalisation", choices=NORMALISATIONS, default=None,
                   help="NME normaliser (default: the benchmark's, inter-ocular)")
    p.add_argument("--threshold", type=_positive_float, default=0.10,
                   help="failure threshold and AUC limit as a fraction (0.10; 0.08 for some WFLW tables)")
    p.add_argument("--bootstrap", type=_non_negative_int, default=1000,
                   help="bootstrap resamples of the NME interval")
    p.add_argument("--batch", type=_positive_int, default=64)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--cache", type=Path, default=None,
                   help="keep the prepared test crops of a raw --root here (default: temporary)")
    p.add_argument("--latency-runs", type=_non_negative_int, default=20,
                   help="timed CPU forwards at batch 1 (0: skip)")
    p.add_argument("--name", default=None, help="model label in tables")
    v = p.add_argument_group("video (--video CLIPS: clips of kdlandmark synth --video; per-frame NME and "
                             "jitter frame by frame, smoothed, tracked, tracked and smoothed)")
    v.add_argument("--video", nargs="+", type=Path, default=None, metavar="CLIP_OR_DIR",
                   help="score the model on these clips (.mp4 with its .json ground truth, or folders)")
    v.add_argument("--backend", choices=["torch", "onnx"], default="torch", help="inference backend")
    v.add_argument("--min-cutoff", type=_positive_float, default=None, help="One Euro min_cutoff (Hz)")
    v.add_argument("--beta", type=float, default=None, help="One Euro beta (per face size per second)")
    v.add_argument("--crop-from", choices=["raw", "smoothed"], default=None,
                   help="tracking crops around the raw or the smoothed landmarks (default: tuned)")
    v.add_argument("--plot", type=Path, default=None,
                   help="also draw per-frame NME and jitter of the first clip into this PNG")
    v.add_argument("--no-timing", action="store_true", help="skip the per-frame cost measurement")
    p.set_defaults(func=_run_evaluate)


def _run_video_evaluate(a: argparse.Namespace) -> int:
    from kdlandmark.infer.landmarker import Landmarker
    from kdlandmark.infer.track import DEFAULT_BETA, DEFAULT_CROP_FROM, DEFAULT_MIN_CUTOFF
    from kdlandmark.infer.video import TRUTH_JITTER, VIDEO_METRICS, evaluate_videos, format_video_table

    if a.model is None or a.photos is not None:
        raise UserError("--video needs --model (and neither --rescore nor --photos)")
    if a.flip:
        raise UserError("--flip is for photos and benchmarks; --video times tracking against one model pass")
    name = a.detector or TRUTH_JITTER
    detector = None if name == TRUTH_JITTER else name
    lmk = Landmarker.from_checkpoint(a.model, backend=a.backend, detector=detector, threads=1, batch_size=1)
    out = Path(a.out) if a.out is not None else Path(a.model).resolve().parent.parent / "eval-video"
    result = evaluate_videos(lmk, a.video, out_dir=out, detector=name,
                             min_cutoff=DEFAULT_MIN_CUTOFF if a.min_cutoff is None else a.min_cutoff,
                             beta=DEFAULT_BETA if a.beta is None else a.beta,
                             crop_from=a.crop_from or DEFAULT_CROP_FROM,
                             timing=not a.no_timing)
    print(format_video_table(result))
    print(f"metrics: {out / VIDEO_METRICS}")
    if a.plot is not None:
        from kdlandmark.evaluate.plots import save_png, video_figure

        clip = result["clips"][0]
        series = {m: clip["modes"][m]["series"] for m in ("frame", "track", "track+smooth")}
        save_png(video_figure(series, title=f"{Path(clip['clip']).name}: {result['layout']} model"), a.plot)
        print(f"plot: {a.plot}")
    return 0


def _run_evaluate(a: argparse.Namespace) -> int:
    from kdlandmark.evaluate import evaluator as ev

    if a.video is not None:
        return _run_video_evaluate(a)
    if a.photos is not None:
        return _run_evaluate_photos(a)
    if a.model is None and a.rescore is None:
        raise UserError("one of --model, --rescore, --photos or --video is required")
    if a.rescore is not None:
        out = Path(a.out) / ev.METRICS_JSON if a.out is not None else None
        result = ev.rescore(a.rescore, a.normalisation, a.threshold, bootstrap=a.bootstrap, out=out)
        print(ev.format_metrics_table(result))
        if out is not None:
            print(f"metrics: {out}")
        return 0
    if a.root is None:
        raise UserError("--root (a dataset root or a prepared set) is required with --model")
    out_dir = Path(a.out) if a.out is not None else ev.default_eval_dir(a.model, a.dataset)
    result = ev.evaluate_checkpoint(a.model, a.root, dataset=a.dataset, out_dir=out_dir,
                                    normalisation=a.normalisation, threshold=a.threshold, splits=a.splits,
                                    bootstrap=a.bootstrap, name=a.name, batch=a.batch, device=a.device,
                                    latency_runs=a.latency_runs, cache_dir=a.cache, flip=bool(a.flip))
    print(ev.format_metrics_table(result))
    print(f"metrics: {out_dir / ev.METRICS_JSON}\npredictions: {out_dir / ev.PREDICTIONS_NPZ}")
    return 0


def _run_evaluate_photos(a: argparse.Namespace) -> int:
    from kdlandmark.atomic import write_json_atomic
    from kdlandmark.evaluate.photos import format_photo_benchmark, photo_benchmark
    from kdlandmark.infer.predict import build_landmarker

    if a.rescore is not None:
        raise UserError("--photos takes a model (or none: the shipped one), not --rescore")
    detector = a.detector or "auto"
    lmk = build_landmarker(a.model, device=a.device or "cpu", detector=detector, refine=a.refine,
                           batch_size=a.batch, flip=a.flip, upright=a.upright)
    result = photo_benchmark(lmk, a.photos)
    print(format_photo_benchmark(result, model=lmk.source))
    if a.out is not None:
        write_json_atomic(Path(a.out) / "photos.json", {"model": lmk.source, "detector": detector,
                                                          "refine": a.refine, "flip": lmk.flip,
                                                          "upright": lmk.upright, **result})
        print(f"figures: {Path(a.out) / 'photos.json'}")
    return 0


def _cmd_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="several evaluations side by side, with significance tests")
    p.add_argument("paths", nargs="+", type=Path, metavar="RUN_OR_METRICS",
                   help="evaluation folders, metrics.json files, or folders holding several evaluations")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: 'compare' beside the inputs, in their common parent folder)")
    p.add_argument("--labels", nargs="+", default=None, help="model labels, one per evaluation found")
    p.add_argument("--bootstrap", type=_non_negative_int, default=1000,
                   help="bootstrap resamples (intervals and tests)")
    p.set_defaults(func=_run_compare)


def _run_compare(a: argparse.Namespace) -> int:
    from kdlandmark.evaluate.compare import (
        compare,
        default_compare_dir,
        format_results_markdown,
        format_significance_markdown,
    )

    out = a.out if a.out is not None else default_compare_dir(a.paths)
    result = compare(a.paths, out, bootstrap=a.bootstrap, labels=a.labels)
    print(format_results_markdown({m["label"]: m["subsets"] for m in result["models"]}, result["threshold"]))
    if result["significance"]:
        print()
        print(format_significance_markdown(result["significance"]))
    print()
    for kind, path in result["files"].items():
        print(f"{kind}: {path}")
    return 0


# ------------------------------------------------------------------------------------------------ inference
def _cmd_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="landmarks on images, folders or videos")
    p.add_argument("inputs", nargs="+", metavar="IMAGE|DIR|VIDEO", help="images, folders or videos")
    p.add_argument("--model", type=Path, default=None,
                   help="checkpoint folder or exported .onnx (default: the shipped 68-point model)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--backend", choices=["torch", "onnx"], default=None,
                   help="default: onnx for a .onnx model and the shipped model, torch otherwise")
    p.add_argument("--device", default="cpu", help="PyTorch device (cpu, cuda)")
    p.add_argument("--detector", default="auto",
                   help="auto/mtcnn: MTCNN (Haar cascade without its weights); haar: OpenCV Haar cascade; "
                        "full: each image is one pre-cropped face")
    p.add_argument("--refine", type=_non_negative_int, default=0,
                   help="extra passes, each cropping around the landmarks the last one found (default: 0)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="flip averaging: each face also runs mirrored and the two answers are averaged "
                        "(twice the model's work; lower error on real faces, docs/MODEL_CARD.md). Default: "
                        "on for the shipped model, off with --model; video tracking (--smooth) runs one "
                        "pass per frame unless --flip is given")
    _add_upright(p)
    p.add_argument("--boxes", type=Path, default=None,
                   help="JSON {image name: [[x0, y0, x1, y1], ...]} of face boxes (skips detection)")
    p.add_argument("--min-score", type=float, default=None, help="drop detections scoring below this")
    p.add_argument("--max-faces", type=_positive_int, default=None, help="at most this many faces per image")
    p.add_argument("--batch", type=_positive_int, default=16, help="images (or video frames) per batch")
    p.add_argument("--show-box", action="store_true", help="draw face boxes and scores too")
    p.add_argument("--json-only", action="store_true", help="write JSON (and .pts) only, no pictures")
    p.add_argument("--pts", dest="pts", action="store_true", default=None,
                   help="write 1-based .pts files (default: on for the 300w layout)")
    p.add_argument("--no-pts", dest="pts", action="store_false", help="do not write .pts files")
    p.add_argument("--confidence", action="store_true",
                   help="require a model with visibility and error heads (their outputs are written "
                        "whenever a model has them; hidden points are drawn in red)")
    v = p.add_argument_group("video (--smooth: track faces from frame to frame and smooth the landmarks)")
    v.add_argument("--smooth", action="store_true",
                   help="videos: crop each frame around the landmarks of the frame before (the detector "
                        "runs only when a face is lost, on --redetect-every, or at a scene cut) and smooth "
                        "the landmarks with a One Euro filter")
    v.add_argument("--min-cutoff", type=_positive_float, default=None,
                   help="One Euro cutoff of a still face in Hz: lower smooths more (default: tuned, "
                        "docs/INFERENCE.md)")
    v.add_argument("--beta", type=float, default=None,
                   help="One Euro speed coefficient per face size per second: higher lags less (default: "
                        "tuned, docs/INFERENCE.md)")
    v.add_argument("--redetect-every", type=_non_negative_int, default=0,
                   help="also run the detector every N frames to pick up new faces (0: only when needed)")

    def run(a: argparse.Namespace) -> int:
        from kdlandmark.infer.predict import predict_main

        return predict_main(a)

    p.set_defaults(func=run)


def _cmd_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a checkpoint to ONNX (with JSON metadata)")
    p.add_argument("--model", type=Path, required=True,
                   help="checkpoint folder (model.json + model.safetensors)")
    p.add_argument("--format", choices=["onnx"], default="onnx", help="export format")
    p.add_argument("--out", type=Path, default=None, help="output .onnx (default: CKPT/model.onnx)")
    p.add_argument("--fp16", action="store_true", help="half-precision weights and input (GPU runtimes)")
    p.add_argument("--dynamic-batch", action="store_true", help="any batch size (default: --batch)")
    p.add_argument("--batch", type=_positive_int, default=1, help="fixed batch size without --dynamic-batch")
    p.add_argument("--int8", action="store_true",
                   help="also write a dynamically quantised int8 model and measure its NME change")
    p.add_argument("--int8-mode", choices=["dynamic", "static"], default="dynamic",
                   help="dynamic: quantize_dynamic (no data); static: QDQ calibrated on synthetic faces")
    p.add_argument("--int8-eval", type=_non_negative_int, default=200, metavar="N",
                   help="synthetic test faces for the int8 NME comparison (0: skip)")
    p.add_argument("--opset", type=_positive_int, default=None, help="ONNX opset (default: 17)")
    p.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime parity check")
    p.set_defaults(func=_run_export)


def _run_export(a: argparse.Namespace) -> int:
    from kdlandmark.infer.export import export_onnx

    opset = {"opset": a.opset} if a.opset is not None else {}
    res = export_onnx(a.model, a.out, fp16=a.fp16, dynamic_batch=a.dynamic_batch, int8=a.int8,
                      int8_mode=a.int8_mode, batch=a.batch, check=not a.no_check, **opset)
    print(f"onnx     : {res['onnx']} ({Path(res['onnx']).stat().st_size / 1e6:.2f} MB)")
    print(f"metadata : {res['json']}")
    if "parity" in res:
        diffs = ", ".join(f"{k} {v:.2e}" for k, v in res["parity"].items())
        print(f"parity   : max |onnxruntime - torch| {diffs}")
    if "int8" in res:
        print(f"int8     : {res['int8']} ({Path(res['int8']).stat().st_size / 1e6:.2f} MB)")
        if a.int8_eval > 0:
            from kdlandmark.evaluate.synthetic import compare_nme
            from kdlandmark.infer.landmarker import Landmarker

            reference = Path(res["onnx"]) if not a.fp16 else Path(a.model)
            models = [Landmarker.from_checkpoint(p, backend="onnx" if p.suffix == ".onnx" else "torch",
                                                 detector=None, batch_size=1)
                      for p in (reference, Path(res["int8"]))]
            cmp = compare_nme(*models, count=a.int8_eval)
            print(f"int8 NME : {cmp['nme_other'] * 100:.3f} % vs {cmp['nme_reference'] * 100:.3f} % "
                  f"({reference.name}) on {cmp['faces']} synthetic faces: change "
                  f"{cmp['nme_change'] * 100:+.3f} points; mean landmark shift {cmp['mean_shift_px']:.3f} px")
    return 0


# ------------------------------------------------------------------------------------------------ benchmarks
def _cmd_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="print throughput and latency figures of this machine")
    targets = p.add_subparsers(dest="target", required=True, metavar="TARGET")

    d = targets.add_parser("data", help="synthesis, prepare and augmentation rates")
    d.add_argument("--count", type=_positive_int, default=300, help="faces to synthesise and prepare")
    d.add_argument("--size", type=_positive_int, default=256, help="image / stored crop side")
    d.add_argument("--input-size", type=_positive_int, default=224, help="model input side for augmentation")
    d.add_argument("--batch", type=_positive_int, default=64)
    d.add_argument("--device", default=None, help="augmentation device (default: cuda if available)")
    d.add_argument("--workers", type=_positive_int, default=None,
                   help="prepare processes (default: all cores)")

    def run_data(a: argparse.Namespace) -> int:
        from kdlandmark.bench import bench_data

        bench_data(count=a.count, size=a.size, input_size=a.input_size, batch=a.batch, device=a.device,
                   workers=a.workers)
        return 0

    d.set_defaults(func=run_data)

    t = targets.add_parser("train", help="model-only ceiling vs the real data path (teacher, KD student)")
    t.add_argument("--config", default="paper-300w", help="experiment preset or YAML")
    t.add_argument("--data", type=Path, default=None, help="prepared set (default: synthetic faces)")
    t.add_argument("--count", type=_positive_int, default=1000,
                   help="synthetic faces when --data is not given")
    t.add_argument("--steps", type=_positive_int, default=30, help="timed steps per measurement")
    t.add_argument("--roles", nargs="+", default=["tough", "kd"], choices=ROLES)
    t.add_argument("--workers", type=_positive_int, default=None,
                   help="processes making the synthetic faces (default: all cores)")
    t.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")

    def run_train(a: argparse.Namespace) -> int:
        from kdlandmark.bench import bench_train

        bench_train(a.config, tuple(a.overrides), data=a.data, count=a.count, steps=a.steps,
                    roles=tuple(a.roles), workers=a.workers)
        return 0

    t.set_defaults(func=run_train)

    i = targets.add_parser("infer", help="CPU latency and throughput: PyTorch eager/compiled, ONNX Runtime")
    i.add_argument("--model", type=Path, default=None, help="checkpoint folder to time")
    i.add_argument("--arch", action="append", default=[], metavar="BACKBONE:SIZE",
                   help="also time a random-weight network, e.g. mobilenetv2_100:224 (repeatable)")
    i.add_argument("--layout", choices=FORMATS, default="300w",
                   help="layout of --arch networks (default 300w)")
    i.add_argument("--batch", type=_positive_int, default=32, help="faces per batch for throughput")
    i.add_argument("--runs", type=_positive_int, default=200, help="timed single-face calls per figure")
    i.add_argument("--max-seconds", type=_positive_float, default=4.0, help="time limit per figure")
    i.add_argument("--threads", type=_positive_int, default=None,
                   help="threads of torch and onnxruntime (default: their choice, all cores)")
    i.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    i.add_argument("--int8", action="store_true", help="also time the dynamic int8 ONNX model")
    i.add_argument("--dlib-python", default=None, metavar="PYTHON",
                   help="a Python with dlib + face_recognition_models: time dlib's 68-point predictor")
    i.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    i.set_defaults(func=_run_bench_infer)


def _run_bench_infer(a: argparse.Namespace) -> int:
    import json

    from kdlandmark.bench import bench_infer

    archs = a.arch or ([] if a.model is not None else
                       ["mobilenetv2_100:224", "mobilenetv2_100:112", "mobilenetv2_050:112"])
    res = bench_infer(a.model, archs, layout=a.layout, batch=a.batch, runs=a.runs,
                      max_seconds=a.max_seconds, compile=not a.no_compile, int8=a.int8,
                      dlib_python=a.dlib_python, threads=a.threads)
    if a.json is not None:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(res, indent=1) + "\n")
    sys.stdout.flush()
    return 0


# ------------------------------------------------------------------------------------------------ main
_COMMANDS: list[Registrar] = [
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
    """The ``kdlandmark`` parser with every subcommand (imports neither torch nor NumPy)."""
    parser = argparse.ArgumentParser(
        prog="kdlandmark",
        description="Facial landmark detectors trained by knowledge distillation (KD-Loss).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in _COMMANDS:
        register(sub)
    return parser


def _one_line(exc: BaseException) -> str:
    text = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
    return text or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; bad input ends as ``error: ...`` on stderr and exit status 2 (see the module)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UserError, ValueError, OSError) as exc:
        # user errors: DatasetError, CheckpointError, ConfigError, DetectorUnavailable (all UserError),
        # invalid values met deeper down (ValueError) and missing or unwritable paths (OSError)
        if os.environ.get("KDLANDMARK_TRACEBACK"):
            raise
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
