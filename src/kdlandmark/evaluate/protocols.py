"""The benchmarks' test protocols: which prepared splits and attribute filters make each subset.

Predictions are made on the test crop (from the dataset's face box, REFERENCE.md section 5), mapped
back through the crop affine and scored in original image pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from kdlandmark.data.crop import apply_affine, invert_affine
from kdlandmark.evaluate.metrics import Summary, nme_per_image, summarise

WFLW_ATTRIBUTES = ("pose", "expression", "illumination", "makeup", "occlusion", "blur")

__all__ = ["Subset", "SUBSETS", "subsets_for", "ground_truth_px", "score_subsets"]


@dataclass(frozen=True)
class Subset:
    """One reported subset: the prepared splits it pools and an optional per-face attribute flag."""

    name: str
    splits: tuple[str, ...]
    attribute: str | None = None


SUBSETS: dict[str, tuple[Subset, ...]] = {
    "300w": (
        Subset("common", ("test-common",)),
        Subset("challenging", ("test-challenging",)),
        Subset("full", ("test-common", "test-challenging")),
        Subset("private", ("test-private",)),
    ),
    "wflw": (
        Subset("full", ("test",)),
        *(Subset(a, ("test",), a) for a in WFLW_ATTRIBUTES),
    ),
    "cofw": (Subset("test", ("test",)),),
    "folder": (Subset("all", ("all",)),),
}


def subsets_for(dataset: str, available_splits: list[str]) -> list[Subset]:
    """The dataset's subsets whose splits are all present (e.g. 300W private only when prepared)."""
    if dataset not in SUBSETS:
        raise ValueError(f"no evaluation protocol for dataset {dataset!r}; known: {', '.join(SUBSETS)}")
    return [s for s in SUBSETS[dataset] if all(sp in available_splits for sp in s.splits)]


def ground_truth_px(landmarks_stored: np.ndarray, affines: np.ndarray) -> np.ndarray:
    """Original-image landmarks from stored-crop landmarks and their image->crop affines."""
    return apply_affine(invert_affine(affines), landmarks_stored)


def score_subsets(dataset: str, layout, predictions: dict[str, np.ndarray], truths: dict[str, np.ndarray],
                  attributes: dict[str, list[dict]], *, normalisation: str = "inter-ocular",
                  threshold: float = 0.10,
                  on_subset: Callable[[Subset, np.ndarray], None] | None = None) -> dict[str, Summary]:
    """Summaries per subset from per-split predictions and ground truths in image pixels."""
    out: dict[str, Summary] = {}
    for subset in subsets_for(dataset, list(predictions)):
        preds, gts = [], []
        for sp in subset.splits:
            keep = np.ones(len(predictions[sp]), bool)
            if subset.attribute is not None:
                keep = np.array([bool(a.get(subset.attribute, False)) for a in attributes[sp]], bool)
            preds.append(predictions[sp][keep])
            gts.append(truths[sp][keep])
        p, g = np.concatenate(preds), np.concatenate(gts)
        if len(p) == 0:
            continue
        nme = nme_per_image(p, g, layout, normalisation)
        out[subset.name] = summarise(nme, threshold)
        if on_subset is not None:
            on_subset(subset, nme)
    return out
