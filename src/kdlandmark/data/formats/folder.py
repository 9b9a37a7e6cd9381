"""Own data: any folder tree of images with 300W-style ``.pts`` files beside them.

Every ``.pts`` file under the root (recursively) is one face; its image has the same stem and a
``.jpg``/``.jpeg``/``.png`` extension (any case) in the same folder.  The point count picks the layout
(:func:`kdlandmark.layouts.layout_for_points`: 68 -> 300w, 98 -> wflw, 29 -> cofw) and must be the same
in every file.  Coordinates are 1-based as in 300W and become 0-based; the box is the landmarks'
bounding box; ``attributes`` holds ``subset`` (the folder relative to the root, ``"."`` for the root
itself) and ``name`` (the file stem).

Splits: ``all`` (the whole tree), or any subfolder path relative to the root (e.g. ``"val"`` or
``"people/anna"``), which reads that subtree.  :func:`base_splits` returns ``["all"]``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from tqdm import tqdm

from kdlandmark.data.formats._common import (
    DatasetWriter,
    Problems,
    as_uint8_image,
    images_by_stem,
    pts_sample,
    write_jpeg,
    write_pts,
)
from kdlandmark.data.samples import DatasetError, FaceSample
from kdlandmark.layouts import layout_for_points

__all__ = ["SPLITS", "read", "base_splits", "FolderWriter"]

SPLITS: tuple[str, ...] = ("all",)


def base_splits(root: str | Path) -> list[str]:
    """Always ``["all"]`` (subfolders overlap it, so they are not base splits)."""
    if not Path(root).is_dir():
        raise DatasetError(root, "no such folder")
    return ["all"]


def _top(root: Path, split: str) -> Path:
    if split == "all":
        top = root
    else:
        rel = Path(split)
        if rel.is_absolute() or ".." in rel.parts:
            raise DatasetError(root / split, "split must be 'all' or a subfolder path inside the root")
        top = root / rel
    if not top.is_dir():
        raise DatasetError(top, "no such folder (a folder split is 'all' or a subfolder of the root)")
    return top


def read(root: str | Path, split: str, problems: Problems, verify_images: bool) -> list[FaceSample]:
    """Faces under ``root`` (``split == "all"``) or ``root/split``, sorted by relative path."""
    root = Path(root).absolute()
    top = _top(root, split)
    pts_files = sorted((p for p in top.rglob("*") if p.suffix.lower() == ".pts" and p.is_file()),
                       key=lambda p: p.relative_to(root).as_posix())
    if not pts_files:
        raise DatasetError(top, "no .pts files in this folder or below it")
    found: list[tuple[Path, FaceSample]] = []
    image_maps: dict[Path, dict[str, Path]] = {}
    for pts in tqdm(pts_files, desc=f"folder {split}", unit="face", disable=None, leave=False):
        images = image_maps.get(pts.parent)
        if images is None:
            images = image_maps[pts.parent] = images_by_stem(pts.parent)
        subset = pts.parent.relative_to(root).as_posix()
        try:
            found.append((pts, pts_sample(pts, images, None, verify_images, {"subset": subset})))
        except DatasetError as err:
            problems.report(err)
    if not found:
        return []
    # One layout for the whole tree: the most common count (ties: the first file's) decides.
    counts = Counter(s.num_points for _, s in found)
    first = found[0][1].num_points
    count = max(counts, key=lambda c: (counts[c], c == first))
    try:
        layout_for_points(count)
    except ValueError as err:
        example = next(pts for pts, s in found if s.num_points == count)
        raise DatasetError(example, f"{count} points: {err}") from None
    kept = []
    for pts, s in found:
        if s.num_points == count:
            kept.append(s)
        else:
            problems.report(DatasetError(pts, f"{s.num_points} points, but {counts[count]} other file(s) "
                                              f"under {top} have {count}; all files must agree"))
    return kept


class FolderWriter(DatasetWriter):
    """Writes ``<root>/<part>/<name>.jpg`` (quality 95) and ``<name>.pts``; ``part`` is a relative
    subfolder (``""`` or ``"."`` for the root).  All faces must have the same point count."""

    def __init__(self, root: str | Path) -> None:
        super().__init__(root)
        self.num_points: int | None = None

    def add(self, part: str, image_bgr: np.ndarray, sample: FaceSample) -> str:
        self._check_open()
        rel = Path(part or ".")
        if rel.is_absolute() or ".." in rel.parts:
            raise ValueError(f"folder part must be a relative subfolder, got {part!r}")
        image = as_uint8_image(image_bgr, f"folder {part}")
        n = int(np.asarray(sample.landmarks).shape[0])
        layout_for_points(n)  # raises ValueError for a count no layout has
        if self.num_points is None:
            self.num_points = n
        elif n != self.num_points:
            raise ValueError(f"all faces in a folder dataset need the same point count: "
                             f"{n} != {self.num_points}")
        name = self._next_name(sample)
        folder = self.root / rel
        image_path = folder / f"{name}.jpg"
        write_jpeg(image_path, image)
        write_pts(folder / f"{name}.pts", sample.landmarks)
        return str(image_path)
