"""The one place where a face box becomes a square crop, and crop coordinates become model coordinates.

Prepare (training and test crops), evaluation (mapping predictions back) and inference (detector box
to model input) all call these functions, so the crop a model sees at inference is the crop it was
trained on.

Conventions (DESIGN.md): pixel centres sit at integer coordinates, so an image of side ``S`` spans
``[-0.5, S - 0.5]`` and its centre is ``(S - 1) / 2``.  Model coordinates are ``(p - centre) / S``.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "DEFAULT_MARGIN",
    "landmark_box",
    "square_box",
    "crop_affine",
    "upright_crop_affine",
    "invert_affine",
    "apply_affine",
    "to_model_coords",
    "from_model_coords",
    "model_to_image_affine",
]

#: Extra border around the face box, as a fraction of the box side on each side.
DEFAULT_MARGIN = 0.15


def landmark_box(landmarks: np.ndarray) -> tuple[float, float, float, float]:
    """Tight box ``(x0, y0, x1, y1)`` around ``(N, 2)`` landmarks."""
    lm = np.asarray(landmarks)
    if lm.dtype.kind != "f":
        lm = lm.astype(np.float64)
    x0, y0 = lm.min(axis=0)            # min and max are exact in any float type: no copy to float64
    x1, y1 = lm.max(axis=0)
    return float(x0), float(y0), float(x1), float(y1)


def square_box(box: tuple[float, float, float, float] | np.ndarray, margin: float = DEFAULT_MARGIN
               ) -> tuple[float, float, float]:
    """Centre ``(cx, cy)`` and side of the square crop around ``box`` with ``margin`` on each side."""
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max(x1 - x0, y1 - y0) * (1.0 + 2.0 * margin)
    if not np.isfinite(side) or side <= 0:
        raise ValueError(f"degenerate face box {box!r}")
    return (x0 + x1) / 2.0, (y0 + y1) / 2.0, side


def crop_affine(box: tuple[float, float, float, float] | np.ndarray, size: int,
                margin: float = DEFAULT_MARGIN) -> np.ndarray:
    """2x3 float64 affine mapping image pixels to the ``size`` x ``size`` square crop around ``box``.

    The box centre maps to the crop centre ``(size - 1) / 2`` and the square side (box side plus
    margin) maps to ``size`` pixels.  Use with ``cv2.warpAffine(image, A, (size, size))``.
    """
    cx, cy, side = square_box(box, margin)
    s = size / side
    c = (size - 1) / 2.0
    return np.array([[s, 0.0, c - s * cx], [0.0, s, c - s * cy]], dtype=np.float64)


def upright_crop_affine(landmarks: np.ndarray, angle: float, size: int, margin: float = DEFAULT_MARGIN
                        ) -> np.ndarray:
    """2x3 float64 affine cutting the crop of :func:`crop_affine` from a face turned upright: the image
    is rotated by ``-angle`` (radians; the angle of the face's eye line, image x towards image y) about
    the landmarks, and the landmark box of the rotated points, squared with ``margin``, maps to the
    ``size`` x ``size`` crop.  With ``angle = 0`` it equals ``crop_affine(landmark_box(landmarks))``."""
    lm = np.asarray(landmarks, dtype=np.float64).reshape(-1, 2)
    c, s_ = float(np.cos(angle)), float(np.sin(angle))
    rot = np.array([[c, s_], [-s_, c]])                            # rotation by -angle
    q = lm @ rot.T                                                 # the points turned upright
    cx, cy, side = square_box(landmark_box(q), margin)
    k = size / side
    centre = (size - 1) / 2.0
    lin = k * rot
    return np.concatenate([lin, (centre - k * np.array([cx, cy]))[:, None]], axis=1)


def invert_affine(affine: np.ndarray) -> np.ndarray:
    """Inverse of one 2x3 affine or a stack ``(..., 2, 3)`` of them."""
    a = np.asarray(affine, dtype=np.float64)
    lin = a[..., :2, :2]
    inv = np.linalg.inv(lin)
    t = -np.einsum("...ij,...j->...i", inv, a[..., :2, 2])
    return np.concatenate([inv, t[..., None]], axis=-1)


def apply_affine(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine (or ``(B, 2, 3)``) to ``(..., N, 2)`` points."""
    a = np.asarray(affine, dtype=np.float64)
    p = np.asarray(points, dtype=np.float64)
    return np.einsum("...ij,...nj->...ni", a[..., :2, :2], p) + a[..., None, :2, 2]


def to_model_coords(points: np.ndarray, size: int) -> np.ndarray:
    """Crop pixel coordinates -> model coordinates ``(p - (size - 1) / 2) / size``."""
    return (np.asarray(points, dtype=np.float32) - (size - 1) / 2.0) / size


def from_model_coords(coords: np.ndarray, size: int) -> np.ndarray:
    """Model coordinates -> crop pixel coordinates (inverse of :func:`to_model_coords`)."""
    return np.asarray(coords, dtype=np.float32) * size + (size - 1) / 2.0


def model_to_image_affine(affine: np.ndarray, size: int) -> np.ndarray:
    """2x3 float64 affine mapping the model coordinates of a crop cut by ``affine`` (2x3) straight to
    image pixels: :func:`from_model_coords` then the inverse of ``affine``, folded into one map (the
    per-face step of inference, in plain floats: no per-call NumPy linear algebra)."""
    (a, b, tx), (c, d, ty) = (tuple(float(v) for v in row) for row in np.asarray(affine)[:2])
    det = a * d - b * c
    if not np.isfinite(det) or det == 0:
        raise ValueError(f"singular crop affine {np.asarray(affine).tolist()}")
    ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det        # inverse linear part
    itx, ity = -(ia * tx + ib * ty), -(ic * tx + id_ * ty)
    centre = (size - 1) / 2.0
    # image = inv_lin @ (size * coords + centre) + inv_t
    return np.array([[ia * size, ib * size, itx + centre * (ia + ib)],
                     [ic * size, id_ * size, ity + centre * (ic + id_)]], dtype=np.float64)
