"""Synthetic test faces for checks and benchmarks: whole images, or crops cut as inference cuts them.

Used where a model must be run on face-like inputs without a dataset: the ONNX parity check and the
int8 calibration (:mod:`kdlandmark.infer.export`), the int8 accuracy comparison
(:mod:`kdlandmark.evaluate.synthetic`), the inference benchmark and the tests.
"""

from __future__ import annotations

import cv2
import numpy as np

from kdlandmark.data.crop import DEFAULT_MARGIN, crop_affine, landmark_box
from kdlandmark.data.synth.dataset import render_face
from kdlandmark.layouts import Layout, get_layout

__all__ = ["synthetic_faces", "synthetic_crops"]


def synthetic_faces(layout: Layout | str, count: int, *, seed: int = 0, size: int = 256
                    ) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` rendered faces as ``(image BGR uint8, landmarks (N, 2) float32)``, from ``seed``."""
    lay = get_layout(layout) if isinstance(layout, str) else layout
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        img, lm, _info = render_face(rng, lay, size)
        out.append((img, np.asarray(lm, np.float32)))
    return out


def synthetic_crops(layout: Layout | str, count: int, input_size: int, seed: int,
                    margin: float = DEFAULT_MARGIN) -> np.ndarray:
    """``(count, 3, S, S)`` float32 RGB ``[0, 1]`` crops of synthetic faces, cut as inference cuts them.

    Each face is cropped around its landmark box with ``crop_affine(box, S, margin)`` (the faces are
    rendered at twice the input size, at least 128 px).
    """
    faces = synthetic_faces(layout, count, seed=seed, size=max(2 * input_size, 128))
    crops = []
    for img, lm in faces:
        a = crop_affine(landmark_box(lm), input_size, margin)
        c = cv2.warpAffine(img, a, (input_size, input_size), flags=cv2.INTER_LINEAR)
        crops.append(c[:, :, ::-1].transpose(2, 0, 1).astype(np.float32) / 255.0)
    return np.ascontiguousarray(np.stack(crops))
