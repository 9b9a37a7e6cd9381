"""Piecewise-affine image warps on a triangle mesh: the texture between matching points moves with them.

A source image with points ``src`` becomes an image in which the same texture sits at ``dst``; inside
each triangle of the mesh the mapping is the affine map of that triangle's corners, so a point of the
source that was labelled (a landmark) lands exactly on its destination.  One dense ``cv2.remap`` does
the work: the destination's pixels are labelled with their triangle (``cv2.fillConvexPoly`` into an
index image), and each pixel's source position is its triangle's affine map of the pixel.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["triangle_affines", "warp_mesh", "signed_areas"]

_SHIFT = 4  # sub-pixel bits of the rasteriser


def signed_areas(points: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Signed area of each triangle ``(T, 3)`` of ``(K, 2)`` points (positive: counter-clockwise in x-right,
    y-down image coordinates means clockwise on screen; only the sign's consistency matters)."""
    p = np.asarray(points, dtype=np.float64)[np.asarray(triangles)]
    a, b, c = p[:, 0], p[:, 1], p[:, 2]
    return 0.5 * ((b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0]))


def triangle_affines(src: np.ndarray, dst: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """``(T, 2, 3)`` affine maps taking each destination triangle onto its source triangle."""
    s = np.asarray(src, dtype=np.float64)[triangles]          # (T, 3, 2)
    d = np.asarray(dst, dtype=np.float64)[triangles]
    ones = np.ones((len(triangles), 3, 1))
    dh = np.concatenate([d, ones], axis=2)                      # (T, 3, 3): rows (x, y, 1)
    # solve dh @ A^T = s for each triangle; degenerate destination triangles get the identity-like
    # least-squares answer instead of an exception (they cover no pixel anyway)
    det = np.linalg.det(dh)
    ok = np.abs(det) > 1e-9
    out = np.zeros((len(triangles), 2, 3))
    if ok.any():
        out[ok] = np.linalg.solve(dh[ok], s[ok]).transpose(0, 2, 1)
    return out


def warp_mesh(image: np.ndarray, src: np.ndarray, dst: np.ndarray, triangles: np.ndarray,
              size: tuple[int, int], fallback: np.ndarray | None = None,
              border: int = cv2.BORDER_REFLECT_101, depth: np.ndarray | None = None) -> np.ndarray:
    """Warp ``image`` so that its points ``src`` move to ``dst`` (piecewise affine on ``triangles``).

    Args:
        image: source image (any channels, uint8 or float).
        src, dst: ``(K, 2)`` matching points, 0-based pixels of the source and destination images.
        triangles: ``(T, 3)`` point indices of the mesh (the same mesh in both images).
        size: destination ``(width, height)``.
        fallback: 2x3 destination-to-source affine for pixels outside every triangle (default: the
            least-squares affine of all points).
        border: how the source is extended beyond its edges.
        depth: ``(K,)`` depth of each destination point (larger: nearer the viewer).  When given, the
            triangles are drawn far to near (painter's algorithm) and triangles turned over between
            ``src`` and ``dst`` (facing away) are not drawn, so a turned head hides its far side behind
            the nose and cheek as a solid would.  Without it, every triangle is drawn, largest first.
    """
    w, h = int(size[0]), int(size[1])
    tris = np.asarray(triangles, dtype=np.int64)
    affines = triangle_affines(src, dst, tris)
    index = np.full((h, w), -1, np.int32)
    d = np.asarray(dst, dtype=np.float64)
    scaled = np.round(d * (1 << _SHIFT)).astype(np.int32)
    if depth is None:
        # the largest triangles first, so that slivers keep their own pixels on shared edges
        order = np.argsort(-np.abs(signed_areas(d, tris)))
    else:
        facing = np.sign(signed_areas(d, tris)) == np.sign(signed_areas(src, tris))
        order = np.argsort(np.asarray(depth, dtype=np.float64)[tris].mean(axis=1), kind="stable")
        order = order[facing[order]]
    for t in order:
        cv2.fillConvexPoly(index, scaled[tris[t]], int(t), cv2.LINE_8, _SHIFT)
    if fallback is None:
        dh = np.concatenate([d, np.ones((len(d), 1))], axis=1)
        fallback = np.linalg.lstsq(dh, np.asarray(src, dtype=np.float64), rcond=None)[0].T
    table = np.concatenate([affines, np.asarray(fallback, dtype=np.float64)[None]], axis=0)
    idx = np.where(index < 0, len(affines), index)
    a = table[idx].astype(np.float32)                            # (h, w, 2, 3)
    xs = np.arange(w, dtype=np.float32)[None, :]
    ys = np.arange(h, dtype=np.float32)[:, None]
    map_x = a[..., 0, 0] * xs + a[..., 0, 1] * ys + a[..., 0, 2]
    map_y = a[..., 1, 0] * xs + a[..., 1, 1] * ys + a[..., 1, 2]
    return cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=border)
