"""Video mode: track faces from frame to frame and smooth their landmarks (One Euro filter).

Frame by frame, a landmarker runs the face detector on every frame, and the detector's box jitters;
the landmarks jitter with it.  :class:`FaceTracker` runs the detector only when it must:

* on the first frame, and whenever no face is tracked;
* when a tracked face is **lost**: the tracking-quality test fails (fewer than ``min_inside`` of its
  landmarks inside the frame; a landmark box that jumped or changed size implausibly against the crop
  it came from; or, for a model with an error head, a mean predicted error above ``max_error`` of the
  face size);
* on a **schedule** (``redetect_every`` frames; 0 turns it off): new faces are picked up, tracked faces
  keep their track;
* at a **scene cut**: the mean absolute difference of two small thumbnails of consecutive frames above
  ``scene_cut`` (0-255 grey levels); every track starts again.

Every other frame, each face is cropped around its landmarks of the frame before (their landmark box,
the box convention the model was trained with) and only the model runs: the per-frame cost is the
model's, plus a warp, the mapping back, the thumbnail and the filter.

The landmarks are then smoothed by a :class:`OneEuroFilter` (Casiez, Roussel and Vogel, "1 Euro
Filter: A Simple Speed-based Low-pass Filter for Noisy Input in Interactive Systems", CHI 2012): a
first-order low-pass filter whose cutoff frequency rises with the speed, ``fc = min_cutoff + beta *
speed``, so a still face is smoothed hard and a moving one follows with little lag.  Here the speed of
each point is measured in face sizes per second (the landmark box side), so the two parameters do not
depend on the image resolution.  The confidence outputs of a model with heads are smoothed with the
same filter at a fixed cutoff (``beta = 0``).  Defaults: found on synthetic clips
(``scripts/tune_one_euro.py``, docs/INFERENCE.md).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

__all__ = [
    "OneEuroFilter",
    "FaceTracker",
    "TrackEvent",
    "DEFAULT_MIN_CUTOFF",
    "DEFAULT_BETA",
    "DEFAULT_CROP_FROM",
    "DEFAULT_SCENE_CUT",
    "scene_difference",
    "box_iou",
]

#: One Euro defaults (Hz; per face size per second), chosen on synthetic clips (scripts/tune_one_euro.py
#: on 4 clips of seed 1: the lowest jitter within 3 % of the frame-by-frame NME; docs/INFERENCE.md).
DEFAULT_MIN_CUTOFF = 2.0
DEFAULT_BETA = 5.0
#: Tracking crops around the ``"raw"`` or the ``"smoothed"`` landmarks of the frame before (tuned too).
DEFAULT_CROP_FROM = "smoothed"
#: Cutoff of the speed's own low-pass filter (Hz), as the paper recommends.
DEFAULT_D_CUTOFF = 1.0
#: Mean absolute thumbnail difference (grey levels) above which two frames are a scene cut.
DEFAULT_SCENE_CUT = 40.0
#: Thumbnails of about this many pixels on the shorter side are compared for scene cuts.
_THUMB = 32


class OneEuroFilter:
    """The One Euro filter over an array of points, each point with its own adaptive cutoff.

    Args:
        min_cutoff: cutoff frequency (Hz) of a still input: lower smooths more.
        beta: how fast the cutoff rises with the speed (per unit of ``speed / scale``): higher lags less.
        d_cutoff: cutoff (Hz) of the low-pass filter on the speed itself.

    Call with ``(N, D)`` values (``D`` coordinates per point; the speed of a point is the norm of its
    ``D``-vector of derivatives), the time ``t`` in seconds (increasing), and ``scale``, the unit the
    speed is measured in (a face size in pixels: then ``beta`` is per face size per second).
    """

    def __init__(self, min_cutoff: float = DEFAULT_MIN_CUTOFF, beta: float = DEFAULT_BETA,
                 d_cutoff: float = DEFAULT_D_CUTOFF) -> None:
        if not min_cutoff > 0 or not d_cutoff > 0 or not beta >= 0:
            raise ValueError(f"One Euro filter: min_cutoff and d_cutoff must be > 0 and beta >= 0, got "
                             f"{min_cutoff}, {d_cutoff} and {beta}")
        self.min_cutoff = float(min_cutoff)
        self.beta = float(beta)
        self.d_cutoff = float(d_cutoff)
        self.reset()

    def reset(self) -> None:
        """Forget the past: the next value passes through unchanged."""
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None
        self._t: float | None = None

    @staticmethod
    def alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray:
        """Smoothing factor of a first-order low-pass filter with this cutoff (Hz) over ``dt`` seconds."""
        r = 2.0 * np.pi * np.asarray(cutoff, dtype=np.float64) * dt
        return r / (r + 1.0)

    def __call__(self, x: np.ndarray, t: float, scale: float = 1.0) -> np.ndarray:
        """The filtered values at time ``t``, in ``x``'s floating dtype (float32 in, float32 out; the
        state is kept in float64)."""
        x = np.asarray(x)
        out_dtype = np.result_type(x.dtype, np.float32)
        if self._x is None or self._t is None or self._dx is None:
            self._x, self._t = x.astype(np.float64), float(t)
            self._dx = np.zeros_like(self._x)
            return self._x.astype(out_dtype)
        if x.shape != self._x.shape:
            raise ValueError(f"One Euro filter: values of shape {x.shape} after {self._x.shape}")
        dt = float(t) - self._t
        if not dt > 0:
            raise ValueError(f"One Euro filter: time must increase (got {t} after {self._t})")
        # The per-frame path of video tracking (after the model has run, every cache is cold and each
        # NumPy call counts): plain-float factors, few calls, in place.
        w = 2.0 * np.pi * dt
        a_d = w * self.d_cutoff / (w * self.d_cutoff + 1.0)
        diff = np.subtract(x, self._x)
        dx = self._dx
        dx *= 1.0 - a_d                              # dx += a_d * (diff / dt - dx)
        dx += diff * (a_d / dt)
        if self.beta == 0:
            a: np.ndarray | float = w * self.min_cutoff / (w * self.min_cutoff + 1.0)
        else:
            if dx.ndim == 2 and dx.shape[1] == 2:    # the speed of each point: the norm of its derivative
                r = np.hypot(dx[:, 0], dx[:, 1])
            else:
                flat = dx.reshape(len(dx), -1)
                r = np.sqrt(np.einsum("ij,ij->i", flat, flat))
            r *= w * self.beta / max(float(scale), 1e-12)
            r += w * self.min_cutoff
            a = (r / (r + 1.0)).reshape((len(r),) + (1,) * (x.ndim - 1))
        diff *= a
        self._x += diff
        self._t = float(t)
        return self._x.astype(out_dtype)


def scene_difference(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference (0-255) of two equally sized uint8 thumbnails."""
    if a.shape != b.shape:
        raise ValueError(f"thumbnails of shapes {a.shape} and {b.shape}")
    return cv2.norm(np.ascontiguousarray(a), np.ascontiguousarray(b), cv2.NORM_L1) / max(a.size, 1)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _points_box(points: np.ndarray) -> tuple[float, float, float, float]:
    """:func:`~kdlandmark.data.crop.landmark_box` of ``(N, 2)`` model outputs in two OpenCV reductions
    (a few times faster than NumPy's on 68 points: the per-frame path)."""
    pts = np.ascontiguousarray(points, dtype=np.float32).reshape(1, -1, 2)
    lo = cv2.reduce(pts, 1, cv2.REDUCE_MIN)[0, 0]
    hi = cv2.reduce(pts, 1, cv2.REDUCE_MAX)[0, 0]
    return float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])


def _side(box: Sequence[float]) -> float:
    return max(math.sqrt(max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0)), 1e-6)


@dataclass(frozen=True)
class TrackEvent:
    """Something the tracker did at a frame: ``detect`` (why: ``start``, ``lost``, ``schedule``,
    ``cut``, ``no face``), ``lost`` (why: the failed test), ``cut``."""

    frame: int
    event: str
    why: str = ""

    def to_json(self) -> dict:
        return {"frame": self.frame, "event": self.event, **({"why": self.why} if self.why else {})}


@dataclass
class _Track:
    box: tuple[float, float, float, float]  # crop box for the next frame (landmark-box convention)
    filters: list[OneEuroFilter] = field(default_factory=list)
    score: float = 1.0


class FaceTracker:
    """Faces of a video, frame after frame: track, re-detect when needed, smooth (see the module).

    Args:
        landmarker: a :class:`~kdlandmark.infer.landmarker.Landmarker` (its detector is used only when
            needed; it may be None if every call passes ``boxes``).
        smooth: apply the One Euro filter (``False``: tracking only).
        min_cutoff, beta, d_cutoff: the filter's parameters (see :class:`OneEuroFilter`).
        fps: frames per second (the filter's clock); ``update(frame, t=...)`` may give times instead.
        redetect_every: run the detector every this many frames to pick up new faces (0: never on a
            schedule, only when needed).
        max_faces: faces tracked at most (default: the landmarker's ``max_faces``, else all detected).
        scene_cut: thumbnail difference (grey levels) that counts as a scene cut; 0 turns the test off.
        min_inside: a face is lost when fewer than this share of its landmarks lie inside the frame.
        max_jump: a face is lost when its new landmark box moved by more than this share of the crop
            box's side, or its side changed by more than this factor minus one (e.g. 0.5: x1.5 or /1.5).
        max_error: a face is lost when the model's mean predicted error exceeds this share of the
            face size (models with an error head only).
        crop_from: the next crop is cut around the ``"smoothed"`` or the ``"raw"`` landmarks.
        snap: cut crops snapped to whole pixels with one resize (``Landmarker.landmarks_in_boxes(...,
            snap=True)``: the crop moves by at most half a pixel, is mapped back exactly, and costs less
            than a warp); False: the warp of frame-by-frame inference.
        flip: flip averaging on every frame (twice the model's work per frame); off by default whatever
            the landmarker's own ``flip``: tracking is one model pass per frame, and the filter, not a
            second pass, is what steadies the landmarks.
    """

    def __init__(self, landmarker: Any, *, smooth: bool = True, min_cutoff: float = DEFAULT_MIN_CUTOFF,
                 beta: float = DEFAULT_BETA, d_cutoff: float = DEFAULT_D_CUTOFF, fps: float = 25.0,
                 redetect_every: int = 0, max_faces: int | None = None, scene_cut: float = DEFAULT_SCENE_CUT,
                 min_inside: float = 0.5, max_jump: float = 0.5, max_error: float = 0.15,
                 crop_from: str = DEFAULT_CROP_FROM, snap: bool = True, flip: bool = False) -> None:
        OneEuroFilter(min_cutoff, beta, d_cutoff)               # checks the parameters now
        if not fps > 0 or redetect_every < 0 or scene_cut < 0 or not 0 <= min_inside <= 1 or not max_jump > 0:
            raise ValueError(f"bad tracker settings: fps {fps}, redetect_every {redetect_every}, scene_cut "
                             f"{scene_cut}, min_inside {min_inside}, max_jump {max_jump}")
        if crop_from not in ("smoothed", "raw"):
            raise ValueError(f"crop_from must be 'smoothed' or 'raw', got {crop_from!r}")
        self.landmarker = landmarker
        self.smooth = bool(smooth)
        self.filter_args = (float(min_cutoff), float(beta), float(d_cutoff))
        self.fps = float(fps)
        self.redetect_every = int(redetect_every)
        self.max_faces = max_faces if max_faces is not None else getattr(landmarker, "max_faces", None)
        self.scene_cut = float(scene_cut)
        self.min_inside = float(min_inside)
        self.max_jump = float(max_jump)
        self.max_error = float(max_error)
        self.crop_from = crop_from
        self.snap = bool(snap)
        self.flip = bool(flip)
        self.tracks: list[_Track] = []
        self.events: list[TrackEvent] = []
        self.frame_index = 0
        self.frame_size: tuple[int, int] | None = None
        self.detections = 0
        self._thumb: np.ndarray | None = None
        self._last_detect = -1

    # -------------------------------------------------------------------------------------------- checks
    def _check_size(self, frame: np.ndarray) -> None:
        h, w = frame.shape[:2]
        if self.frame_size is None:
            self.frame_size = (w, h)
        elif self.frame_size != (w, h):
            raise ValueError(f"frame {self.frame_index} is {w}x{h} pixels, but the video started at "
                             f"{self.frame_size[0]}x{self.frame_size[1]}: a frame of another size")

    def _is_cut(self, frame: np.ndarray) -> bool:
        h, w = frame.shape[:2]
        step = max(1, min(h, w) // _THUMB)
        thumb = cv2.resize(frame, (-(-w // step), -(-h // step)), interpolation=cv2.INTER_NEAREST)
        prev, self._thumb = self._thumb, thumb
        return prev is not None and self.scene_cut > 0 and scene_difference(prev, thumb) > self.scene_cut

    def _lost(self, face: Any, crop_box: tuple[float, float, float, float] | None,
              box: tuple[float, float, float, float]) -> str:
        """Why a tracked face counts as lost ('' if it does not); ``box``: its landmark box."""
        lm = face.landmarks
        w, h = self.frame_size or (0, 0)
        if not (box[0] >= -0.5 and box[1] >= -0.5 and box[2] <= w - 0.5 and box[3] <= h - 0.5):
            inside = ((lm[:, 0] >= -0.5) & (lm[:, 0] <= w - 0.5) & (lm[:, 1] >= -0.5)
                      & (lm[:, 1] <= h - 0.5)).mean()
            if inside < self.min_inside:
                return f"only {100 * inside:.0f} % of the landmarks inside the frame"
        side = _side(box)
        if crop_box is not None:
            ref = _side(crop_box)
            shift = math.hypot((box[0] + box[2] - crop_box[0] - crop_box[2]) / 2,
                               (box[1] + box[3] - crop_box[1] - crop_box[3]) / 2) / ref
            ratio = side / ref
            if shift > self.max_jump or not 1 / (1 + self.max_jump) <= ratio <= 1 + self.max_jump:
                return f"landmark box jumped ({shift:.2f} of the face size, size x{ratio:.2f})"
        if face.error is not None and float(np.mean(face.error)) > self.max_error * side:
            return f"mean predicted error {float(np.mean(face.error)) / side:.2f} of the face size"
        return ""

    # -------------------------------------------------------------------------------------------- steps
    def _detect(self, frame: np.ndarray, why: str) -> list[tuple[np.ndarray, float]]:
        self.events.append(TrackEvent(self.frame_index, "detect", why))
        self.detections += 1
        self._last_detect = self.frame_index
        dets = self.landmarker.detect(frame)
        return [(np.asarray(b, np.float64), float(s)) for b, s in dets]

    def _new_track(self, box: Sequence[float], score: float) -> _Track:
        x0, y0, x1, y1 = (float(v) for v in box)
        n = 3 if self.smooth else 0            # landmarks, and the two confidence outputs
        filters = [OneEuroFilter(*self.filter_args) if k == 0 else
                   OneEuroFilter(self.filter_args[0], 0.0, self.filter_args[2]) for k in range(n)]
        return _Track(box=(x0, y0, x1, y1), filters=filters, score=score)

    def _finish(self, track: _Track, face: Any, box: tuple[float, float, float, float], t: float) -> Any:
        """Smooth the face's outputs, set its next crop box, return the face to report (its ``box``: the
        crop box of this frame).  ``box``: the landmark box of ``face``'s (raw) landmarks."""
        if not self.smooth:
            track.box = box
            return dataclasses.replace(face, score=track.score)
        landmarks = track.filters[0](face.landmarks, t, _side(box))           # float32, as the model's
        conf = [None if (v := getattr(face, name)) is None else track.filters[k](v[:, None], t)[:, 0]
                for k, name in ((1, "visibility"), (2, "error"))]
        track.box = _points_box(landmarks) if self.crop_from == "smoothed" else box
        return type(face)(landmarks, face.box, track.score, face.layout, visibility=conf[0], error=conf[1])

    def update(self, frame: np.ndarray, t: float | None = None,
               boxes: Sequence[Sequence[float]] | None = None) -> list[Any]:
        """The faces of the next frame (BGR uint8), as :class:`FaceLandmarks`, one per tracked face.

        ``t``: the frame's time in seconds (default: frame index / ``fps``).  ``boxes``: face boxes to
        use instead of the detector whenever it would run (e.g. ground truth in tests and measurements).
        Raises ``ValueError`` for a frame whose size differs from the first frame's.
        """
        self._check_size(frame)
        i = self.frame_index
        t = i / self.fps if t is None else float(t)
        cut = self._is_cut(frame)
        results: list[tuple[_Track, Any, tuple[float, float, float, float]]] = []
        why = "start" if i == 0 else "no face"
        if cut and self.tracks:
            self.events.append(TrackEvent(i, "cut"))
            self.tracks, why = [], "cut"
        if self.tracks:
            faces = self.landmarker.faces_in_boxes(frame, np.array([tr.box for tr in self.tracks]),
                                                   snap=self.snap, flip=self.flip)
            kept = []
            for tr, face in zip(self.tracks, faces, strict=True):
                box = _points_box(face.landmarks)
                reason = self._lost(face, tr.box, box)
                if reason:
                    self.events.append(TrackEvent(i, "lost", reason))
                    why = "lost"
                else:
                    kept.append(tr)
                    results.append((tr, face, box))
            self.tracks = kept
            if len(kept) == len(faces):
                due = self.redetect_every and i - self._last_detect >= self.redetect_every
                why = "schedule" if due else ""
        if why:
            dets = [(np.asarray(b, np.float64), 1.0) for b in boxes] if boxes is not None else \
                self._detect(frame, why)
            if boxes is not None:
                self.events.append(TrackEvent(i, "detect", why))
                self.detections += 1
                self._last_detect = i
            fresh = [(b, s) for b, s in dets if all(box_iou(b, box) < 0.3 for _, _, box in results)]
            room = None if self.max_faces is None else max(0, self.max_faces - len(results))
            fresh = fresh[:room] if room is not None else fresh
            if fresh:
                faces = self.landmarker.faces_in_boxes(frame, np.stack([b for b, _ in fresh]),
                                                       [s for _, s in fresh], snap=self.snap, flip=self.flip)
                for (b, s), face in zip(fresh, faces, strict=True):
                    box = _points_box(face.landmarks)
                    reason = self._lost(face, None, box)
                    if reason:
                        self.events.append(TrackEvent(i, "lost", f"at detection: {reason}"))
                        continue
                    tr = self._new_track(b, s)
                    self.tracks.append(tr)
                    results.append((tr, face, box))
        out = [self._finish(tr, face, box, t) for tr, face, box in results]
        self.frame_index += 1
        return out
