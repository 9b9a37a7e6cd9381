"""Figures of the evaluation and the report: CED curves, subset bars, training curves, ASM curve, heat-maps.

Matplotlib's object-oriented API only (``Figure`` without pyplot): no global state, no GUI backend,
safe to call from any thread or a headless server.  Every function returns a ``Figure``;
:func:`png_bytes` renders it (the report embeds the bytes, the Markdown links the written file).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from kdlandmark.evaluate.metrics import auc, ced
from kdlandmark.layouts import Layout, polylines

__all__ = [
    "png_bytes",
    "save_png",
    "model_colours",
    "ced_figure",
    "subset_bars_figure",
    "read_metrics_csv",
    "loss_columns",
    "training_curves_figure",
    "asm_variance_figure",
    "landmark_heatmap_figure",
    "video_figure",
]

#: Columns of a trainer's ``metrics.csv`` that are not loss terms.
NON_LOSS_COLUMNS = frozenset({"epoch", "step", "lr", "best", "images_per_s", "train_seconds",
                              "epoch_seconds"})

_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
            "#bcbd22", "#17becf")


def png_bytes(fig: Figure, dpi: int = 100) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def save_png(fig: Figure, path: str | Path, dpi: int = 100) -> bytes:
    """Write the figure to ``path`` as PNG and return the bytes written."""
    data = png_bytes(fig, dpi)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return data


def model_colours(labels: Sequence[str]) -> dict[str, str]:
    """One fixed colour per model label, in order (the same model has the same colour in every figure)."""
    return {lab: _PALETTE[i % len(_PALETTE)] for i, lab in enumerate(labels)}


def ced_figure(curves: Mapping[str, Mapping[str, np.ndarray]], threshold: float = 0.10, *,
               colours: Mapping[str, str] | None = None, title: str | None = None) -> Figure:
    """Cumulative error distributions: one panel per subset, every model on it.

    The x axis spans ``[0, threshold]`` (the AUC's range) unless most faces of every model fail, in
    which case it widens to the models' 90th-percentile error with the threshold marked.

    Args:
        curves: subset -> model label -> per-image NME (fractions).
        threshold: upper end of the x axis and of the AUC in the legend.
    """
    subsets = list(curves)
    n = max(1, len(subsets))
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(4.6 * cols, 3.6 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    labels = list(dict.fromkeys(lab for c in curves.values() for lab in c))
    colours = dict(colours or model_colours(labels))
    for ax, subset in zip(axes, subsets, strict=False):
        errors = {lab: np.asarray(nme, dtype=np.float64) for lab, nme in curves[subset].items()
                  if np.size(nme)}
        # the protocol's range is [0, threshold]; when most faces of every model fail, that range is an
        # empty plot, so widen it to show where the errors are and mark the threshold
        x_max = threshold
        if errors and all(np.mean(e <= threshold) < 0.5 for e in errors.values()):
            x_max = float(min(1.0, 1.05 * max(np.quantile(e, 0.9) for e in errors.values())))
            ax.axvline(100 * threshold, color="grey", ls="--", lw=1)
        for lab, e in errors.items():
            x, y = ced(e, max(x_max, threshold), steps=1001)
            ax.plot(100 * x, y, color=colours.get(lab), lw=1.6,
                    label=f"{lab} (AUC@{threshold:g} {auc(e, threshold):.3f}, n={e.size})")
        ax.set_xlim(0, 100 * max(x_max, threshold))
        ax.set_ylim(0, 1.0)
        ax.set_xlabel("NME (%)")
        ax.set_ylabel("fraction of images")
        ax.set_title(subset)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    for ax in axes[len(subsets):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    return fig


def subset_bars_figure(values: Mapping[str, Mapping[str, tuple[float, float | None, float | None]]], *,
                       colours: Mapping[str, str] | None = None, title: str | None = None,
                       ylabel: str = "NME (%)") -> Figure:
    """Grouped bars: x = subsets, one bar per model, whiskers = 95 % interval where known.

    Args:
        values: model label -> subset -> ``(value, lo, hi)`` (lo/hi None when there is no interval).
    """
    labels = list(values)
    subsets = list(dict.fromkeys(s for v in values.values() for s in v))
    colours = dict(colours or model_colours(labels))
    fig = Figure(figsize=(max(5.0, 1.1 * len(subsets) * max(1, len(labels)) * 0.45 + 2), 3.8),
                 layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(1, len(labels))
    x = np.arange(len(subsets))
    for k, lab in enumerate(labels):
        vals = [values[lab].get(s, (np.nan, None, None)) for s in subsets]
        h = np.array([v[0] for v in vals], dtype=np.float64)
        lo = np.array([v[0] - v[1] if v[1] is not None else 0.0 for v in vals])
        hi = np.array([v[2] - v[0] if v[2] is not None else 0.0 for v in vals])
        pos = x - 0.4 + width * (k + 0.5)
        ax.bar(pos, h, width * 0.95, color=colours.get(lab), label=lab)
        ax.errorbar(pos, h, yerr=np.stack([lo, hi]), fmt="none", ecolor="black", elinewidth=0.8, capsize=2)
    ax.set_xticks(x, subsets, rotation=20 if len(subsets) > 4 else 0)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return fig


def read_metrics_csv(path: str | Path) -> dict[str, np.ndarray]:
    """Numeric columns of a trainer's ``metrics.csv`` (empty cells and text become NaN)."""
    p = Path(path)
    with open(p, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return {}
    out: dict[str, np.ndarray] = {}
    for col in rows[0]:
        vals = []
        for r in rows:
            try:
                vals.append(float(r.get(col) or "nan"))
            except ValueError:
                vals.append(float("nan"))
        arr = np.asarray(vals)
        if np.isfinite(arr).any():
            out[col] = arr
    return out


def loss_columns(columns: Sequence[str]) -> list[str]:
    """The loss-term columns of a ``metrics.csv`` (whatever terms the role logged: loss, l2, main, ...)."""
    return [c for c in columns if c not in NON_LOSS_COLUMNS and not c.startswith("val")]


def training_curves_figure(histories: Mapping[str, Mapping[str, np.ndarray]], *,
                           colours: Mapping[str, str] | None = None) -> Figure:
    """One row per model: loss terms (log scale), learning rate, validation NME (%) against epoch."""
    labels = list(histories)
    colours = dict(colours or model_colours(labels))
    rows = max(1, len(labels))
    fig = Figure(figsize=(13, 2.7 * rows), layout="constrained")
    axes = fig.subplots(rows, 3, squeeze=False)
    for r, lab in enumerate(labels):
        h = histories[lab]
        epoch = h.get("epoch", np.arange(1, 1 + max((len(v) for v in h.values()), default=0)))
        ax_loss, ax_lr, ax_val = axes[r]
        for k, col in enumerate(loss_columns(list(h))):
            y = h[col]
            style = "-" if col == "loss" else "--"
            y_plot = np.abs(y) if np.nanmin(y) < 0 else y
            name = col if np.nanmin(y) >= 0 else f"|{col}|"
            ax_loss.plot(epoch, y_plot, style, lw=1.4, label=name, color=_PALETTE[k % len(_PALETTE)])
        if ax_loss.lines:
            positive = all(np.nanmin(line.get_ydata()) > 0 for line in ax_loss.lines)
            if positive:
                ax_loss.set_yscale("log")
            ax_loss.legend(fontsize=7)
        ax_loss.set_title(f"{lab}: loss terms", fontsize=9)
        if "lr" in h:
            ax_lr.plot(epoch, h["lr"], color=colours.get(lab))
        ax_lr.set_title("learning rate", fontsize=9)
        for col, style in (("val_nme", "-"), ("val_nme_soft", "--")):
            if col in h:
                ax_val.plot(epoch, 100 * h[col], style, color=colours.get(lab), label=col)
        if ax_val.lines:
            ax_val.legend(fontsize=7)
        ax_val.set_title("validation NME (%)", fontsize=9)
        for ax in (ax_loss, ax_lr, ax_val):
            ax.set_xlabel("epoch", fontsize=8)
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=7)
            if not ax.lines:
                ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes,
                        color="grey")
    return fig


def asm_variance_figure(curve: Sequence[Mapping[str, float]], chosen: float | None = None) -> Figure:
    """Hard-vs-soft landmark NME (%) against the share of shape variance the ASM keeps."""
    rows = sorted(curve, key=lambda r: float(r["variance"]))
    v = np.array([100 * float(r["variance"]) for r in rows])
    nme = np.array([float(r["nme_percent"]) for r in rows])
    fig = Figure(figsize=(6, 3.6), layout="constrained")
    ax = fig.subplots()
    ax.plot(v, nme, "o-", color="#1f77b4")
    for r, x, y in zip(rows, v, nme, strict=True):
        ax.annotate(f"{int(r['components'])}", (x, y), textcoords="offset points", xytext=(0, 6), ha="center",
                    fontsize=7)
    if chosen is not None:
        ax.axvline(100 * float(chosen), color="#d62728", ls="--", lw=1, label=f"chosen {100 * chosen:g} %")
        ax.legend(fontsize=8)
    ax.set_xlabel("shape variance kept (%)  [labels: PCA components]")
    ax.set_ylabel("NME soft vs hard (%)")
    ax.grid(alpha=0.3)
    return fig


def landmark_heatmap_figure(mean_shape: np.ndarray, errors: Mapping[str, np.ndarray], layout: Layout, *,
                            cmap: str = "magma_r") -> Figure:
    """Per-landmark mean error (% of the normaliser) as colour on the mean face, one panel per model.

    All panels share one colour scale, so a point that is darker in one panel is worse there.
    """
    labels = list(errors)
    shape = np.asarray(mean_shape, dtype=np.float64)
    n = max(1, len(labels))
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(3.4 * cols + 0.8, 3.6 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    vmax = max((float(np.nanmax(e)) for e in errors.values() if np.size(e)), default=1.0)
    sc = None
    for ax, lab in zip(axes, labels, strict=False):
        for idx, closed in polylines(layout):
            pts = shape[list(idx) + ([idx[0]] if closed else [])]
            ax.plot(pts[:, 0], pts[:, 1], color="#bbbbbb", lw=0.8, zorder=1)
        sc = ax.scatter(shape[:, 0], shape[:, 1], c=np.asarray(errors[lab]), cmap=cmap, vmin=0.0, vmax=vmax,
                        s=28, edgecolors="black", linewidths=0.3, zorder=2)
        ax.set_aspect("equal")
        ax.invert_yaxis()
        ax.set_xticks([])
        ax.set_yticks([])
        worst = int(np.nanargmax(errors[lab]))
        ax.set_title(f"{lab}\nworst point {worst}: {float(errors[lab][worst]):.2f} %", fontsize=8)
    for ax in axes[len(labels):]:
        ax.set_visible(False)
    if sc is not None:
        fig.colorbar(sc, ax=list(axes[:len(labels)]), shrink=0.8, label="mean error (% of normaliser)")
    return fig


def video_figure(series: Mapping[str, Mapping[str, Sequence[float | None]]], *, title: str = "",
                 fps: float = 25.0) -> Figure:
    """Per-frame NME (top) and jitter (bottom), in %, of several modes on one clip.

    ``series``: mode -> ``{"nme": T values, "jitter": T - 1 values}`` (fractions; None where a frame has
    no prediction), as :func:`kdlandmark.evaluate.video.video_scores` gives them.
    """
    fig = Figure(figsize=(9.0, 5.6))
    ax_n, ax_j = fig.subplots(2, 1, sharex=True)
    colours = model_colours(list(series))
    for mode, s in series.items():
        nme = np.array([np.nan if v is None else 100.0 * v for v in s["nme"]])
        jit = np.array([np.nan if v is None else 100.0 * v for v in s["jitter"]])
        t = np.arange(len(nme)) / fps
        mean_j = np.nanmean(jit) if np.isfinite(jit).any() else float("nan")
        mean_n = np.nanmean(nme) if np.isfinite(nme).any() else float("nan")
        ax_n.plot(t, nme, color=colours[mode], lw=1.2, label=f"{mode} (mean {mean_n:.2f} %)")
        ax_j.plot(t[1:], jit, color=colours[mode], lw=1.2, label=f"{mode} (mean {mean_j:.3f} %)")
    ax_n.set_ylabel("NME per frame (%)")
    ax_j.set_ylabel("jitter |e(t) - e(t-1)| / IOD (%)")
    ax_j.set_xlabel("time (s)")
    for ax in (ax_n, ax_j):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper right")
        ax.set_ylim(bottom=0)
    if title:
        ax_n.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig
