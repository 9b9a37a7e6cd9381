"""The 3D face model of the synthetic generator: shape parameters, feature curves, layout sampling.

Head frame (units: roughly the distance between the outer eye corners of the mean face): ``x`` to the
image right of a frontal face, ``y`` down, ``z`` towards the camera; the eye line is ``y = 0`` and the
nasal root sits at ``z = 0``.

The head is a stack of horizontal elliptical cross-sections.  Above the jaw line (``y < y_jaw``) they
form the cranium ellipsoid; below it the half-width follows a super-ellipse ``W (1 - t^p)^(1/p)`` (``p``
sets how square the jaw is) and the cross-sections move forward so that the chin is at the front.
Facial features are parametric 3D curves lying on that surface (lids, brow arcs, lips, nose ridge,
nostril line, jaw line).  Every layout's landmarks are sampled from the *same* curves by arc length, so
300W, WFLW and COFW points agree with each other on one face (e.g. the outer eye corners are the same
3D points in all three).

Sampling rules (by the layout's group names, never by point counts):

* open groups (``jaw``/``contour``, ``nose_bridge``, ``nostrils``, open brows) take ``n`` points at equal
  arc length along their curve, from the image-left end;
* closed groups (eyes, lips, closed brows) run clockwise from the image-left end: ``n // 2 + 1`` points
  along the upper curve (both ends included), the rest at equal spacing along the lower curve, right
  to left;
* ``chin`` is the contour's middle point, ``pupil_*`` the iris centres, ``nose`` (COFW) is
  (left wing, tip, right wing, subnasale), ``lips_inner`` (COFW) the middles of the inner lip lines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from kdlandmark.layouts import Layout

__all__ = ["FaceShape", "Geometry", "build_geometry", "sample_shape", "landmarks_3d", "rotation"]


@dataclass(frozen=True)
class FaceShape:
    """Identity and expression of one face (defaults: the neutral mean face).

    Identity: head half-width ``width``, head top and chin heights, jaw squareness ``jaw_p``, cranium
    half-depth, eye placement and size, brow shape, nose length/width/projection, mouth placement and
    lip thickness.  Expression: ``open`` (jaw drop, 0-1), ``smile`` (-0.5 frown .. 1), per-eye closure
    (0 open .. 1 shut; ``close_l`` is the image-left eye), ``brow_raise`` (-1..1), ``frown`` (0..1,
    brows pulled down and in) and gaze (``gaze_x``, ``gaze_y``: eye rotation, radians-ish).
    """

    width: float = 0.86
    top: float = -1.28
    y_jaw: float = 0.04
    chin: float = 1.40
    jaw_p: float = 2.3
    depth: float = 0.95
    eye_x: float = 0.35
    eye_y: float = 0.0
    eye_w: float = 0.29
    eye_h: float = 0.105
    eye_tilt: float = 0.015
    brow_y: float = 0.0
    brow_thick: float = 0.075
    brow_arch: float = 0.05
    brow_len: float = 1.0
    nose_tip: float = 0.45
    nose_w: float = 0.165
    nose_proj: float = 0.30
    mouth_y: float = 0.79
    mouth_w: float = 0.32
    lip_up: float = 0.065
    lip_lo: float = 0.085
    iris_r: float = 0.062
    open: float = 0.0
    smile: float = 0.0
    close_l: float = 0.0
    close_r: float = 0.0
    brow_raise: float = 0.0
    frown: float = 0.0
    gaze_x: float = 0.0
    gaze_y: float = 0.0

    def expression_strength(self) -> float:
        """How far from neutral the expression is: 0 neutral, 1 or more a clear expression (mouth open
        0.6, smile 0.8, pout -0.4, an eye 80% closed, brows raised 0.8 or lowered 0.5, knitted 0.8)."""
        return max(self.open / 0.6, self.smile / 0.8, -self.smile / 0.4,
                   max(self.close_l, self.close_r) / 0.8, self.brow_raise / 0.8, -self.brow_raise / 0.5,
                   self.frown / 0.8)


#: (mean, standard deviation, low, high) of each identity parameter.
_IDENTITY: dict[str, tuple[float, float, float, float]] = {
    "width": (0.86, 0.055, 0.72, 1.0),
    "top": (-1.28, 0.06, -1.45, -1.12),
    "chin": (1.40, 0.08, 1.2, 1.62),
    "jaw_p": (2.3, 0.35, 1.7, 3.4),
    "depth": (0.95, 0.05, 0.82, 1.08),
    "eye_x": (0.35, 0.018, 0.3, 0.4),
    "eye_y": (0.0, 0.02, -0.05, 0.05),
    "eye_w": (0.29, 0.022, 0.23, 0.35),
    "eye_h": (0.105, 0.016, 0.07, 0.15),
    "eye_tilt": (0.015, 0.02, -0.03, 0.06),
    "brow_y": (0.0, 0.03, -0.07, 0.08),
    "brow_thick": (0.075, 0.018, 0.04, 0.12),
    "brow_arch": (0.05, 0.025, 0.0, 0.12),
    "brow_len": (1.0, 0.1, 0.75, 1.25),
    "nose_tip": (0.45, 0.035, 0.36, 0.55),
    "nose_w": (0.165, 0.02, 0.12, 0.22),
    "nose_proj": (0.30, 0.04, 0.2, 0.4),
    "mouth_y": (0.79, 0.04, 0.7, 0.9),
    "mouth_w": (0.32, 0.03, 0.25, 0.4),
    "lip_up": (0.065, 0.014, 0.035, 0.1),
    "lip_lo": (0.085, 0.016, 0.05, 0.13),
    "iris_r": (0.062, 0.004, 0.054, 0.07),
}


def sample_shape(rng: np.random.Generator) -> FaceShape:
    """A random identity with a random expression.

    Most faces are near neutral; the rest open the mouth, smile or frown, close one or both
    eyes, raise or knit the brows, in random combinations.
    """
    values: dict[str, float] = {}
    for name, (mean, sd, lo, hi) in _IDENTITY.items():
        values[name] = float(np.clip(rng.normal(mean, sd), lo, hi))
    values["y_jaw"] = 0.04 + 0.02 * float(rng.standard_normal())
    u = rng.random(6)
    values["open"] = (float(rng.uniform(0, 0.04)) if u[0] < 0.65 else
                      float(rng.uniform(0.05, 0.4)) if u[0] < 0.9 else float(rng.uniform(0.4, 1.0)))
    values["smile"] = (float(np.clip(rng.normal(0, 0.08), -0.2, 0.2)) if u[1] < 0.6 else
                       float(rng.uniform(0.2, 0.9)) if u[1] < 0.9 else float(rng.uniform(-0.5, -0.1)))
    if u[2] < 0.9:
        close_l = close_r = float(rng.uniform(0, 0.12))
    elif u[2] < 0.97:
        close_l = close_r = float(rng.uniform(0.6, 1.0))
    else:
        close_l, close_r = float(rng.uniform(0, 0.1)), float(rng.uniform(0.7, 1.0))
        if rng.random() < 0.5:
            close_l, close_r = close_r, close_l
    values["close_l"], values["close_r"] = close_l, close_r
    values["brow_raise"] = (float(rng.normal(0, 0.08)) if u[3] < 0.8 else
                            float(rng.uniform(0.3, 1.0)) if u[3] < 0.92 else float(rng.uniform(-0.6, -0.2)))
    values["frown"] = 0.0 if u[4] < 0.9 else float(rng.uniform(0.3, 1.0))
    gx, gy = np.clip(rng.normal(0, [0.18, 0.1]), -0.45, 0.3)
    values["gaze_x"], values["gaze_y"] = float(gx), float(gy)
    return FaceShape(**values)


# ------------------------------------------------------------------------------------------ helpers

def _catmull_rom(ctrl: np.ndarray, n: int) -> np.ndarray:
    """``n`` points of a uniform Catmull-Rom spline through the ``(K, D)`` control points."""
    p = np.asarray(ctrl, dtype=np.float64)
    k = len(p)
    padded = np.concatenate([2 * p[:1] - p[1:2], p, 2 * p[-1:] - p[-2:-1]])
    u = np.linspace(0.0, k - 1, n)
    i = np.minimum(u.astype(np.int64), k - 2)
    f = (u - i)[:, None]
    p0, p1, p2, p3 = padded[i], padded[i + 1], padded[i + 2], padded[i + 3]
    return 0.5 * (2 * p1 + (p2 - p0) * f + (2 * p0 - 5 * p1 + 4 * p2 - p3) * f ** 2
                  + (3 * p1 - p0 - 3 * p2 + p3) * f ** 3)


def _at_fractions(curve: np.ndarray, fractions: np.ndarray | list[float]) -> np.ndarray:
    """Points at the given arc-length fractions (0 = first point, 1 = last) of a ``(M, 3)`` polyline."""
    seg = np.linalg.norm(np.diff(curve, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    s /= max(s[-1], 1e-12)
    fr = np.asarray(fractions, dtype=np.float64)
    return np.stack([np.interp(fr, s, curve[:, k]) for k in range(curve.shape[1])], axis=1)


def _mirror(curve: np.ndarray) -> np.ndarray:
    """The curve mirrored in ``x = 0`` and reversed, so it still runs from image left to right."""
    out = curve[::-1].copy()
    out[:, 0] = -out[:, 0]
    return out


def _bump(s: np.ndarray, peak: float = 0.5, power: float = 1.0) -> np.ndarray:
    """0 at s=0 and s=1, 1 at ``s = peak``: ``sin(pi s^a)^power`` with ``a`` placing the peak."""
    a = math.log(0.5) / math.log(peak)
    return np.sin(np.pi * np.clip(s, 0.0, 1.0) ** a) ** power


def rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """3x3 rotation (degrees): yaw > 0 turns the face to the image right, pitch > 0 tilts it up,
    roll > 0 turns it clockwise in the image.  Applied as roll after pitch after yaw."""
    y, p, r = np.radians([yaw, pitch, roll])
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    return rz @ rx @ ry


# ----------------------------------------------------------------------------------------- geometry

@dataclass
class Geometry:
    """Everything 3D about one face, in the head frame.

    ``curves`` (each ``(M, 3)``, ordered from image left to image right for a frontal face):
    ``contour``, ``brow_l_up``/``brow_l_lo``/``brow_r_up``/``brow_r_lo``, ``eye_l_up``/``eye_l_lo``/
    ``eye_r_up``/``eye_r_lo``, ``bridge`` (root to tip), ``nostrils``, ``lip_ou``/``lip_ol`` (outer
    upper/lower), ``lip_iu``/``lip_il`` (inner).  ``points``: ``pupil_l``, ``pupil_r``, ``tip``,
    ``subnasale``, ``wing_l``, ``wing_r``, ``root``, ``eyeball_l``, ``eyeball_r``, ...  ``mesh``:
    surface samples with outward unit ``mesh_normals`` (silhouette and shading).  ``ears``: two
    ``(16, 3)`` outlines and their outward normals.  ``nose_faces``: the nose solid's three faces.
    """

    shape: FaceShape
    curves: dict[str, np.ndarray]
    points: dict[str, np.ndarray]
    mesh: np.ndarray
    mesh_normals: np.ndarray
    ears: list[tuple[np.ndarray, np.ndarray]]
    nose_faces: list[np.ndarray]
    zc: float

    def rows(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Cross-section at heights ``y``: half-width, centre depth, front and back half-depths."""
        return _rows(self.shape, np.asarray(y, dtype=np.float64))

    def face_z(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Depth of the head's front surface at ``(x, y)``."""
        return _face_z(self.shape, np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))


def _rows(sh: FaceShape, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    zc = -sh.depth
    h_up = sh.y_jaw - sh.top
    tu = np.minimum(np.maximum((sh.y_jaw - y) / h_up, 0.0), 1.0)
    su = np.sqrt(1.0 - tu ** 2)
    tl = np.minimum(np.maximum((y - sh.y_jaw) / (sh.chin - sh.y_jaw), 0.0), 1.0)
    a_lo = sh.width * np.maximum(1.0 - tl ** sh.jaw_p, 0.0) ** (1.0 / sh.jaw_p)
    front = 0.07 * np.sin(np.pi * tl) - 0.06 * tl
    z0_lo = zc + (-0.06 - zc) * tl ** 1.6
    cf_lo = np.maximum(front - z0_lo, 0.0)
    cb_lo = sh.depth * 0.85 * np.sqrt(np.maximum(1.0 - tl, 0.0))
    upper = y < sh.y_jaw
    a = np.where(upper, sh.width * su, a_lo)
    z0 = np.where(upper, zc, z0_lo)
    cf = np.where(upper, sh.depth * su, cf_lo)
    cb = np.where(upper, sh.depth * su, cb_lo)
    return a, z0, cf, cb


def _face_z(sh: FaceShape, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    a, z0, cf, _ = _rows(sh, y)
    r = np.minimum(np.abs(x) / np.maximum(a, 1e-6), 1.0)
    return z0 + cf * np.sqrt(1.0 - r ** 2)


def _jaw_drop(sh: FaceShape, y: np.ndarray) -> np.ndarray:
    """Downward displacement of the lower face when the mouth opens."""
    drop = 0.30 * sh.open
    t = np.clip((y - sh.y_jaw) / (sh.chin - sh.y_jaw), 0.0, 1.0)
    return drop * t ** 1.4


def _eye(sh: FaceShape, closure: float, n: int = 25) -> dict[str, np.ndarray]:
    """Image-left eye: upper and lower lid (outer corner to inner corner), eyeball, pupil."""
    cx = -sh.eye_x
    outer = np.array([cx - sh.eye_w / 2, sh.eye_y - sh.eye_tilt])
    inner = np.array([cx + sh.eye_w / 2, sh.eye_y + 0.5 * sh.eye_tilt + 0.01])
    s = np.linspace(0.0, 1.0, n)
    base = outer[None, :] + (inner - outer)[None, :] * s[:, None]
    wide = 1.0 + 0.25 * max(sh.brow_raise, 0.0)
    h_up = sh.eye_h * 0.62 * wide
    h_lo = sh.eye_h * 0.38 * (1.0 - 0.35 * max(sh.smile, 0.0))
    c = float(np.clip(closure, 0.0, 1.0))
    up_off = -h_up * (1.0 - c) + 0.85 * h_lo * c
    upper = base.copy()
    upper[:, 1] += up_off * _bump(s, 0.56, 0.85)
    lower = base.copy()
    lower[:, 1] += h_lo * _bump(s, 0.45, 0.85)
    zs = _face_z(sh, np.concatenate([upper[:, 0], lower[:, 0], [cx]]),
                 np.concatenate([upper[:, 1], lower[:, 1], [sh.eye_y]]))
    mid = _bump(s, 0.5)
    z_up = zs[:n] - 0.07 + 0.05 * mid
    z_lo = zs[n:2 * n] - 0.07 + 0.04 * mid
    centre_z = float(zs[-1]) - 0.05
    r_ball = 0.14
    eyeball = np.array([cx, sh.eye_y + 0.012, centre_z - r_ball])
    gaze = np.array([sh.gaze_x, sh.gaze_y, 1.0])
    gaze /= np.linalg.norm(gaze)
    pupil = eyeball + r_ball * gaze
    return {
        "up": np.column_stack([upper, z_up]),
        "lo": np.column_stack([lower, z_lo]),
        "eyeball": eyeball,
        "pupil": pupil,
        "gaze": gaze,
    }


def _brow(sh: FaceShape, n: int = 21) -> tuple[np.ndarray, np.ndarray]:
    """Image-left brow: upper and lower arcs from the outer tail to the inner head."""
    raise_ = sh.brow_raise
    lift = -0.07 * raise_ + sh.brow_y * -1.0
    inner_x = -(sh.eye_x - sh.eye_w / 2 - 0.055) + 0.035 * sh.frown
    outer_x = -(sh.eye_x + sh.eye_w / 2 + 0.17 * sh.brow_len)
    outer = np.array([outer_x, -0.13 + lift + 0.02 * sh.frown])
    inner = np.array([inner_x, -0.165 + lift + 0.06 * sh.frown])
    ctrl = np.array([0.45 * outer_x + 0.55 * inner_x - 0.05,
                     -0.31 - sh.brow_arch + lift - 0.045 * max(raise_, 0.0) + 0.02 * sh.frown])
    s = np.linspace(0.0, 1.0, n)[:, None]
    upper = (1 - s) ** 2 * outer + 2 * s * (1 - s) * ctrl + s ** 2 * inner
    thick = sh.brow_thick * (0.18 + 0.82 * s[:, 0] ** 0.55)
    lower = upper.copy()
    lower[:, 1] += thick
    lower[:, 0] += 0.01 * s[:, 0]
    zs = _face_z(sh, np.concatenate([upper[:, 0], lower[:, 0]]), np.concatenate([upper[:, 1], lower[:, 1]]))
    z_up, z_lo = zs[:n] + 0.02, zs[n:] + 0.02
    return np.column_stack([upper, z_up]), np.column_stack([lower, z_lo])


def _mouth(sh: FaceShape, n: int = 33) -> dict[str, np.ndarray]:
    """Lip lines from the image-left corner to the image-right corner."""
    smile = sh.smile
    mw = sh.mouth_w * (1.0 + 0.14 * max(smile, 0.0) - 0.12 * sh.open)
    corner_y = sh.mouth_y - 0.065 * max(smile, 0.0) + 0.04 * max(-smile, 0.0)
    gap = 0.30 * sh.open
    s = np.linspace(0.0, 1.0, n)
    base_y = corner_y + (sh.mouth_y - corner_y) * np.sin(np.pi * s) ** 0.6
    lip_up = sh.lip_up * (1.0 - 0.25 * max(smile, 0.0))
    lip_lo = sh.lip_lo * (1.0 - 0.2 * max(smile, 0.0) - 0.15 * sh.open)
    inner_w = mw * (0.93 - 0.08 * sh.open)
    open_bump = np.sin(np.pi * s) ** 0.55
    iu = np.column_stack([(2 * s - 1) * inner_w, base_y - 0.22 * gap * open_bump])
    il = np.column_stack([(2 * s - 1) * inner_w, base_y + 0.78 * gap * open_bump])
    # outer lips: control points then a spline (Cupid's bow on the upper lip)
    ks = np.array([0.0, 0.16, 0.36, 0.5, 0.64, 0.84, 1.0])
    up_prof = np.array([0.0, 0.6, 1.12, 0.9, 1.12, 0.6, 0.0])
    lo_prof = np.array([0.0, 0.55, 0.92, 1.0, 0.92, 0.55, 0.0])
    kb = np.interp(ks, s, base_y)
    kob = np.sin(np.pi * ks) ** 0.55
    ou_ctrl = np.column_stack([(2 * ks - 1) * mw, kb - 0.22 * gap * kob - lip_up * up_prof])
    ol_ctrl = np.column_stack([(2 * ks - 1) * mw, kb + 0.78 * gap * kob + lip_lo * lo_prof])
    ou = _catmull_rom(ou_ctrl, n)
    ol = _catmull_rom(ol_ctrl, n)

    lines = np.concatenate([ou, ol, iu, il])
    z = _face_z(sh, lines[:, 0], lines[:, 1]).reshape(4, n)
    bulge = np.array([0.07, 0.06, 0.03, 0.02])[:, None] * (np.sin(np.pi * s) ** 0.7)[None, :]
    z = z + bulge
    return {key: np.column_stack([c, zk]) for key, c, zk in zip(("lip_ou", "lip_ol", "lip_iu", "lip_il"),
                                                                 (ou, ol, iu, il), z, strict=True)}


def _nose(sh: FaceShape) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], list[np.ndarray]]:
    """Ridge (root to tip), nostril line (left alar base, subnasale, right alar base), key points and
    the three faces of the nose solid (left side, right side, underside) used for shading."""
    ty = sh.nose_tip
    nw = sh.nose_w
    flare = 1.0 + 0.15 * max(sh.smile, 0.0)
    ya, yn, ys = ty + 0.095, ty + 0.13, ty + 0.16
    # one surface lookup for every anchor: root, tip, alar base, nostril, subnasale, wing, side
    qx = np.array([0.0, 0.0, -nw, -0.5 * nw, 0.0, -nw, -0.11])
    qy = np.array([0.0, ty, ya, yn, ys, ty + 0.045, 0.16])
    extra = np.array([0.0, sh.nose_proj, 0.05, 0.42 * sh.nose_proj, 0.45 * sh.nose_proj, 0.1, 0.03])
    z = _face_z(sh, qx, qy) + extra
    root = np.array([0.0, sh.eye_y - 0.01, z[0]])
    tip = np.array([0.0, ty, z[1]])
    s = np.linspace(0.0, 1.0, 13)
    bridge = np.column_stack([np.zeros_like(s), root[1] + (ty - root[1]) * s,
                              root[2] + (tip[2] - root[2]) * s ** 1.25])
    alar_l = np.array([-nw * flare, ya, z[2]])
    nos_l = np.array([-0.5 * nw * flare, yn, z[3]])
    sub = np.array([0.0, ys, z[4]])
    flip = np.array([-1.0, 1.0, 1.0])
    nostrils = _catmull_rom(np.stack([alar_l, nos_l, sub, nos_l * flip, alar_l * flip]), 21)
    wing_l = np.array([-1.07 * nw * flare, ty + 0.045, z[5]])
    side_l = np.array([-0.11, 0.16, z[6]])
    root_l = np.array([-0.055, root[1] + 0.02, root[2] - 0.01])
    left = np.stack([root, tip, wing_l, side_l, root_l])
    right = left[::-1] * flip
    under = np.stack([tip, wing_l * flip, alar_l * flip, sub, alar_l, wing_l])
    curves = {"bridge": bridge, "nostrils": nostrils}
    points = {"root": root, "tip": tip, "subnasale": sub, "wing_l": wing_l, "wing_r": wing_l * flip,
              "nostril_l": nos_l, "nostril_r": nos_l * flip, "alar_l": alar_l, "alar_r": alar_l * flip}
    return curves, points, [left, right, under]


def build_geometry(sh: FaceShape) -> Geometry:
    """All 3D curves, points and surface samples of the face ``sh``."""
    zc = -sh.depth
    # jaw line: the frontal outline of the lower head, ear level to chin and back up
    u = np.linspace(0.0, 1.0, 41)
    ys = sh.y_jaw + (sh.chin - sh.y_jaw) * np.sin(0.5 * np.pi * u)
    a, z0, _, _ = _rows(sh, ys)
    left = np.column_stack([-a, ys, z0])
    contour = np.concatenate([left, _mirror(left)[1:]])
    contour[:, 1] += _jaw_drop(sh, contour[:, 1])

    eye_l = _eye(sh, sh.close_l)
    eye_r = _eye(sh, sh.close_r)
    brow_up, brow_lo = _brow(sh)
    mouth = _mouth(sh)
    nose_curves, nose_points, nose_faces = _nose(sh)
    curves = {
        "contour": contour,
        "brow_l_up": brow_up, "brow_l_lo": brow_lo,
        "brow_r_up": _mirror(brow_up), "brow_r_lo": _mirror(brow_lo),
        "eye_l_up": eye_l["up"], "eye_l_lo": eye_l["lo"],
        "eye_r_up": _mirror(eye_r["up"]), "eye_r_lo": _mirror(eye_r["lo"]),
        **nose_curves, **mouth,
    }
    mirror = np.array([-1.0, 1.0, 1.0])
    points = {
        "pupil_l": eye_l["pupil"], "pupil_r": eye_r["pupil"] * mirror,
        "eyeball_l": eye_l["eyeball"], "eyeball_r": eye_r["eyeball"] * mirror,
        "gaze_l": eye_l["gaze"], "gaze_r": eye_l["gaze"].copy(),
        **nose_points,
    }
    # both eyes look the same way: the right pupil follows the shared gaze, not its mirror image
    points["pupil_r"] = points["eyeball_r"] + (eye_l["pupil"] - eye_l["eyeball"])

    # surface samples (rows x azimuths) with outward normals: silhouette and shading
    lower_rows = sh.y_jaw + (sh.chin - sh.y_jaw) * np.sin(0.5 * np.pi * np.linspace(0.0, 1.0, 32))
    ry = np.concatenate([sh.y_jaw - (sh.y_jaw - sh.top) * np.cos(np.linspace(0.0, 0.5 * np.pi, 21))[:-1],
                         lower_rows])
    phi = np.linspace(-np.pi, np.pi, 60, endpoint=False)
    a, z0, cf, cb = _rows(sh, ry)
    cphi, sphi = np.cos(phi)[None, :], np.sin(phi)[None, :]
    mx = a[:, None] * sphi
    mz = z0[:, None] + np.where(cphi > 0, cf[:, None], cb[:, None]) * cphi
    my = np.broadcast_to(ry[:, None], mx.shape) + _jaw_drop(sh, ry)[:, None]
    grid = np.stack([mx, my, mz], axis=-1)
    d_row = np.gradient(grid, axis=0)
    d_phi = np.roll(grid, -1, axis=1) - np.roll(grid, 1, axis=1)
    normals = np.cross(d_phi, d_row)
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True) + 1e-12
    mesh = grid.reshape(-1, 3)
    mesh_normals = normals.reshape(-1, 3)

    # ears: ellipses in planes flared 25 degrees from the head's side
    ears = []
    ey = 0.2
    ea = float(_rows(sh, np.array([ey]))[0][0])
    t = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    for side in (-1.0, 1.0):
        flare = math.radians(25.0)
        along = np.array([side * math.sin(flare), 0.0, -math.cos(flare)])
        normal = np.array([side * math.cos(flare), 0.0, math.sin(flare)])
        centre = np.array([side * (ea + 0.01), ey, zc - 0.1])
        pts = centre + 0.14 * np.cos(t)[:, None] * along + 0.3 * np.sin(t)[:, None] * np.array([0, 1.0, 0])
        ears.append((pts, normal))
    return Geometry(shape=sh, curves=curves, points=points, mesh=mesh, mesh_normals=mesh_normals, ears=ears,
                    nose_faces=nose_faces, zc=zc)


# ------------------------------------------------------------------------------------ layout sampling

def _loop(upper: np.ndarray, lower: np.ndarray, n: int) -> np.ndarray:
    """``n`` points clockwise from the image-left end: upper curve left to right, lower right to left."""
    n_up = n // 2 + 1
    m = n - n_up
    pts_up = _at_fractions(upper, np.linspace(0.0, 1.0, n_up))
    if m == 0:
        return pts_up
    pts_lo = _at_fractions(lower, [1.0 - k / (m + 1) for k in range(1, m + 1)])
    return np.concatenate([pts_up, pts_lo])


def landmarks_3d(geo: Geometry, layout: Layout) -> np.ndarray:
    """The layout's ``(N, 3)`` landmarks on this face, in the head frame.

    Raises ValueError for a layout group the face model does not know.
    """
    c, p = geo.curves, geo.points
    out = np.full((layout.num_points, 3), np.nan)
    for name, idx in layout.groups.items():
        n = len(idx)
        closed = name in layout.closed_groups
        if name in ("jaw", "contour"):
            pts = _at_fractions(c["contour"], np.linspace(0.0, 1.0, n))
        elif name == "chin":
            pts = _at_fractions(c["contour"], np.full(n, 0.5))
        elif name in ("brow_left", "brow_right"):
            side = "l" if name.endswith("left") else "r"
            up, lo = c[f"brow_{side}_up"], c[f"brow_{side}_lo"]
            pts = _loop(up, lo, n) if closed else _at_fractions(up, np.linspace(0.0, 1.0, n))
        elif name in ("eye_left", "eye_right"):
            side = "l" if name.endswith("left") else "r"
            pts = _loop(c[f"eye_{side}_up"], c[f"eye_{side}_lo"], n)
        elif name in ("pupil_left", "pupil_right"):
            pts = np.repeat(p["pupil_l" if name.endswith("left") else "pupil_r"][None], n, axis=0)
        elif name == "nose_bridge":
            pts = _at_fractions(c["bridge"], np.linspace(0.0, 1.0, n))
        elif name == "nostrils":
            pts = _at_fractions(c["nostrils"], np.linspace(0.0, 1.0, n))
        elif name == "nose" and n == 4:
            pts = np.stack([p["wing_l"], p["tip"], p["wing_r"], p["subnasale"]])
        elif name in ("mouth_outer", "mouth"):
            pts = _loop(c["lip_ou"], c["lip_ol"], n)
        elif name == "mouth_inner":
            pts = _loop(c["lip_iu"], c["lip_il"], n)
        elif name == "lips_inner" and n == 2:
            pts = np.stack([_at_fractions(c["lip_iu"], [0.5])[0], _at_fractions(c["lip_il"], [0.5])[0]])
        else:
            raise ValueError(f"synthetic faces do not know part {name!r} ({n} points) "
                             f"of layout {layout.name}")
        out[list(idx)] = pts
    return out
