"""Scores of per-landmark confidence: occlusion classification, NME of visible and occluded points, and
how well a predicted error ranks the true one.  NumPy and SciPy only; docs/EVALUATION.md section 7.

* **Occlusion** (data with occlusion flags, e.g. COFW): the model's ``1 - visibility`` scores each
  point as occluded.  Reported: the ROC AUC (ties counted half, the Mann-Whitney statistic), the
  average precision, **recall at 80 % precision** (the largest recall among thresholds whose precision
  is at least 0.8, as COFW papers report it) and precision at 50 % recall, with the counts.
* **NME of visible and of occluded points**: the point errors over the normalising distance, pooled
  over all visible (resp. occluded) points of the subset, in % (needs no head; any data with flags).
* **Error ranking**: Spearman's rank correlation between the predicted error of each point and its
  true error (both over the face's normalising distance): over all points of all faces (``points``),
  between each face's mean predicted error and its NME (``faces``), and within each face across its
  points, averaged over faces (``within_face``).  ``calibration``: mean predicted error over mean true
  error (1 = right on average).

A score that does not exist (an AUC without occluded points, a correlation of constant values) is None.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata, spearmanr

__all__ = [
    "roc_auc",
    "precision_recall",
    "recall_at_precision",
    "precision_at_recall",
    "occlusion_scores",
    "visible_occluded_nme",
    "error_ranking",
    "OCCLUSION_PRECISION",
]

#: The precision at which COFW papers report the occlusion recall.
OCCLUSION_PRECISION = 0.8


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for the positive ``labels`` (ties count half); NaN when
    one class is missing."""
    y = np.asarray(labels, bool).ravel()
    s = np.asarray(scores, np.float64).ravel()
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg))


def precision_recall(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall when everything scoring at least each distinct score (highest first) is
    called positive."""
    y = np.asarray(labels, bool).ravel()
    s = np.asarray(scores, np.float64).ravel()
    order = np.argsort(-s, kind="stable")
    y, s = y[order], s[order]
    tp = np.cumsum(y)
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]     # the end of each run of equal scores
    tp = tp[last].astype(np.float64)
    called = (last + 1).astype(np.float64)
    pos = max(int(y.sum()), 1)
    return tp / called, tp / pos


def recall_at_precision(labels: np.ndarray, scores: np.ndarray, precision: float = OCCLUSION_PRECISION
                        ) -> float:
    """The largest recall among thresholds whose precision is at least ``precision`` (0 if none)."""
    p, r = precision_recall(labels, scores)
    ok = p >= precision
    return float(r[ok].max()) if ok.any() else 0.0


def precision_at_recall(labels: np.ndarray, scores: np.ndarray, recall: float = 0.5) -> float:
    """The largest precision among thresholds whose recall is at least ``recall``."""
    p, r = precision_recall(labels, scores)
    ok = r >= recall
    return float(p[ok].max()) if ok.any() else 0.0


def occlusion_scores(occluded: np.ndarray, visibility: np.ndarray) -> dict:
    """Occlusion classification of all points: ``occluded`` ``(M, N)`` bool flags, ``visibility``
    ``(M, N)`` predicted probabilities.  Fractions, not %."""
    y = np.asarray(occluded, bool).ravel()
    score = 1.0 - np.asarray(visibility, np.float64).ravel()
    if y.shape != score.shape:
        raise ValueError(f"occlusion flags {np.shape(occluded)} and visibility {np.shape(visibility)} differ")
    p, r = precision_recall(y, score)
    ap = float(np.sum(np.diff(np.r_[0.0, r]) * p)) if y.any() else float("nan")
    called = score >= 0.5
    return _finite({
        "points": int(y.size), "occluded": int(y.sum()),
        "auc": roc_auc(y, score),
        "average_precision": ap,
        "recall_at_80_precision": recall_at_precision(y, score, OCCLUSION_PRECISION),
        "precision_at_50_recall": precision_at_recall(y, score, 0.5),
        "precision_at_0.5": float((y & called).sum() / max(called.sum(), 1)),
        "recall_at_0.5": float((y & called).sum() / max(y.sum(), 1)),
    })


def _finite(d: dict) -> dict:
    """NaN (a score that does not exist, e.g. an AUC without occluded points) as None: plain JSON."""
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in d.items()}


def _point_errors(pred: np.ndarray, gt: np.ndarray, norm: np.ndarray) -> np.ndarray:
    return np.linalg.norm(np.asarray(pred, np.float64) - np.asarray(gt, np.float64), axis=-1) / \
        np.asarray(norm, np.float64)[:, None]


def visible_occluded_nme(pred: np.ndarray, gt: np.ndarray, occluded: np.ndarray, norm: np.ndarray) -> dict:
    """NME (%) pooled over the visible and over the occluded points (None where there are none)."""
    err = _point_errors(pred, gt, norm)
    occ = np.asarray(occluded, bool)
    vis = err[~occ]
    hid = err[occ]
    return {"nme_visible": 100.0 * float(vis.mean()) if vis.size else None,
            "nme_occluded": 100.0 * float(hid.mean()) if hid.size else None,
            "visible_points": int(vis.size), "occluded_points": int(hid.size)}


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.ravel(a), np.ravel(b)
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def error_ranking(error_px: np.ndarray, pred: np.ndarray, gt: np.ndarray, norm: np.ndarray) -> dict:
    """How the predicted point errors (image pixels, ``(M, N)``) rank the true ones (see the module)."""
    true = _point_errors(pred, gt, norm)
    guess = np.asarray(error_px, np.float64) / np.asarray(norm, np.float64)[:, None]
    if guess.shape != true.shape:
        raise ValueError(f"predicted errors {guess.shape} and points {true.shape} differ")
    within = [_spearman(g, t) for g, t in zip(guess, true, strict=True)]
    within = [v for v in within if np.isfinite(v)]
    return _finite({"spearman_points": _spearman(guess, true),
                    "spearman_faces": _spearman(guess.mean(axis=1), true.mean(axis=1)),
                    "spearman_within_face": float(np.mean(within)) if within else float("nan"),
                    "calibration": float(guess.mean() / max(true.mean(), 1e-12))})
