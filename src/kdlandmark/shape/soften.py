"""The ASM stage on a prepared set: fit on the training shapes, store soft landmarks beside them.

``kdlandmark asm`` and the pipeline's ASM stage call :func:`soften_prepared`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kdlandmark.evaluate.metrics import nme_per_image
from kdlandmark.shape.asm import CLIP_SIGMAS, ShapeModel, fit_asm

__all__ = ["VARIANCE_LEVELS", "soften_prepared", "variance_curve", "comparison_figure"]

#: Variance levels reported next to the chosen one (hard vs soft NME).
VARIANCE_LEVELS = (1.0, 0.99, 0.97, 0.95, 0.9, 0.85, 0.8, 0.7)


def variance_curve(shapes: np.ndarray, layout, levels=VARIANCE_LEVELS, *, procrustes: bool = True,
                   clip: float | None = CLIP_SIGMAS, max_iter: int = 20) -> list[dict[str, float]]:
    """For each variance level: kept components and mean NME (%) between hard and soft landmarks."""
    rows = []
    for v in levels:
        model = fit_asm(shapes, v, procrustes=procrustes, clip=clip, max_iter=max_iter)
        nme = nme_per_image(model.soften(shapes), shapes, layout)
        rows.append({"variance": float(v), "components": model.num_components,
                     "nme_percent": 100 * float(nme.mean())})
    return rows


def comparison_figure(prepared, split: str, soft: np.ndarray, path: Path, count: int = 8) -> None:
    """PNG grid of training crops with hard (green) and soft (red) landmarks."""
    import cv2

    from kdlandmark.draw import draw_landmarks, image_grid

    sp = prepared.split(split)
    idx = np.linspace(0, len(sp) - 1, min(count, len(sp))).astype(int)
    tiles = []
    for i in idx:
        im = cv2.cvtColor(np.asarray(sp.images[i]), cv2.COLOR_RGB2BGR)
        im = draw_landmarks(im, sp.landmarks[i], prepared.layout, color=(0, 200, 0), lines=True)
        im = draw_landmarks(im, soft[i], prepared.layout, color=(0, 0, 255), lines=True)
        tiles.append(im)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), image_grid(tiles, cols=min(4, len(tiles))))


def soften_prepared(data: str | Path, variance: float = 0.9, *, procrustes: bool = True,
                    clip: float | None = CLIP_SIGMAS, max_iter: int = 20, out: str | Path | None = None,
                    split: str = "train", report: bool = True) -> ShapeModel:
    """Fit the ASM on ``split`` of the prepared set ``data`` and write its soft landmarks.

    ``variance``, ``procrustes``, ``clip`` and ``max_iter`` are :func:`~kdlandmark.shape.asm.fit_asm`'s
    (the pipeline passes the ``asm`` section of the experiment config).

    Writes ``<split>/soft_landmarks.npy`` into the prepared set, the shape model as
    ``<out>/asm.safetensors`` + ``.json``, ``<out>/asm_variance.json`` (the hard-vs-soft curve) and
    ``<out>/asm_hard_vs_soft.png``.  ``out`` defaults to ``<data>/asm``.
    """
    from kdlandmark.data.store import PreparedSet, write_soft_landmarks

    prepared = PreparedSet(data)
    out_dir = Path(out) if out is not None else Path(data) / "asm"
    out_dir.mkdir(parents=True, exist_ok=True)
    shapes = np.asarray(prepared.split(split).landmarks, dtype=np.float64)
    model = fit_asm(shapes, variance, procrustes=procrustes, clip=clip, max_iter=max_iter)
    soft = model.soften(shapes).astype(np.float32)
    write_soft_landmarks(prepared.root, split, soft)
    model.save(out_dir / "asm")
    curve = variance_curve(shapes, prepared.layout, procrustes=procrustes, clip=clip, max_iter=max_iter)
    chosen = 100 * float(nme_per_image(soft, shapes, prepared.layout).mean())
    (out_dir / "asm_variance.json").write_text(json.dumps(
        {"variance": variance, "procrustes": procrustes, "components": model.num_components,
         "nme_percent": chosen, "curve": curve}, indent=2))
    comparison_figure(PreparedSet(data), split, soft, out_dir / "asm_hard_vs_soft.png")
    if report:
        print(f"ASM on {len(shapes)} '{split}' shapes ({'Procrustes + ' if procrustes else ''}PCA): "
              f"{model.num_components} components keep {variance:.0%} of the variance; "
              f"hard vs soft NME {chosen:.2f}%")
        print("  variance  components  NME(hard, soft) %")
        for row in curve:
            print(f"  {row['variance']:8.2f}  {row['components']:10d}  {row['nme_percent']:8.3f}")
        print(f"  picture: {out_dir / 'asm_hard_vs_soft.png'}")
    return model
