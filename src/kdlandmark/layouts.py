"""Landmark layouts of the three benchmarks, as data.

A :class:`Layout` says how many points a face has, which points form which facial part, how the
points swap under a horizontal flip, and which points normalise the error (NME).  Nothing else in
the package branches on a point count: code asks the layout.

Sides are named as they appear in the image: ``eye_left`` is the eye on the image's left (the
subject's right eye), as in the 300W and WFLW annotation orders.

Sources (REFERENCE.md section 5): HRNet facial-landmark code (``lib/core/evaluation.py`` for the
normalising indices and its ``MATCHED_PARTS`` flip tables), the 300W/iBUG 68-point scheme, the WFLW
98-point scheme and the LFPW/COFW 29-point scheme.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kdlandmark.errors import CheckpointError

__all__ = ["Layout", "LAYOUTS", "get_layout", "layout_for_points", "layout_from_meta", "polylines"]


def _r(a: int, b: int) -> tuple[int, ...]:
    """Inclusive integer range as a tuple."""
    return tuple(range(a, b + 1))


def _perm_from_pairs(n: int, pairs: Iterable[tuple[int, int]]) -> tuple[int, ...]:
    perm = list(range(n))
    for a, b in pairs:
        perm[a], perm[b] = b, a
    return tuple(perm)


@dataclass(frozen=True)
class Layout:
    """One landmark scheme.

    Attributes:
        name: short name (``"300w"``, ``"wflw"``, ``"cofw"``).
        num_points: number of landmarks.
        groups: facial part name -> point indices (0-based), each part in drawing order.
        closed_groups: parts drawn as closed polygons (eyes, lips).
        flip: permutation applied after mirroring x, so that index i still means the same part.
        inter_ocular: the two outer eye corners (image-left eye first).
        pupils: for each eye (image-left first), the points whose mean is the eye centre.
        sides: mirror-image part pairs ``(left_part, right_part)`` used by flip checks.
    """

    name: str
    num_points: int
    groups: dict[str, tuple[int, ...]]
    flip: tuple[int, ...]
    inter_ocular: tuple[int, int]
    pupils: tuple[tuple[int, ...], tuple[int, ...]]
    closed_groups: frozenset[str] = field(default_factory=frozenset)
    sides: tuple[tuple[str, str], ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        covered = sorted(i for g in self.groups.values() for i in g)
        if covered != list(range(self.num_points)):
            raise ValueError(f"layout {self.name}: groups do not cover 0..{self.num_points - 1} exactly once")
        if sorted(self.flip) != list(range(self.num_points)):
            raise ValueError(f"layout {self.name}: flip is not a permutation")

    @property
    def flip_array(self) -> np.ndarray:
        return np.asarray(self.flip, dtype=np.int64)

    def mirror(self, landmarks: np.ndarray, width: float) -> np.ndarray:
        """Landmarks of the horizontally mirrored image (0-based pixel coordinates, image ``width``).

        Pixel centres sit at integers, so column x maps to ``width - 1 - x``.
        """
        out = np.asarray(landmarks, dtype=np.float32).copy()
        out[..., 0] = (width - 1) - out[..., 0]
        return out[..., self.flip_array, :]

    def average_with_mirror(self, coords: Any, *per_point: Any) -> tuple[Any, ...]:
        """Flip averaging (test-time augmentation) of a batch of ``2B`` model outputs: ``B`` crops, then
        the same ``B`` crops mirrored left-right.

        ``coords``: ``(2B, N, 2)`` model coordinates (centred on the crop, so mirroring the crop
        negates x); ``per_point``: any ``(2B, N)`` per-point outputs (visibility, error).  The mirrored
        half is brought back (x negated, points renumbered by :attr:`flip`) and averaged with the first
        half.  Works on NumPy arrays and PyTorch tensors alike; returns ``(coords, *per_point)``, each
        of batch ``B``.
        """
        b = len(coords) // 2
        if len(coords) != 2 * b:
            raise ValueError(f"flip averaging needs an even batch (crops, then their mirrors), got "
                             f"{len(coords)}")
        perm = self.flip_array
        back = coords[b:][:, perm]                     # advanced indexing copies (NumPy and PyTorch)
        back[..., 0] = -back[..., 0]
        return ((coords[:b] + back) / 2, *((v[:b] + v[b:][:, perm]) / 2 for v in per_point))

    def eye_centres(self, landmarks: np.ndarray) -> np.ndarray:
        """``(..., 2, 2)`` eye centres (image-left eye first) from ``(..., N, 2)`` landmarks."""
        lm = np.asarray(landmarks)
        return np.stack([lm[..., list(p), :].mean(axis=-2) for p in self.pupils], axis=-2)

    def roll(self, landmarks: np.ndarray) -> np.ndarray:
        """``(...)`` angle of the eye line (image-left to image-right eye centre) from image x towards
        image y, radians: a face's in-plane tilt."""
        d = np.diff(self.eye_centres(landmarks), axis=-2)[..., 0, :]
        return np.arctan2(d[..., 1], d[..., 0])

    def yaw_proxy(self, landmarks: np.ndarray) -> np.ndarray:
        """``(...)`` where the nose tip (the end of the nose bridge) sits between the inter-ocular points
        along image x, as a share of their span, minus one half: 0 for a frontal face, > 0 when the nose
        points towards image right.  ``ValueError`` for a layout without a nose bridge."""
        if "nose_bridge" not in self.groups:
            raise ValueError(f"layout {self.name} has no nose bridge: no yaw proxy")
        lm = np.asarray(landmarks, dtype=np.float64)
        a, b = self.inter_ocular
        tip = self.groups["nose_bridge"][-1]
        return (lm[..., tip, 0] - lm[..., a, 0]) / (lm[..., b, 0] - lm[..., a, 0]) - 0.5

    def normaliser(self, landmarks: np.ndarray, kind: str = "inter-ocular") -> np.ndarray:
        """Per-face normalising distance for NME: ``inter-ocular``, ``inter-pupil`` or ``box``."""
        lm = np.asarray(landmarks, dtype=np.float64)
        if kind == "inter-ocular":
            a, b = self.inter_ocular
            return np.linalg.norm(lm[..., a, :] - lm[..., b, :], axis=-1)
        if kind == "inter-pupil":
            c = self.eye_centres(lm)
            return np.linalg.norm(c[..., 0, :] - c[..., 1, :], axis=-1)
        if kind == "box":
            span = lm.max(axis=-2) - lm.min(axis=-2)
            return np.sqrt(span[..., 0] * span[..., 1])
        raise ValueError(f"unknown normalisation {kind!r}; use inter-ocular, inter-pupil or box")

    def to_json(self) -> dict:
        return {"name": self.name, "num_points": self.num_points}


def _layout_300w() -> Layout:
    groups = {
        "jaw": _r(0, 16),
        "brow_left": _r(17, 21),
        "brow_right": _r(22, 26),
        "nose_bridge": _r(27, 30),
        "nostrils": _r(31, 35),
        "eye_left": _r(36, 41),
        "eye_right": _r(42, 47),
        "mouth_outer": _r(48, 59),
        "mouth_inner": _r(60, 67),
    }
    pairs = [(i, 16 - i) for i in range(8)]
    pairs += [(17 + i, 26 - i) for i in range(5)]
    pairs += [(31, 35), (32, 34)]
    pairs += [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]
    pairs += [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58), (60, 64), (61, 63), (65, 67)]
    return Layout(
        name="300w",
        num_points=68,
        groups=groups,
        flip=_perm_from_pairs(68, pairs),
        inter_ocular=(36, 45),
        pupils=(_r(36, 41), _r(42, 47)),
        closed_groups=frozenset({"eye_left", "eye_right", "mouth_outer", "mouth_inner"}),
        sides=(("brow_left", "brow_right"), ("eye_left", "eye_right")),
        description="300W / iBUG 68-point scheme (also Multi-PIE, 300-VW)",
    )


def _layout_wflw() -> Layout:
    groups = {
        "contour": _r(0, 32),
        "brow_left": _r(33, 41),
        "brow_right": _r(42, 50),
        "nose_bridge": _r(51, 54),
        "nostrils": _r(55, 59),
        "eye_left": _r(60, 67),
        "eye_right": _r(68, 75),
        "mouth_outer": _r(76, 87),
        "mouth_inner": _r(88, 95),
        "pupil_left": (96,),
        "pupil_right": (97,),
    }
    pairs = [(i, 32 - i) for i in range(16)]
    pairs += [(33, 46), (34, 45), (35, 44), (36, 43), (37, 42), (38, 50), (39, 49), (40, 48), (41, 47)]
    pairs += [(55, 59), (56, 58)]
    pairs += [(60, 72), (61, 71), (62, 70), (63, 69), (64, 68), (65, 75), (66, 74), (67, 73)]
    pairs += [(76, 82), (77, 81), (78, 80), (83, 87), (84, 86)]
    pairs += [(88, 92), (89, 91), (93, 95), (96, 97)]
    return Layout(
        name="wflw",
        num_points=98,
        groups=groups,
        flip=_perm_from_pairs(98, pairs),
        inter_ocular=(60, 72),
        pupils=((96,), (97,)),
        closed_groups=frozenset({"brow_left", "brow_right", "eye_left", "eye_right", "mouth_outer",
                                 "mouth_inner"}),
        sides=(("brow_left", "brow_right"), ("eye_left", "eye_right"), ("pupil_left", "pupil_right")),
        description="WFLW 98-point scheme",
    )


def _layout_cofw() -> Layout:
    # LFPW/COFW 29 points (0-based): 0/1 brow outer corners, 2/3 brow inner corners,
    # 4/6 brow top middles, 5/7 brow bottom middles, 8/9 outer eye corners, 10/11 inner eye corners,
    # 12/14 upper lids, 13/15 lower lids, 16/17 pupils, 18/19 nose wings, 20 nose tip,
    # 21 below the nose, 22/23 mouth corners, 24 upper lip top, 25 upper lip bottom,
    # 26 lower lip top, 27 lower lip bottom, 28 chin.
    groups = {
        "brow_left": (0, 4, 2, 5),
        "brow_right": (3, 6, 1, 7),
        "eye_left": (8, 12, 10, 13),
        "eye_right": (11, 14, 9, 15),
        "pupil_left": (16,),
        "pupil_right": (17,),
        "nose": (18, 20, 19, 21),
        "mouth": (22, 24, 23, 27),
        "lips_inner": (25, 26),
        "chin": (28,),
    }
    pairs = [(0, 1), (2, 3), (4, 6), (5, 7), (8, 9), (10, 11), (12, 14), (13, 15), (16, 17), (18, 19),
             (22, 23)]
    return Layout(
        name="cofw",
        num_points=29,
        groups=groups,
        flip=_perm_from_pairs(29, pairs),
        inter_ocular=(8, 9),
        pupils=((16,), (17,)),
        closed_groups=frozenset({"brow_left", "brow_right", "eye_left", "eye_right", "mouth"}),
        sides=(("brow_left", "brow_right"), ("eye_left", "eye_right"), ("pupil_left", "pupil_right")),
        description="COFW / LFPW 29-point scheme",
    )


LAYOUTS: dict[str, Layout] = {lay.name: lay for lay in (_layout_300w(), _layout_wflw(), _layout_cofw())}


def get_layout(name: str) -> Layout:
    """The layout called ``name`` (``300w``, ``wflw`` or ``cofw``)."""
    try:
        return LAYOUTS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown layout {name!r}; known: {', '.join(LAYOUTS)}") from None


def layout_for_points(num_points: int) -> Layout:
    """The layout with ``num_points`` points (68 -> 300w, 98 -> wflw, 29 -> cofw)."""
    for lay in LAYOUTS.values():
        if lay.num_points == num_points:
            return lay
    known = ", ".join(f"{lay.num_points} ({lay.name})" for lay in LAYOUTS.values())
    raise ValueError(f"no layout has {num_points} points; known: {known}")


def layout_from_meta(meta: Mapping[str, Any], where: str | Path) -> Layout:
    """The layout a model file's metadata names (``layout``: a name or ``{name, num_points}``), checked.

    The layout must be known and agree with its own point count and with ``architecture.num_points``
    when the metadata has one; otherwise :class:`~kdlandmark.errors.CheckpointError` naming ``where``.
    """
    lay = meta.get("layout")
    arch = meta.get("architecture") or {}
    if isinstance(lay, dict):
        name, num = lay.get("name"), lay.get("num_points", arch.get("num_points"))
    elif isinstance(lay, str):
        name, num = lay, arch.get("num_points")
    else:
        raise CheckpointError(where, f"metadata has no usable 'layout' entry ({lay!r})")
    try:
        layout = get_layout(name) if name else layout_for_points(int(num))
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(where, f"unknown layout {name!r} with {num} points ({exc})") from None
    if num is not None and int(num) != layout.num_points:
        raise CheckpointError(where, f"layout {layout.name!r} has {layout.num_points} points but the "
                                     f"metadata says {num}")
    if arch.get("num_points") is not None and int(arch["num_points"]) != layout.num_points:
        raise CheckpointError(where, f"architecture has {arch['num_points']} points, layout {layout.name!r} "
                                     f"{layout.num_points}")
    return layout


def polylines(layout: Layout) -> Sequence[tuple[tuple[int, ...], bool]]:
    """``(indices, closed)`` for drawing each part of ``layout``."""
    return [(idx, name in layout.closed_groups) for name, idx in layout.groups.items() if len(idx) > 1]
