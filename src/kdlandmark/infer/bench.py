"""Inference benchmark (``kdlandmark bench infer``) and synthetic-face accuracy checks of exported models.

The benchmark prints, for a checkpoint (``--model``) or for random-weight networks of given backbones and
input sizes (``--arch mobilenetv2_100:224``; timing does not depend on the weights):

* single-face latency (median and 95th percentile, ms) and batch throughput (faces/s),
* for PyTorch eager, PyTorch ``torch.compile`` (reported as unavailable, with the reason, when it fails)
  and ONNX Runtime (and its dynamic int8 model with ``--int8``),
* model-only (the runner on a ready float32 batch) and end-to-end (box -> ``crop_affine`` -> one
  ``cv2.warpAffine`` into a pre-allocated buffer -> RGB / 255 -> model -> map back to image pixels, the
  :meth:`Landmarker.landmarks_in_boxes` path) on a synthetic 256 px face image,
* the ratio of the measured model-only time to the FLOP-bound time ``FLOPs / peak``, where the CPU's
  peak float32 FLOP/s is *measured at start-up* from a large ``torch.mm`` (so the ratio says how far a
  network is from what this CPU's matrix unit does on a friendly problem, not a datasheet figure).

Nothing here is a unit test: figures depend on the machine and its load.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kdlandmark.layouts import Layout, get_layout

__all__ = [
    "synthetic_faces",
    "synthetic_nme",
    "compare_nme",
    "peak_flops",
    "time_calls",
    "bench_infer",
    "format_rows",
]


# ------------------------------------------------------------------------------------------- synthetic data
def synthetic_faces(layout: Layout | str, count: int, *, seed: int = 0, size: int = 256
                    ) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` rendered faces as ``(image BGR uint8, landmarks (N, 2))`` (:mod:`kdlandmark.data.synth`)."""
    from kdlandmark.data.synth import render_face

    lay = get_layout(layout) if isinstance(layout, str) else layout
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        img, lm, _info = render_face(rng, lay, size)
        out.append((img, np.asarray(lm, np.float32)))
    return out


def synthetic_nme(landmarker: Any, faces: Sequence[tuple[np.ndarray, np.ndarray]]
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Per-face inter-ocular NME and predictions of ``landmarker`` on ``faces``, cropped from the true box.

    The crop comes from the landmarks' box, as the 300W test protocol does (REFERENCE.md section 5).
    """
    from kdlandmark.data.crop import landmark_box
    from kdlandmark.evaluate.metrics import nme_per_image

    preds = np.stack([landmarker.landmarks_in_boxes(img, [landmark_box(lm)])[0] for img, lm in faces])
    gts = np.stack([lm for _, lm in faces])
    return nme_per_image(preds, gts, landmarker.layout), preds


def compare_nme(reference: str | Path, other: str | Path, *, count: int = 200, seed: int = 2024,
                size: int = 256) -> dict:
    """NME of ``other`` (an ``.onnx``) and of ``reference`` (checkpoint or ``.onnx``) on synthetic faces.

    Returns the mean NMEs, their difference (``nme_change`` = other - reference, as fractions), the
    mean landmark shift between the two models' predictions in pixels, and the number of faces.
    """
    from kdlandmark.infer.landmarker import Landmarker

    def open_model(p: Path) -> Landmarker:
        backend = "onnx" if p.suffix == ".onnx" else "torch"
        return Landmarker.from_checkpoint(p, backend=backend, detector=None, batch_size=1)

    ref, oth = open_model(Path(reference)), open_model(Path(other))
    if ref.layout.name != oth.layout.name:
        raise ValueError(f"{other}: layout {oth.layout.name} differs from {reference}'s {ref.layout.name}")
    faces = synthetic_faces(ref.layout, count, seed=seed, size=size)
    nme_ref, p_ref = synthetic_nme(ref, faces)
    nme_oth, p_oth = synthetic_nme(oth, faces)
    return {"faces": count, "reference": Path(reference).name, "other": Path(other).name,
            "nme_ref": float(nme_ref.mean()), "nme_int8": float(nme_oth.mean()),
            "nme_change": float(nme_oth.mean() - nme_ref.mean()),
            "mean_shift_px": float(np.linalg.norm(p_oth - p_ref, axis=-1).mean())}


# ------------------------------------------------------------------------------------------------ timing
def peak_flops(n: int = 2048, seconds: float = 1.0) -> dict:
    """Measured float32 matmul rate of this CPU: best of repeated ``torch.mm`` of two ``n x n`` matrices.

    ``2 n^3`` FLOPs per product; the best repetition over about ``seconds`` is taken as the peak.
    """
    import torch

    a = torch.rand(n, n)
    b = torch.rand(n, n)
    c = torch.empty(n, n)
    torch.mm(a, b, out=c)
    best = float("inf")
    t_end = time.perf_counter() + seconds
    reps = 0
    while reps < 3 or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        torch.mm(a, b, out=c)
        best = min(best, time.perf_counter() - t0)
        reps += 1
    return {"gflops": 2 * n ** 3 / best / 1e9, "n": n, "reps": reps, "threads": torch.get_num_threads()}


def time_calls(fn: Callable[[], Any], *, runs: int = 200, warmup: int = 10, max_seconds: float = 5.0
               ) -> list[float]:
    """Wall times (ms) of ``runs`` calls of ``fn`` after ``warmup`` untimed ones (at most ``max_seconds``)."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    t_end = time.perf_counter() + max_seconds
    while len(times) < runs and (len(times) < 5 or time.perf_counter() < t_end):
        t0 = time.perf_counter()
        fn()
        times.append(1000.0 * (time.perf_counter() - t0))
    return times


def _p95(times: list[float]) -> float:
    return float(np.quantile(np.asarray(times), 0.95))


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ------------------------------------------------------------------------------------------------ benchmark
def _models(model: str | Path | None, archs: Sequence[str], layout: str) -> list[tuple[str, Any, dict]]:
    """``(label, torch model, meta)`` for a checkpoint and/or random-weight ``backbone:size`` specs."""
    from kdlandmark.data.crop import DEFAULT_MARGIN
    from kdlandmark.models import LandmarkRegressor
    from kdlandmark.train.checkpoint import load_checkpoint, model_meta

    out = []
    if model is not None:
        m, meta = load_checkpoint(model, device="cpu")
        label = f"{Path(model).name}: {meta['architecture']['backbone']} @ {meta['input_size']}"
        out.append((label, m, meta))
    lay = get_layout(layout)
    for spec in archs:
        name, _, size = spec.partition(":")
        s = int(size or 112)
        m = LandmarkRegressor(name, lay.num_points, dropout=0.0).eval()
        meta = model_meta(m, layout=lay, input_size=s, crop={"margin": DEFAULT_MARGIN})
        out.append((f"{name} @ {s} (random weights)", m, meta))
    return out


def _runners(model: Any, meta: dict, *, compile: bool, int8: bool, tmp: Path, threads: int | None = None
             ) -> list[tuple[str, Callable[[np.ndarray], np.ndarray] | None, str]]:
    """``(name, runner or None, note)`` for each backend; a failed backend gets None and the reason."""
    from kdlandmark.infer.export import onnx_model_bytes, onnx_session, quantize_int8
    from kdlandmark.infer.landmarker import OnnxRunner, TorchRunner

    size = int(meta["input_size"])
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
    data = onnx_model_bytes(model, size, dynamic_batch=True)
    out.append(("onnxruntime", OnnxRunner(onnx_session(data, threads=threads)), ""))
    if int8:
        from kdlandmark.infer.export import _export_meta, _with_metadata

        src = tmp / "m.onnx"
        src.write_bytes(_with_metadata(data, _export_meta(meta, tmp, input_size=size, precision="fp32",
                                                          dynamic_batch=True, batch=1, opset=17)))
        dst = quantize_int8(src, tmp / "m.int8.onnx")
        out.append(("onnxruntime int8", OnnxRunner(onnx_session(dst, threads=threads)), ""))
    return out


def _dlib_latency(python: str, image: np.ndarray, box: Sequence[float], runs: int) -> dict:
    """Time dlib's 68-point shape predictor (face_recognition_models) in another interpreter."""
    import cv2

    code = r"""
import json, sys, time, statistics
import cv2, dlib, face_recognition_models as frm
img = cv2.imread(sys.argv[1]); rgb = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
x0, y0, x1, y1 = (float(v) for v in sys.argv[2].split(","))
rect = dlib.rectangle(int(round(x0)), int(round(y0)), int(round(x1)), int(round(y1)))
sp = dlib.shape_predictor(frm.pose_predictor_model_location())
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


def bench_infer(model: str | Path | None = None, archs: Sequence[str] = (), *, layout: str = "300w",
                batch: int = 32, runs: int = 200, max_seconds: float = 4.0, compile: bool = True,
                int8: bool = False, dlib_python: str | None = None, threads: int | None = None,
                printer: Callable[[str], None] = print) -> dict:
    """Measure and print the inference table (see the module docstring); returns all figures."""
    import torch

    from kdlandmark.data.crop import landmark_box
    from kdlandmark.infer.landmarker import Landmarker
    from kdlandmark.models import count_flops

    if threads:
        torch.set_num_threads(int(threads))
    peak = peak_flops()
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
    results: dict[str, Any] = {"machine": info, "models": []}
    for label, net, meta in _models(model, archs, layout):
        size = int(meta["input_size"])
        from kdlandmark.infer.export import layout_from_meta

        lay = layout_from_meta(meta, label)
        flops = count_flops(net, size)
        (img, lm), = synthetic_faces(lay, 1, seed=7, size=256)
        box = landmark_box(lm)
        boxes_b = [box] * batch
        printer("")
        bound_ms = flops / (peak["gflops"] * 1e9) * 1e3
        printer(f"{label}: {flops / 1e9:.3f} GFLOP per face, FLOP bound {bound_ms:.3f} ms")
        printer(f"{'backend':18s} {'model b1 ms':>16s} {'e2e b1 ms':>16s} {'e2e/model':>9s} "
                f"{'model b' + str(batch) + ' f/s':>15s} {'e2e b' + str(batch) + ' f/s':>13s} {'xFLOP':>6s}")
        entry: dict[str, Any] = {"label": label, "input_size": size, "flops": flops, "rows": []}
        with tempfile.TemporaryDirectory() as tmp:
            for name, runner, note in _runners(net, meta, compile=compile, int8=int8, tmp=Path(tmp),
                                               threads=threads):
                if runner is None:
                    printer(f"{name:18s} {note}")
                    entry["rows"].append({"backend": name, "note": note})
                    continue
                lmk = Landmarker(runner, meta, detector=None, batch_size=batch)
                x1 = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
                xb = np.random.default_rng(1).random((batch, 3, size, size), dtype=np.float32)
                m1 = time_calls(lambda r=runner, x=x1: r(x), runs=runs, max_seconds=max_seconds)
                e1 = time_calls(lambda lk=lmk, im=img, bx=box: lk.landmarks_in_boxes(im, [bx]), runs=runs,
                                max_seconds=max_seconds)
                mb = time_calls(lambda r=runner, x=xb: r(x), runs=max(5, runs // 10), warmup=2,
                                max_seconds=max_seconds)
                eb = time_calls(lambda lk=lmk, im=img, bb=boxes_b: lk.landmarks_in_boxes(im, bb),
                                runs=max(5, runs // 10), warmup=2, max_seconds=max_seconds)
                row = {"backend": name,
                       "model_b1_median_ms": statistics.median(m1), "model_b1_p95_ms": _p95(m1),
                       "e2e_b1_median_ms": statistics.median(e1), "e2e_b1_p95_ms": _p95(e1),
                       "model_batch_faces_per_s": 1000 * batch / statistics.median(mb),
                       "e2e_batch_faces_per_s": 1000 * batch / statistics.median(eb),
                       "x_flop_bound": statistics.median(m1) / (flops / (peak["gflops"] * 1e9) * 1e3)}
                row["e2e_over_model"] = row["e2e_b1_median_ms"] / row["model_b1_median_ms"]
                entry["rows"].append(row)
                printer(f"{name:18s} {row['model_b1_median_ms']:7.3f} / {row['model_b1_p95_ms']:6.3f} "
                        f"{row['e2e_b1_median_ms']:7.3f} / {row['e2e_b1_p95_ms']:6.3f} "
                        f"{row['e2e_over_model']:9.2f} "
                        f"{row['model_batch_faces_per_s']:15.0f} {row['e2e_batch_faces_per_s']:13.0f} "
                        f"{row['x_flop_bound']:6.1f}")
        if dlib_python:
            d = _dlib_latency(dlib_python, img, box, runs)
            entry["dlib"] = d
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


def format_rows(results: dict) -> str:
    """A Markdown table of :func:`bench_infer`'s figures (for docs)."""
    lines = ["| model | backend | model b1 median / p95 ms | e2e b1 median / p95 ms | e2e / model | "
             "model batch faces/s | e2e batch faces/s | x FLOP bound |", "|---|---|---|---|---|---|---|---|"]
    for m in results["models"]:
        for r in m["rows"]:
            if "note" in r:
                lines.append(f"| {m['label']} | {r['backend']} | {r['note']} | | | | | |")
                continue
            lines.append(f"| {m['label']} | {r['backend']} | "
                         f"{r['model_b1_median_ms']:.3f} / {r['model_b1_p95_ms']:.3f} | "
                         f"{r['e2e_b1_median_ms']:.3f} / {r['e2e_b1_p95_ms']:.3f} | "
                         f"{r['e2e_over_model']:.2f} | "
                         f"{r['model_batch_faces_per_s']:.0f} | {r['e2e_batch_faces_per_s']:.0f} | "
                         f"{r['x_flop_bound']:.1f} |")
    return "\n".join(lines)
