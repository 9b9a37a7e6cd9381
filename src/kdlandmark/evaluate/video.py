"""Scores of landmarks on video: per-frame NME and jitter (docs/EVALUATION.md section 8).  NumPy only.

For a clip of ``T`` frames with ground truth ``g_t`` and predictions ``p_t`` (``(N, 2)`` image pixels;
NaN rows for frames without a prediction), the error is ``e_t = p_t - g_t`` and

* **NME per frame**: ``mean_i |e_t,i| / d_t`` with ``d_t`` the layout's normalising distance of the
  truth (inter-ocular by default), as for still images;
* **jitter per frame**: ``mean_i |e_t,i - e_t-1,i| / d_t``, the frame-to-frame change of the *error*:
  the truth's own motion cancels, so a prediction that follows a moving face perfectly, or lags it by a
  constant offset, has no jitter; only changes of the error count, which is what a viewer sees shake.

Clip figures average over the frames where both are defined (a missing prediction leaves out its
frame and the pairs it belongs to); ``coverage`` is the share of frames with a prediction.
"""

from __future__ import annotations

import numpy as np

from kdlandmark.layouts import Layout

__all__ = ["frame_nme", "frame_jitter", "video_scores", "pooled_scores"]


def _check(pred: np.ndarray, truth: np.ndarray, layout: Layout) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pred, np.float64)
    g = np.asarray(truth, np.float64)
    if p.shape != g.shape or p.ndim != 3 or p.shape[1:] != (layout.num_points, 2):
        raise ValueError(f"predictions {p.shape} and truth {g.shape} must both be "
                         f"(T, {layout.num_points}, 2)")
    return p, g


def frame_nme(pred: np.ndarray, truth: np.ndarray, layout: Layout, normalisation: str = "inter-ocular"
              ) -> np.ndarray:
    """``(T,)`` NME of each frame (a fraction; NaN where the frame has no prediction)."""
    p, g = _check(pred, truth, layout)
    norm = layout.normaliser(g, normalisation)
    return np.linalg.norm(p - g, axis=-1).mean(axis=-1) / norm


def frame_jitter(pred: np.ndarray, truth: np.ndarray, layout: Layout, normalisation: str = "inter-ocular"
                 ) -> np.ndarray:
    """``(T - 1,)`` jitter between frames ``t - 1`` and ``t`` (a fraction of frame ``t``'s normaliser)."""
    p, g = _check(pred, truth, layout)
    norm = layout.normaliser(g, normalisation)
    e = p - g
    return np.linalg.norm(np.diff(e, axis=0), axis=-1).mean(axis=-1) / norm[1:]


def video_scores(pred: np.ndarray, truth: np.ndarray, layout: Layout, normalisation: str = "inter-ocular"
                 ) -> dict:
    """One clip's figures: ``nme`` and ``jitter`` (means over the defined frames, in %), ``coverage``
    (share of frames with a prediction), ``frames``, and the per-frame series (fractions; None where
    undefined) under ``series``."""
    nme = frame_nme(pred, truth, layout, normalisation)
    jit = frame_jitter(pred, truth, layout, normalisation)
    ok_n, ok_j = np.isfinite(nme), np.isfinite(jit)
    return {
        "frames": int(len(nme)),
        "coverage": float(ok_n.mean()) if len(nme) else 0.0,
        "nme": 100.0 * float(nme[ok_n].mean()) if ok_n.any() else None,
        "jitter": 100.0 * float(jit[ok_j].mean()) if ok_j.any() else None,
        "series": {"nme": [float(v) if np.isfinite(v) else None for v in nme],
                   "jitter": [float(v) if np.isfinite(v) else None for v in jit]},
    }


def pooled_scores(clips: list[dict]) -> dict:
    """Figures over several clips' :func:`video_scores`: per-frame NME and jitter pooled over all
    defined frames of all clips (each frame counts once), in %."""
    nme = np.array([v for c in clips for v in c["series"]["nme"] if v is not None])
    jit = np.array([v for c in clips for v in c["series"]["jitter"] if v is not None])
    frames = sum(c["frames"] for c in clips)
    return {"clips": len(clips), "frames": frames,
            "coverage": float(len(nme) / frames) if frames else 0.0,
            "nme": 100.0 * float(nme.mean()) if len(nme) else None,
            "jitter": 100.0 * float(jit.mean()) if len(jit) else None}
