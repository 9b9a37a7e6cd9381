"""Real appearance for synthetic faces: a small pool of real faces warped onto new shapes and poses.

The renderer's faces are drawn, not photographed, and a model trained on them alone misses real faces
(docs/SYNTH.md).  This module takes its appearance from real photographs instead: each face of a
*pool* (images with 68 landmarks, e.g. ``../shared/realfaces/pool``) is

1. **lifted to 3D**: the renderer's mean head (:mod:`kdlandmark.data.synth.face`) is posed onto the
   face's landmarks (weak perspective, least squares), and each landmark gets that head's depth while
   keeping its own image position, so the real landmark geometry is kept and only depth is borrowed;
   anchor points on the forehead, the temples and the neck, and two rings around the head, hold the
   rest of the picture;
2. **re-shaped and re-posed**: the identity and expression of a random synthetic face are added as a
   displacement of the 3D points (mouth opening, smiles, closed eyes, brows, face proportions), and the
   head is turned to a new yaw, pitch and roll;
3. **warped**: the photograph is warped piecewise-affinely on one fixed triangle mesh from the old
   points to the new ones (:func:`kdlandmark.data.synth.warp.warp_mesh`), so every landmark lands
   exactly where the texture that was labelled there lands: the new landmarks are exact with respect
   to the labelled image;
4. **re-dressed**: optionally the eyes, nose and mouth of a second pool face (warped onto the same
   shape) are blended in, the background outside the head is replaced, glasses are drawn, an opened
   mouth gets a dark interior, and colour, light, resolution, blur, noise and JPEG are randomised
   (:class:`PoolStyle`; each step can be switched off, which is how docs/SYNTH.md measures them).

Only the geometry of the renderer is used here; whether the renderer's own drawn faces are mixed into
a dataset is the caller's choice (:func:`kdlandmark.data.synth.dataset.synthesize`, ``pool_fraction``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from kdlandmark.config import PoolStyle
from kdlandmark.data.synth.face import (
    FaceShape,
    Geometry,
    build_geometry,
    landmarks_3d,
    rotation,
    sample_shape,
)
from kdlandmark.data.synth.render import PIVOT, Camera, _background, render
from kdlandmark.data.synth.warp import signed_areas, warp_mesh
from kdlandmark.layouts import Layout, get_layout

__all__ = ["PoolFace", "PoolStyle", "load_pool", "render_pool_face", "POOL_LAYOUT"]

#: Pool faces carry 68 points (the 300W scheme); the landmarks they lend are that layout's.
POOL_LAYOUT = "300w"

# ------------------------------------------------------------------------------------ the head model

#: Forehead rows (head-frame y) and their points as fractions of the head's half-width at that row.
_FOREHEAD_ROWS = (-0.45, -0.8, -1.1)
_FOREHEAD_X = (-0.9, -0.45, 0.0, 0.45, 0.9)
#: Rings around the head (radius in head units about the point (0, 0.2)) in the plane of the pivot:
#: the background, hair and shoulders turn with the head, so nothing tears between face and scene.
_RINGS = ((2.0, 12), (7.0, 8))
_RING_CENTRE = np.array([0.0, 0.2])


def _anchors(geo: Geometry) -> np.ndarray:
    """Head-frame points that hold the picture around the landmarks: forehead rows, the temples at eye
    level, the top of the head and the neck."""
    sh = geo.shape
    pts = []
    for y in _FOREHEAD_ROWS:
        a = float(geo.rows(np.array([y]))[0][0])
        xs = np.asarray(_FOREHEAD_X) * a
        zs = geo.face_z(xs, np.full_like(xs, y))
        pts += [(x, y, z) for x, z in zip(xs, zs, strict=True)]
    a, z0, _, _ = geo.rows(np.array([-0.2]))
    pts += [(-float(a[0]), -0.2, float(z0[0])), (float(a[0]), -0.2, float(z0[0]))]
    top = sh.top + 0.04
    pts.append((0.0, top, float(geo.face_z(np.array([0.0]), np.array([top]))[0])))
    neck_y = sh.chin + 0.35
    pts += [(-0.38, neck_y, -0.55), (0.0, neck_y, -0.45), (0.38, neck_y, -0.55)]
    return np.asarray(pts, dtype=np.float64)


def _ring_points() -> np.ndarray:
    out = []
    for radius, n in _RINGS:
        t = np.linspace(0.0, 2 * np.pi, n, endpoint=False) + np.pi / n
        xy = _RING_CENTRE + radius * np.column_stack([np.cos(t), np.sin(t)])
        out.append(np.column_stack([xy, np.full(n, PIVOT[2])]))
    return np.concatenate(out)


@dataclass(frozen=True)
class _Model:
    layout: Layout
    landmarks: np.ndarray   # (N, 3) mean face
    anchors: np.ndarray     # (A, 3) mean face: forehead, temples, head top, neck, then the rings
    triangles: np.ndarray   # (T, 3) over N + A points
    mouth_inner: tuple[int, ...]
    face_outline: np.ndarray  # indices (into N + A) of the head outline, for the head mask
    neck: np.ndarray          # indices (into N + A) of the neck anchors
    side: np.ndarray          # indices (into N + A) of the points on the frontal outline: jaw, temples
    side_sign: np.ndarray     # -1 for the image-left ones, +1 for the right
    sections: np.ndarray      # (len(side), S, 3) the mean head's cross-section through each of them


@lru_cache(maxsize=1)
def _model() -> _Model:
    from scipy.spatial import Delaunay

    layout = get_layout(POOL_LAYOUT)
    mean = build_geometry(FaceShape())
    lm = landmarks_3d(mean, layout)
    an = np.concatenate([_anchors(mean), _ring_points()])
    # triangulate a slightly open, frontal face so that the lips' inner lines never coincide
    ajar = build_geometry(FaceShape(open=0.35))
    canon = np.concatenate([landmarks_3d(ajar, layout)[:, :2], _anchors(ajar)[:, :2], _ring_points()[:, :2]])
    tris = Delaunay(canon).simplices.astype(np.int64)
    # consistent orientation: every triangle positive in the canonical frame
    neg = signed_areas(canon, tris) < 0
    tris[neg] = tris[neg][:, [0, 2, 1]]
    n = layout.num_points
    jaw = list(layout.groups["jaw"])
    fore_top = [n + 2 * len(_FOREHEAD_X) + k for k in range(len(_FOREHEAD_X))][::-1]  # top row, right->left
    temples = [n + 3 * len(_FOREHEAD_X), n + 3 * len(_FOREHEAD_X) + 1]
    head_top = n + 3 * len(_FOREHEAD_X) + 2
    outline = np.array(jaw + [temples[1]] + fore_top[:2] + [head_top] + fore_top[-2:] + [temples[0]],
                       dtype=np.int64)
    neck = np.arange(head_top + 1, head_top + 4)
    side = np.array(jaw + temples, dtype=np.int64)
    at = np.concatenate([lm, an])[side]
    a, z0, cf, cb = mean.rows(at[:, 1])
    phi = np.linspace(-np.pi, np.pi, 360, endpoint=False)[None, :]
    sections = np.stack([a[:, None] * np.sin(phi), np.broadcast_to(at[:, 1:2], (len(side), phi.size)),
                         z0[:, None] + np.where(np.cos(phi) > 0, cf[:, None], cb[:, None]) * np.cos(phi)],
                        axis=-1)
    return _Model(layout=layout, landmarks=lm, anchors=an, triangles=tris,
                  mouth_inner=tuple(layout.groups["mouth_inner"]), face_outline=outline, neck=neck,
                  side=side, side_sign=np.where(at[:, 0] < 0, -1.0, 1.0), sections=sections)


def _iod(points: np.ndarray) -> float:
    """Distance between the outer eye corners of a set of points (landmarks first)."""
    return float(_model().layout.normaliser(points[: _model().layout.num_points]))


def _project(pts: np.ndarray, rot: np.ndarray, scale: float, t: np.ndarray) -> np.ndarray:
    return scale * ((pts - PIVOT) @ rot.T)[:, :2] + t


def _fit_pose(mean3d: np.ndarray, pts2d: np.ndarray) -> tuple[np.ndarray, float, np.ndarray, tuple]:
    """Weak-perspective pose (rotation, scale, translation) of the mean head that best explains
    ``pts2d``; yaw and pitch are bounded to +-45 degrees."""
    from scipy.optimize import least_squares

    i, j = _model().layout.inter_ocular
    a, b = pts2d[i], pts2d[j]
    roll0 = math.degrees(math.atan2(b[1] - a[1], b[0] - a[0]))
    s0 = float(np.linalg.norm(b - a) / np.linalg.norm(mean3d[j, :2] - mean3d[i, :2]))

    def resid(p: np.ndarray) -> np.ndarray:
        rot = rotation(p[0], p[1], p[2])
        return (_project(mean3d, rot, math.exp(p[3]), p[4:6]) - pts2d).ravel()

    t0 = pts2d.mean(0) - s0 * ((mean3d - PIVOT)[:, :2]).mean(0)
    p0 = np.array([0.0, 0.0, roll0, math.log(s0), t0[0], t0[1]])
    lo = [-45, -45, -180, -np.inf, -np.inf, -np.inf]
    hi = [45, 45, 180, np.inf, np.inf, np.inf]
    res = least_squares(resid, p0, bounds=(lo, hi))
    p = res.x
    return rotation(p[0], p[1], p[2]), math.exp(p[3]), p[4:6].copy(), (p[0], p[1], p[2])


@dataclass(frozen=True)
class PoolFace:
    """One real face ready to be re-posed.

    Attributes:
        name: where it came from (file stem).
        image: BGR uint8 photograph (crop) of the face.
        landmarks: ``(N, 2)`` its labelled landmarks, 0-based pixels.
        head: ``(N + A, 3)`` head-frame positions of the landmarks (lifted) and anchors.
        points: ``(N + A, 2)`` the same points in ``image`` (landmarks exact, anchors projected).
        scale: image pixels per head unit.
        pose: fitted (yaw, pitch, roll) in degrees.
    """

    name: str
    image: np.ndarray
    landmarks: np.ndarray
    head: np.ndarray
    points: np.ndarray
    scale: float
    pose: tuple[float, float, float]


def lift_face(name: str, image: np.ndarray, landmarks: np.ndarray) -> PoolFace:
    """Pose the mean head onto ``landmarks`` and lift them to 3D (their own x, y; the head's depth)."""
    m = _model()
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (m.layout.num_points, 2):
        raise ValueError(f"{name}: pool faces need {m.layout.num_points} landmarks ({m.layout.name} "
                         f"layout), got an array of shape {lm.shape}")
    rot, scale, t, pose = _fit_pose(m.landmarks, lm)
    y = (m.landmarks - PIVOT) @ rot.T
    y[:, :2] = (lm - t) / scale
    head_lm = y @ rot + PIVOT
    head = np.concatenate([head_lm, m.anchors])
    points = np.concatenate([lm, _project(m.anchors, rot, scale, t)])
    return PoolFace(name=name, image=image, landmarks=lm.astype(np.float32), head=head, points=points,
                    scale=scale, pose=tuple(float(v) for v in pose))


def load_pool(root: str | Path) -> list[PoolFace]:
    """The faces of a pool folder (images with 68-point ``.pts`` files beside them, as the ``folder``
    dataset reads them); a bad file stops with an error naming it."""
    from kdlandmark.data.formats import read_dataset
    from kdlandmark.data.prepare import decode_image
    from kdlandmark.data.samples import DatasetError

    root = Path(root)
    samples = read_dataset("folder", root, "all")
    m = _model()
    faces = []
    for s in samples:
        if s.landmarks.shape[0] != m.layout.num_points:
            raise DatasetError(s.image_path, f"pool faces need {m.layout.num_points} landmarks, "
                                             f"this one has {s.landmarks.shape[0]}")
        faces.append(lift_face(Path(s.image_path).stem, decode_image(s.image_path), s.landmarks))
    if not faces:
        raise DatasetError(root, "no pool faces (images with .pts files) found")
    return faces


# ---------------------------------------------------------------------------------------- sampling

_NEUTRAL = {"open": 0.0, "smile": 0.0, "close_l": 0.0, "close_r": 0.0, "brow_raise": 0.0, "frown": 0.0,
            "gaze_x": 0.0, "gaze_y": 0.0}


def _displacement(rng: np.random.Generator, style: PoolStyle, face: PoolFace) -> tuple[np.ndarray, dict]:
    """Head-frame displacement of the landmarks and anchors: part of the way from the face's own
    proportions to the mean face's, part of a random identity and, sometimes, a random expression
    (both relative to the mean face)."""
    import dataclasses

    m = _model()
    shape = sample_shape(rng)
    neutral = dataclasses.replace(shape, **_NEUTRAL)
    k = float(rng.uniform(0.0, style.identity)) if style.identity > 0 else 0.0

    rings = m.anchors[len(m.anchors) - len(_ring_points()):]

    def pts(sh: FaceShape) -> np.ndarray:
        g = build_geometry(sh)
        return np.concatenate([landmarks_3d(g, m.layout), _anchors(g), rings])

    base = np.concatenate([m.landmarks, m.anchors])
    ident = pts(neutral)
    d = k * (ident - base)
    if style.renormalise > 0:
        n = m.layout.num_points
        own = face.head[:n, :2]
        mean = m.landmarks[:, :2]
        scale = float(np.sqrt(((own - own.mean(0)) ** 2).sum() / ((mean - mean.mean(0)) ** 2).sum()))
        aligned = (mean - mean.mean(0)) * scale + own.mean(0)
        d[:n, :2] += float(rng.uniform(0.0, style.renormalise)) * (aligned - own)
    expressive = rng.random() < style.expression
    if expressive:
        d = d + (pts(shape) - ident)
    info = {"identity": k, "expression": shape.expression_strength() if expressive else 0.0}
    return d, info


def _pose(rng: np.random.Generator, style: PoolStyle) -> tuple[float, float, float]:
    def draw(sd: float) -> float:
        return float(np.clip(rng.normal(0.0, sd), -2.5 * sd, 2.5 * sd)) if sd > 0 else 0.0

    return draw(style.yaw), draw(style.pitch), draw(style.roll)


def _place(rng: np.random.Generator, q: np.ndarray, n: int, size: int, fraction: tuple[float, float]
           ) -> np.ndarray:
    """Scale and shift unit-scale projected points so their first ``n`` (the landmarks) span a random
    fraction of the image, at a random position inside it."""
    lo, hi = q[:n].min(0), q[:n].max(0)
    span = float((hi - lo).max())
    scale = float(rng.uniform(*fraction)) * size / span
    margin = 0.03 * size
    room = np.maximum(size - 1 - 2 * margin - (hi - lo) * scale, 0.0)
    t = margin - lo * scale + room * rng.random(2)
    return q * scale + t


def _target(rng: np.random.Generator, face: PoolFace, style: PoolStyle, size: int
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Destination points (landmarks, then anchors), their depth in the new pose, and what was drawn.

    A turned head folds part of the mesh (its far side goes behind the nose and cheek): the warp then
    draws near triangles over far ones and leaves out those facing away.  A pose that folds more than
    :data:`MAX_FOLDED` of the triangles is drawn again closer to frontal.
    """
    m = _model()
    n = m.layout.num_points
    disp, info = _displacement(rng, style, face)
    yaw, pitch, roll = _pose(rng, style)
    src_area = signed_areas(face.points, m.triangles)
    seen = _outline_points(rotation(*face.pose)) if style.outline > 0 else None
    for attempt in range(5):
        shrink = 0.0 if attempt == 4 else 0.6 ** attempt
        rot = rotation(yaw * shrink, pitch * shrink, roll)
        head = face.head + (disp if attempt < 4 else 0.0)
        if seen is not None:   # the labelled outline (seen in the photo's pose) to the new pose's outline
            head = head.copy()
            head[m.side] += style.outline * (_outline_points(rot) - seen)
        p3 = (head - PIVOT) @ rot.T
        dst = _place(rng, p3[:, :2], n, size, style.face_fraction)
        folded = np.sign(signed_areas(dst, m.triangles)) != np.sign(src_area)
        if folded.mean() <= MAX_FOLDED:
            break
    info.update(yaw=yaw * shrink, pitch=pitch * shrink, roll=roll, folded=int(folded.sum()))
    return dst, _depth(p3), info


def _outline_points(rot: np.ndarray) -> np.ndarray:
    """Head-frame points where the mean head's outline lies, seen in pose ``rot``, at the rows of the
    frontal outline's points (:attr:`_Model.side`), each on its own side of the head.

    A head's outline is where its surface turns away from the camera; a labelled jaw (300W, dlib)
    follows it.  Turned, the frontal outline's 3D points come inside it (on both sides: a head of
    half-width a and round cross-section shows them at a cos(yaw) from its axis, its outline at about
    a), so they are not where a turned face's jaw is labelled.  Each row's outline point is the point
    of its cross-section that reaches farthest, in the image, along the row's own direction.
    """
    m = _model()
    sec = m.sections
    along = rot[:2, 0] / max(float(np.linalg.norm(rot[:2, 0])), 1e-9)   # the head's x axis, in the image
    reach = ((sec - PIVOT) @ rot.T)[..., :2] @ along                       # (K, S)
    best = np.argmax(reach * m.side_sign[:, None], axis=1)
    return sec[np.arange(len(sec)), best]


def _depth(p3: np.ndarray) -> np.ndarray:
    """Drawing depth of posed points: their own, but the rings (the scene around the head) always
    behind the head, whatever side of the pivot they turned to."""
    depth = p3[:, 2].copy()
    depth[len(depth) - len(_ring_points()):] = -1e3
    return depth


#: Largest share of the mesh's triangles a new pose may turn over (hidden behind nearer ones).
MAX_FOLDED = 0.08


def _warp(face: PoolFace, src: np.ndarray, dst: np.ndarray, tris: np.ndarray, size: int,
          depth: np.ndarray) -> np.ndarray:
    """Warp ``face.image``; a source much larger than the result is area-reduced first (no aliasing)."""
    n = _model().layout.num_points
    ratio = float(np.linalg.norm(dst[:n].std(0)) / max(np.linalg.norm(src[:n].std(0)), 1e-9))
    image = face.image
    if ratio < 0.7:
        f = min(1.0, ratio * 1.25)
        image = cv2.resize(image, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
        src = (src + 0.5) * f - 0.5
    return warp_mesh(image, src, dst, tris, (size, size), depth=depth)


# ---------------------------------------------------------------------------------------- appearance

def _head_mask(points: np.ndarray, size: int, feather: float) -> np.ndarray:
    """Soft float mask (0..1) of the head and neck, from the warped outline points."""
    m = _model()
    mask = np.zeros((size, size), np.float32)
    outline = points[m.face_outline]
    cv2.fillPoly(mask, [np.round(outline * 16).astype(np.int32)], 1.0, cv2.LINE_AA, 4)
    # neck: from the jaw's lower half down to the neck anchors and the image bottom
    jaw = list(m.layout.groups["jaw"])
    neck = points[m.neck]
    left, right = points[jaw[3]], points[jaw[-4]]
    down = neck.mean(0) - points[jaw[len(jaw) // 2]]
    poly = np.array([left, right, right + 3 * down, left + 3 * down])
    cv2.fillConvexPoly(mask, np.round(poly * 16).astype(np.int32), 1.0, cv2.LINE_AA, 4)
    if feather > 0:
        mask = cv2.GaussianBlur(mask, (0, 0), feather)
    return mask


def _region_mask(points: np.ndarray, groups: list[tuple[int, ...]], size: int, grow: float,
                 feather: float) -> np.ndarray:
    """Soft mask of the convex hulls of landmark groups, each grown by ``grow`` times its own size."""
    mask = np.zeros((size, size), np.float32)
    for g in groups:
        p = points[list(g)]
        c = p.mean(0)
        p = c + (p - c) * (1.0 + grow)
        hull = cv2.convexHull(np.round(p * 16).astype(np.int32))
        cv2.fillConvexPoly(mask, hull, 1.0, cv2.LINE_AA, 4)
    return cv2.GaussianBlur(mask, (0, 0), feather)


def _match_colour(image: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``image`` with its Lab mean and spread inside ``mask`` moved to ``reference``'s (float32 BGR)."""
    w = mask[..., None] > 0.5
    if w.sum() < 20:
        return image
    a = cv2.cvtColor(np.clip(image, 0, 255).astype(np.uint8), cv2.COLOR_BGR2LAB).astype(np.float32)
    b = cv2.cvtColor(np.clip(reference, 0, 255).astype(np.uint8), cv2.COLOR_BGR2LAB).astype(np.float32)
    sel = np.broadcast_to(w, a.shape)
    am = a[sel].reshape(-1, 3)
    bm = b[sel].reshape(-1, 3)
    out = (a - am.mean(0)) * (bm.std(0) + 1) / (am.std(0) + 1) + bm.mean(0)
    return cv2.cvtColor(np.clip(out, 0, 255).astype(np.uint8), cv2.COLOR_LAB2BGR).astype(np.float32)


def _mix_features(img: np.ndarray, other: np.ndarray, dst: np.ndarray, size: int,
                  rng: np.random.Generator) -> np.ndarray:
    """Blend some of another face's parts (eyes with brows, nose, mouth), warped onto the same shape."""
    m = _model()
    g = m.layout.groups
    parts = {"eyes": [g["eye_left"] + g["brow_left"], g["eye_right"] + g["brow_right"]],
             "nose": [g["nose_bridge"] + g["nostrils"]],
             "mouth": [g["mouth_outer"]]}
    chosen = [k for k in parts if rng.random() < 0.6] or [str(rng.choice(list(parts)))]
    scale = _iod(dst)
    mask = np.zeros((size, size), np.float32)
    for k in chosen:
        mask = np.maximum(mask, _region_mask(dst, parts[k], size, 0.35, max(1.0, 0.06 * scale)))
    skin = _region_mask(dst, [tuple(g["jaw"]) + tuple(g["brow_left"]) + tuple(g["brow_right"])], size,
                        0.0, 1.0)
    other = _match_colour(other, img, skin)
    return img * (1 - mask[..., None]) + other * mask[..., None]


def _pool_patch(rng: np.random.Generator, pool: list[PoolFace], size: int) -> np.ndarray:
    """A random region of a random pool photograph, flipped and resized: a real-looking background."""
    src = pool[int(rng.integers(len(pool)))].image
    h, w = src.shape[:2]
    side = int(rng.uniform(0.3, 1.0) * min(h, w))
    x0 = int(rng.integers(0, w - side + 1))
    y0 = int(rng.integers(0, h - side + 1))
    patch = src[y0:y0 + side, x0:x0 + side]
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    k = int(rng.integers(4))
    patch = np.rot90(patch, k)
    return cv2.resize(np.ascontiguousarray(patch), (size, size), interpolation=cv2.INTER_AREA)


def _new_background(rng: np.random.Generator, pool: list[PoolFace], size: int) -> np.ndarray:
    if rng.random() < 0.5:
        return _pool_patch(rng, pool, size).astype(np.float32)
    bg = {"kind": int(rng.integers(5)), "c1": rng.uniform(0, 255, 3), "c2": rng.uniform(0, 255, 3),
          "angle": float(rng.uniform(0, 2 * np.pi)), "grid": int(rng.integers(2, 7)),
          "shapes": int(rng.integers(3, 14)), "blur": float(rng.uniform(0, 4))}
    return _background(bg, size, rng).astype(np.float32)


def _mouth_interior(img: np.ndarray, dst: np.ndarray, rng: np.random.Generator) -> bool:
    """Fill an opened inner mouth (whose source was closed) with a dark interior and sometimes teeth;
    False when the mouth is closed (nothing drawn)."""
    m = _model()
    inner = dst[list(m.mouth_inner)]
    area = abs(float(signed_areas(inner, np.array([[0, 2, 4], [0, 4, 6], [0, 2, 6], [2, 4, 6]])).sum()))
    scale = _iod(dst)
    if area < 0.004 * scale * scale:
        return False
    dark = np.array([rng.uniform(20, 60), rng.uniform(20, 50), rng.uniform(40, 90)])
    poly = np.round(inner * 16).astype(np.int32)
    cv2.fillPoly(img, [poly], tuple(float(v) for v in dark), cv2.LINE_AA, 4)
    if rng.random() < 0.6:  # upper teeth: a pale band under the upper inner lip
        half = len(inner) // 2
        upper = inner[: half + 1]
        lower = np.concatenate([inner[:1], inner[half + 1:][::-1], inner[half:half + 1]])
        band = float(rng.uniform(0.25, 0.5))
        teeth = np.concatenate([upper, (upper + band * (lower - upper))[::-1]])
        colour = np.array([rng.uniform(170, 235)] * 3) * np.array([0.92, 1.0, 1.02])
        cv2.fillPoly(img, [np.round(teeth * 16).astype(np.int32)], tuple(float(v) for v in colour),
                     cv2.LINE_AA, 4)
    return True


def _ipt(p: np.ndarray) -> tuple[int, int]:
    return int(round(float(p[0]))), int(round(float(p[1])))


def _glasses(img: np.ndarray, dst: np.ndarray, rng: np.random.Generator) -> None:
    """Draw a pair of glasses (frames, bridge, temples; sometimes tinted lenses) over the eyes."""
    g = _model().layout.groups
    scale = _iod(dst)
    low, high = (0, 60) if rng.random() < 0.7 else (60, 220)   # mostly dark frames
    colour = tuple(float(v) for v in rng.uniform(low, high, 3))
    thick = max(1, int(round(scale * rng.uniform(0.015, 0.05))))
    w_fac, h_fac = rng.uniform(1.25, 1.6), rng.uniform(0.75, 1.05)
    tint = float(rng.uniform(0.0, 0.35)) if rng.random() < 0.8 else float(rng.uniform(0.5, 0.8))
    lenses = []
    for eye in ("eye_left", "eye_right"):
        p = dst[list(g[eye])]
        axis = p[3] - p[0]
        width = float(np.linalg.norm(axis))
        box = ((float(p.mean(0)[0]), float(p.mean(0)[1] + 0.05 * scale)), (width * w_fac, width * h_fac),
               math.degrees(math.atan2(axis[1], axis[0])))
        lenses.append(box)
    if tint > 0:
        shade = img.copy()
        for box in lenses:
            cv2.ellipse(shade, box, tuple(v * 0.3 for v in colour), -1, cv2.LINE_AA)
        img[:] = img * (1 - tint) + shade * tint
    for box in lenses:
        cv2.ellipse(img, box, colour, thick, cv2.LINE_AA)
    c0, c1 = np.array(lenses[0][0]), np.array(lenses[1][0])
    d = (c1 - c0) / max(float(np.linalg.norm(c1 - c0)), 1e-6)
    r0, r1 = lenses[0][1][0] / 2, lenses[1][1][0] / 2
    cv2.line(img, _ipt(c0 + d * r0), _ipt(c1 - d * r1), colour, thick, cv2.LINE_AA)
    jaw = list(g["jaw"])
    for c, r, end, side in ((c0, r0, dst[jaw[0]], -1.0), (c1, r1, dst[jaw[-1]], 1.0)):
        tip = np.array([end[0], c[1] + 0.1 * scale])
        cv2.line(img, _ipt(c + d * r * side), _ipt(tip), colour, thick, cv2.LINE_AA)


#: Hair colours (BGR): black, dark brown, brown, chestnut, auburn, dark blonde, blonde, grey.
_HAIR_BGR = np.array([(25, 25, 28), (30, 40, 55), (45, 65, 95), (50, 80, 125), (40, 60, 140),
                      (90, 130, 170), (140, 185, 215), (170, 170, 170)], dtype=np.float32)


def _strands(rng: np.random.Generator, size: int, root: np.ndarray, length: float) -> np.ndarray:
    """A hair texture in about [0.3, 0.7]: noise smeared along the rays from ``root`` (the crown), so the
    strands fall away from it; ``length``: the smear along a ray, in pixels."""
    rays = 360
    corners = np.array([(0, 0), (0, size), (size, 0), (size, size)], np.float64)
    reach = int(np.ceil(np.linalg.norm(corners - root, axis=1).max())) + 2
    polar = rng.random((rays, reach)).astype(np.float32)         # rows: angle, columns: radius
    polar = cv2.GaussianBlur(polar, (0, 0), sigmaX=max(1.0, length), sigmaY=0.7)
    polar -= polar.mean()
    polar = 0.5 + polar / max(float(polar.std()), 1e-6) * 0.15
    flags = cv2.WARP_POLAR_LINEAR | cv2.WARP_INVERSE_MAP | cv2.INTER_LINEAR
    tex = cv2.warpPolar(polar, (size, size), (float(root[0]), float(root[1])), float(reach), flags)
    return np.clip(np.nan_to_num(tex, nan=0.5), 0.0, 1.0)


def _hair(img: np.ndarray, dst: np.ndarray, rng: np.random.Generator, size: int) -> dict:
    """Draw hair over the head of a pool face (the pool's faces are mostly bald or cropped close): a
    mass over the cranium whose lower edge, the hairline or a fringe, falls anywhere from the top of the
    forehead to over the brows, and sometimes locks down the sides of the face over the temples, the
    ears and the upper jaw line.  The landmarks stay where they are (hidden points keep their place, as
    300W labels them)."""
    m = _model()
    n = m.layout.num_points
    g = m.layout.groups
    k = len(_FOREHEAD_X)
    scale = _iod(dst)
    rows = [dst[n + r * k:n + (r + 1) * k] for r in range(3)]          # forehead rows, low to high
    temples = dst[[n + 3 * k, n + 3 * k + 1]]
    top = dst[n + 3 * k + 2]
    brows = np.concatenate([dst[list(g["brow_left"])], dst[list(g["brow_right"])]])
    # the lower edge, left to right: between the brows (a fringe) and the top forehead row (a high hairline)
    low = float(rng.uniform(0.0, 1.0)) ** 1.5                         # 0: over the brows, 1: high
    brow_line = np.array([np.interp(x, np.sort(brows[:, 0]), brows[np.argsort(brows[:, 0]), 1])
                          for x in rows[0][:, 0]]) - 0.08 * scale
    fringe = np.column_stack([rows[0][:, 0], brow_line])
    edge = fringe + (rows[2] - fringe) * low if low < 0.5 else rows[1] + (rows[2] - rows[1]) * (2 * low - 1)
    edge = edge[np.argsort(edge[:, 0])]
    side_l, side_r = temples[np.argsort(temples[:, 0])]
    # the outer edge: the upper half of an ellipse through the temples reaching over the head's top
    mid = (side_l + side_r) / 2
    across = side_r - side_l
    half = float(np.linalg.norm(across)) / 2
    ux = across / max(2 * half, 1e-6)
    uy = np.array([ux[1], -ux[0]])                                     # upwards in the head's frame
    volume = float(rng.uniform(1.05, 1.3))
    height = max(float((top - mid) @ uy) * float(rng.uniform(1.25, 1.6)), 0.5 * half)
    t = np.linspace(np.pi, 0.0, 24)
    crown = mid + np.outer(np.cos(t) * half * volume, ux) + np.outer(np.sin(t) * height, uy)
    info: dict = {"hairline": round(low, 3)}
    left_lock = right_lock = None
    if rng.random() < 0.45:                                            # long hair down the sides
        jaw = dst[list(g["jaw"])]
        reach = int(rng.integers(2, 7))                                # down to jaw point 1..5 of each side
        width = float(rng.uniform(0.15, 0.5)) * scale
        inset = float(rng.uniform(-0.05, 0.15)) * scale                # how far it covers the face's edge
        def lock(points: np.ndarray, outward: float) -> np.ndarray:
            taper = np.linspace(1.0, 0.2, len(points))[:, None]        # thinning towards its end
            inner = points + np.array([-outward * inset, 0.0]) * taper
            outer = points + np.array([outward * width, 0.0]) * taper
            return np.concatenate([inner, outer[::-1]])
        left_lock = lock(np.vstack([side_l, jaw[:reach]]), -1.0)
        right_lock = lock(np.vstack([side_r, jaw[::-1][:reach]]), 1.0)
        info["locks"] = reach
    # a ragged lower edge: many points along it, each lowered by a random strand length
    fine = np.linspace(0.0, 1.0, 40)
    ex = np.interp(fine, np.linspace(0, 1, len(edge)), edge[:, 0])
    ey = np.interp(fine, np.linspace(0, 1, len(edge)), edge[:, 1])
    ey = ey + np.abs(rng.normal(0.0, 0.04 * scale, len(fine)))
    poly = np.vstack([np.column_stack([ex, ey]), crown[::-1]])
    mask = np.zeros((size, size), np.float32)
    for shape in (poly, left_lock, right_lock):
        if shape is not None:
            cv2.fillPoly(mask, [np.round(shape * 16).astype(np.int32)], 1.0, cv2.LINE_AA, 4)
    mask = cv2.GaussianBlur(mask, (0, 0), max(0.6, 0.02 * scale))
    colour = _HAIR_BGR[int(rng.integers(len(_HAIR_BGR)))] * np.float32(rng.uniform(0.8, 1.2))
    tex = _strands(rng, size, mid + 2.5 * height * uy, 0.3 * scale)
    shade = (0.55 + 0.9 * tex)[..., None] * colour
    alpha = mask[..., None] * np.float32(rng.uniform(0.85, 1.0))
    img[:] = img * (1 - alpha) + shade * alpha
    return info


def _colour(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random hue rotation, saturation, channel gains and gamma; sometimes grey."""
    u8 = np.clip(img, 0, 255).astype(np.uint8)
    if rng.random() < 0.12:
        grey = cv2.cvtColor(u8, cv2.COLOR_BGR2GRAY)
        return cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR).astype(np.float32)
    hsv = cv2.cvtColor(u8, cv2.COLOR_BGR2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + rng.normal(0, 6)) % 180
    hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.5, 1.4), 0, 255)
    out = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR).astype(np.float32)
    gains = rng.normal(1.0, 0.08, 3)
    gamma = float(rng.uniform(0.7, 1.4))
    out = 255.0 * np.clip(out * gains / 255.0, 0, 1) ** gamma
    return out


def _light(img: np.ndarray, dst: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth directional gain over the image (side light), darkest on one side of the face."""
    n = _model().layout.num_points
    c = dst[:n].mean(0)
    span = float(np.ptp(dst[:n], axis=0).max())
    ang = rng.uniform(0, 2 * np.pi)
    d = np.array([math.cos(ang), math.sin(ang)])
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    t = ((xs - c[0]) * d[0] + (ys - c[1]) * d[1]) / max(span, 1.0)
    strength = float(rng.uniform(0.3, 0.85))
    gain = 1.0 - strength * (1.0 / (1.0 + np.exp(-6.0 * t)))
    gain *= float(rng.uniform(0.8, 1.25))
    return img * gain[..., None]


def _camera(img: np.ndarray, dst: np.ndarray, rng: np.random.Generator, style: PoolStyle, size: int
            ) -> tuple[np.ndarray, dict]:
    """Resolution loss, blur, noise and JPEG, as a small or cheap camera gives them."""
    info: dict = {}
    out = np.clip(img, 0, 255).astype(np.uint8)
    iod = _iod(dst)
    if rng.random() < style.low_res and iod > 12:
        target = float(rng.uniform(10, min(40, iod)))
        f = target / iod
        small = cv2.resize(out, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
        interp = cv2.INTER_LINEAR if rng.random() < 0.5 else cv2.INTER_CUBIC
        out = cv2.resize(small, (size, size), interpolation=interp)
        info["low_res_iod"] = target
    if rng.random() < style.blur:
        if rng.random() < 0.7:
            out = cv2.GaussianBlur(out, (0, 0), float(rng.uniform(0.5, 2.0)) * size / 256)
        else:
            ln = max(3, int(round(rng.uniform(4, 11) * size / 256)) | 1)
            kern = np.zeros((ln, ln), np.float32)
            kern[ln // 2, :] = 1.0
            rot = cv2.getRotationMatrix2D(((ln - 1) / 2, (ln - 1) / 2), float(rng.uniform(0, 180)), 1.0)
            kern = cv2.warpAffine(kern, rot, (ln, ln))
            out = cv2.filter2D(out, -1, kern / max(kern.sum(), 1e-6))
    if rng.random() < style.noise:
        sigma = float(rng.uniform(2, 12))
        noise = rng.normal(0.0, sigma, out.shape[:2]).astype(np.float32)
        if rng.random() < 0.3:  # colour noise
            noise = rng.normal(0.0, sigma, out.shape).astype(np.float32)
        else:
            noise = noise[..., None]
        out = np.clip(out.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    if rng.random() < style.jpeg:
        q = int(rng.integers(30, 95))
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, q])
        if ok:
            out = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return out, info


# ------------------------------------------------------------------------------------------ the face

def render_pool_face(rng: np.random.Generator, pool: list[PoolFace], size: int = 256,
                     style: PoolStyle | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """One new face from ``pool``: ``(image BGR uint8, (N, 2) float32 landmarks, info)``.

    ``info`` has ``source`` (the pool face's name), ``yaw``/``pitch``/``roll`` (degrees, of the new
    pose relative to frontal), ``identity``, ``expression``, and the appearance steps applied.
    """
    style = style or PoolStyle()
    m = _model()
    n = m.layout.num_points
    face = pool[int(rng.integers(len(pool)))]
    dst, depth, info = _target(rng, face, style, size)
    img = _warp(face, face.points, dst, m.triangles, size, depth).astype(np.float32)
    info["source"] = face.name
    steps = []
    if len(pool) > 1 and rng.random() < style.mix:
        others = [f for f in pool if f.name != face.name]
        other = others[int(rng.integers(len(others)))]
        oimg = _warp(other, other.points, dst, m.triangles, size, depth).astype(np.float32)
        img = _mix_features(img, oimg, dst, size, rng)
        steps.append("mix")
    if rng.random() < style.background:
        scale = _iod(dst)
        mask = _head_mask(dst, size, max(1.0, 0.05 * scale))[..., None]
        img = img * mask + _new_background(rng, pool, size) * (1 - mask)
        steps.append("background")
    if _mouth_interior(img, dst, rng):
        steps.append("mouth")
    if style.hair > 0 and rng.random() < style.hair:   # no draw when off: older data stay the same
        info["hair"] = _hair(img, dst, rng, size)
        steps.append("hair")
    if rng.random() < style.glasses:
        _glasses(img, dst, rng)
        steps.append("glasses")
    if rng.random() < style.light:
        img = _light(img, dst, rng, size)
        steps.append("light")
    if rng.random() < style.colour:
        img = _colour(img, rng)
        steps.append("colour")
    out, cam = _camera(img, dst, rng, style, size)
    info.update(cam)
    info["steps"] = steps
    return out, dst[:n].astype(np.float32), info


# ---------------------------------------------------------------------------------- hybrid faces

def _face_region(points: np.ndarray, size: int, feather: float) -> np.ndarray:
    """Soft mask of the face below the upper forehead: the jaw line, the temples and the forehead row."""
    m = _model()
    n = m.layout.num_points
    jaw = list(m.layout.groups["jaw"])
    k = len(_FOREHEAD_X)
    row = [n + k + i for i in range(k)][::-1]          # the second forehead row, right to left
    temples = [n + 3 * k, n + 3 * k + 1]
    outline = points[jaw + [temples[1]] + row + [temples[0]]]
    mask = np.zeros((size, size), np.float32)
    cv2.fillPoly(mask, [np.round(outline * 16).astype(np.int32)], 1.0, cv2.LINE_AA, 4)
    return cv2.GaussianBlur(mask, (0, 0), feather) if feather > 0 else mask


def _skin_shift(texture: np.ndarray, skin_bgr: np.ndarray, mask: np.ndarray, amount: float) -> np.ndarray:
    """Move the texture's mean colour inside ``mask`` towards ``skin_bgr`` (Lab, by ``amount``)."""
    sel = mask > 0.5
    if sel.sum() < 20:
        return texture
    lab = cv2.cvtColor(np.clip(texture, 0, 255).astype(np.uint8), cv2.COLOR_BGR2LAB).astype(np.float32)
    skin = cv2.cvtColor(np.clip(skin_bgr, 0, 255).astype(np.uint8).reshape(1, 1, 3),
                        cv2.COLOR_BGR2LAB).astype(np.float32).reshape(3)
    lab += amount * (skin - lab[sel].mean(axis=0))
    return cv2.cvtColor(np.clip(lab, 0, 255).astype(np.uint8), cv2.COLOR_LAB2BGR).astype(np.float32)


def render_hybrid_face(rng: np.random.Generator, pool: list[PoolFace], size: int = 256,
                       layout: Layout | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """A rendered head (pose, identity, expression, hair, light, occluders, camera from
    :mod:`kdlandmark.data.synth.render`) whose face skin and features are a pool face's, warped onto
    the rendered landmarks before the light, hair and occluder are drawn over it.

    The landmarks are the renderer's (exact for the rendered head; the real texture is warped so that
    its labelled points land on them).  Returns ``(image, landmarks, info)`` as
    :func:`kdlandmark.data.synth.dataset.render_face` does, with ``info["source"]``.
    """
    m = _model()
    layout = layout or m.layout
    face = pool[int(rng.integers(len(pool)))]
    amount = float(rng.uniform(0.6, 1.0))
    rings = m.anchors[len(m.anchors) - len(_ring_points()):]

    def albedo(img: np.ndarray, geo: Geometry, cam: Camera) -> None:
        head = np.concatenate([landmarks_3d(geo, m.layout), _anchors(geo), rings])
        p3 = cam.to_image(head)
        dst, depth = p3[:, :2], _depth(p3)
        tex = _warp(face, face.points, dst, m.triangles, size, depth).astype(np.float32)
        iod = _iod(dst)
        mask = _face_region(dst, size, max(1.0, 0.06 * iod))
        skin = np.median(img[mask > 0.9].reshape(-1, 3), axis=0) if (mask > 0.9).any() else tex.mean((0, 1))
        tex = _skin_shift(tex, skin.astype(np.float32), mask, amount)
        img[:] = np.clip(img * (1 - mask[..., None]) + tex * mask[..., None], 0, 255).astype(np.uint8)

    rendered = render(rng, size, albedo=albedo)
    info = dict(rendered.info)
    info.update(source=face.name, occluded=rendered.occluded(layout), face=rendered)
    return rendered.image, rendered.landmarks(layout), info
