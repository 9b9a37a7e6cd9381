"""WFLW (98 points): two annotation lists and an image tree.

Layout (directly under the root or under ``root/WFLW/``)::

    WFLW_annotations/list_98pt_rect_attr_train_test/list_98pt_rect_attr_train.txt   (7500 faces)
    WFLW_annotations/list_98pt_rect_attr_train_test/list_98pt_rect_attr_test.txt    (2500 faces)
    WFLW_images/<event>/<file>.jpg

One face per line, space-separated: 196 coordinates ``x0 y0 ... x97 y97``, the face box
``x_min y_min x_max y_max``, six 0/1 flags (pose, expression, illumination, make-up, occlusion, blur)
and the image path relative to ``WFLW_images``.  Coordinates are used as they are (0-based pixel
coordinates, as HRNet treats them).  Several lines may share one image.

Splits: ``train``, ``test`` and ``test-<flag>`` (the test faces with that flag set; an empty list
when no valid test face has the flag).  ``attributes``
holds the six flags as bools under the keys of :data:`FLAGS`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from tqdm import tqdm

from kdlandmark.data.formats._common import (
    DatasetWriter,
    Problems,
    as_uint8_image,
    check_box,
    check_image_file,
    check_landmarks,
    write_jpeg,
)
from kdlandmark.data.samples import DatasetError, FaceSample
from kdlandmark.layouts import get_layout

__all__ = ["FLAGS", "SPLITS", "read", "base_splits", "list_file", "WFLWWriter"]

LAYOUT = get_layout("wflw")
#: The six attribute flags, in file order.
FLAGS: tuple[str, ...] = ("pose", "expression", "illumination", "makeup", "occlusion", "blur")
SPLITS: tuple[str, ...] = ("train", "test") + tuple(f"test-{f}" for f in FLAGS)
_LIST_DIR = Path("WFLW_annotations") / "list_98pt_rect_attr_train_test"
_IMAGES = "WFLW_images"
_NUM_FIELDS = 2 * LAYOUT.num_points + 4 + len(FLAGS) + 1


def _base(root: Path) -> Path:
    """``root`` or ``root/WFLW``, whichever holds the annotation folder (``root`` if neither)."""
    for base in (root, root / "WFLW"):
        if (base / _LIST_DIR).is_dir():
            return base
    return root


def list_file(root: str | Path, part: str) -> Path:
    """The annotation list of ``part`` (``train`` or ``test``) under ``root``."""
    return _base(Path(root)) / _LIST_DIR / f"list_98pt_rect_attr_{part}.txt"


def base_splits(root: str | Path) -> list[str]:
    """``train`` and/or ``test``: the parts whose list file exists."""
    found = [p for p in ("train", "test") if list_file(root, p).is_file()]
    if not found:
        raise DatasetError(Path(root) / _LIST_DIR, "no WFLW annotation lists found")
    return found


def _parse_line(listed: Path, line_no: int, line: str, images: Path, verify_images: bool) -> FaceSample:
    where = f"{listed}:{line_no}"
    fields = line.split()
    if len(fields) != _NUM_FIELDS:
        raise DatasetError(where, f"expected {_NUM_FIELDS} fields (196 coordinates, 4 box values, "
                                  f"6 flags, image path), found {len(fields)}")
    n = 2 * LAYOUT.num_points
    try:
        numbers = [float(v) for v in fields[:n + 4]]
    except ValueError:
        bad = next(v for v in fields[:n + 4] if not _is_float(v))
        raise DatasetError(where, f"not a number: {bad!r}") from None
    if not all(math.isfinite(v) for v in numbers):
        raise DatasetError(where, "non-finite (NaN or inf) coordinate or box value")
    flags = fields[n + 4:n + 4 + len(FLAGS)]
    if any(f not in ("0", "1") for f in flags):
        raise DatasetError(where, f"attribute flags must be 0 or 1, found {' '.join(flags)}")
    landmarks = check_landmarks(where, np.asarray(numbers[:n]).reshape(-1, 2), LAYOUT.num_points)
    box = check_box(where, numbers[n:n + 4])
    image = images / fields[-1]
    if not image.is_file():
        raise DatasetError(image, f"image missing (listed in {where})")
    if verify_images:
        check_image_file(image)
    attributes = {name: flag == "1" for name, flag in zip(FLAGS, flags, strict=True)}
    return FaceSample(image_path=str(image), landmarks=landmarks, box=box, attributes=attributes)


def _is_float(v: str) -> bool:
    try:
        float(v)
    except ValueError:
        return False
    return True


def read(root: str | Path, split: str, problems: Problems, verify_images: bool) -> list[FaceSample]:
    """Faces of ``split`` in list-file order."""
    root = Path(root).absolute()
    part, _, flag = split.partition("-")
    listed = list_file(root, part)
    if not listed.is_file():
        raise DatasetError(listed, "WFLW annotation list missing")
    images = _base(root) / _IMAGES
    lines = listed.read_text(encoding="utf-8-sig").splitlines()
    samples: list[FaceSample] = []
    valid = 0
    for line_no, line in enumerate(tqdm(lines, desc=f"wflw {split}", unit="face", disable=None, leave=False),
                                   start=1):
        if not line.strip():
            continue
        try:
            sample = _parse_line(listed, line_no, line, images, verify_images)
        except DatasetError as err:
            problems.report(err)
            continue
        valid += 1
        if not flag or sample.attributes[flag]:
            samples.append(sample)
    # A flag subset with no face is an empty answer, not an empty dataset (its test list has faces).
    problems.allow_empty = bool(flag) and valid > 0
    return samples


def _num(v: float) -> str:
    """Shortest exact-enough text for a coordinate: integers plainly, else up to 6 decimals."""
    v = float(v)
    if v == int(v):
        return str(int(v))
    return f"{v:.6f}".rstrip("0").rstrip(".")


class WFLWWriter(DatasetWriter):
    """Writes images under ``WFLW_images/<event>/<name>.jpg`` and, on close, the two list files.

    ``part`` is ``train`` or ``test``.  The event folder is ``sample.attributes["event"]`` if given,
    else ``0--synthetic``; flags come from ``sample.attributes`` (missing flags are 0) and the box
    from ``sample.box``.  Adding a second face with the same event and name reuses the image, so
    several faces can share one image as in WFLW.
    """

    def __init__(self, root: str | Path) -> None:
        super().__init__(root)
        self.lines: dict[str, list[str]] = {"train": [], "test": []}
        self.written: set[str] = set()

    def add(self, part: str, image_bgr: np.ndarray, sample: FaceSample) -> str:
        self._check_open()
        if part not in self.lines:
            raise ValueError(f"WFLW part must be 'train' or 'test'; got {part!r}")
        image = as_uint8_image(image_bgr, f"wflw {part}")
        lm = np.asarray(sample.landmarks, dtype=np.float64)
        if lm.shape != (LAYOUT.num_points, 2) or not np.isfinite(lm).all():
            raise ValueError(f"WFLW needs finite ({LAYOUT.num_points}, 2) landmarks, got {lm.shape}")
        event = str(sample.attributes.get("event", "0--synthetic"))
        relative = f"{event}/{self._next_name(sample)}.jpg"
        if any(c.isspace() for c in relative):
            raise ValueError(f"WFLW image paths cannot contain white space: {relative!r}")
        path = self.root / _IMAGES / relative
        if relative not in self.written:
            write_jpeg(path, image)
            self.written.add(relative)
        attrs = sample.attributes
        flags = [int(bool(attrs.get(f, attrs.get("make_up", False) if f == "makeup" else False)))
                 for f in FLAGS]
        values = [_num(v) for v in lm.reshape(-1)] + [_num(v) for v in sample.box] + [str(f) for f in flags]
        self.lines[part].append(" ".join(values + [relative]))
        return str(path)

    def _finish(self) -> None:
        for part, lines in self.lines.items():
            if lines:
                path = self.root / _LIST_DIR / f"list_98pt_rect_attr_{part}.txt"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("".join(line + "\n" for line in lines), encoding="ascii")
