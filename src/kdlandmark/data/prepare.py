"""Prepare a dataset once: decode every image, cut one square face crop, store crops and geometry.

Training then reads fixed-size uint8 crops from memory-mapped ``.npy`` files (:mod:`kdlandmark.data.store`)
instead of decoding JPEGs every epoch, and augments them on the GPU (:mod:`kdlandmark.data.augment`).

Each face's crop is ``crop_affine(box, size, context_margin)`` of its image (the one shared
box -> crop function of :mod:`kdlandmark.data.crop`).  ``context_margin`` (default 0.4) is wider than
the model's ``margin`` (0.15): the model's at-rest view is the central ``view_scale`` part of the crop,
and the ring around it gives rotation, zoom-out and translation real pixels to pull in.  Train splits
(names starting with ``train``) are cropped around the landmarks' bounding box, test splits around the
dataset's face box (for 300W that is the landmarks' box too), as the standard protocols do.

Work is spread over processes: each worker decodes a chunk of images, warps them and writes the crops
straight into the split's ``images.npy`` opened with ``np.lib.format.open_memmap``, so no large array
travels through a pipe.  Every file is written under a temporary name and renamed when complete, and
``meta.json`` is written last: a prepare that was killed never looks complete.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from kdlandmark.atomic import commit_file, save_array_atomic, tmp_path_for, write_json_atomic
from kdlandmark.data.crop import DEFAULT_MARGIN, apply_affine, crop_affine, invert_affine, landmark_box
from kdlandmark.data.formats._common import as_bgr, decode_image
from kdlandmark.data.samples import DatasetError, FaceSample
from kdlandmark.data.store import FORMAT_VERSION, META, SAMPLES, SOFT, PreparedSet
from kdlandmark.layouts import LAYOUTS, Layout, get_layout, layout_for_points

__all__ = [
    "DEFAULT_CONTEXT_MARGIN",
    "prepare_dataset",
    "format_summary",
    "crop_image",
    "decode_image",
]

log = logging.getLogger("kdlandmark")

#: Border of the stored crop around the face box, as a fraction of the box side on each side.  With the
#: model's margin 0.15 the at-rest view is 1.3 / 1.8 = 72 % of the stored side, which leaves room for a
#: 30 degree rotation of the view (needs 1.37x the view side) or a 0.85x zoom-out (1.18x) without black
#: corners.  docs/DATA_PIPELINE.md discusses the choice.
DEFAULT_CONTEXT_MARGIN = 0.4

#: Faces per worker task: large enough to amortise the task overhead, small enough for a smooth bar.
CHUNK = 32

#: Pixel value outside the source image (BORDER_CONSTANT black, as cv2.warpAffine at inference and the
#: zero padding of the augmentation's grid_sample).
BORDER_VALUE = (0, 0, 0)


# ----------------------------------------------------------------------------------- image operations

def crop_image(image_bgr: np.ndarray, affine: np.ndarray, size: int) -> np.ndarray:
    """The ``size x size`` RGB crop ``cv2.warpAffine(image, affine)`` with area-averaged downscaling.

    ``cv2.warpAffine`` samples bilinearly, which aliases when the crop shrinks the face (a 600 px face
    into a 256 px crop skips pixels).  When the affine's scale is below 1 the source region the crop
    covers is first reduced with ``cv2.resize(INTER_AREA)`` to the crop's scale and the remaining warp
    (a scale of about 1) is bilinear; upscaling warps bilinearly at once.  Outside the image is black
    (``BORDER_CONSTANT``), as at inference.
    """
    a = np.asarray(affine, dtype=np.float64)
    scale = float(np.sqrt(abs(np.linalg.det(a[:, :2]))))
    h, w = image_bgr.shape[:2]
    src = image_bgr
    if scale < 1.0:
        # Source rectangle that the crop reads (corners of the crop mapped back), plus room for the filter.
        inv = invert_affine(a)
        corners = np.array([[-0.5, -0.5], [size - 0.5, -0.5], [-0.5, size - 0.5], [size - 0.5, size - 0.5]])
        pts = apply_affine(inv, corners)
        pad = int(np.ceil(2.0 / scale)) + 2
        x0 = max(0, int(np.floor(pts[:, 0].min())) - pad)
        y0 = max(0, int(np.floor(pts[:, 1].min())) - pad)
        x1 = min(w, int(np.ceil(pts[:, 0].max())) + pad + 1)
        y1 = min(h, int(np.ceil(pts[:, 1].max())) + pad + 1)
        if x1 <= x0 or y1 <= y0:                      # the crop lies entirely outside the image
            return np.zeros((size, size, 3), dtype=np.uint8)
        roi = image_bgr[y0:y1, x0:x1]
        rw, rh = x1 - x0, y1 - y0
        nw, nh = max(1, round(rw * scale)), max(1, round(rh * scale))
        src = cv2.resize(roi, (nw, nh), interpolation=cv2.INTER_AREA)
        fx, fy = nw / rw, nh / rh
        # cv2.resize keeps pixel centres: roi x = (x' + 0.5) / fx - 0.5.  Compose affine o shift o that.
        lin = a[:, :2]
        t = a[:, 2] + lin @ np.array([x0, y0], dtype=np.float64)
        a = np.empty((2, 3), dtype=np.float64)
        a[:, 0] = lin[:, 0] / fx
        a[:, 1] = lin[:, 1] / fy
        a[:, 2] = t + lin[:, 0] * (0.5 / fx - 0.5) + lin[:, 1] * (0.5 / fy - 0.5)
    out = cv2.warpAffine(src, a, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                         borderValue=BORDER_VALUE)
    return cv2.cvtColor(out, cv2.COLOR_BGR2RGB)


# ----------------------------------------------------------------------------------------- the workers

@dataclass
class _Item:
    index: int
    path: str
    affine: np.ndarray
    image: np.ndarray | None  # embedded pixels (COFW), else None: decode ``path``


def _worker_init() -> None:
    cv2.setNumThreads(1)  # one process per core already; OpenCV's own threads would oversubscribe


def _crop_chunk(task: tuple[str, int, list[_Item]]) -> tuple[int, list[tuple[int, str, str]]]:
    """Decode, crop and write one chunk into the ``.npy`` memmap at ``out``; returns (done, failures)."""
    out, size, items = task
    images = np.lib.format.open_memmap(out, mode="r+")
    failures: list[tuple[int, str, str]] = []
    try:
        for it in items:
            try:
                bgr = decode_image(it.path) if it.image is None else as_bgr(it.image, it.path)
                images[it.index] = crop_image(bgr, it.affine, size)
            except DatasetError as exc:
                failures.append((it.index, exc.path, exc.problem))
            except cv2.error as exc:
                failures.append((it.index, it.path, f"cannot crop image (OpenCV: {str(exc).strip()})"))
    finally:
        images.flush()
        del images
    return len(items), failures


def _chunks(items: Sequence[_Item], out: str, size: int) -> Iterator[tuple[str, int, list[_Item]]]:
    for i in range(0, len(items), CHUNK):
        yield out, size, list(items[i:i + CHUNK])


# ----------------------------------------------------------------------------------------- prepare

def _layout_for(dataset: str, num_points: int) -> Layout:
    """The dataset's own layout where it has one, else the layout with that many points (folders)."""
    if dataset.lower() in LAYOUTS:
        layout = get_layout(dataset)
        if layout.num_points != num_points:
            raise DatasetError(dataset, f"{num_points} landmarks per face, layout {layout.name} has "
                                        f"{layout.num_points}")
        return layout
    return layout_for_points(num_points)


def _face_box(sample: FaceSample, from_landmarks: bool) -> tuple[float, float, float, float]:
    return landmark_box(sample.landmarks) if from_landmarks else tuple(float(v) for v in sample.box)


def _reset_split_dir(d: Path) -> None:
    """Remove the files of a previous prepare of this split (soft landmarks belong to the old crops)."""
    d.mkdir(parents=True, exist_ok=True)
    for name in ("images.npy", "landmarks.npy", "affines.npy", "occluded.npy", "boxes.npy", SAMPLES, SOFT):
        p = d / name
        if p.exists():
            p.unlink()
    for p in d.glob(".*.tmp-*"):
        p.unlink()


def _compact(src: Path, dst: Path, keep: np.ndarray, shape: tuple[int, ...]) -> None:
    """Copy the rows ``keep`` of the ``.npy`` at ``src`` into a new ``.npy`` at ``dst``."""
    old = np.lib.format.open_memmap(src, mode="r")
    new = np.lib.format.open_memmap(dst, mode="w+", dtype=np.uint8, shape=(len(keep), *shape[1:]))
    for i in range(0, len(keep), 256):
        new[i:i + 256] = old[keep[i:i + 256]]
    new.flush()
    del new, old


def _face_items(dataset: str, samples: list[FaceSample], layout: Layout | None, size: int,
                context_margin: float, from_landmarks: bool, skip_bad: bool, skipped: list[tuple[str, str]]
                ) -> tuple[Layout | None, list[_Item], list[FaceSample]]:
    """The crop work of one split: ``(layout, items, samples kept)``; bad faces raise or are skipped.

    The layout comes from the first face of the first split; every face must have its point count.
    """
    items: list[_Item] = []
    kept: list[FaceSample] = []
    for s in samples:
        if layout is None:
            layout = _layout_for(dataset, s.num_points)
        if s.num_points != layout.num_points:
            err = DatasetError(s.image_path, f"{s.num_points} landmarks, the set has {layout.num_points}")
            if not skip_bad:
                raise err
            skipped.append((err.path, err.problem))
            continue
        try:
            affine = crop_affine(_face_box(s, from_landmarks), size, context_margin)
        except ValueError as exc:
            if not skip_bad:
                raise DatasetError(s.image_path, str(exc)) from None
            skipped.append((s.image_path, str(exc)))
            continue
        items.append(_Item(len(items), s.image_path, affine, s.image))
        kept.append(s)
    return layout, items, kept


def _write_split_tables(d: Path, affines: list[np.ndarray], kept: list[FaceSample], layout: Layout) -> None:
    """Landmarks (stored-crop pixels), affines, occlusion, boxes and sample records of one split."""
    aff = np.stack(affines).astype(np.float64)
    original = np.stack([s.landmarks for s in kept]).astype(np.float64)
    occluded = np.stack([np.zeros(layout.num_points, dtype=bool) if s.occluded is None
                         else np.asarray(s.occluded, dtype=bool) for s in kept])
    save_array_atomic(d / "landmarks.npy", apply_affine(aff, original).astype(np.float32))
    save_array_atomic(d / "affines.npy", aff)
    save_array_atomic(d / "occluded.npy", occluded)
    boxes = np.array([s.box for s in kept], dtype=np.float32).reshape(-1, 4)
    save_array_atomic(d / "boxes.npy", boxes)
    write_json_atomic(d / SAMPLES, [{"image_path": s.image_path, "attributes": s.attributes} for s in kept])


def _prepared_meta(dataset: str, root: Path, layout: Layout, size: int, margin: float, context_margin: float,
                   split_meta: dict[str, dict], skipped: list[list[str]]) -> dict:
    """``meta.json`` of a prepared set (written last: its presence marks the set complete)."""
    from kdlandmark import __version__

    return {
        "format_version": FORMAT_VERSION,
        "dataset": dataset.lower(),
        "layout": layout.name,
        "num_points": layout.num_points,
        "size": int(size),
        "margin": float(margin),
        "context_margin": float(context_margin),
        "splits": split_meta,
        "source_root": str(root.absolute()),
        "skipped": skipped,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "kdlandmark_version": __version__,
        "interpolation": "INTER_AREA reduction then INTER_LINEAR warp; BORDER_CONSTANT black",
    }


def prepare_dataset(dataset: str, root: str | Path, out: str | Path, *, size: int = 256,
                    splits: list[str] | None = None, skip_bad: bool = False, workers: int | None = None,
                    margin: float = DEFAULT_MARGIN, context_margin: float = DEFAULT_CONTEXT_MARGIN
                    ) -> PreparedSet:
    """Read ``dataset`` under ``root`` and write its prepared set to ``out``; returns it opened.

    Args:
        dataset: format name (``300w``, ``wflw``, ``cofw``, ``folder``) as read by
            :func:`kdlandmark.data.formats.read_dataset`.
        root: the dataset folder.
        out: the prepared-set folder (created; an earlier prepare there is replaced split by split).
        size: side of the stored crops in pixels.
        splits: splits to prepare; default :func:`kdlandmark.data.formats.base_splits` (all present).
        skip_bad: skip unreadable samples and images (logged, and listed in ``meta.json``) instead of
            raising :class:`DatasetError`.
        workers: processes decoding and cropping (default: all cores; 1 works in this process).
        margin: the model's margin around the face box (recorded; sets the at-rest view).
        context_margin: the stored crop's margin (>= ``margin``).

    Raises:
        DatasetError: naming the file, for a malformed sample or an image that cannot be decoded
            (unless ``skip_bad``), or when a split ends up empty.
    """
    from kdlandmark.data.formats import base_splits, read_dataset

    if size < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}")
    if not 0.0 <= margin <= context_margin:
        raise ValueError(f"need 0 <= margin <= context_margin, got margin={margin}, "
                         f"context_margin={context_margin}")
    root, out = Path(root), Path(out)
    names = list(splits) if splits else base_splits(dataset, root)
    if len(set(names)) != len(names):
        raise ValueError(f"splits named twice: {names}")
    if workers is None:
        workers = os.cpu_count() or 1
    workers = max(1, int(workers))

    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / META
    if meta_path.exists():
        meta_path.unlink()                 # from here on the folder is incomplete until the new meta lands

    layout: Layout | None = None
    split_meta: dict[str, dict] = {}
    all_skipped: list[list[str]] = []
    pool = None
    try:
        for name in names:
            t0 = time.perf_counter()
            skipped: list[tuple[str, str]] = []
            samples = read_dataset(dataset, root, name, skip_bad=skip_bad, skipped=skipped)
            from_landmarks = name.startswith("train")
            layout, items, kept = _face_items(dataset, samples, layout, size, context_margin, from_landmarks,
                                              skip_bad, skipped)
            if not items:
                raise DatasetError(root, f"split {name!r} has no usable faces ({len(skipped)} skipped)")
            if pool is None and workers > 1 and len(items) > CHUNK:
                pool = mp.get_context("spawn").Pool(workers, initializer=_worker_init)

            d = out / name
            _reset_split_dir(d)
            keep = _crop_split(items, d, size, pool, skip_bad, skipped, f"prepare {name}")
            kept = [kept[i] for i in keep]
            _write_split_tables(d, [items[i].affine for i in keep], kept, layout)
            if skipped:
                log.warning("prepare %s: skipped %d bad sample(s): %s", name, len(skipped),
                            "; ".join(f"{p} ({why})" for p, why in skipped))
            all_skipped += [[str(p), str(why)] for p, why in skipped]
            split_meta[name] = {"count": len(kept), "crop_from": "landmarks" if from_landmarks else "box",
                                "skipped": len(skipped), "seconds": round(time.perf_counter() - t0, 3)}
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()

    assert layout is not None
    meta = _prepared_meta(dataset, root, layout, size, margin, context_margin, split_meta, all_skipped)
    write_json_atomic(meta_path, meta)
    return PreparedSet(out)


def _crop_split(items: list[_Item], d: Path, size: int, pool, skip_bad: bool,
                skipped: list[tuple[str, str]], desc: str) -> np.ndarray:
    """Crop every item into ``d/images.npy``; returns the indices kept (all unless skip_bad skipped some)."""
    final = d / "images.npy"
    tmp = tmp_path_for(final)
    shape = (len(items), size, size, 3)
    mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
    del mm
    failures: list[tuple[int, str, str]] = []
    tasks = _chunks(items, str(tmp), size)
    try:
        results = pool.imap_unordered(_crop_chunk, tasks) if pool is not None else map(_crop_chunk, tasks)
        with tqdm(total=len(items), desc=desc, unit="face", disable=None, leave=False) as bar:
            for done, fails in results:
                bar.update(done)
                if fails and not skip_bad:
                    _, path, problem = min(fails)
                    raise DatasetError(path, problem)
                failures += fails
        if failures:
            failures.sort()
            bad = {i for i, _, _ in failures}
            skipped += [(p, why) for _, p, why in failures]
            keep = np.array([i for i in range(len(items)) if i not in bad], dtype=np.int64)
            if keep.size == 0:
                raise DatasetError(d, f"no image of this split could be decoded ({len(failures)} failed)")
            tmp2 = tmp.with_name(tmp.name + "-compact")
            try:
                _compact(tmp, tmp2, keep, shape)
                os.replace(tmp2, tmp)
            finally:
                if tmp2.exists():
                    tmp2.unlink()
        else:
            keep = np.arange(len(items), dtype=np.int64)
        commit_file(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()
    return keep


# ----------------------------------------------------------------------------------------- reporting

def format_summary(prepared: PreparedSet) -> str:
    """A few lines: where the set is, its geometry, and per split the count, skipped faces and time."""
    m = prepared.meta
    lines = [f"prepared set {prepared.root}: dataset {m.get('dataset')}, layout {prepared.layout.name} "
             f"({prepared.layout.num_points} points), {prepared.size} px crops, margin {prepared.margin:g}, "
             f"context margin {prepared.context_margin:g} (model view {prepared.view_scale:.3f} of the crop)"]
    width = max(len(n) for n in prepared.split_names)
    for name in prepared.split_names:
        info = m["splits"][name]
        lines.append(f"  {name:<{width}}  {info['count']:>6} faces  {info.get('skipped', 0):>4} skipped  "
                     f"{info.get('seconds', float('nan')):7.1f} s  (crop from {info.get('crop_from', '?')})")
    skipped = m.get("skipped") or []
    if skipped:
        lines.append(f"  {len(skipped)} bad sample(s) skipped, listed in {prepared.root / META}:")
        lines += [f"    {p}: {why}" for p, why in skipped[:10]]
        if len(skipped) > 10:
            lines.append(f"    ... and {len(skipped) - 10} more")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- benchmark
