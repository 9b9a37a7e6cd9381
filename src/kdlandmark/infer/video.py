"""Landmarks on synthetic clips with ground truth: frame by frame against tracking and smoothing.

``kdlandmark evaluate --video CLIPS --model M`` (:func:`evaluate_videos`) runs a landmarker on clips
written by ``kdlandmark synth --video`` in four modes and scores them with
:mod:`kdlandmark.evaluate.video` (per-frame NME and jitter):

* ``frame``: the face detector on every frame, the model on its box (what ``predict VIDEO`` does
  without ``--smooth``);
* ``frame+smooth``: the same, landmarks through the One Euro filter;
* ``track``: :class:`~kdlandmark.infer.track.FaceTracker` without the filter (crops from the previous
  frame's landmarks, the detector only when needed);
* ``track+smooth``: tracking and the filter (``predict VIDEO --smooth``).

The detector: ``"truth-jitter"`` (default) is the ground-truth landmark box with each edge moved by
N(0, 3 %) of its size in every frame, independently (clipped at 7.5 %), exactly the box jitter of the
synthetic datasets' detector-like boxes: a detector that always finds the face but whose box shakes, as
real detectors' boxes do, so the comparison isolates what tracking and smoothing do.  Any detector name
of :func:`~kdlandmark.infer.detect.make_detector` (``mtcnn``, ``haar``, ``auto``) uses that detector
instead.  :func:`time_tracking` times one tracking step against the model alone;
:func:`tune_one_euro` searches the filter's two parameters on clips.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kdlandmark.data.crop import landmark_box
from kdlandmark.data.samples import DatasetError
from kdlandmark.data.synth.video import ClipTruth, read_clip_truth
from kdlandmark.evaluate.video import pooled_scores, video_scores
from kdlandmark.infer.track import (
    DEFAULT_BETA,
    DEFAULT_CROP_FROM,
    DEFAULT_MIN_CUTOFF,
    FaceTracker,
    OneEuroFilter,
)
from kdlandmark.timing import time_interleaved

__all__ = ["MODES", "TRUTH_JITTER", "ClipRun", "read_frames", "find_clips", "jittered_truth_boxes",
           "run_clip", "evaluate_videos", "time_tracking", "tune_one_euro", "format_video_table"]

MODES = ("frame", "frame+smooth", "track", "track+smooth")
#: The simulated detector: the truth's landmark box, each edge moved by N(0, 3 %) per frame.
TRUTH_JITTER = "truth-jitter"
_BOX_JITTER = 0.03
VIDEO_METRICS = "video_metrics.json"


def read_frames(path: str | Path) -> list[np.ndarray]:
    """Every frame of a video (BGR uint8); :class:`DatasetError` when it cannot be opened or decoded."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise DatasetError(path, "cannot open video (not a video file, or a codec this OpenCV lacks)")
    frames = []
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(frame)
    finally:
        cap.release()
    if not frames:
        raise DatasetError(path, "no frame could be decoded")
    return frames


def find_clips(paths: Sequence[str | Path]) -> list[Path]:
    """The clip videos named or found in folders (each must have its ground-truth JSON beside it)."""
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(q for q in p.glob("*.mp4") if q.with_suffix(".json").is_file())
            if not found:
                raise DatasetError(p, "no clip (.mp4 with its .json ground truth) in this folder")
            out.extend(found)
        elif p.suffix.lower() == ".json":
            out.append(read_clip_truth(p).video)
        elif p.is_file():
            out.append(p)
        else:
            raise DatasetError(p, "no such clip or folder")
    return out


def jittered_truth_boxes(truth: np.ndarray, seed: int = 0) -> np.ndarray:
    """``(T, 4)`` boxes of the simulated detector (see the module) for truth landmarks ``(T, N, 2)``."""
    rng = np.random.default_rng(seed)
    out = np.empty((len(truth), 4))
    for t, lm in enumerate(truth):
        x0, y0, x1, y1 = landmark_box(lm)
        w, h = x1 - x0, y1 - y0
        j = rng.normal(0.0, _BOX_JITTER, 4).clip(-2.5 * _BOX_JITTER, 2.5 * _BOX_JITTER)
        out[t] = (x0 + j[0] * w, y0 + j[1] * h, x1 + j[2] * w, y1 + j[3] * h)
    return out


@dataclass
class ClipRun:
    """One mode on one clip: predictions ``(T, N, 2)`` (NaN rows: no face), the scores, the cost."""

    mode: str
    pred: np.ndarray
    scores: dict
    detector_runs: int
    events: list[dict] = field(default_factory=list)


def _first(faces: list[Any]) -> np.ndarray | None:
    return None if not faces else np.asarray(faces[0].landmarks, np.float64)


def run_clip(landmarker: Any, frames: Sequence[np.ndarray], truth: ClipTruth, mode: str, *,
             detector: str = TRUTH_JITTER, min_cutoff: float = DEFAULT_MIN_CUTOFF, beta: float = DEFAULT_BETA,
             crop_from: str = DEFAULT_CROP_FROM, seed: int = 0, normalisation: str = "inter-ocular"
             ) -> ClipRun:
    """Run ``mode`` (one of :data:`MODES`) over a clip's ``frames`` and score it against ``truth``."""
    if mode not in MODES:
        raise ValueError(f"unknown video mode {mode!r}; use one of {', '.join(MODES)}")
    layout = landmarker.layout
    if layout.name not in truth.landmarks:
        raise DatasetError(truth.path, f"has no {layout.name} landmarks (it holds "
                                       f"{', '.join(truth.landmarks)})")
    gt = truth.landmarks[layout.name]
    if len(frames) != len(gt):
        raise DatasetError(truth.video, f"{len(frames)} frames decoded, the ground truth has {len(gt)}")
    boxes = jittered_truth_boxes(gt, seed) if detector == TRUTH_JITTER else None
    pred = np.full(gt.shape, np.nan)
    runs = 0
    events: list[dict] = []
    if mode.startswith("frame"):
        filt = OneEuroFilter(min_cutoff, beta) if mode == "frame+smooth" else None
        for t, frame in enumerate(frames):
            dets = [(boxes[t], 1.0)] if boxes is not None else landmarker.detect(frame)
            runs += 1
            lm = _first(landmarker.faces_in_boxes(frame, [d[0] for d in dets[:1]])) if dets else None
            if lm is None:
                if filt is not None:
                    filt.reset()
                continue
            if filt is not None:
                lm = filt(lm, t / truth.fps, _box_side(lm))
            pred[t] = lm
    else:
        tracker = FaceTracker(landmarker, smooth=mode == "track+smooth", min_cutoff=min_cutoff, beta=beta,
                              fps=truth.fps, crop_from=crop_from, max_faces=1)
        for t, frame in enumerate(frames):
            lm = _first(tracker.update(frame, boxes=None if boxes is None else [boxes[t]]))
            if lm is not None:
                pred[t] = lm
        runs = tracker.detections
        events = [e.to_json() for e in tracker.events]
    return ClipRun(mode, pred, video_scores(pred, gt, layout, normalisation), runs, events)


def _box_side(lm: np.ndarray) -> float:
    x0, y0, x1, y1 = landmark_box(lm)
    return float(max(np.sqrt(max(x1 - x0, 0.0) * max(y1 - y0, 0.0)), 1e-6))


def time_tracking(landmarker: Any, frames: Sequence[np.ndarray], truth: ClipTruth, *, rounds: int = 3
                  ) -> dict:
    """Per-frame cost of tracking + smoothing against the model alone, against the landmarks of a face
    in a given box, and the floor of any tracker, timed in one run, interleaved call by call.

    Each round times, with :func:`kdlandmark.timing.time_interleaved` (one call of each in turn, the
    order rotated at every step, so a slow spell of the machine falls on all four alike), as many steps
    as the clip has frames after the first: (1) the model alone on a ready batch of one crop
    (``runner``: the backend's own call, as ``kdlandmark bench infer`` times "model-only"); (2) one face
    through :meth:`Landmarker.landmarks_in_boxes` with its true landmark box (crop, normalise, model,
    map back: frame-by-frame inference without the detector); (3) the same with the crop snapped to
    whole pixels as the tracker cuts it (``snap=True``): the least a tracker built on this landmarker
    does per frame, whatever its own logic costs (``floor``); (4) one :meth:`FaceTracker.update` of the
    next frame (the first frame, which detects, is an untimed warm-up; detection uses the ground-truth
    box, so no detector cost enters).  (2) to (4) read a new frame at every call, as a video does, and
    never the frame another of them read in the same step (a third of the clip apart).  Returns the
    medians (ms), the ratios of (4) to (1) and to (2), and of (3) to (1), pooled over the rounds.
    """
    gt = truth.landmarks[landmarker.layout.name]
    boxes = [[landmark_box(g)] for g in gt]                          # outside the timed calls
    s = landmarker.input_size
    x = np.random.default_rng(0).random((1, 3, s, s), dtype=np.float32)
    n = len(frames) - 1                                              # timed steps per round
    times: dict[str, list[float]] = {"model": [], "face": [], "floor": [], "tracking": []}
    for _ in range(rounds):
        for _ in range(3):
            landmarker.runner(x)                                     # warm-up
        tracker = FaceTracker(landmarker, fps=truth.fps, max_faces=1)
        tracker.update(frames[0], boxes=boxes[0])
        step = iter(range(n))
        face_at = iter(range(n))
        floor_at = iter(range(n))

        def face(k: Any = face_at, snap: bool = False, offset: int = n // 3) -> None:
            t = 1 + (next(k) + offset) % n
            landmarker.landmarks_in_boxes(frames[t], boxes[t], snap=snap)

        def track(k: Any = step, tr: FaceTracker = tracker) -> None:
            t = 1 + next(k)
            tr.update(frames[t], boxes=boxes[t])

        timed = time_interleaved({
            "model": lambda: landmarker.runner(x), "face": face,
            "floor": lambda k=floor_at: face(k, True, 2 * n // 3), "tracking": track}, runs=n)
        for name, timing in timed.items():
            times[name].extend(timing.times_ms)
    model_ms, face_ms, floor_ms, track_ms = (times[k] for k in ("model", "face", "floor", "tracking"))
    med_model, med_face, med_floor, med_track = (float(np.median(v))
                                                 for v in (model_ms, face_ms, floor_ms, track_ms))
    return {"model_ms": med_model, "face_ms": med_face, "floor_ms": med_floor, "tracking_ms": med_track,
            "ratio": med_track / med_model, "ratio_face": med_track / med_face,
            "ratio_floor": med_floor / med_model,
            "model_mean_ms": float(np.mean(model_ms)), "face_mean_ms": float(np.mean(face_ms)),
            "floor_mean_ms": float(np.mean(floor_ms)), "tracking_mean_ms": float(np.mean(track_ms)),
            "calls": len(track_ms), "backend": getattr(landmarker.runner, "name", "?"),
            "input_size": s, "cpu": platform.processor() or platform.machine()}


def evaluate_videos(landmarker: Any, clips: Sequence[str | Path], *, out_dir: str | Path | None = None,
                    modes: Sequence[str] = MODES, detector: str = TRUTH_JITTER,
                    min_cutoff: float = DEFAULT_MIN_CUTOFF, beta: float = DEFAULT_BETA,
                    crop_from: str = DEFAULT_CROP_FROM, timing: bool = True,
                    normalisation: str = "inter-ocular", progress: bool = True) -> dict:
    """Every mode on every clip; writes ``video_metrics.json`` into ``out_dir`` and returns it.

    ``result["modes"][mode]``: NME and jitter pooled over all frames of all clips (%), coverage, detector
    runs per frame; ``result["clips"]``: the same per clip with the per-frame series; ``result["timing"]``
    (``timing``): :func:`time_tracking` on the first clip.
    """
    from tqdm.auto import tqdm

    paths = find_clips(clips)
    per_clip: list[dict] = []
    by_mode: dict[str, list[dict]] = {m: [] for m in modes}
    runs: dict[str, int] = {m: 0 for m in modes}
    first: tuple[list[np.ndarray], ClipTruth] | None = None
    bar = tqdm(paths, desc="video clips", unit="clip", disable=None if progress else True)
    for k, path in enumerate(bar):
        truth = read_clip_truth(path)
        frames = read_frames(path)
        if first is None:
            first = (frames, truth)
        entry: dict[str, Any] = {"clip": str(path), "frames": len(frames), "modes": {}}
        for mode in modes:
            r = run_clip(landmarker, frames, truth, mode, detector=detector, min_cutoff=min_cutoff, beta=beta,
                         crop_from=crop_from, seed=k, normalisation=normalisation)
            entry["modes"][mode] = {**r.scores, "detector_runs": r.detector_runs, "events": r.events}
            by_mode[mode].append(r.scores)
            runs[mode] += r.detector_runs
        per_clip.append(entry)
    result: dict[str, Any] = {
        "model": landmarker.source, "layout": landmarker.layout.name, "detector": detector,
        "normalisation": normalisation,
        "one_euro": {"min_cutoff": min_cutoff, "beta": beta}, "crop_from": crop_from,
        "modes": {m: {**pooled_scores(by_mode[m]),
                      "detector_runs_per_frame": runs[m] / max(sum(c["frames"] for c in by_mode[m]), 1)}
                  for m in modes},
        "clips": per_clip,
    }
    if timing and first is not None:
        result["timing"] = time_tracking(landmarker, *first)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / VIDEO_METRICS).write_text(json.dumps(result) + "\n")
    return result


def tune_one_euro(landmarker: Any, clips: Sequence[str | Path], *, min_cutoffs: Sequence[float],
                  betas: Sequence[float], crop_froms: Sequence[str] = ("raw", "smoothed"),
                  detector: str = TRUTH_JITTER, nme_margin: float = 0.02, progress: bool = True) -> dict:
    """Grid search of the One Euro parameters on clips, tracking + smoothing.

    The choice: the lowest pooled jitter among the settings whose pooled per-frame NME is at most
    ``1 + nme_margin`` times the frame-by-frame NME (the filter must not buy steadiness with accuracy).
    Returns the grid (every setting's NME and jitter, %), the frame-by-frame reference, and the choice.
    """
    from tqdm.auto import tqdm

    loaded = [(read_frames(p), read_clip_truth(p)) for p in find_clips(clips)]
    ref = pooled_scores([run_clip(landmarker, f, t, "frame", detector=detector, seed=k).scores
                         for k, (f, t) in enumerate(loaded)])
    grid = []
    settings = [(c, mc, b) for c in crop_froms for mc in min_cutoffs for b in betas]
    bar = tqdm(settings, desc="one euro grid", unit="setting", disable=None if progress else True)
    for crop, mc, b in bar:
        scores = [run_clip(landmarker, f, t, "track+smooth", detector=detector, min_cutoff=mc, beta=b,
                           crop_from=crop, seed=k).scores for k, (f, t) in enumerate(loaded)]
        grid.append({"crop_from": crop, "min_cutoff": mc, "beta": b, **pooled_scores(scores)})
    ok = [g for g in grid if g["nme"] is not None and g["nme"] <= (1 + nme_margin) * ref["nme"]]
    best = min(ok, key=lambda g: g["jitter"]) if ok else None
    return {"reference_frame_by_frame": ref, "grid": grid, "best": best, "nme_margin": nme_margin,
            "detector": detector, "clips": len(loaded)}


def format_video_table(result: dict) -> str:
    """Plain-text table of :func:`evaluate_videos`' result."""
    modes = result["modes"]
    ref = modes.get("frame", {})
    head = f"{'mode':<14}{'NME %':>8}{'vs frame':>10}{'jitter %':>10}{'jitter / frame':>16}{'det./frame':>12}"
    lines = [f"{result['model']} on {result['modes'][next(iter(modes))]['clips']} clip(s), "
             f"{next(iter(modes.values()))['frames']} frames; detector: {result['detector']}; One Euro "
             f"min_cutoff {result['one_euro']['min_cutoff']:g} Hz, beta {result['one_euro']['beta']:g}", head,
             "-" * len(head)]
    for mode, m in modes.items():
        rel = f"{m['nme'] / ref['nme']:.3f}x" if ref.get("nme") and m["nme"] is not None else "-"
        jr = f"{ref['jitter'] / m['jitter']:.2f}x lower" if ref.get("jitter") and m["jitter"] else "-"
        nme = "-" if m["nme"] is None else f"{m['nme']:.3f}"
        jit = "-" if m["jitter"] is None else f"{m['jitter']:.3f}"
        lines.append(f"{mode:<14}{nme:>8}{rel:>10}{jit:>10}{jr:>16}{m['detector_runs_per_frame']:>12.3f}")
    t = result.get("timing")
    if t:
        lines.append(f"per-frame cost ({t['backend']}, {t['calls']} frames, medians): tracking + smoothing "
                     f"{t['tracking_ms']:.3f} ms; model alone {t['model_ms']:.3f} ms: {t['ratio']:.3f}x; "
                     f"a face in a given box (crop, model, map back) {t['face_ms']:.3f} ms: "
                     f"{t['ratio_face']:.3f}x")
        if "floor_ms" in t:
            lines.append(f"floor of any tracker on this landmarker (the snapped crop of a new frame, model, "
                         f"map back; no tracker logic) {t['floor_ms']:.3f} ms: {t['ratio_floor']:.3f}x the "
                         f"model alone")
    return "\n".join(lines)
