"""Rendering a synthetic face: random scene, projection, painter's algorithm, shading, degradations.

One face is drawn in layers (painter's algorithm) with OpenCV primitives on a uint8 BGR canvas:
background, long hair behind the head, shoulders and neck, ears, the head silhouette (convex hull of
the projected surface samples), the facial features (brows, eyes with sclera, iris, pupil, lids and
lashes, facial hair, lips and mouth interior, the nose's visible faces and nostrils) and the hair cap.
Everything on the head is drawn as *albedo*; light comes afterwards as one multiplicative shading map:

* skin: Lambert (with wrap) and specular terms at every front-facing surface sample of the head
  model, splatted onto a quarter-resolution grid and smoothed (normalised convolution), times soft
  ambient occlusion (eye sockets, under the nose and the lower lip), with the nose's faces filled in
  with their own shading;
* hair: a slightly larger cranium ellipsoid ray-cast per pixel (half resolution), cut at a hairline
  that depends on the azimuth around the head, with strand texture along the meridians.

Occluders come after lighting, then the camera: exposure and colour cast, gamma and contrast, blur
(Gaussian or motion), sensor noise and a JPEG round trip.

Projection is weak perspective: ``p = s * (R (X - pivot))_xy + t``, so every landmark is the exact
projection of its 3D point, visible or not.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from kdlandmark.data.synth.face import (
    FaceShape,
    Geometry,
    build_geometry,
    landmarks_3d,
    rotation,
    sample_shape,
)
from kdlandmark.layouts import Layout

__all__ = ["Scene", "RenderedFace", "sample_scene", "render_scene", "render", "PIVOT"]

#: Head-frame point the head rotates about (behind the face, between the ears, near the neck).
PIVOT = np.array([0.0, 0.35, -0.85])
_SHIFT = 4
_ONE = 1 << _SHIFT

# palettes (RGB; converted to BGR when used)
_SKIN = np.array([(255, 226, 206), (246, 208, 182), (236, 190, 160), (218, 164, 126), (196, 138, 100),
                  (165, 110, 76), (128, 84, 58), (98, 64, 46)], dtype=np.float64)
_HAIR = np.array([(24, 20, 20), (45, 32, 25), (70, 48, 32), (105, 72, 45), (145, 105, 68), (205, 170, 112),
                  (225, 196, 140), (130, 58, 32), (165, 80, 42), (140, 138, 136), (205, 205, 200)],
                 dtype=np.float64)
_HAIR_P = np.array([0.22, 0.2, 0.16, 0.1, 0.07, 0.06, 0.04, 0.04, 0.03, 0.05, 0.03])
_IRIS = np.array([(70, 45, 25), (110, 70, 35), (45, 30, 20), (80, 120, 160), (70, 140, 170), (90, 130, 80),
                  (120, 110, 60), (120, 125, 130)], dtype=np.float64)
_LIPSTICK = np.array([(180, 20, 40), (200, 40, 80), (140, 20, 50), (220, 90, 110), (110, 25, 45),
                      (230, 60, 60), (160, 60, 90)], dtype=np.float64)
_SHADOW = np.array([(120, 80, 140), (60, 60, 70), (150, 100, 80), (80, 110, 150), (40, 40, 40),
                    (170, 120, 130)], dtype=np.float64)


def _bgr(rgb: np.ndarray | tuple) -> tuple[float, float, float]:
    r, g, b = (float(v) for v in rgb)
    return (min(max(b, 0.0), 255.0), min(max(g, 0.0), 255.0), min(max(r, 0.0), 255.0))


# ------------------------------------------------------------------------------------------- scene

@dataclass
class Scene:
    """Every random choice of one face.  Rendering depends on the scene alone (its two ``seeds`` drive
    the background shapes, the beard strokes and the sensor noise), so a scene can be edited and
    re-rendered, as the tests do."""

    size: int
    shape: FaceShape
    yaw: float
    pitch: float
    roll: float
    face_fraction: float
    offset: tuple[float, float]
    skin: np.ndarray
    hair: np.ndarray
    hair_style: dict
    iris: np.ndarray
    sclera: np.ndarray
    lips: np.ndarray
    brow_colour: np.ndarray
    clothes: np.ndarray
    makeup: dict
    light: dict
    background: dict
    occluder: dict | None
    post: dict
    seeds: tuple[int, int]


def _pick(rng: np.random.Generator, palette: np.ndarray, p: np.ndarray | None = None) -> np.ndarray:
    i = rng.choice(len(palette), p=p)
    j = min(i + 1, len(palette) - 1)
    t = rng.uniform(0, 0.5)
    return (1 - t) * palette[i] + t * palette[j] + rng.normal(0, 4, 3)


def _random_colour(rng: np.random.Generator, lo: float = 0, hi: float = 255) -> np.ndarray:
    return rng.uniform(lo, hi, 3)


# long: every random draw of one face in one fixed order; reordering them would change every dataset
def sample_scene(rng: np.random.Generator, size: int = 256) -> Scene:
    """Draw every random choice of one face (identity, expression, pose, colours, light, occluder...)."""
    shape = sample_shape(rng)
    # pose: mostly near frontal, with a tail of large poses
    yaw = rng.normal(0, 10) if rng.random() < 0.9 else rng.uniform(-60, 60)
    pitch = rng.normal(0, 7) if rng.random() < 0.88 else rng.uniform(-30, 30)
    roll = rng.normal(0, 6) if rng.random() < 0.9 else rng.uniform(-35, 35)
    yaw, pitch = float(np.clip(yaw, -60, 60)), float(np.clip(pitch, -30, 30))
    roll = float(np.clip(roll, -35, 35))
    face_fraction = float(rng.uniform(0.45, 0.75))
    offset = (float(rng.random()), float(rng.random()))

    skin = _pick(rng, _SKIN) * rng.normal(1.0, [0.02, 0.03, 0.04])
    hair = _pick(rng, _HAIR, _HAIR_P)
    if rng.random() < 0.04:  # dyed
        hair = _random_colour(rng, 30, 230)
    u = rng.random()
    hair_style = {
        "bald": u < 0.05,
        "long": bool(rng.random() < 0.4),
        "volume": float(rng.uniform(1.03, 1.16)),
        "hairline": float(rng.uniform(-0.78, -0.5)),
        "temple": float(rng.uniform(0.05, 0.3)),
        "sideburn": float(rng.uniform(-0.1, 0.35)),
        "fringe": bool(rng.random() < 0.15),
        "parting": float(rng.uniform(-0.6, 0.6)),
        "length": float(rng.uniform(1.3, 2.6)),
        "shine": float(rng.uniform(0.1, 0.45)),
        "strands": (rng.random(61).astype(np.float32), rng.random(173).astype(np.float32)),
        "sweep": float(rng.uniform(-0.25, 0.25)) if rng.random() < 0.4 else 0.0,
        "beard": str(rng.choice(["none", "stubble", "beard", "moustache"], p=[0.76, 0.09, 0.09, 0.06])),
    }
    iris = _pick(rng, _IRIS)
    sclera = np.array([235, 232, 228]) * rng.uniform(0.88, 1.0) + rng.normal(0, 3, 3)
    lips = skin * np.array([0.86, 0.6, 0.62]) + np.array([22, 0, 8]) + rng.normal(0, 6, 3)
    makeup_strength = 0.0
    makeup: dict = {"lipstick": None, "shadow": None, "liner": False, "blush": float(rng.uniform(0, 0.12))}
    if rng.random() < 0.1:
        makeup["lipstick"] = _pick(rng, _LIPSTICK)
        makeup_strength += float(rng.uniform(0.6, 1.0))
    if rng.random() < 0.08:
        makeup["shadow"] = _pick(rng, _SHADOW)
        makeup_strength += 0.6
    if rng.random() < 0.12:
        makeup["liner"] = True
        makeup_strength += 0.3
    if rng.random() < 0.1:
        makeup["blush"] = float(rng.uniform(0.2, 0.35))
        makeup_strength += 0.3
    makeup["strength"] = makeup_strength
    if hair_style["long"] or makeup_strength > 0:  # facial hair only on short-haired faces without make-up
        hair_style["beard"] = "none"
    brow_colour = hair * rng.uniform(0.6, 0.9) if rng.random() < 0.8 else _pick(rng, _HAIR[:4])
    clothes = _random_colour(rng, 10, 240)

    # light
    strong = rng.random() < 0.12
    lx = rng.normal(0, 0.45)
    if strong:
        lx = math.copysign(rng.uniform(0.7, 1.1), rng.standard_normal())
    direction = np.array([lx, rng.normal(-0.35, 0.3), rng.uniform(0.3, 1.0)])
    direction /= np.linalg.norm(direction)
    ambient = float(rng.uniform(0.12, 0.24) if strong else rng.uniform(0.3, 0.55))
    diffuse = float(rng.uniform(0.85, 1.05) if strong else rng.uniform(0.5, 0.8))
    exposure = float(rng.uniform(0.3, 0.5) if rng.random() < 0.08 else rng.uniform(0.85, 1.15))
    tint = rng.normal(1.0, 0.04, 3)
    if rng.random() < 0.1:
        tint = tint * rng.uniform(0.75, 1.25, 3)
    light = {"direction": direction, "ambient": ambient, "diffuse": diffuse, "exposure": exposure,
             "tint": tint, "strong": strong, "specular": float(rng.uniform(0.05, 0.3))}

    bg_kind = int(rng.integers(5))
    background = {"kind": bg_kind, "c1": _random_colour(rng), "c2": _random_colour(rng),
                  "angle": float(rng.uniform(0, 2 * np.pi)), "grid": int(rng.integers(2, 7)),
                  "shapes": int(rng.integers(3, 14)), "blur": float(rng.uniform(0, 4))}

    occluder = None
    if rng.random() < 0.3:
        kind = str(rng.choice(["hand", "bar", "glasses", "mask", "blob"], p=[0.28, 0.2, 0.16, 0.14, 0.22]))
        colour = _pick(rng, _SKIN) if kind == "hand" else _random_colour(rng, 0, 240)
        occluder = {"kind": kind, "colour": colour,
                    "target": int(rng.integers(6)), "angle": float(rng.uniform(0, 2 * np.pi)),
                    "size": float(rng.uniform(0.25, 0.6)), "shift": rng.normal(0, 0.15, 2),
                    "radii": rng.uniform(0.55, 1.0, 12), "texture": float(rng.uniform(0, 25))}

    u = rng.random()
    if u < 0.12:
        blur = {"kind": "gauss", "sigma": float(rng.uniform(1.6, 3.5))} if rng.random() < 0.6 else \
            {"kind": "motion", "length": float(rng.uniform(7, 15)), "angle": float(rng.uniform(0, 180))}
    elif u < 0.6:
        blur = {"kind": "gauss", "sigma": float(rng.uniform(0.3, 0.9))}
    else:
        blur = {"kind": "none"}
    v = rng.random()
    noise = float(rng.uniform(6, 14)) if v < 0.1 else float(rng.uniform(1, 6)) if v < 0.7 else 0.0
    post = {"blur": blur, "noise": noise, "jpeg": int(rng.integers(35, 96)) if rng.random() < 0.85 else None,
            "gamma": float(rng.uniform(0.85, 1.15)), "contrast": float(rng.uniform(0.85, 1.1))}
    seeds = (int(rng.integers(2**31)), int(rng.integers(2**31)))
    return Scene(size=size, shape=shape, yaw=yaw, pitch=pitch, roll=roll, face_fraction=face_fraction,
                 offset=offset, skin=skin, hair=hair, hair_style=hair_style, iris=iris, sclera=sclera,
                 lips=lips, brow_colour=brow_colour, clothes=clothes, makeup=makeup, light=light,
                 background=background, occluder=occluder, post=post, seeds=seeds)


# ------------------------------------------------------------------------------------------ camera

@dataclass
class Camera:
    """Weak perspective: image point = ``scale * (R (X - PIVOT))`` + ``(tx, ty, 0)``; z towards the viewer."""

    rot: np.ndarray
    scale: float
    tx: float
    ty: float

    def to_image(self, pts: np.ndarray) -> np.ndarray:
        """``(..., 3)`` head-frame points -> ``(..., 3)`` image-frame points (x, y pixels; z depth)."""
        p = (np.asarray(pts, dtype=np.float64) - PIVOT) @ self.rot.T * self.scale
        p[..., 0] += self.tx
        p[..., 1] += self.ty
        return p

    def project(self, pts: np.ndarray) -> np.ndarray:
        return self.to_image(pts)[..., :2]

    def direction(self, v: np.ndarray) -> np.ndarray:
        """A head-frame direction in the image frame."""
        return np.asarray(v, dtype=np.float64) @ self.rot.T


def _place(scene: Scene, geo: Geometry) -> Camera:
    """Scale so the landmarks span ``face_fraction`` of the image, at a random position inside it."""
    rot = rotation(scene.yaw, scene.pitch, scene.roll)
    pts = np.concatenate(list(geo.curves.values()))
    p = (pts - PIVOT) @ rot.T
    lo, hi = p[:, :2].min(axis=0), p[:, :2].max(axis=0)
    span = float((hi - lo).max())
    size = scene.size
    scale = scene.face_fraction * size / span
    margin = 0.02 * size
    room = size - 1 - 2 * margin - (hi - lo) * scale
    tx = margin - lo[0] * scale + max(room[0], 0.0) * scene.offset[0]
    ty = margin - lo[1] * scale + max(room[1], 0.0) * scene.offset[1]
    return Camera(rot=rot, scale=scale, tx=float(tx), ty=float(ty))


# ---------------------------------------------------------------------------------------- drawing

def _soften(a: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur; above 1.5 px a stack blur of matching width (its cost does not grow with sigma)."""
    if sigma < 1.5:
        return cv2.GaussianBlur(a, (0, 0), sigma)
    r = max(1, int(round(2.1 * sigma)))
    return cv2.stackBlur(a, (2 * r + 1, 2 * r + 1))


def _fx(p: np.ndarray) -> np.ndarray:
    """Pixel coordinates -> fixed-point int32 for OpenCV drawing with ``shift=4``."""
    return np.round(np.asarray(p, dtype=np.float64)[..., :2] * _ONE).astype(np.int32)


def _fill(img: np.ndarray, polys: list[np.ndarray], colour: tuple | float) -> None:
    cv2.fillPoly(img, [_fx(p) for p in polys], colour, cv2.LINE_AA, _SHIFT)


def _signed_area(p: np.ndarray) -> float:
    """Shoelace area; positive for loops running clockwise in the image (y down)."""
    x, y = p[:, 0], p[:, 1]
    return 0.5 * float(x[:-1] @ y[1:] - y[:-1] @ x[1:] + x[-1] * y[0] - y[-1] * x[0])


def _blend(img: np.ndarray, polys: list[np.ndarray], colour: np.ndarray | tuple, alpha: float,
           blur: float = 0.0, thickness: float = 0.0, closed: bool = True) -> None:
    """Alpha-blend filled polygons (``thickness == 0``) or polylines into ``img`` within their box."""
    if alpha <= 0 or not polys:
        return
    if alpha >= 0.999 and blur <= 0.7:  # opaque and sharp: draw straight onto the image
        shifted = [_fx(np.asarray(p)[:, :2]) for p in polys]
        col = tuple(float(v) for v in np.clip(np.asarray(colour, dtype=np.float64), 0, 255))
        if thickness > 0:
            cv2.polylines(img, shifted, closed, col, max(1, round(thickness)), cv2.LINE_AA, _SHIFT)
        else:
            cv2.fillPoly(img, shifted, col, cv2.LINE_AA, _SHIFT)
        return
    allp = np.concatenate([np.asarray(p)[:, :2] for p in polys])
    if not np.isfinite(allp).all():
        return
    pad = int(3 * blur + thickness + 3)
    h, w = img.shape[:2]
    x0, y0 = (np.floor(allp.min(axis=0)).astype(int) - pad).clip(0)
    x1, y1 = np.ceil(allp.max(axis=0)).astype(int) + pad + 1
    x1, y1 = min(x1, w), min(y1, h)
    if x1 <= x0 or y1 <= y0:
        return
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    shifted = [_fx(np.asarray(p)[:, :2] - (x0, y0)) for p in polys]
    if thickness > 0:
        cv2.polylines(mask, shifted, closed, 255, max(1, round(thickness)), cv2.LINE_AA, _SHIFT)
    else:
        cv2.fillPoly(mask, shifted, 255, cv2.LINE_AA, _SHIFT)
    if blur > 0.7:
        mask = _soften(mask, blur)
    a = mask.astype(np.float32) * np.float32(alpha / 255.0)
    roi = img[y0:y1, x0:x1]
    layer = np.empty_like(roi)
    layer[:] = np.clip(np.asarray(colour, dtype=np.float64), 0, 255)
    img[y0:y1, x0:x1] = cv2.blendLinear(roi, layer, 1.0 - a, a)


def _mix(colour: np.ndarray, under: np.ndarray, alpha: float) -> tuple[float, ...]:
    """``colour`` blended over ``under`` with opacity ``alpha`` (for strokes drawn on a known colour)."""
    mixed = alpha * np.asarray(colour, dtype=np.float64) + (1 - alpha) * np.asarray(under, dtype=np.float64)
    return tuple(float(v) for v in np.clip(mixed, 0, 255))


def _stroke(img: np.ndarray, lines: list[np.ndarray], colour: tuple | np.ndarray, thickness: float) -> None:
    """Open anti-aliased polylines drawn straight onto ``img`` (cheaper than :func:`_blend`)."""
    if lines:
        cv2.polylines(img, [_fx(p) for p in lines], False, tuple(float(v) for v in colour),
                      max(1, round(thickness)), cv2.LINE_AA, _SHIFT)


def _ellipse_poly(centre: np.ndarray, axes: tuple[float, float], angle: float, n: int = 20) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    c, s = math.cos(angle), math.sin(angle)
    x, y = axes[0] * np.cos(t), axes[1] * np.sin(t)
    return np.column_stack([centre[0] + c * x - s * y, centre[1] + s * x + c * y])


def _background(bg: dict, size: int, rng: np.random.Generator) -> np.ndarray:
    """Gradient, smooth colour noise, random shapes, stripes or a mix; drawn at half size, upsampled."""
    n = (size + 1) // 2
    kind = bg["kind"]
    c1, c2 = np.asarray(bg["c1"], np.float32), np.asarray(bg["c2"], np.float32)
    if kind in (0, 4):
        g = np.linspace(-1, 1, 8, dtype=np.float32)
        ramp = math.cos(bg["angle"]) * g[None, :] + math.sin(bg["angle"]) * g[:, None]
        t = ((ramp + 1.5) / 3.0)[..., None]
        small = c1 * (1 - t) + c2 * t
    elif kind == 1:
        k = bg["grid"]
        small = rng.uniform(0, 255, (k, k, 3)).astype(np.float32)
        small = 0.5 * small + 0.25 * (c1 + c2)
    else:
        small = np.broadcast_to(c1, (2, 2, 3)).astype(np.float32)
    img = cv2.resize(np.clip(small, 0, 255).astype(np.uint8), (n, n), interpolation=cv2.INTER_CUBIC)
    if kind in (2, 4):
        for _ in range(bg["shapes"]):
            col = tuple(float(v) for v in rng.uniform(0, 255, 3))
            cx, cy = rng.uniform(-0.1, 1.1, 2) * n
            r = rng.uniform(0.05, 0.4) * n
            which = rng.integers(3)
            if which == 0:
                cv2.circle(img, (int(cx), int(cy)), int(r), col, -1, cv2.LINE_AA)
            elif which == 1:
                box = cv2.boxPoints(((float(cx), float(cy)), (float(r), float(r * rng.uniform(0.2, 2))),
                                     float(rng.uniform(0, 180))))
                _fill(img, [box], col)
            else:
                pts = rng.uniform(-1, 1, (5, 2)) * r + (cx, cy)
                _fill(img, [pts], col)
    if kind == 3:
        m = bg["shapes"]
        xs = np.sort(rng.uniform(0, n, m))
        for i in range(0, m - 1, 2):
            col = tuple(float(v) for v in (c2 * rng.uniform(0.6, 1.2)).clip(0, 255))
            cv2.rectangle(img, (int(xs[i]), 0), (int(xs[i + 1]), n), col, -1)
    if bg["blur"] > 0.5:
        img = _soften(img, bg["blur"] * n / 256)
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)


# ----------------------------------------------------------------------------------- ray casting

def _ellipsoid_image(cam: Camera, centre: np.ndarray, axes: np.ndarray, tilt: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Image-frame centre and matrix ``M`` (unit sphere -> ellipsoid) of a head-frame ellipsoid."""
    c = cam.to_image(centre)
    m = cam.scale * cam.rot @ tilt @ np.diag(axes)
    return c, m


def _raycast(c: np.ndarray, m: np.ndarray, xs: np.ndarray, ys: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], np.ndarray]:
    """Front intersection of view rays (along -z) through pixels ``xs`` x ``ys`` with an ellipsoid.

    Returns the discriminant (>= 0 where the ray hits; scaled to pixels^2 of half chord), the hit depth,
    the hit point on the unit sphere (3 arrays) and ``inv(M)``.
    """
    mi = np.linalg.inv(m).astype(np.float32)
    v = mi[:, 2]
    dx = (xs - c[0]).astype(np.float32)[None, :]
    dy = (ys - c[1]).astype(np.float32)[:, None]
    cz = np.float32(c[2])
    u0 = [mi[k, 0] * dx + mi[k, 1] * dy - mi[k, 2] * cz for k in range(3)]
    a = np.float32(v @ v)
    b = u0[0] * v[0] + u0[1] * v[1] + u0[2] * v[2]
    cc = u0[0] * u0[0] + u0[1] * u0[1] + u0[2] * u0[2] - 1.0
    disc = (b * b - a * cc) / (a * a)
    t = -b / a + np.sqrt(np.maximum(disc, 0.0))
    u = [u0[k] + t * v[k] for k in range(3)]
    return disc, t + cz, u, mi


def _lambert(u: list[np.ndarray], mi: np.ndarray, light: dict
             ) -> tuple[np.ndarray, np.ndarray]:
    """Diffuse (wrap) and specular terms for unit-sphere hit points ``u`` of an ellipsoid."""
    n = [mi[0, k] * u[0] + mi[1, k] * u[1] + mi[2, k] * u[2] for k in range(3)]
    inv = 1.0 / np.sqrt(n[0] * n[0] + n[1] * n[1] + n[2] * n[2] + 1e-12)
    ldir = np.asarray(light["direction"], dtype=np.float32)  # float32 scalars keep the maps float32
    ndl = (n[0] * ldir[0] + n[1] * ldir[1] + n[2] * ldir[2]) * inv
    half = ldir + np.array([0.0, 0.0, 1.0], dtype=np.float32)
    half /= np.linalg.norm(half)
    ndh = (n[0] * half[0] + n[1] * half[1] + n[2] * half[2]) * inv
    diff = np.maximum((ndl + 0.3) / 1.3, 0.0)
    spec = np.maximum(ndh, 0.0)
    spec *= spec
    spec *= spec
    spec = spec * spec * spec  # power 12, by multiplication (a float power is slow)
    return diff, spec


def _splat_shading(geo: Geometry, cam: Camera, pts: np.ndarray, light: dict, x0: int, y0: int, hw: int,
                   hh: int) -> np.ndarray:
    """Skin shading ``(hh, hw)`` float32 on the half-resolution grid starting at pixel ``(x0, y0)``.

    ``pts``: the head's surface samples in the image frame (``cam.to_image(geo.mesh)``).
    """
    nrm = cam.direction(geo.mesh_normals)
    front = nrm[:, 2] > 0.0
    pts, nrm = pts[front], nrm[front]
    ldir = light["direction"]
    half = ldir + np.array([0.0, 0.0, 1.0])
    half /= np.linalg.norm(half)
    ndl = nrm @ ldir
    spec = np.maximum(nrm @ half, 0.0) ** 20
    val = light["ambient"] + light["diffuse"] * np.maximum((ndl + 0.3) / 1.3, 0.0) + light["specular"] * spec
    qw, qh = (hw + 1) // 2, (hh + 1) // 2
    ix = np.floor((pts[:, 0] - x0) / 4.0).astype(np.int64)
    iy = np.floor((pts[:, 1] - y0) / 4.0).astype(np.int64)
    ok = (ix >= 0) & (ix < qw) & (iy >= 0) & (iy < qh)
    idx = iy[ok] * qw + ix[ok]
    sums = np.bincount(idx, weights=val[ok], minlength=qw * qh).reshape(qh, qw).astype(np.float32)
    cnt = np.bincount(idx, minlength=qw * qh).reshape(qh, qw).astype(np.float32)
    sigma = 0.8
    sums = cv2.GaussianBlur(sums, (0, 0), sigma)
    cnt = cv2.GaussianBlur(cnt, (0, 0), sigma)
    q = np.where(cnt > 1e-3, sums / np.maximum(cnt, 1e-3), np.float32(light["ambient"]))
    return cv2.resize(q, (2 * qw, 2 * qh), interpolation=cv2.INTER_LINEAR)[:hh, :hw].astype(np.float32)


# ----------------------------------------------------------------------------------------- result

@dataclass
class RenderedFace:
    """A rendered face and everything needed to label it in any layout."""

    image: np.ndarray
    scene: Scene
    geometry: Geometry
    camera: Camera
    occluder_mask: np.ndarray | None
    info: dict

    def landmarks(self, layout: Layout) -> np.ndarray:
        """``(N, 2)`` float32 landmarks of ``layout``: projections of the 3D feature points."""
        return self.camera.project(landmarks_3d(self.geometry, layout)).astype(np.float32)

    def occluded(self, layout: Layout) -> np.ndarray:
        """``(N,)`` bool: the point lies under an occluder (its pixel in the occluder mask)."""
        lm = self.landmarks(layout)
        out = np.zeros(layout.num_points, dtype=bool)
        if self.occluder_mask is None:
            return out
        size = self.occluder_mask.shape[0]
        ij = np.round(lm).astype(np.int64)
        inside = (ij >= 0).all(axis=1) & (ij < size).all(axis=1)
        out[inside] = self.occluder_mask[ij[inside, 1], ij[inside, 0]] >= 128
        return out

    def attributes(self, layout: Layout) -> dict[str, bool]:
        """WFLW's six flags, set from what was applied (see docs/SYNTH.md for the rules)."""
        info = self.info
        occ = int(self.occluded(layout).sum())
        return {
            "pose": bool(abs(info["yaw"]) > 40 or abs(info["pitch"]) > 25 or abs(info["roll"]) > 30),
            "expression": bool(info["expression"] >= 1.0),
            "illumination": bool(info["strong_light"] or info["exposure"] < 0.55),
            "makeup": bool(info["makeup"] >= 0.6),
            "occlusion": bool(occ >= max(2, math.ceil(0.05 * layout.num_points))),
            "blur": bool(info["strong_blur"]),
        }

    def challenging(self, layout: Layout) -> bool:
        """300W's challenging subset (ibug): large pose, strong expression or occlusion."""
        a = self.attributes(layout)
        return a["pose"] or a["expression"] or a["occlusion"]


# -------------------------------------------------------------------------------------------- render

def _hairline(style: dict, phi: np.ndarray, wisps: np.ndarray) -> np.ndarray:
    """Height of the hair boundary at azimuth ``phi`` (0 front, +-pi back) on the head."""
    if style["bald"]:
        return np.full_like(phi, -5.0)
    front = -0.4 if style["fringe"] else style["hairline"]
    knots = np.radians([0, 30, 62, 78, 92, 108, 130, 180])
    vals = np.array([front, front + 0.06, front + style["temple"] + 0.15, style["sideburn"] + 0.05,
                     -0.12, 0.05, 0.75, 1.0])
    if style["long"]:
        vals[4:] = [style["sideburn"] + 0.1, 0.6, 1.2, 1.4]
    line = np.interp(np.abs(phi), knots, vals).astype(np.float32)
    # a swept fringe: the front hairline falls towards one side
    sweep = np.float32(style["sweep"]) * np.minimum(np.maximum(phi * np.float32(1.2), -1.0), 1.0)
    sweep *= np.maximum(np.float32(1.0) - np.abs(phi) * np.float32(0.7), 0.0)
    return line + sweep + np.float32(0.04) * (wisps - np.float32(0.5))


def _periodic(values: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """Sample a periodic random profile (one period over the full circle) at angles ``phi``, linearly."""
    n = len(values)
    x = (phi + np.float32(np.pi)) * np.float32(n / (2 * np.pi))
    i0 = np.floor(x)
    f = x - i0
    i0 = i0.astype(np.int64) % n
    a, b = values[i0], values[(i0 + 1) % n]
    return a + f * (b - a)


#: Paints a face's albedo into the image before shading: ``albedo(image, geometry, camera)``.
AlbedoFn = Callable[[np.ndarray, Geometry, Camera], None]


# long: one back-to-front painting pass; its drawing and RNG order fix every pixel of every dataset
def render_scene(scene: Scene, albedo: AlbedoFn | None = None) -> RenderedFace:
    """Draw ``scene``: returns the image (BGR uint8), geometry, camera, occluder mask and info.

    ``albedo``, when given, is called after the facial features are drawn and before light, hair,
    occluder and camera effects are applied, and may paint over the face (in place): that is how
    :mod:`kdlandmark.data.synth.pool` gives a rendered head the skin and features of a real face.
    """
    size = scene.size
    rng = np.random.default_rng(scene.seeds[0])
    geo = build_geometry(scene.shape)
    cam = _place(scene, geo)
    sh = scene.shape
    s = cam.scale
    light = scene.light
    skin_bgr = _bgr(scene.skin)
    hair_bgr = _bgr(scene.hair)
    style = scene.hair_style

    img = _background(scene.background, size, rng)
    head_mask = np.zeros((size, size), np.uint8)

    # ---- the head silhouette and the hair shell
    mesh3 = cam.to_image(geo.mesh)
    hull = cv2.convexHull(mesh3[:, :2].astype(np.float32)).reshape(-1, 2).astype(np.float64)
    hair_centre = np.array([0.0, sh.y_jaw - 0.04, -sh.depth])
    hair_axes = np.array([sh.width, sh.y_jaw - sh.top, sh.depth]) * style["volume"]
    hair_c, hair_m = _ellipsoid_image(cam, hair_centre, hair_axes, np.eye(3))

    # ---- long hair behind the head
    if style["long"] and not style["bald"]:
        g = hair_m[:2] @ hair_m[:2].T
        ell = np.linalg.cholesky(g + 1e-9 * np.eye(2))
        t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        ring = hair_c[:2] + (ell @ np.stack([np.cos(t), np.sin(t)])).T
        down = np.array([-math.sin(math.radians(scene.roll) * 0.3), math.cos(math.radians(scene.roll) * 0.3)])
        side = np.array([down[1], -down[0]])
        reach = style["length"] * s
        wide = sh.width * s * 1.1
        bottom = [hair_c[:2] + down * reach + side * wide, hair_c[:2] + down * reach - side * wide]
        poly = cv2.convexHull(np.concatenate([ring, bottom]).astype(np.float32)).reshape(-1, 2)
        _fill(img, [poly], tuple(v * 0.5 for v in hair_bgr))

    # ---- shoulders and neck (the body turns a little with the head)
    body = rotation(scene.yaw * 0.3, scene.pitch * 0.2, scene.roll * 0.3)
    body_cam = Camera(rot=body, scale=s, tx=cam.tx, ty=cam.ty)
    wk = sh.width / 0.86
    neck_top = cam.project(np.array([[-0.46 * wk, 0.7, -0.8], [0.46 * wk, 0.7, -0.8]]))
    neck_bot = body_cam.project(np.array([[0.58, 2.05, -0.8], [-0.58, 2.05, -0.8]]))
    shoulders = body_cam.project(np.array([[-0.6, 1.95, -0.8], [0.6, 1.95, -0.8], [1.4, 2.15, -0.8],
                                           [2.0, 2.6, -0.8], [2.3, 5.0, -0.8], [-2.3, 5.0, -0.8],
                                           [-2.0, 2.6, -0.8], [-1.4, 2.15, -0.8]]))
    _fill(img, [shoulders], _bgr(scene.clothes))
    _fill(img, [np.concatenate([neck_top, neck_bot])], tuple(v * 0.8 for v in skin_bgr))
    # soft shadows under the chin and where the neck meets the clothes
    chin_shadow = cam.project(geo.curves["contour"][12:-12]) + [0, 0.04 * s]
    collar = neck_bot + [[0.3 * s, 0.05 * s], [-0.3 * s, 0.05 * s]]
    _blend(img, [chin_shadow, collar], (0, 0, 0), 0.33, blur=0.05 * s, thickness=0.11 * s, closed=False)

    # ---- ears behind the head, the head, ears in front
    ear_colour = tuple(v * 0.95 for v in skin_bgr)
    ears = [(cam.project(pts), cam.direction(normal)[2] > -0.2) for pts, normal in geo.ears]
    for p2, facing in ears:
        if not facing:
            _fill(img, [p2], ear_colour)
    _fill(img, [hull], skin_bgr)
    _fill(head_mask, [hull], 255)
    for p2, facing in ears:
        if facing:
            _fill(img, [p2], ear_colour)
            _fill(head_mask, [p2], 255)
            centre = p2.mean(axis=0)
            _blend(img, [centre + 0.5 * (p2 - centre)], (0, 0, 0), 0.18, blur=0.012 * s)

    # ---- region of interest for per-pixel work (computed at half resolution)
    pad = 0.2 * s
    ext = np.concatenate([hull, np.concatenate([p for p, _ in ears])])
    hx, hy = abs(hair_m[0]).sum(), abs(hair_m[1]).sum()
    x0 = int(max(0, math.floor(min(ext[:, 0].min(), hair_c[0] - hx) - pad)))
    y0 = int(max(0, math.floor(min(ext[:, 1].min(), hair_c[1] - hy) - pad)))
    x1 = int(min(size, math.ceil(max(ext[:, 0].max(), hair_c[0] + hx) + pad)))
    y1 = int(min(size, math.ceil(ext[:, 1].max() + pad)))
    w, h = x1 - x0, y1 - y0
    hw, hh = (w + 1) // 2, (h + 1) // 2
    xs = x0 + 2.0 * np.arange(hw) + 0.5
    ys = y0 + 2.0 * np.arange(hh) + 0.5

    # skin shading: Lambert at every front-facing surface sample, splatted on a quarter-resolution
    # grid (normalised convolution fills the gaps), then upsampled to the half-resolution maps
    shade = _splat_shading(geo, cam, mesh3, light, x0, y0, hw, hh)

    # hair: a slightly larger cranium cut at the hairline, strands along the meridians
    disc, _, u, mi = _raycast(hair_c, hair_m, xs, ys)
    phi = np.arctan2(u[0], u[2])
    elev = u[1]  # sine of the elevation: only used to slant the strands
    strands = (0.6 * _periodic(style["strands"][0], phi + 0.25 * elev)
               + 0.4 * _periodic(style["strands"][1], phi - 0.1 * elev))
    yhead = np.float32(hair_centre[1]) + np.float32(hair_axes[1]) * u[1]
    edge = np.minimum(np.maximum(disc * np.float32(1.0 / (0.06 * s) ** 2), 0.0), 1.0)
    line = _hairline(style, phi, _periodic(style["strands"][1], 3.0 * phi))
    inside = np.minimum(np.maximum((line - yhead) * np.float32(1 / 0.04) + 0.3, 0.0), 1.0)
    hair_a = edge * inside
    diff_h, spec_h = _lambert(u, mi, light)
    hair_shade = (light["ambient"] * 0.9 + light["diffuse"] * 0.85 * diff_h
                  + style["shine"] * spec_h * strands) * (0.75 + 0.25 * inside)
    hair_tex = 0.55 + 0.75 * strands
    if not style["fringe"]:  # a parting on top
        part = np.exp(-np.square((phi - np.float32(style["parting"])) * np.float32(14.0)))
        hair_tex *= 1.0 - 0.55 * part * (u[1] < -0.35)
    hair_tex = hair_tex.astype(np.float32)

    # ambient occlusion and the nose's own faces, drawn at half resolution into the skin shading
    def half(p: np.ndarray) -> np.ndarray:
        return (np.asarray(p)[..., :2] - (x0, y0)) / 2.0 - 0.25

    ao = np.full((hh, hw), 255, np.uint8)
    for side in ("l", "r"):
        eye = np.concatenate([geo.curves[f"eye_{side}_up"], geo.curves[f"eye_{side}_lo"]])
        ctr = half(cam.project(eye.mean(axis=0) + [0.0, -0.03, 0.0]))
        cv2.ellipse(ao, (int(ctr[0]), int(ctr[1])), (int(0.13 * s), int(0.085 * s)), scene.roll, 0, 360, 205,
                    -1)
    sub = half(cam.project(geo.points["subnasale"]))
    cv2.ellipse(ao, (int(sub[0]), int(sub[1] + 0.01 * s)), (int(0.07 * s), int(0.02 * s)), scene.roll, 0, 360,
                175, -1)
    lower_lip = half(cam.project(geo.curves["lip_ol"]))
    mid = lower_lip[len(lower_lip) // 2]
    cv2.ellipse(ao, (int(mid[0]), int(mid[1] + 0.02 * s)), (int(0.06 * s), int(0.015 * s)), scene.roll, 0,
                360, 195, -1)
    ao = _soften(ao, max(0.6, 0.03 * s))
    shade *= ao.astype(np.float32) * np.float32(1 / 255)
    nose_polys = []
    nose_shade = shade.copy()
    for face in geo.nose_faces:
        p3 = cam.to_image(face)
        p2 = p3[:, :2]
        if _signed_area(p2) <= 0.5:  # front faces run clockwise in the image (positive area, y down)
            continue
        n = np.cross(p3[2] - p3[0], p3[1] - p3[0])
        n /= np.linalg.norm(n) + 1e-12
        if n[2] < 0:
            n = -n
        ndl = float(n @ light["direction"])
        val = light["ambient"] + light["diffuse"] * max((ndl + 0.3) / 1.3, 0.0)
        cv2.fillPoly(nose_shade, [_fx(half(p2))], float(val), cv2.LINE_AA, _SHIFT)
        nose_polys.append(p2)
    shade = 0.35 * shade + 0.65 * nose_shade  # the nose's faces, softened towards the cheeks' light
    tip = half(cam.project(geo.points["tip"]))
    d = light["direction"]
    if d[2] > 0.3:  # a highlight on the tip of the nose, blurred with the rest
        centre = (int(tip[0] + 0.01 * s * d[0]), int(tip[1] + 0.01 * s * d[1]))
        if 0 <= centre[0] < hw and 0 <= centre[1] < hh:
            value = float(shade[centre[1], centre[0]]) + 1.2 * float(light["specular"])
            cv2.circle(shade, centre, max(1, int(0.018 * s)), value, -1)
    shade = _soften(shade, max(0.5, 0.016 * s))

    # ---- facial features (albedo), in painter's order
    info_feat = _draw_features(img, scene, geo, cam, nose_polys)
    if albedo is not None:
        albedo(img, geo, cam)

    # ---- one pass over the region: out = roi * A + B, with A = (1 - hair) * light and B = hair colour *
    # hair * light, both computed at half resolution (head mask included) and upsampled together
    m = cv2.resize(head_mask[y0:y0 + 2 * hh, x0:x0 + 2 * hw], (hw, hh), interpolation=cv2.INTER_AREA)
    m = np.maximum(np.minimum(m.astype(np.float32) * np.float32(2 / 255), 1.0), hair_a)  # covers the AA edge
    light_map = 1.0 + m * (shade + hair_a * (hair_shade - shade) - 1.0)
    hair_lit = hair_a * light_map * hair_tex
    a_map = ((1.0 - hair_a) * light_map).astype(np.float32)
    b_map = cv2.merge([(hair_lit * np.float32(c)).astype(np.float32) for c in hair_bgr])
    size2 = (2 * hw, 2 * hh)
    a_full = cv2.resize(a_map, size2, interpolation=cv2.INTER_LINEAR)[:h, :w]
    b_full = cv2.resize(b_map, size2, interpolation=cv2.INTER_LINEAR)[:h, :w]
    lit = cv2.multiply(img[y0:y1, x0:x1], cv2.merge([a_full, a_full, a_full]), dtype=cv2.CV_32F)
    img[y0:y1, x0:x1] = cv2.convertScaleAbs(cv2.add(lit, b_full))  # saturates to uint8
    # catchlights after shading
    for side in ("l", "r"):
        if info_feat.get(f"iris_{side}") is None:
            continue
        pc, rad = info_feat[f"iris_{side}"]
        d2 = light["direction"][:2]
        spot = pc + 0.4 * rad * d2 / (np.linalg.norm(d2) + 1e-6)
        r = max(0.7, 0.2 * rad)
        _blend(img, [_ellipse_poly(spot, (r, r), 0.0, 10)], (250, 250, 250), 0.85, blur=0.4 * r)

    # ---- occluder
    occ_mask = None
    if scene.occluder is not None:
        occ_mask = _draw_occluder(img, scene, geo, cam, rng)

    # ---- camera: colour, blur, noise, JPEG
    img = _postprocess(img, scene, np.random.default_rng(scene.seeds[1]))
    post = scene.post
    strong_blur = post["blur"]["kind"] == "motion" or (post["blur"]["kind"] == "gauss"
                                                       and post["blur"]["sigma"] >= 1.5)
    info = {
        "yaw": scene.yaw, "pitch": scene.pitch, "roll": scene.roll,
        "expression": sh.expression_strength(),
        "strong_light": bool(light["strong"]), "exposure": light["exposure"],
        "makeup": scene.makeup["strength"], "strong_blur": strong_blur,
        "occluder": None if scene.occluder is None else scene.occluder["kind"],
        "scale": s,
    }
    return RenderedFace(image=img, scene=scene, geometry=geo, camera=cam, occluder_mask=occ_mask, info=info)


# long: brows, eyes, mouth and nose in painter's order, a few lines each, sharing one scale and palette
def _draw_features(img: np.ndarray, scene: Scene, geo: Geometry, cam: Camera,
                   nose_polys: list[np.ndarray]) -> dict:
    """Brows, eyes, mouth, nose (albedo).  Returns the visible irises for catchlights.

    Strokes of the same kind on both sides are drawn in one call (fewer, larger blends are faster).
    """
    s = cam.scale
    c = geo.curves
    out: dict = {}
    skin = np.asarray(_bgr(scene.skin))
    sh = scene.shape
    lash = np.asarray(_bgr(scene.brow_colour)) * 0.5
    makeup = scene.makeup
    thin = max(1.0, 0.008 * s)

    # blush on the cheeks
    if makeup["blush"] > 0:
        cheeks = []
        for side in (-1, 1):
            z = float(geo.face_z(np.array([0.45]), np.array([0.45]))[0])
            p = cam.project(np.array([side * 0.45, 0.45, z]))
            cheeks.append(_ellipse_poly(p, (0.16 * s, 0.1 * s), math.radians(scene.roll), 16))
        _blend(img, cheeks, np.asarray(_bgr((220, 90, 90))), makeup["blush"], blur=0.06 * s)
    # nasolabial folds when smiling
    if sh.smile > 0.25:
        folds = []
        for side, k in (("l", 0), ("r", -1)):
            sgn = 1.0 if side == "r" else -1.0
            a = geo.points[f"alar_{side}"]
            corner = c["lip_ou"][k]
            ctrl = np.stack([a + [0.04 * sgn, 0, 0], 0.5 * (a + corner) + [0.1 * sgn, 0, 0],
                             corner + [0.06 * sgn, 0.05, 0]])
            folds.append(cam.project(ctrl))
        _blend(img, folds, skin * 0.6, 0.35 * sh.smile, blur=0.012 * s, thickness=max(1.0, 0.015 * s),
               closed=False)

    # brows
    brows = []
    for side in ("l", "r"):
        up, lo = cam.project(c[f"brow_{side}_up"]), cam.project(c[f"brow_{side}_lo"])
        poly = np.concatenate([up, lo[::-1]])
        if abs(_signed_area(poly)) >= 1.0:
            brows.append(poly)
    _blend(img, brows, np.asarray(_bgr(scene.brow_colour)), 0.9, blur=max(0.4, 0.008 * s))

    # eyes: sclera/iris/pupil per eye, then lids, creases and lashes for both at once
    uppers, lowers, creases, shadows, lashes = [], [], [], [], []
    for side in ("l", "r"):
        up = cam.project(c[f"eye_{side}_up"])
        lo = cam.project(c[f"eye_{side}_lo"])
        poly = np.concatenate([up, lo[::-1]])
        area = _signed_area(poly)
        closure = sh.close_l if side == "l" else sh.close_r
        # a front-facing lid loop runs clockwise in the image (positive area with y down)
        if area <= 0.3 and closure < 0.9:
            continue
        if closure < 0.88 and area > 2.0:
            out[f"iris_{side}"] = _draw_eye(img, scene, geo, cam, side, up, poly)
            crease = cam.project(c[f"eye_{side}_up"] + [0.0, -0.055 - 0.3 * sh.eye_h, 0.0])
            creases.append(crease[3:-3])
            if makeup["shadow"] is not None:
                shadows.append(np.concatenate([up, crease[::-1]]))
            lowers.append(lo)
        uppers.append(up)
        n = len(up)
        idx = np.arange(0, n // 2) if side == "l" else np.arange(n // 2, n)
        ctr = poly.mean(axis=0)
        for i in idx[:: max(1, len(idx) // 5)]:
            d = up[i] - ctr
            d /= np.linalg.norm(d) + 1e-6
            lashes.append(np.stack([up[i], up[i] + d * 0.035 * s]))
    _stroke(img, creases, _mix(skin * 0.55, skin, 0.35), thin)
    if shadows:
        _blend(img, shadows, np.asarray(_bgr(makeup["shadow"])), 0.55, blur=0.02 * s)
    _stroke(img, lowers, _mix(skin * 0.5, skin, 0.45), max(1.0, 0.006 * s))
    _stroke(img, uppers, lash, max(1.0, 0.014 * s) * (1.6 if makeup["liner"] else 1.0))
    _stroke(img, lashes, _mix(lash, skin, 0.7), max(1.0, 0.006 * s))

    # facial hair (albedo; not an occluder), drawn before the lips
    beard = scene.hair_style.get("beard", "none")
    if beard != "none":
        _draw_beard(img, scene, geo, cam, beard)

    # mouth
    ou, ol = cam.project(c["lip_ou"]), cam.project(c["lip_ol"])
    iu, il = cam.project(c["lip_iu"]), cam.project(c["lip_il"])
    lip_col = np.asarray(_bgr(scene.lips))
    if makeup["lipstick"] is not None:
        lip_col = 0.25 * lip_col + 0.75 * np.asarray(_bgr(makeup["lipstick"]))
    inner = np.concatenate([iu, il[::-1]])
    gap = float(np.max(np.linalg.norm(il - iu, axis=1)))
    if gap > 1.0 and _signed_area(inner) > 0:
        _draw_mouth_inside(img, inner, iu, il, s, sh)
    upper = np.concatenate([ou, iu[::-1]])
    lower = np.concatenate([il, ol[::-1]])
    _blend(img, [upper], lip_col * 0.92, 1.0, blur=max(0.3, 0.006 * s))
    _blend(img, [lower], lip_col, 1.0, blur=max(0.3, 0.006 * s))
    mid = len(ol) // 2
    hl = 0.6 * ol[mid] + 0.4 * il[mid]
    _blend(img, [_ellipse_poly(hl, (0.07 * s, 0.018 * s), math.radians(scene.roll), 12)], (255, 255, 255),
           0.12, blur=0.015 * s)
    _stroke(img, [iu], _mix(lip_col * 0.45, lip_col, 0.7), thin)

    # nose: visible faces cover what is behind them (far eye at large yaw); nostrils and wing creases
    for p2 in nose_polys:
        _fill(img, [p2], tuple(skin))
    nostrils, wings = [], []
    t = np.linspace(0, 2 * np.pi, 14, endpoint=False)
    for side in ("l", "r"):
        ctr3 = 0.6 * (0.55 * geo.points[f"nostril_{side}"] + 0.45 * geo.points["subnasale"]
                      + [0.0, -0.012, 0.0]) + 0.4 * geo.points[f"alar_{side}"]
        ring = ctr3 + 0.045 * np.cos(t)[:, None] * np.array([1.0, 0, 0]) + \
            0.022 * np.sin(t)[:, None] * np.array([0.0, 0.3, 0.95])
        nostrils.append(cam.project(ring))
        wing, alar = geo.points[f"wing_{side}"], geo.points[f"alar_{side}"]
        sgn = -1.0 if side == "l" else 1.0
        arc = np.stack([wing + [0.0, -0.05, -0.02], wing + [sgn * 0.02, 0.0, 0.0],
                        alar + [sgn * 0.01, 0.02, 0.0], alar + [-sgn * 0.03, 0.03, 0.02]])
        wings.append(cam.project(arc))
    _blend(img, nostrils, skin * 0.25, 0.85, blur=max(0.4, 0.01 * s))
    _stroke(img, wings, _mix(skin * 0.5, skin, 0.4), max(1.0, 0.01 * s))
    return out


def _draw_beard(img: np.ndarray, scene: Scene, geo: Geometry, cam: Camera, kind: str) -> None:
    """Stubble, a full beard (jaw, chin, moustache) or a moustache, in the hair colour."""
    s = cam.scale
    c = geo.curves
    colour = np.asarray(_bgr(scene.hair)) * 0.8
    ou = c["lip_ou"]
    corner_l, corner_r = ou[0], ou[-1]
    top = c["lip_ou"][len(ou) // 2]
    sub = geo.points["subnasale"]
    moustache = np.stack([corner_l + [-0.03, 0.02, 0.0], 0.5 * (corner_l + sub) + [-0.05, 0.0, 0.0],
                          sub + [0.0, 0.015, 0.0], 0.5 * (corner_r + sub) + [0.05, 0.0, 0.0],
                          corner_r + [0.03, 0.02, 0.0], top + [0.0, -0.005, 0.01]])
    if kind == "moustache":
        _blend(img, [cam.project(moustache)], colour, 0.85, blur=0.012 * s)
        return
    cont = c["contour"]
    n = len(cont)
    lower = cont[int(0.12 * n): n - int(0.12 * n)]
    cheeks = np.array([[0.62, 0.42], [0.42, 0.62], [0.0, 0.0]])
    zs = geo.face_z(cheeks[:2, 0], cheeks[:2, 1])
    right = [np.array([0.62, 0.42, zs[0]]), np.array([0.42, 0.62, zs[1]])]
    left = [p * [-1, 1, 1] for p in right]
    region = np.concatenate([lower, np.stack(right[::-1]), moustache[[4, 3, 2, 1, 0]], np.stack(left)])
    if kind == "stubble":
        _blend(img, [cam.project(region)], colour * 0.7, 0.2, blur=0.03 * s)
        return
    # a full beard: soft-edged, with a hair texture of short random strokes
    poly = cam.project(region)
    _blend(img, [poly], colour, 0.8, blur=0.02 * s)
    rng = np.random.default_rng(scene.seeds[0] + 1)
    lo, hi = poly.min(axis=0), poly.max(axis=0)
    starts = lo + rng.random((60, 2)) * (hi - lo)
    inside = np.array([cv2.pointPolygonTest(poly.astype(np.float32), (float(x), float(y)), False) > 0
                       for x, y in starts])
    ang = rng.normal(math.pi / 2, 0.4, len(starts))
    ln = 0.04 * s
    strokes = [np.stack([p, p + ln * np.array([math.cos(a), math.sin(a)])])
               for p, a, ok in zip(starts, ang, inside, strict=True) if ok]
    _blend(img, strokes, colour * 0.55, 0.5, thickness=max(1.0, 0.008 * s), closed=False)


def _draw_eye(img: np.ndarray, scene: Scene, geo: Geometry, cam: Camera, side: str, up: np.ndarray,
              poly: np.ndarray) -> tuple[np.ndarray, float] | None:
    """Sclera, iris and pupil clipped to the lid opening; returns (iris centre, radius px)."""
    s = cam.scale
    size = img.shape[0]
    x0, y0 = np.floor(poly.min(axis=0)).astype(int) - 2
    x1, y1 = np.ceil(poly.max(axis=0)).astype(int) + 3
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, size), min(y1, size)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.fillPoly(mask, [_fx(poly - (x0, y0))], 255, cv2.LINE_AA, _SHIFT)
    layer = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
    layer[:] = tuple(_bgr(scene.sclera))
    # iris: a disc around the gaze direction at the eyeball's front
    pupil3 = geo.points[f"pupil_{side}"]
    gaze = geo.points[f"gaze_{side}"]
    a = np.cross(gaze, [0.0, 1.0, 0.0])
    a /= np.linalg.norm(a)
    b = np.cross(gaze, a)
    t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    r = scene.shape.iris_r
    ring = pupil3 + r * (np.cos(t)[:, None] * a + np.sin(t)[:, None] * b)
    iris2 = cam.project(ring) - (x0, y0)
    pc = cam.project(pupil3)
    iris_col = np.asarray(_bgr(scene.iris))
    _fill(layer, [iris2], tuple(iris_col))
    ctr = pc - (x0, y0)
    inner = ctr + 0.72 * (iris2 - ctr)
    _fill(layer, [inner], tuple(np.clip(iris_col * 1.25 + 10, 0, 255)))
    cv2.polylines(layer, [_fx(iris2)], True, tuple(iris_col * 0.45), max(1, round(0.012 * s)), cv2.LINE_AA,
                  _SHIFT)
    _fill(layer, [ctr + 0.42 * (iris2 - ctr)], (12, 10, 10))
    # the upper lid's shadow on the eyeball
    cv2.polylines(layer, [_fx(up - (x0, y0))], False, tuple(np.asarray(_bgr(scene.sclera)) * 0.55),
                  max(1, round(0.03 * s)), cv2.LINE_AA, _SHIFT)
    mk = cv2.GaussianBlur(mask, (0, 0), 0.5).astype(np.float32) * np.float32(1 / 255)
    img[y0:y1, x0:x1] = cv2.blendLinear(img[y0:y1, x0:x1], layer, 1.0 - mk, mk)
    rad = float(np.linalg.norm(iris2 - ctr, axis=1).mean())
    # catchlight only where the iris centre is inside the opening
    ij = np.round(ctr).astype(int)
    if 0 <= ij[1] < mask.shape[0] and 0 <= ij[0] < mask.shape[1] and mask[ij[1], ij[0]] > 128:
        return pc, rad
    return None


def _draw_mouth_inside(img: np.ndarray, inner: np.ndarray, iu: np.ndarray, il: np.ndarray, s: float,
                       sh: FaceShape) -> None:
    size = img.shape[0]
    x0, y0 = np.floor(inner.min(axis=0)).astype(int) - 2
    x1, y1 = np.ceil(inner.max(axis=0)).astype(int) + 3
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, size), min(y1, size)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.fillPoly(mask, [_fx(inner - (x0, y0))], 255, cv2.LINE_AA, _SHIFT)
    layer = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
    layer[:] = (40, 30, 70)
    # tongue and teeth
    mid = 0.3 * iu + 0.7 * il
    _fill(layer, [np.concatenate([mid, il[::-1]]) - (x0, y0)], (80, 70, 150))
    teeth_h = min(0.06 * s, 0.5 * float(np.max(np.linalg.norm(il - iu, axis=1))))
    d = il - iu
    d /= np.linalg.norm(d, axis=1, keepdims=True) + 1e-6
    n = len(iu)
    k = slice(n // 6, n - n // 6)
    teeth = np.concatenate([iu[k], (iu + d * teeth_h)[k][::-1]])
    _fill(layer, [teeth - (x0, y0)], (215, 225, 232))
    if sh.open > 0.6:
        low = np.concatenate([il[k], (il - d * teeth_h * 0.6)[k][::-1]])
        _fill(layer, [low - (x0, y0)], (200, 210, 220))
    mk = mask.astype(np.float32) * np.float32(1 / 255)
    img[y0:y1, x0:x1] = cv2.blendLinear(img[y0:y1, x0:x1], layer, 1.0 - mk, mk)


# long: one short branch per occluder kind, all sharing the target points and the mask
def _draw_occluder(img: np.ndarray, scene: Scene, geo: Geometry, cam: Camera,
                   rng: np.random.Generator) -> np.ndarray:
    """Draw the scene's occluder; returns its uint8 mask (255 = covered)."""
    occ = scene.occluder
    assert occ is not None
    size = scene.size
    s = cam.scale
    mask = np.zeros((size, size), np.uint8)
    c = geo.curves
    targets = [
        cam.project(0.5 * (c["lip_ou"][len(c["lip_ou"]) // 2] + c["lip_ol"][len(c["lip_ol"]) // 2])),
        cam.project(geo.points["pupil_l"]), cam.project(geo.points["pupil_r"]),
        cam.project(geo.points["tip"]), cam.project(c["contour"][len(c["contour"]) // 2]),
        cam.project(c["contour"][len(c["contour"]) // 4]),
    ]
    target = targets[occ["target"]] + np.asarray(occ["shift"]) * s
    ang = occ["angle"]
    colour = np.asarray(_bgr(occ["colour"]))
    kind = occ["kind"]
    polys: list[np.ndarray] = []
    lines: list[tuple[np.ndarray, np.ndarray, float]] = []
    if kind == "hand":
        palm = 0.35 * s * (0.8 + occ["size"])
        d = np.array([math.cos(ang), math.sin(ang)])
        n = np.array([-d[1], d[0]])
        centre = target - d * palm * 0.6
        polys.append(_ellipse_poly(centre, (palm * 0.55, palm * 0.5), ang, 24))
        for k, (off, ln) in enumerate([(-0.36, 0.95), (-0.12, 1.1), (0.12, 1.05), (0.34, 0.85)]):
            base = centre + d * palm * 0.35 + n * off * palm
            tipp = base + d * palm * ln * (0.85 + 0.1 * occ["radii"][k])
            lines.append((base, tipp, 0.22 * palm))
        thumb_base = centre - n * palm * 0.45
        lines.append((thumb_base, thumb_base - n * palm * 0.55 + d * palm * 0.45, 0.25 * palm))
    elif kind == "bar":
        d = np.array([math.cos(ang), math.sin(ang)])
        length = 3.0 * s
        width = (0.08 + 0.25 * occ["size"]) * s
        lines.append((target - d * length / 2, target + d * length / 2, width))
    elif kind == "glasses":
        for side in ("l", "r"):
            eye = np.concatenate([c[f"eye_{side}_up"], c[f"eye_{side}_lo"]])
            ctr = cam.project(eye.mean(axis=0) + [0.0, 0.01, 0.06])
            polys.append(_ellipse_poly(ctr, (0.24 * s, 0.15 * s), math.radians(scene.roll), 24))
        pl, pr = polys[0].mean(axis=0), polys[1].mean(axis=0)
        lines.append((pl + 0.7 * (pr - pl) * 0.3, pr - 0.7 * (pr - pl) * 0.3, 0.03 * s))
        for side, k in (("l", 2), ("r", -3)):
            ear = cam.project(c["contour"][k] + [0.0, -0.05, 0.0])
            p = polys[0] if side == "l" else polys[1]
            lines.append((p.mean(axis=0), ear, 0.025 * s))
        colour = colour * 0.25
    elif kind == "mask":
        cont = c["contour"]
        n = len(cont)
        lower = cont[int(0.14 * n): n - int(0.14 * n)]
        top_l = np.array([-0.6, 0.28, float(geo.face_z(np.array([0.6]), np.array([0.28]))[0])])
        nose = geo.points["tip"] * [1, 0.8, 1] + [0.0, 0.0, 0.02]
        top = np.stack([top_l * [-1, 1, 1], nose, top_l])
        polys.append(cam.project(np.concatenate([lower, top])))
        colour = np.clip(colour * 0.3 + np.array([200, 190, 170]) * 0.7, 0, 255) if occ["texture"] < 15 \
            else colour
    else:  # blob
        k = len(occ["radii"])
        t = np.linspace(0, 2 * np.pi, k, endpoint=False)
        r = occ["radii"] * (0.2 + 0.5 * occ["size"]) * s * 1.3
        ctrl = np.column_stack([target[0] + r * np.cos(t + ang), target[1] + r * np.sin(t + ang)])
        ring = np.concatenate([ctrl, ctrl[:3]])
        from kdlandmark.data.synth.face import _catmull_rom

        polys.append(_catmull_rom(ring, 60)[:-12])
    for poly in polys:
        _fill(mask, [poly], 255)
    for a, b, wdt in lines:
        cv2.line(mask, tuple(_fx(a)), tuple(_fx(b)), 255, max(1, int(round(wdt))), cv2.LINE_AA, _SHIFT)
    # colour layer with simple shading along the light direction plus texture
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return mask
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    sub = mask[y0:y1, x0:x1].astype(np.float32) * np.float32(1 / 255)
    gx = np.linspace(-1, 1, x1 - x0, dtype=np.float32)[None, :]
    gy = np.linspace(-1, 1, y1 - y0, dtype=np.float32)[:, None]
    ld = scene.light["direction"]
    ramp = 0.85 + 0.2 * (gx * ld[0] + gy * ld[1])
    amb = scene.light["ambient"] + scene.light["diffuse"] * 0.7
    col = colour.astype(np.float32) * (ramp * amb)[..., None]
    if occ["texture"] > 5:
        small = rng.normal(0, occ["texture"], (max(2, (y1 - y0) // 6), max(2, (x1 - x0) // 6), 1))
        col = col + cv2.resize(small.astype(np.float32), (x1 - x0, y1 - y0))[..., None]
    roi = img[y0:y1, x0:x1].astype(np.float32)
    roi += sub[..., None] * (col - roi)
    img[y0:y1, x0:x1] = np.clip(roi, 0, 255).astype(np.uint8)
    return mask


def _postprocess(img: np.ndarray, scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Exposure, colour cast, gamma and contrast (one lookup table per channel), blur, noise, JPEG."""
    post = scene.post
    light = scene.light
    size = scene.size
    x = np.arange(256, dtype=np.float64) / 255.0
    gains = np.asarray(light["tint"])[::-1] * light["exposure"]
    lut = np.stack([np.clip(x * g, 0, 1) ** post["gamma"] for g in gains], axis=-1)
    lut = np.clip((lut - 0.5) * post["contrast"] + 0.5, 0, 1) * 255 + 0.5
    img = cv2.LUT(img, lut.astype(np.uint8).reshape(256, 1, 3))
    blur = post["blur"]
    k = size / 256
    if blur["kind"] == "gauss":
        img = cv2.GaussianBlur(img, (0, 0), blur["sigma"] * k)
    elif blur["kind"] == "motion":
        ln = max(3, int(round(blur["length"] * k)) | 1)
        kern = np.zeros((ln, ln), np.float32)
        kern[ln // 2, :] = 1.0
        rot = cv2.getRotationMatrix2D(((ln - 1) / 2, (ln - 1) / 2), blur["angle"], 1.0)
        kern = cv2.warpAffine(kern, rot, (ln, ln))
        kern /= kern.sum()
        img = cv2.filter2D(img, -1, kern)
    if post["noise"] > 0:
        noise = np.empty((size, size), np.float32)
        cv2.setRNGSeed(int(rng.integers(2**31)))
        cv2.randn(noise, 0.0, post["noise"])
        img = cv2.add(img, cv2.merge([noise, noise, noise]), dtype=cv2.CV_8U)
    if post["jpeg"] is not None:
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, post["jpeg"]])
        if ok:
            img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return img


def render(rng: np.random.Generator, size: int = 256, albedo: AlbedoFn | None = None) -> RenderedFace:
    """Sample a scene from ``rng`` and render it (``albedo``: see :func:`render_scene`)."""
    return render_scene(sample_scene(rng, size), albedo)
