"""Landmark error metrics as the literature computes them: NME per image, failure rate, AUC of the CED.

All functions take landmarks in one common frame (original image pixels by the protocol); the
normalising distance comes from the ground truth through the layout (REFERENCE.md section 5).

Uncertainty: :func:`bootstrap_ci` gives a percentile bootstrap interval of the mean NME over images,
and :func:`paired_bootstrap` tests whether two models evaluated on the *same* images differ, by
resampling the per-image NME differences (pairing removes the image-difficulty variance, which is
far larger than the difference between two good models).  docs/EVALUATION.md has the definitions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kdlandmark.layouts import Layout

__all__ = [
    "nme_per_image",
    "per_landmark_error",
    "failure_rate",
    "auc",
    "ced",
    "Summary",
    "summarise",
    "bootstrap_means",
    "bootstrap_ci",
    "PairedTest",
    "paired_bootstrap",
]


def nme_per_image(pred: np.ndarray, gt: np.ndarray, layout: Layout, normalisation: str = "inter-ocular",
                  *, norm: np.ndarray | None = None) -> np.ndarray:
    """``(M,)`` mean point-to-point error of each image divided by its normalising distance.

    ``pred`` and ``gt`` are ``(M, N, 2)`` (or ``(N, 2)`` for one image) in the same frame (image pixels
    by the protocol; the trainer's validation uses model coordinates).  ``norm``: the ``(M,)``
    normalising distances to use instead of ``gt``'s (the Tolerant-Teacher's error to its soft
    landmarks is normalised by the hard shape's distance).
    """
    p = np.asarray(pred, dtype=np.float64)
    g = np.asarray(gt, dtype=np.float64)
    if p.shape != g.shape or p.shape[-2:] != (layout.num_points, 2):
        raise ValueError(f"pred {p.shape} and gt {g.shape} must both be (..., {layout.num_points}, 2)")
    err = np.linalg.norm(p - g, axis=-1).mean(axis=-1)
    norm = layout.normaliser(g, normalisation) if norm is None else np.asarray(norm, dtype=np.float64)
    if np.shape(norm) != np.shape(err):
        raise ValueError(f"norm {np.shape(norm)} must have one distance per image {np.shape(err)}")
    if np.any(norm <= 0):
        raise ValueError("a ground-truth shape has a zero normalising distance")
    return np.atleast_1d(err / norm)


def per_landmark_error(pred: np.ndarray, gt: np.ndarray, layout: Layout, normalisation: str = "inter-ocular"
                       ) -> np.ndarray:
    """``(N,)`` mean error of each landmark over the images, each image's error over its normaliser.

    The mean of the returned vector equals the mean NME of the same images (both average the same
    ``M x N`` normalised distances), which is what makes a per-landmark heat-map add up to the table.
    """
    p = np.asarray(pred, dtype=np.float64)
    g = np.asarray(gt, dtype=np.float64)
    if p.ndim == 2:
        p, g = p[None], g[None]
    if p.shape != g.shape or p.shape[-2:] != (layout.num_points, 2):
        raise ValueError(f"pred {p.shape} and gt {g.shape} must both be (M, {layout.num_points}, 2)")
    if len(p) == 0:
        return np.full(layout.num_points, np.nan)
    norm = layout.normaliser(g, normalisation)
    if np.any(norm <= 0):
        raise ValueError("a ground-truth shape has a zero normalising distance")
    return (np.linalg.norm(p - g, axis=-1) / norm[:, None]).mean(axis=0)


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
    """NME (mean, as a fraction), failure rate and AUC at ``threshold``, over ``count`` images.

    ``nme_ci95`` is the 95 % bootstrap interval of the mean NME (fractions), when it was computed.
    """

    nme: float
    failure_rate: float
    auc: float
    count: int
    threshold: float
    nme_ci95: tuple[float, float] | None = None

    def as_percent(self) -> dict[str, float]:
        """NME and FR in %, AUC as a fraction (the usual table units); the CI in % when present."""
        out: dict = {"nme": 100 * self.nme, "fr": 100 * self.failure_rate, "auc": self.auc,
                     "count": self.count}
        if self.nme_ci95 is not None:
            out["nme_ci95"] = [100 * self.nme_ci95[0], 100 * self.nme_ci95[1]]
        return out


def summarise(nme: np.ndarray, threshold: float = 0.10, *, bootstrap: int = 0, seed: int = 0) -> Summary:
    """Summary of per-image NMEs; ``bootstrap > 0`` adds a 95 % interval from that many resamples."""
    e = np.asarray(nme, dtype=np.float64)
    ci = bootstrap_ci(e, bootstrap, seed=seed) if bootstrap > 0 and e.size else None
    return Summary(float(e.mean()), failure_rate(e, threshold), auc(e, threshold), int(e.size), threshold, ci)


# --------------------------------------------------------------------------------------------- bootstrap
def bootstrap_means(values: np.ndarray, resamples: int = 1000, *, seed: int = 0, chunk: int = 256
                    ) -> np.ndarray:
    """``(resamples,)`` means of ``values`` resampled with replacement (same size, fixed ``seed``).

    Drawn in chunks so that memory stays at ``chunk x len(values)`` indices whatever ``resamples``.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError("bootstrap needs at least one value")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    rng = np.random.default_rng(seed)
    out = np.empty(resamples)
    for start in range(0, resamples, chunk):
        k = min(chunk, resamples - start)
        out[start:start + k] = v[rng.integers(0, v.size, (k, v.size))].mean(axis=1)
    return out


def bootstrap_ci(values: np.ndarray, resamples: int = 1000, *, confidence: float = 0.95, seed: int = 0
                 ) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (``confidence`` two-sided)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    means = bootstrap_means(values, resamples, seed=seed)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


@dataclass
class PairedTest:
    """Paired bootstrap comparison of model B against model A on the same images.

    Attributes:
        mean_diff: mean over images of ``nme_b - nme_a`` (negative: B is better), a fraction.
        ci95: percentile bootstrap interval of ``mean_diff`` at ``confidence``.
        p_value: two-sided bootstrap p-value, ``2 * min(P(d* <= 0), P(d* >= 0))`` over the resampled
            mean differences ``d*`` (capped at 1; a value at the resolution ``1 / resamples`` means "below").
        significant: the interval excludes 0 and ``p_value < 1 - confidence`` (the two agree except
            within one resample of the border, where both must hold).
        count: images compared.
        resamples, confidence: the bootstrap's settings.
    """

    mean_diff: float
    ci95: tuple[float, float]
    p_value: float
    significant: bool
    count: int
    resamples: int
    confidence: float

    def to_json(self) -> dict:
        return {"mean_diff": self.mean_diff, "ci95": list(self.ci95), "p_value": self.p_value,
                "significant": self.significant, "count": self.count, "resamples": self.resamples,
                "confidence": self.confidence}


def paired_bootstrap(nme_a: np.ndarray, nme_b: np.ndarray, resamples: int = 1000, *, confidence: float = 0.95,
                     seed: int = 0) -> PairedTest:
    """Is model B's mean NME different from model A's on the same images?

    Resamples the images (the pairs ``(a_i, b_i)`` together) and looks at the mean of ``b_i - a_i``;
    the difference is *significant* when its percentile interval excludes zero.  Identical models give
    a zero difference on every resample, hence an interval ``[0, 0]``, p = 1 and "not significant".
    """
    a = np.asarray(nme_a, dtype=np.float64).ravel()
    b = np.asarray(nme_b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired comparison needs the same images: {a.size} vs {b.size} NME values")
    d = b - a
    means = bootstrap_means(d, resamples, seed=seed)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = (float(x) for x in np.quantile(means, [alpha, 1.0 - alpha]))
    p = min(1.0, 2.0 * min(float(np.mean(means <= 0)), float(np.mean(means >= 0))))
    # both criteria, so that the verdict agrees with the interval and the p-value shown next to it
    # (they can disagree by one resample's worth at the border because of quantile interpolation)
    significant = bool((lo > 0 or hi < 0) and p < 1.0 - confidence)
    return PairedTest(float(d.mean()), (lo, hi), p, significant, int(d.size), int(resamples),
                      float(confidence))
