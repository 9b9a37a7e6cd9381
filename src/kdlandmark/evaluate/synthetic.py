"""Accuracy of a model on synthetic faces, and of one model against another (e.g. int8 against fp32).

No dataset needed: faces come from :func:`kdlandmark.data.synth.sample_faces.synthetic_faces`; each face
is cropped from its true landmark box, as the 300W test protocol does (REFERENCE.md section 5), and
scored with :func:`kdlandmark.evaluate.metrics.nme_per_image`.  A *landmarker* is anything with a
``layout`` and ``landmarks_in_boxes(image, boxes)`` (:class:`kdlandmark.infer.landmarker.Landmarker`),
so this module needs no inference code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from kdlandmark.data.crop import landmark_box
from kdlandmark.data.synth.sample_faces import synthetic_faces
from kdlandmark.evaluate.metrics import nme_per_image

__all__ = ["synthetic_nme", "compare_nme"]


def synthetic_nme(landmarker: Any, faces: Sequence[tuple[np.ndarray, np.ndarray]]
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Per-face inter-ocular NME and predictions of ``landmarker`` on ``faces``, cropped from the true box."""
    preds = np.stack([landmarker.landmarks_in_boxes(img, [landmark_box(lm)])[0] for img, lm in faces])
    gts = np.stack([lm for _, lm in faces])
    return nme_per_image(preds, gts, landmarker.layout), preds


def compare_nme(reference: Any, other: Any, *, count: int = 200, seed: int = 2024, size: int = 256) -> dict:
    """NME of ``other`` and of ``reference`` (two landmarkers of one layout) on ``count`` synthetic faces.

    Returns ``faces``, the mean NMEs ``nme_reference`` and ``nme_other``, their difference
    ``nme_change`` (other - reference; fractions) and ``mean_shift_px``, the mean distance between the
    two models' predictions in pixels.
    """
    if reference.layout.name != other.layout.name:
        raise ValueError(f"the models are for different layouts ({reference.layout.name}, "
                         f"{other.layout.name})")
    faces = synthetic_faces(reference.layout, count, seed=seed, size=size)
    nme_ref, p_ref = synthetic_nme(reference, faces)
    nme_oth, p_oth = synthetic_nme(other, faces)
    return {"faces": count, "nme_reference": float(nme_ref.mean()), "nme_other": float(nme_oth.mean()),
            "nme_change": float(nme_oth.mean() - nme_ref.mean()),
            "mean_shift_px": float(np.linalg.norm(p_oth - p_ref, axis=-1).mean())}
