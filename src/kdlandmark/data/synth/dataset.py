"""Synthetic datasets in the benchmarks' native formats, contact sheets and the hardness figure.

Face ``i`` of a dataset with seed ``seed`` is rendered from ``np.random.default_rng([seed, i])`` and
its split from a permutation seeded by ``seed`` alone, so the files do not depend on the number of
worker processes.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from kdlandmark.data.crop import apply_affine, crop_affine, landmark_box
from kdlandmark.data.samples import FaceSample
from kdlandmark.data.synth.face import FaceShape, build_geometry, landmarks_3d
from kdlandmark.data.synth.pool import PoolStyle
from kdlandmark.data.synth.render import PIVOT, Camera, render
from kdlandmark.draw import draw_landmarks
from kdlandmark.layouts import Layout, get_layout

__all__ = [
    "assign_parts",
    "render_for_part",
    "render_face",
    "frontal_shape",
    "synthesize",
    "format_summary",
    "contact_sheet",
    "mean_shape_baseline_nme",
    "FORMATS",
    "TRAIN_PARTS",
    "TEST_PARTS",
]

FORMATS = ("300w", "wflw", "cofw")
#: Parts a synthetic face can go to, weighted by the real subsets' sizes.  300W's ``ibug`` takes the
#: challenging test faces (large pose, strong expression or occlusion), the other test parts the rest.
TRAIN_PARTS = {"300w": {"afw": 337, "helen/trainset": 2000, "lfpw/trainset": 811}, "wflw": {"train": 1},
               "cofw": {"train": 1}}
TEST_PARTS = {"300w": {"helen/testset": 330, "lfpw/testset": 224, "ibug": 135}, "wflw": {"test": 1},
              "cofw": {"test": 1}}
#: Test parts whose faces must be challenging (True) or must not be (False); others take any face.
CHALLENGE = {"ibug": True, "helen/testset": False, "lfpw/testset": False}
#: Attempts at drawing a face of the wanted kind for a challenging / common test part.
MAX_ATTEMPTS = 40
#: File written at the dataset root: marks the data as synthetic (reports say so) and records the settings.
MARKER = "synth.json"
#: Standard deviation of the detector-box jitter, as a fraction of the landmark box size (WFLW, COFW).
BOX_JITTER = 0.03


def _detector_box(rng: np.random.Generator, landmarks: np.ndarray) -> tuple[float, float, float, float]:
    """The landmark box with each edge moved by a few percent of its size, like a face detector's box."""
    x0, y0, x1, y1 = landmark_box(landmarks)
    w, h = x1 - x0, y1 - y0
    j = rng.normal(0.0, BOX_JITTER, 4).clip(-2.5 * BOX_JITTER, 2.5 * BOX_JITTER)
    return (float(x0 + j[0] * w), float(y0 + j[1] * h), float(x1 + j[2] * w), float(y1 + j[3] * h))


def render_face(rng: np.random.Generator, layout: Layout, size: int = 256
                ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Render one random face and label it in ``layout``.

    The face depends only on ``rng`` (not on the layout): the same generator state gives the same
    image for every layout, with landmarks that agree on shared points.

    Returns:
        image: ``size`` x ``size`` BGR uint8.
        landmarks: ``(N, 2)`` float32, 0-based pixels (projections of the 3D feature points; points
            hidden by the head itself at large yaw are still their projections).
        info: ``yaw``/``pitch``/``roll`` (degrees), ``expression`` (0 neutral .. about 1 strong),
            ``occluded`` ((N,) bool, under an occluder), ``occluder`` (kind or None),
            ``attributes`` (WFLW's six flags), ``challenging`` (300W ibug rule), ``box`` (detector-like
            box: landmark box with a few percent jitter), ``strong_light``, ``exposure``, ``makeup``,
            ``strong_blur``, ``scale`` (pixels per model unit) and ``face`` (the :class:`RenderedFace`).
    """
    face = render(rng, size)
    lm = face.landmarks(layout)
    info = dict(face.info)
    info["occluded"] = face.occluded(layout)
    info["attributes"] = face.attributes(layout)
    info["challenging"] = face.challenging(layout)
    info["box"] = _detector_box(rng, lm)
    info["face"] = face
    return face.image, lm, info


def frontal_shape(layout: Layout, size: int = 256) -> np.ndarray:
    """Landmarks of the neutral mean face, frontal, centred in a ``size`` image (float32 ``(N, 2)``).

    The face is mirror-symmetric about ``x = (size - 1) / 2``; its landmarks span 60% of the image.
    """
    geo = build_geometry(FaceShape())
    pts = landmarks_3d(geo, layout)
    allp = np.concatenate(list(geo.curves.values()))
    lo, hi = allp[:, :2].min(axis=0), allp[:, :2].max(axis=0)
    scale = 0.6 * size / float((hi - lo).max())
    centre = (size - 1) / 2.0
    ty = centre - scale * ((lo[1] + hi[1]) / 2.0 - PIVOT[1])
    cam = Camera(rot=np.eye(3), scale=scale, tx=centre, ty=ty)
    return cam.project(pts).astype(np.float32)


# ------------------------------------------------------------------------------------------ datasets

def _weighted_choice(rng: np.random.Generator, weights: dict[str, int]) -> str:
    names = list(weights)
    p = np.asarray([weights[n] for n in names], dtype=np.float64)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def render_for_part(fmt: str, seed: int, index: int, size: int, part: str
                    ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Face ``index`` of a dataset, as :func:`render_face` returns it, drawn to suit ``part``.

    Faces of parts with a challenge rule (300W test parts, :data:`CHALLENGE`) are redrawn from
    ``(seed, index, attempt)`` until they are (ibug) or are not (helen/lfpw test) challenging, for at
    most :data:`MAX_ATTEMPTS` draws; every other face is ``render_face(default_rng([seed, index]))``.
    """
    layout = get_layout(fmt)
    want = CHALLENGE.get(part) if fmt == "300w" else None
    image, lm, info = render_face(np.random.default_rng([seed, index]), layout, size)
    attempt = 1
    while want is not None and info["challenging"] != want and attempt < MAX_ATTEMPTS:
        image, lm, info = render_face(np.random.default_rng([seed, index, attempt]), layout, size)
        attempt += 1
    return image, lm, info


#: Per-process cache of loaded pools (a worker loads each pool once).
_POOLS: dict[str, list] = {}


def _pool(root: str) -> list:
    from kdlandmark.data.synth.pool import load_pool

    if root not in _POOLS:
        _POOLS[root] = load_pool(root)
    return _POOLS[root]


def face_source(seed: int, index: int, pool_fraction: float, hybrid_fraction: float) -> str:
    """How face ``index`` of a dataset with seed ``seed`` is made: ``"pool"`` (a pool face warped onto a
    new shape and pose), ``"hybrid"`` (a rendered head with a pool face's skin and features) or
    ``"render"``; a seeded draw with those shares."""
    u = float(np.random.default_rng([seed, index, 0x9001]).random())
    if u < pool_fraction:
        return "pool"
    if u < pool_fraction + hybrid_fraction:
        return "hybrid"
    return "render"


def _make(task: tuple) -> tuple[str, np.ndarray, FaceSample]:
    """Draw face ``index`` for ``part`` and wrap it as (part, image, FaceSample) for the writer."""
    fmt, seed, index, size, part, pool_root, pool_fraction, hybrid_fraction, style = task
    source = "render" if pool_root is None else face_source(seed, index, pool_fraction, hybrid_fraction)
    if source == "pool":
        from kdlandmark.data.synth.pool import render_pool_face

        image, lm, info = render_pool_face(np.random.default_rng([seed, index]), _pool(pool_root), size,
                                           style)
        info = {**info, "box": _detector_box(np.random.default_rng([seed, index, 1]), lm),
                "occluded": np.zeros(len(lm), bool), "attributes": {}}
    elif source == "hybrid":
        from kdlandmark.data.synth.pool import render_hybrid_face

        layout = get_layout(fmt)
        image, lm, info = render_hybrid_face(np.random.default_rng([seed, index]), _pool(pool_root), size,
                                             layout)
        info = {**info, "box": _detector_box(np.random.default_rng([seed, index, 1]), lm),
                "attributes": info["face"].attributes(layout)}
    else:
        image, lm, info = render_for_part(fmt, seed, index, size, part)
    box = landmark_box(lm) if fmt == "300w" else info["box"]
    attributes: dict = {"name": f"synth_{index:06d}"}
    if fmt == "wflw":
        attributes.update(info["attributes"])
    sample = FaceSample(image_path="", landmarks=lm, box=box, attributes=attributes,
                        occluded=info["occluded"] if fmt == "cofw" else None)
    return part, image, sample


def assign_parts(fmt: str, count: int, seed: int, test_fraction: float) -> list[str]:
    """The part of each face: a seeded choice of ``round(count * test_fraction)`` test faces; the first
    faces of each kind cover every part once (so no folder is empty when ``count`` allows), the others
    are drawn with the parts' weights."""
    n_test = int(round(count * test_fraction))
    rng = np.random.default_rng([seed, 0x5EED])
    order = rng.permutation(count)
    is_test = np.zeros(count, dtype=bool)
    is_test[order[:n_test]] = True
    parts = []
    seen = {True: 0, False: 0}
    for i in range(count):
        weights = TEST_PARTS[fmt] if is_test[i] else TRAIN_PARTS[fmt]
        names = list(weights)
        k = seen[bool(is_test[i])]
        seen[bool(is_test[i])] += 1
        if k < len(names):
            parts.append(names[k])
        else:
            parts.append(_weighted_choice(rng, weights))
    return parts


def _init_worker() -> None:
    cv2.setNumThreads(1)


def _write_faces(writer, tasks: list[tuple], workers: int, *, desc: str) -> Counter[str]:
    """Render ``tasks`` (in ``workers`` processes) into ``writer``, in task order; faces per part."""
    parts: Counter[str] = Counter()
    bar = tqdm(total=len(tasks), desc=desc, unit="face", disable=None)
    if workers == 1:
        faces = map(_make, tasks)
    else:
        # spawn, not fork: a fork of a process whose torch/OpenCV thread pools have run can hang; and an
        # executor, not a Pool: a worker that dies is an error here, where a Pool waits forever
        executor = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker)
        faces = executor.map(_make, tasks, chunksize=max(1, min(16, len(tasks) // (4 * workers))))
    try:
        for part, image, sample in faces:
            writer.add(part, image, sample)
            parts[part] += 1
            bar.update()
    finally:
        if workers > 1:
            executor.shutdown(cancel_futures=True)
        bar.close()
    return parts


def synthesize(fmt: str, count: int, out: Path, *, seed: int = 0, size: int = 256, test_fraction: float = 0.2,
               workers: int | None = None, pool: str | Path | None = None, pool_fraction: float = 1.0,
               hybrid_fraction: float = 0.0, pool_style: PoolStyle | None = None) -> dict:
    """Render ``count`` faces and write them under ``out`` in the native format ``fmt``.

    ``round(count * test_fraction)`` faces (a seeded random choice) go to the test part(s), the rest to
    the train part(s), see :func:`assign_parts`.  300W: train faces go to ``afw``, ``helen/trainset``
    or ``lfpw/trainset``, test faces to ``helen/testset``/``lfpw/testset`` (common: faces redrawn until
    not challenging) or ``ibug`` (redrawn until challenging: large pose, strong expression or
    occlusion), in the real subsets' proportions.  WFLW and COFW use ``train``/``test``.

    With ``pool`` (a folder of real faces with 68-point ``.pts`` files), a share ``pool_fraction`` of
    the faces are pool faces warped onto new shapes and poses
    (:func:`kdlandmark.data.synth.pool.render_pool_face`, appearance randomised by ``pool_style``) and a
    share ``hybrid_fraction`` are rendered heads with a pool face's skin and features
    (:func:`kdlandmark.data.synth.pool.render_hybrid_face`); the rest are rendered (a seeded choice per
    face, :func:`face_source`).  Pool faces are 68-point faces, so only ``300w`` takes them; faces from
    the pool follow no challenge rule.

    Also writes ``synth.json`` at the root (format, count, seed, size, parts), which marks the data as
    synthetic.  Returns a summary: ``format``, ``root``, ``count``, ``parts`` (faces per part),
    ``seconds``, ``faces_per_second``, ``workers``.
    """
    from kdlandmark.data.formats import open_writer

    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; synthetic data can be written as {', '.join(FORMATS)}")
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must lie in [0, 1], got {test_fraction}")
    if size < 32:
        raise ValueError(f"size must be at least 32 pixels, got {size}")
    if pool is not None:
        from kdlandmark.data.synth.pool import POOL_LAYOUT

        if fmt != POOL_LAYOUT:
            raise ValueError(f"pool faces carry {POOL_LAYOUT} landmarks; they cannot be written as {fmt}")
        if not (0.0 <= pool_fraction <= 1.0 and 0.0 <= hybrid_fraction <= 1.0
                and pool_fraction + hybrid_fraction <= 1.0):
            raise ValueError(f"pool_fraction and hybrid_fraction must lie in [0, 1] with a sum of at most 1, "
                             f"got {pool_fraction} and {hybrid_fraction}")
        _pool(str(pool))  # a bad pool fails here, naming its file, before any worker starts
    style = pool_style or PoolStyle()
    workers = max(1, min(workers or os.cpu_count() or 1, count))
    parts_of = assign_parts(fmt, count, seed, test_fraction)
    pool_root = None if pool is None else str(pool)
    tasks = [(fmt, seed, i, size, part, pool_root, pool_fraction, hybrid_fraction, style)
             for i, part in enumerate(parts_of)]
    start = time.perf_counter()
    out = Path(out)
    with open_writer(fmt, out) as writer:
        parts = _write_faces(writer, tasks, workers, desc=f"synth {fmt}")
    seconds = time.perf_counter() - start
    summary = {"format": fmt, "root": str(out), "count": count, "parts": dict(sorted(parts.items())),
               "seconds": seconds, "faces_per_second": count / max(seconds, 1e-9), "workers": workers}
    marker = {"generator": "kdlandmark synth", "format": fmt, "count": count, "seed": seed, "size": size,
              "test_fraction": test_fraction, "parts": summary["parts"]}
    if pool is not None:
        marker.update(pool=str(pool), pool_fraction=pool_fraction, hybrid_fraction=hybrid_fraction,
                      pool_style=style.to_dict())
    (out / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    return summary


def format_summary(summary: dict) -> str:
    """Human-readable lines for a :func:`synthesize` summary."""
    lines = [f"wrote {summary['count']} synthetic {summary['format']} faces to {summary['root']} "
             f"in {summary['seconds']:.1f} s ({summary['faces_per_second']:.0f} faces/s, "
             f"{summary['workers']} worker{'s' if summary['workers'] != 1 else ''})"]
    width = max((len(p) for p in summary["parts"]), default=4)
    for part, n in summary["parts"].items():
        lines.append(f"  {part:<{width}}  {n}")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------- pictures

def contact_sheet(fmt: str, path: Path, *, seed: int = 0, size: int = 256, count: int = 24,
                  columns: int = 6, dots: bool = True) -> None:
    """Write a grid PNG of the first ``count`` faces of seed ``seed``, landmarks drawn as small dots."""
    layout = get_layout(fmt)
    tiles = []
    for i in range(count):
        image, lm, info = render_face(np.random.default_rng([seed, i]), layout, size)
        if dots:
            image = draw_landmarks(image, lm, color=(60, 255, 60), radius=max(1.0, size / 200), lines=False,
                                   occluded=info["occluded"], occluded_color=(40, 40, 255))
        tiles.append(image)
    rows = math.ceil(count / columns)
    blank = np.full((size, size, 3), 255, np.uint8)
    tiles += [blank] * (rows * columns - count)
    grid = np.vstack([np.hstack(tiles[r * columns:(r + 1) * columns]) for r in range(rows)])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), grid, [cv2.IMWRITE_PNG_COMPRESSION, 9]):
        raise OSError(f"could not write contact sheet {path}")


# ----------------------------------------------------------------------------------------- figures

_SPLITS = {"300w": ("train", "test-full"), "wflw": ("train", "test"), "cofw": ("train", "test")}


def mean_shape_baseline_nme(root: Path, fmt: str, size: int = 256) -> float:
    """NME (inter-ocular, as a fraction) of predicting the mean training shape in every test crop.

    Each face is cropped from its box with :func:`~kdlandmark.data.crop.crop_affine` (default margin);
    the prediction is the mean of the training faces' crop-coordinate landmarks.  A measure of how much
    a model must learn beyond the box: the synthetic data should leave it well above 8%.
    """
    from kdlandmark.data.formats import read_dataset

    fmt = fmt.lower()
    layout = get_layout(fmt)
    train_split, test_split = _SPLITS[fmt]

    def crops(split: str) -> np.ndarray:
        samples = read_dataset(fmt, root, split)
        return np.stack([apply_affine(crop_affine(s.box, size), s.landmarks) for s in samples])

    mean = crops(train_split).mean(axis=0)
    test = crops(test_split)
    err = np.linalg.norm(test - mean[None], axis=-1).mean(axis=-1)
    return float(np.mean(err / layout.normaliser(test)))
