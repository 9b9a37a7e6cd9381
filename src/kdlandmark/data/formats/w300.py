"""300W (iBUG, 68 points): images with ``.pts`` files beside them, in the benchmark's subset folders.

Layout (the folders may sit directly under the root or under ``root/300W/``)::

    afw/  helen/trainset/  helen/testset/  lfpw/trainset/  lfpw/testset/  ibug/
    01_Indoor/  02_Outdoor/          (optional: the private 300W challenge test set)

Splits (REFERENCE.md section 4): ``train`` = afw + helen/trainset + lfpw/trainset (3148 faces),
``test-common`` = helen/testset + lfpw/testset (554), ``test-challenging`` = ibug (135),
``test-full`` = common + challenging (689), ``test-private`` = 01_Indoor + 02_Outdoor (600).

``.pts`` coordinates are 1-based (MATLAB) and become 0-based on read.  The format has no face box, so
the box is the landmarks' bounding box.  ``attributes`` holds ``subset`` (e.g. ``"helen/testset"``)
and ``name`` (the file stem).
"""

from __future__ import annotations

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
from kdlandmark.layouts import get_layout

__all__ = ["SPLITS", "SUBSETS", "read", "base_splits", "W300Writer"]

LAYOUT = get_layout("300w")

#: Split name -> subset folders, in reading order.
SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("afw", "helen/trainset", "lfpw/trainset"),
    "test-common": ("helen/testset", "lfpw/testset"),
    "test-challenging": ("ibug",),
    "test-full": ("helen/testset", "lfpw/testset", "ibug"),
    "test-private": ("01_Indoor", "02_Outdoor"),
}
#: Non-overlapping splits, the ones ``prepare`` stores.
BASE_SPLITS: tuple[str, ...] = ("train", "test-common", "test-challenging", "test-private")
#: Every subset folder of the benchmark.
SUBSETS: tuple[str, ...] = ("afw", "helen/trainset", "helen/testset", "lfpw/trainset", "lfpw/testset", "ibug",
                            "01_Indoor", "02_Outdoor")


def _subset_dir(root: Path, subset: str) -> Path | None:
    """The folder of ``subset`` under ``root`` or ``root/300W``, or None if neither exists."""
    for base in (root, root / "300W", root / "300w"):
        d = base / subset
        if d.is_dir():
            return d
    return None


def base_splits(root: str | Path) -> list[str]:
    """The non-overlapping splits whose folders are all present under ``root``."""
    root = Path(root)
    found = [s for s in BASE_SPLITS if all(_subset_dir(root, sub) is not None for sub in SPLITS[s])]
    if not found:
        raise DatasetError(root, "no 300W subset folders found (expected afw/, helen/trainset/, ... "
                                 "directly or under 300W/)")
    return found


def read(root: str | Path, split: str, problems: Problems, verify_images: bool) -> list[FaceSample]:
    """All faces of ``split``, subset by subset in the order of :data:`SPLITS`, files sorted by name."""
    root = Path(root).absolute()
    folders = []
    for subset in SPLITS[split]:
        d = _subset_dir(root, subset)
        if d is None:
            raise DatasetError(root / subset, f"missing 300W folder needed by split {split!r} "
                                              f"(looked under {root} and {root / '300W'})")
        pts_files = sorted(p for p in d.iterdir() if p.suffix.lower() == ".pts" and p.is_file())
        if not pts_files:
            raise DatasetError(d, "no .pts files in this 300W folder")
        folders.append((subset, d, pts_files))
    samples: list[FaceSample] = []
    total = sum(len(f[2]) for f in folders)
    with tqdm(total=total, desc=f"300w {split}", unit="face", disable=None, leave=False) as bar:
        for subset, d, pts_files in folders:
            images = images_by_stem(d)
            for pts in pts_files:
                bar.update(1)
                try:
                    samples.append(pts_sample(pts, images, LAYOUT.num_points, verify_images,
                                              {"subset": subset}))
                except DatasetError as err:
                    problems.report(err)
    return samples


class W300Writer(DatasetWriter):
    """Writes ``<root>/<part>/<name>.jpg`` (quality 95) and ``<name>.pts`` (1-based, 3 decimals).

    ``part`` is a 300W subset folder (``afw``, ``helen/trainset``, ..., ``01_Indoor``, ``02_Outdoor``).
    """

    def add(self, part: str, image_bgr: np.ndarray, sample: FaceSample) -> str:
        self._check_open()
        if part not in SUBSETS:
            raise ValueError(f"300W part must be one of {', '.join(SUBSETS)}; got {part!r}")
        image = as_uint8_image(image_bgr, f"300w {part}")
        if sample.landmarks.shape != (LAYOUT.num_points, 2):
            raise ValueError(f"300W needs ({LAYOUT.num_points}, 2) landmarks, got {sample.landmarks.shape}")
        name = self._next_name(sample)
        folder = self.root / part
        image_path = folder / f"{name}.jpg"
        write_jpeg(image_path, image)
        write_pts(folder / f"{name}.pts", sample.landmarks)
        return str(image_path)
