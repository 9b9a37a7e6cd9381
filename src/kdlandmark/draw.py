"""Drawing landmarks and image grids: the one implementation behind synthetic contact sheets, the ASM
figure, report pictures and prediction overlays."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from kdlandmark.layouts import Layout, polylines

__all__ = ["draw_landmarks", "image_grid"]


def draw_landmarks(image: np.ndarray, landmarks: np.ndarray, layout: Layout | None = None, *,
                   color: tuple[int, int, int] = (0, 255, 0), radius: float | None = None,
                   lines: bool = True, occluded: np.ndarray | None = None,
                   occluded_color: tuple[int, int, int] | None = None) -> np.ndarray:
    """A copy of ``image`` (H, W, 3 uint8, any channel order) with ``landmarks`` drawn on it.

    Parts of ``layout`` are joined by thin lines when ``lines``.  Occluded points are drawn hollow in
    ``color``, or filled in ``occluded_color`` when that is given.  ``radius`` in pixels (default: about
    one per 160 pixels of the shorter side).  Sub-pixel positions are kept (OpenCV ``shift`` of 4 bits).
    """
    out = np.ascontiguousarray(image.copy())
    h, w = out.shape[:2]
    r16 = int((radius if radius is not None else max(1, round(min(h, w) / 160))) * 16)
    pts = np.round(np.asarray(landmarks, dtype=np.float64) * 16).astype(np.int32)
    if lines and layout is not None:
        for idx, closed in polylines(layout):
            cv2.polylines(out, [pts[list(idx)]], closed, color, 1, cv2.LINE_AA, shift=4)
    for i, p in enumerate(pts):
        hidden = occluded is not None and bool(occluded[i])
        if hidden and occluded_color is not None:
            cv2.circle(out, (int(p[0]), int(p[1])), r16, occluded_color, -1, cv2.LINE_AA, shift=4)
        else:
            cv2.circle(out, (int(p[0]), int(p[1])), r16, color, 1 if hidden else -1, cv2.LINE_AA, shift=4)
    return out


def image_grid(images: Sequence[np.ndarray], cols: int, pad: int = 2, background: int = 255) -> np.ndarray:
    """Tile same-sized ``images`` into a grid with ``cols`` columns."""
    if not images:
        raise ValueError("image_grid needs at least one image")
    h, w = images[0].shape[:2]
    rows = -(-len(images) // cols)
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), background, np.uint8)
    for k, im in enumerate(images):
        r, c = divmod(k, cols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        grid[y:y + h, x:x + w] = im if im.ndim == 3 else im[..., None]
    return grid
