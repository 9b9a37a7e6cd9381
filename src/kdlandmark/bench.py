"""Benchmarks that print figures of this machine (never timed unit tests): ``kdlandmark bench TARGET``.

* ``data``: synthetic-face generation rate on one core, prepare rate with all cores, augmentation
  throughput (:func:`bench_data`);
* ``train``: the model-only ceiling of the training step against the real step with its data path, for
  a teacher and the KD student, and where a step's time goes (:func:`bench_train`); it times the
  trainer's own public step, :meth:`kdlandmark.train.trainer.Trainer.train_step`;
* ``infer``: single-face latency (median and 95th percentile, ms) and batch throughput (faces/s) of
  PyTorch eager, ``torch.compile`` (reported as unavailable, with the reason, when it fails) and ONNX
  Runtime (and its dynamic int8 model), model-only (the runner on a ready float32 batch) and end to end
  (box -> ``crop_affine`` -> one ``cv2.warpAffine`` into a pre-allocated buffer -> RGB / 255 -> model
  -> image pixels: :meth:`Landmarker.landmarks_in_boxes`) on a synthetic 256 px face image, and the
  ratio of the model-only time to the FLOP-bound time ``FLOPs / peak``, with the CPU's peak float32
  rate *measured at start-up* from a large ``torch.mm`` (:func:`bench_infer`).

Every figure comes from the one timing helper, :func:`kdlandmark.timing.time_calls`.  Figures depend
on the machine and its load.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kdlandmark.timing import Timing, time_calls

__all__ = ["bench_data", "bench_train", "bench_infer", "peak_flops"]

Printer = Callable[[str], None]


def _sync_for(device: Any) -> Callable[[], None] | None:
    """``torch.cuda.synchronize`` on a CUDA device (work there is asynchronous), else None."""
    import torch

    dev = torch.device(device)
    return (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else None


# ------------------------------------------------------------------------------------------------ data
def _synth_rate(count: int, size: int, repeat: int = 3) -> float:
    """Faces per second on one core: render (with its JPEG round trip) plus one JPEG encode per face.

    OpenCV is limited to one thread and the clock is this process's CPU time, so on a shared machine the
    figure measures the generator rather than its neighbours; the same ``count`` faces are timed
    ``repeat`` times and the fastest pass counts (as ``timeit`` does).
    """
    import cv2

    from kdlandmark.data.synth.render import render

    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        render(np.random.default_rng([123, 10**6]), size)  # warm-up
        best = float("inf")
        for _ in range(max(1, repeat)):
            index = iter(range(count))

            def one_face(index: Any = index) -> None:
                face = render(np.random.default_rng([123, next(index)]), size)
                cv2.imencode(".jpg", face.image, [cv2.IMWRITE_JPEG_QUALITY, 95])

            best = min(best, time_calls(one_face, runs=count, clock=time.process_time).total_s)
        return count / max(best, 1e-9)
    finally:
        cv2.setNumThreads(previous)


def _augment_timing(batch: int, stored: int, out: int, device: str, iters: int = 20) -> Timing:
    """Training-mode :class:`BatchAugmenter` batches (default config, 300W layout) on random data."""
    import torch

    from kdlandmark.data.augment import BatchAugmenter
    from kdlandmark.data.crop import DEFAULT_MARGIN
    from kdlandmark.data.prepare import DEFAULT_CONTEXT_MARGIN
    from kdlandmark.data.store import view_scale
    from kdlandmark.layouts import get_layout

    dev = torch.device(device)
    layout = get_layout("300w")
    gen = torch.Generator(device=dev)
    gen.manual_seed(0)
    images = torch.randint(0, 256, (batch, stored, stored, 3), dtype=torch.uint8, generator=gen, device=dev)
    lms = torch.rand(batch, layout.num_points, 2, generator=gen, device=dev) * stored
    aug = BatchAugmenter(layout, stored, out, view_scale(DEFAULT_MARGIN, DEFAULT_CONTEXT_MARGIN))
    return time_calls(lambda: aug(images, [lms], train=True, generator=gen), runs=iters, warmup=2,
                      sync=_sync_for(dev))


def bench_data(*, count: int = 300, size: int = 256, input_size: int = 224, batch: int = 64,
               device: str | None = None, workers: int | None = None, printer: Printer = print
               ) -> dict[str, float]:
    """Synthetic generation rate (one core), prepare rate (all cores) and augmentation throughput."""
    import torch

    from kdlandmark.data import synth
    from kdlandmark.data.prepare import prepare_dataset

    figures: dict[str, float] = {}
    rate = _synth_rate(min(count, 300), size)
    figures["synth_faces_per_s_one_core"] = rate
    printer(f"synthesis   : {rate:8.1f} faces/s at {size}x{size} on one core (render + JPEG encode)")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "synth"
        synth.synthesize("300w", count, root, seed=0, size=size, workers=workers)
        dt = time_calls(lambda: prepare_dataset("300w", root, Path(tmp) / "prepared", size=size,
                                                workers=workers)).total_s
    figures["prepare_faces_per_s"] = count / dt
    figures["prepare_seconds_per_3000"] = 3000 * dt / count
    printer(f"prepare     : {count / dt:8.1f} faces/s with {workers or os.cpu_count()} processes "
            f"({count} faces in {dt:.1f} s; 3,000 faces would take {3000 * dt / count:.0f} s)")

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    t = _augment_timing(batch, size, input_size, dev)
    figures.update({"augment_batches_per_s": t.rate(), "augment_images_per_s": t.rate(batch),
                    "augment_ms_per_batch": 1000.0 * t.total_s / t.calls})
    printer(f"augmentation: {t.rate():8.2f} batches/s = {t.rate(batch):.0f} images/s "
            f"(batch {batch}, {size}->{input_size}, {dev})")
    return figures


# ------------------------------------------------------------------------------------------------ training
class _PhaseClock:
    """``mark(phase)`` for :meth:`Trainer.train_step`: waits for the device, adds the time since the last
    mark to ``phase``.  The waits serialise the phases, so their sum exceeds an overlapped step."""

    def __init__(self, sync: Callable[[], None] | None) -> None:
        self.sync = sync
        self.ms: dict[str, float] = {}
        self.t = time.perf_counter()

    def start(self) -> None:
        if self.sync is not None:
            self.sync()
        self.t = time.perf_counter()

    def __call__(self, phase: str) -> None:
        if self.sync is not None:
            self.sync()
        now = time.perf_counter()
        self.ms[phase] = self.ms.get(phase, 0.0) + 1000.0 * (now - self.t)
        self.t = now


def _step_figures(trainer: Any, steps: int, warmup: int) -> dict[str, float]:
    """Model-only ceiling, real step rate and the per-phase breakdown of ``trainer`` (images/s, ms)."""
    import torch

    b = trainer.cfg.optim.batch_size
    sync = _sync_for(trainer.device)
    gen = torch.Generator().manual_seed(0)
    idx_batches = [torch.randperm(trainer.n_train, generator=gen)[:b] for _ in range(steps)]
    trainer.train_model.train()
    x0, t0, teachers0 = trainer.batch(idx_batches[0])                   # teachers0: kd.teacher_cache
    ceiling = time_calls(lambda: trainer.optimise(x0, t0, teachers=teachers0), runs=steps, warmup=warmup,
                         sync=sync).rate(b)
    it = iter(range(10**9))
    real = time_calls(lambda: trainer.train_step(idx_batches[next(it) % steps]), runs=steps, warmup=warmup,
                      sync=sync).rate(b)
    clock = _PhaseClock(sync)
    parts = ("data_wait", "augmentation", "teacher_forwards", "student_step")
    measured = idx_batches[: min(steps, 10)]
    for idx in measured:
        clock.start()
        trainer.train_step(idx, mark=clock)
    breakdown = {f"{k}_ms": clock.ms.get(k, 0.0) / len(measured) for k in parts}
    return {"ceiling_img_s": ceiling, "pipeline_img_s": real, "ratio": real / ceiling, **breakdown}


def _bench_data_dir(exp: Any, tmp: Path, count: int, workers: int | None) -> Path:
    """``count`` synthetic faces of the experiment's dataset, prepared, with soft landmarks."""
    from kdlandmark.data import synth
    from kdlandmark.data.prepare import prepare_dataset
    from kdlandmark.shape.soften import soften_prepared

    synth.synthesize(exp.dataset, count, tmp / "synth", seed=0, size=exp.prepare.size, workers=workers)
    prepare_dataset(exp.dataset, tmp / "synth", tmp / "prepared", size=exp.prepare.size, workers=workers)
    soften_prepared(tmp / "prepared", exp.asm.variance, out=tmp / "asm", report=False)
    return tmp / "prepared"


def _random_teachers(exp: Any, data: Path, tmp: Path) -> Any:
    """Randomly initialised teachers of the configured architecture: their cost, not their quality."""
    from kdlandmark.config import TeachersConfig
    from kdlandmark.data.store import PreparedSet
    from kdlandmark.modelfile.checkpoint import save_model_checkpoint
    from kdlandmark.models import LandmarkRegressor

    layout = PreparedSet(data).layout
    tm = exp.teacher.model
    teacher = LandmarkRegressor(tm.backbone, layout.num_points, dropout=tm.dropout)
    dirs = {name: str(tmp / f"teacher-{name}") for name in ("tough", "tolerant")}
    for d in dirs.values():
        save_model_checkpoint(d, teacher, layout=layout, input_size=tm.input_size)
    return TeachersConfig(**dirs)


def bench_train(config: str | Path = "paper-300w", overrides: tuple[str, ...] = (), *,
                data: str | Path | None = None, count: int = 1000, steps: int = 30, warmup: int = 10,
                roles: tuple[str, ...] = ("tough", "kd"), workers: int | None = None,
                printer: Printer = print) -> dict[str, dict[str, float]]:
    """Model-only ceiling vs the real data path for the teacher step and the KD-student step.

    Uses the experiment ``config`` (preset or YAML) with the engine's own settings (bf16 and
    channels-last on CUDA, ``runtime.compile``).  ``data`` is a prepared set; by default ``count``
    synthetic faces are made and prepared in a temporary folder (``workers`` processes; default: all
    cores).  The KD step is the KD-Loss step (teachers run; not the L2 warm-up's), with randomly
    initialised teachers of the configured architecture: their cost, not their quality, matters here.
    """
    from kdlandmark.config import load_config, train_config
    from kdlandmark.pipeline import resolve_preset
    from kdlandmark.train.trainer import Trainer

    exp = load_config(resolve_preset(config), overrides)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        data = Path(data) if data is not None else _bench_data_dir(exp, tmp_path, count, workers)
        teachers = None
        for role in roles:
            if role == "kd" and teachers is None:
                teachers = _random_teachers(exp, data, tmp_path)
            cfg = train_config(exp, role, data=data, out=tmp_path / f"run-{role}", teachers=teachers)
            # the KD student's step is timed as in its KD-Loss epochs (not its L2 warm-up)
            cfg = dataclasses.replace(cfg, val_fraction=0.0, tensorboard=False,
                                      kd=dataclasses.replace(cfg.kd, l2_warmup_epochs=0))
            trainer = Trainer(cfg)
            label = "teacher" if role in ("tough", "tolerant") else f"{role}-student"
            results[label] = row = _step_figures(trainer, steps, warmup)
            printer(f"{label:12s} {cfg.model.backbone} @{cfg.model.input_size} batch {cfg.optim.batch_size} "
                    f"on {trainer.device}: ceiling {row['ceiling_img_s']:8.1f} img/s, pipeline "
                    f"{row['pipeline_img_s']:8.1f} img/s, ratio {row['ratio']:5.1%}")
            shares = ", ".join(f"{k[:-3]} {v:.1f} ms" for k, v in row.items() if k.endswith("_ms"))
            printer(f"             per step (serialised): {shares}")
            del trainer
    return results


# ------------------------------------------------------------------------------------------------ inference
def peak_flops(n: int = 2048, seconds: float = 1.0) -> dict:
    """Measured float32 matmul rate of this CPU: best of repeated ``torch.mm`` of two ``n x n`` matrices.

    ``2 n^3`` FLOPs per product; the best repetition over about ``seconds`` is taken as the peak.
    """
    import torch

    a, b, c = torch.rand(n, n), torch.rand(n, n), torch.empty(n, n)
    t = time_calls(lambda: torch.mm(a, b, out=c), runs=10**9, warmup=1, max_seconds=seconds, min_runs=3)
    return {"gflops": 2 * n ** 3 / (t.min_ms / 1000) / 1e9, "n": n, "reps": t.calls,
            "threads": torch.get_num_threads()}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _models(model: str | Path | None, archs: Sequence[str], layout: str) -> list[tuple[str, Any, Any]]:
    """``(label, torch model, ModelMeta)`` for a checkpoint and/or random-weight ``backbone:size`` specs."""
    from kdlandmark.data.crop import DEFAULT_MARGIN
    from kdlandmark.layouts import get_layout
    from kdlandmark.modelfile.checkpoint import load_checkpoint, model_meta
    from kdlandmark.models import LandmarkRegressor

    out = []
    if model is not None:
        m, meta = load_checkpoint(model, device="cpu")
        out.append((f"{Path(model).name}: {meta.backbone} @ {meta.input_size}", m, meta))
    lay = get_layout(layout)
    for spec in archs:
        name, _, size = spec.partition(":")
        s = int(size or 112)
        m = LandmarkRegressor(name, lay.num_points, dropout=0.0).eval()
        out.append((f"{name} @ {s} (random weights)", m,
                    model_meta(m, layout=lay, input_size=s, crop={"margin": DEFAULT_MARGIN})))
    return out


def _runners(label: str, model: Any, meta: Any, *, compile: bool, int8: bool, tmp: Path,
             threads: int | None = None) -> list[tuple[str, Callable[[np.ndarray], np.ndarray] | None, str]]:
    """``(name, runner or None, note)`` for each backend; a failed backend gets None and the reason."""
    from kdlandmark.infer.export import build_onnx, onnx_session, quantize_int8
    from kdlandmark.infer.landmarker import OnnxRunner, TorchRunner

    size = meta.input_size
    out: list[tuple[str, Callable[[np.ndarray], np.ndarray] | None, str]] = [
        ("torch eager", TorchRunner(model), "")]
    if compile:
        try:
            r = TorchRunner(model, compile=True)
            r(np.zeros((1, 3, size, size), np.float32))       # compile now, fail here if at all
            out.append(("torch compiled", r, ""))
        except Exception as exc:  # noqa: BLE001 -- any failure is reported, not hidden
            why = (str(exc).strip().splitlines() or [""])[0][:160]
            out.append(("torch compiled", None, f"unavailable: {type(exc).__name__}: {why}"))
    data, _ = build_onnx(model, meta, source=label)
    out.append(("onnxruntime", OnnxRunner(onnx_session(data, threads=threads)), ""))
    if int8:
        (tmp / "m.onnx").write_bytes(data)
        dst = quantize_int8(tmp / "m.onnx", tmp / "m.int8.onnx")
        out.append(("onnxruntime int8", OnnxRunner(onnx_session(dst, threads=threads)), ""))
    return out


def _dlib_latency(python: str, image: np.ndarray, box: Sequence[float], runs: int) -> dict:
    """Time dlib's 68-point shape predictor (face_recognition_models) in another interpreter."""
    import cv2

    code = r"""
import json, sys, time, statistics, importlib.util, os
import cv2, dlib
# the model file of face_recognition_models, found without importing the package (it imports
# pkg_resources, which setuptools >= 81 no longer has)
spec = importlib.util.find_spec("face_recognition_models")
if spec is None:
    sys.exit("face_recognition_models is not installed")
model = os.path.join(list(spec.submodule_search_locations)[0], "models",
                     "shape_predictor_68_face_landmarks.dat")
img = cv2.imread(sys.argv[1]); rgb = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
x0, y0, x1, y1 = (float(v) for v in sys.argv[2].split(","))
rect = dlib.rectangle(int(round(x0)), int(round(y0)), int(round(x1)), int(round(y1)))
sp = dlib.shape_predictor(model)
for _ in range(20): sp(rgb, rect)
t = []
for _ in range(int(sys.argv[3])):
    t0 = time.perf_counter(); sp(rgb, rect); t.append(1000 * (time.perf_counter() - t0))
t.sort()
det = dlib.get_frontal_face_detector()
t0 = time.perf_counter(); det(rgb, 0); d = 1000 * (time.perf_counter() - t0)
print(json.dumps({"median": statistics.median(t), "p95": t[int(0.95 * (len(t) - 1))], "hog_detect_ms": d,
                  "dlib": dlib.__version__}))
"""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "face.png"
        cv2.imwrite(str(path), image)
        res = subprocess.run([python, "-c", code, str(path), ",".join(f"{v:.2f}" for v in box), str(runs)],
                             capture_output=True, text=True, timeout=300)
    if res.returncode != 0:
        return {"error": (res.stderr.strip().splitlines() or ["failed"])[-1][:200]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def _machine(peak: dict, threads: int | None, printer: Printer) -> dict:
    import torch

    info = {"cpu": _cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "peak_gflops": peak["gflops"]}
    try:
        import onnxruntime as ort

        info["onnxruntime"] = ort.__version__
    except ImportError:  # pragma: no cover
        pass
    info["onnxruntime_threads"] = threads or "default (one per core)"
    info["load_average_start"] = os.getloadavg()[0]
    printer(f"CPU {info['cpu']}, {info['cores']} cores, torch {info['torch']} with {info['torch_threads']} "
            f"threads, onnxruntime {info.get('onnxruntime')} with {info['onnxruntime_threads']} threads; "
            f"1-minute load average before the run {info['load_average_start']:.2f}")
    printer(f"peak float32 rate measured at start-up: {peak['gflops']:.1f} GFLOP/s (best of {peak['reps']} "
            f"torch.mm {peak['n']}x{peak['n']}x{peak['n']}); 'xFLOP' = model-only time / (FLOPs / peak)")
    return info


def _backend_row(name: str, runner: Any, lmk: Any, img: np.ndarray, box: Any, *, batch: int, runs: int,
                 max_seconds: float, flop_ms: float) -> dict:
    """Model-only and end-to-end times of one backend, at batch 1 and at ``batch``, and of one face with
    flip averaging (``Landmarker(flip=True)``: the model on the crop and its mirror, one call)."""
    from kdlandmark.infer.landmarker import Landmarker

    size = lmk.input_size
    x1 = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
    xb = np.random.default_rng(1).random((batch, 3, size, size), dtype=np.float32)
    boxes_b = [box] * batch
    m1 = time_calls(lambda: runner(x1), runs=runs, warmup=10, max_seconds=max_seconds)
    e1 = time_calls(lambda: lmk.landmarks_in_boxes(img, [box]), runs=runs, warmup=10, max_seconds=max_seconds)
    few = max(5, runs // 10)
    mb = time_calls(lambda: runner(xb), runs=few, warmup=2, max_seconds=max_seconds)
    eb = time_calls(lambda: lmk.landmarks_in_boxes(img, boxes_b), runs=few, warmup=2, max_seconds=max_seconds)
    x2 = np.concatenate([x1, x1[..., ::-1]])
    mf = time_calls(lambda: runner(x2), runs=runs, warmup=10, max_seconds=max_seconds)
    flip_lmk = Landmarker(runner, lmk.meta, detector=None, batch_size=lmk.batch_size, flip=True)
    ef = time_calls(lambda: flip_lmk.landmarks_in_boxes(img, [box]), runs=runs, warmup=10,
                    max_seconds=max_seconds)
    row = {"backend": name, "model_b1_median_ms": m1.median_ms, "model_b1_p95_ms": m1.p95_ms,
           "e2e_b1_median_ms": e1.median_ms, "e2e_b1_p95_ms": e1.p95_ms,
           "model_batch_faces_per_s": 1000 * batch / mb.median_ms,
           "e2e_batch_faces_per_s": 1000 * batch / eb.median_ms,
           "x_flop_bound": m1.median_ms / flop_ms,
           "model_flip_median_ms": mf.median_ms, "e2e_flip_median_ms": ef.median_ms}
    row["e2e_over_model"] = row["e2e_b1_median_ms"] / row["model_b1_median_ms"]
    return row


def _bench_model(label: str, net: Any, meta: Any, peak: dict, *, batch: int, runs: int, max_seconds: float,
                 compile: bool, int8: bool, threads: int | None, printer: Printer) -> dict:
    from kdlandmark.data.crop import landmark_box
    from kdlandmark.data.synth.sample_faces import synthetic_faces
    from kdlandmark.infer.landmarker import Landmarker
    from kdlandmark.models import count_flops

    flops = count_flops(net, meta.input_size)
    (img, lm), = synthetic_faces(meta.layout, 1, seed=7, size=256)
    box = landmark_box(lm)
    flop_ms = flops / (peak["gflops"] * 1e9) * 1e3
    printer("")
    printer(f"{label}: {flops / 1e9:.3f} GFLOP per face, FLOP bound {flop_ms:.3f} ms")
    printer(f"{'backend':18s} {'model b1 ms':>16s} {'e2e b1 ms':>16s} {'e2e/model':>9s} "
            f"{'model b' + str(batch) + ' f/s':>15s} {'e2e b' + str(batch) + ' f/s':>13s} {'xFLOP':>6s} "
            f"{'flip: model / e2e ms':>21s}")
    entry: dict[str, Any] = {"label": label, "input_size": meta.input_size, "flops": flops, "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        for name, runner, note in _runners(label, net, meta, compile=compile, int8=int8, tmp=Path(tmp),
                                           threads=threads):
            if runner is None:
                printer(f"{name:18s} {note}")
                entry["rows"].append({"backend": name, "note": note})
                continue
            lmk = Landmarker(runner, meta, detector=None, batch_size=batch)
            row = _backend_row(name, runner, lmk, img, box, batch=batch, runs=runs, max_seconds=max_seconds,
                               flop_ms=flop_ms)
            entry["rows"].append(row)
            printer(f"{name:18s} {row['model_b1_median_ms']:7.3f} / {row['model_b1_p95_ms']:6.3f} "
                    f"{row['e2e_b1_median_ms']:7.3f} / {row['e2e_b1_p95_ms']:6.3f} "
                    f"{row['e2e_over_model']:9.2f} "
                    f"{row['model_batch_faces_per_s']:15.0f} {row['e2e_batch_faces_per_s']:13.0f} "
                    f"{row['x_flop_bound']:6.1f} "
                    f"{row['model_flip_median_ms']:10.3f} / {row['e2e_flip_median_ms']:6.3f}")
    entry["face"] = (img, box)
    return entry


def bench_infer(model: str | Path | None = None, archs: Sequence[str] = (), *, layout: str = "300w",
                batch: int = 32, runs: int = 200, max_seconds: float = 4.0, compile: bool = True,
                int8: bool = False, dlib_python: str | None = None, threads: int | None = None,
                printer: Printer = print) -> dict:
    """Measure and print the inference table (see the module docstring); returns all figures."""
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    models = _models(model, archs, layout)          # a bad checkpoint fails before anything is timed
    info = _machine(peak_flops(), threads, printer)
    results: dict[str, Any] = {"machine": info, "models": []}
    for label, net, meta in models:
        entry = _bench_model(label, net, meta, {"gflops": info["peak_gflops"]}, batch=batch, runs=runs,
                             max_seconds=max_seconds, compile=compile, int8=int8, threads=threads,
                             printer=printer)
        img, box = entry.pop("face")
        if dlib_python:
            d = entry["dlib"] = _dlib_latency(dlib_python, img, box, runs)
            if "error" in d:
                printer(f"{'dlib 68-pt (ERT)':18s} unavailable: {d['error']}")
            else:
                printer(f"{'dlib 68-pt (ERT)':18s} {d['median']:7.3f} / {d['p95']:6.3f}  (dlib {d['dlib']} "
                        f"shape_predictor_68_face_landmarks, same image and box; its HOG detector "
                        f"{d['hog_detect_ms']:.1f} ms)")
        results["models"].append(entry)
    info["load_average_end"] = os.getloadavg()[0]
    printer(f"\n1-minute load average after the run {info['load_average_end']:.2f} "
            "(other processes slow the figures)")
    return results
