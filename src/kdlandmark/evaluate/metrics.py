"""Landmark error metrics as the literature computes them: NME per image, failure rate, AUC of the CED.

All functions take landmarks in one common frame (original image pixels by the protocol); the
normalising distance comes from the ground truth through the layout (REFERENCE.md section 5).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kdlandmark.layouts import Layout

__all__ = ["nme_per_image", "failure_rate", "auc", "ced", "Summary", "summarise"]


def nme_per_image(pred: np.ndarray, gt: np.ndarray, layout: Layout, normalisation: str = "inter-ocular"
                  ) -> np.ndarray:
    """``(M,)`` mean point-to-point error of each image divided by its normalising distance.

    ``pred`` and ``gt`` are ``(M, N, 2)`` (or ``(N, 2)`` for one image) in the same pixel frame.
    """
    p = np.asarray(pred, dtype=np.float64)
    g = np.asarray(gt, dtype=np.float64)
    if p.shape != g.shape or p.shape[-2:] != (layout.num_points, 2):
        raise ValueError(f"pred {p.shape} and gt {g.shape} must both be (..., {layout.num_points}, 2)")
    err = np.linalg.norm(p - g, axis=-1).mean(axis=-1)
    norm = layout.normaliser(g, normalisation)
    if np.any(norm <= 0):
        raise ValueError("a ground-truth shape has a zero normalising distance")
    return np.atleast_1d(err / norm)


def failure_rate(nme: np.ndarray, threshold: float = 0.10) -> float:
    """Share of images whose NME is above ``threshold``."""
    return float(np.mean(np.asarray(nme) > threshold))


def ced(nme: np.ndarray, threshold: float = 0.10, steps: int = 10001) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative error distribution on ``steps`` evenly spaced errors from 0 to ``threshold``."""
    x = np.linspace(0.0, threshold, steps)
    e = np.sort(np.asarray(nme, dtype=np.float64))
    y = np.searchsorted(e, x, side="right") / max(len(e), 1)
    return x, y


def auc(nme: np.ndarray, threshold: float = 0.10) -> float:
    """Area under the CED from 0 to ``threshold``, divided by ``threshold`` (exact, not sampled).

    The CED is a step function, so its integral is exact: each image with error e <= t contributes
    (t - e) / t.
    """
    e = np.asarray(nme, dtype=np.float64)
    if e.size == 0:
        return float("nan")
    return float(np.sum(np.clip(threshold - e, 0.0, None)) / (threshold * e.size))


@dataclass
class Summary:
    """NME (mean, as a fraction), failure rate and AUC at ``threshold``, over ``count`` images."""

    nme: float
    failure_rate: float
    auc: float
    count: int
    threshold: float

    def as_percent(self) -> dict[str, float]:
        return {"nme": 100 * self.nme, "fr": 100 * self.failure_rate, "auc": self.auc, "count": self.count}


def summarise(nme: np.ndarray, threshold: float = 0.10) -> Summary:
    e = np.asarray(nme, dtype=np.float64)
    return Summary(float(e.mean()), failure_rate(e, threshold), auc(e, threshold), int(e.size), threshold)
