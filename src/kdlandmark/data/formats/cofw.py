"""COFW (29 points): MATLAB files that embed the images.

Files (directly under the root or under ``root/COFW/``), first found wins per split:

- ``COFW_train_color.mat`` (1345 faces) / ``COFW_test_color.mat`` (507): MATLAB v7.3, i.e. HDF5, read
  with h5py.  ``IsTr`` / ``IsT`` is a cell of uint8 images (object references into ``#refs#``),
  ``phisTr`` / ``phisT`` is N x 87 (29 x, 29 y, 29 occlusion flags), ``bboxesTr`` / ``bboxesT`` is
  N x 4 (x, y, width, height).  HDF5 holds MATLAB's column-major arrays transposed: an RGB image
  ``H x W x 3`` is stored ``(3, W, H)``, ``phis`` ``(87, N)``; the reader transposes them back.
- ``COFW.mat``: the older greyscale release, a v5/v7 MAT file (scipy.io.loadmat) with the same
  variable names for both splits in one file.

Coordinates and box corners are 1-based (MATLAB) and become 0-based; the box becomes
``(x - 1, y - 1, x - 1 + w, y - 1 + h)``.  Images are RGB (or greyscale) in the file and come out as
3-channel BGR in ``FaceSample.image`` (OpenCV convention); ``image_path`` is ``"<file.mat>#<index>"``
with a 0-based index into the cell.  Occlusion flags: non-zero means occluded.
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import h5py
import numpy as np
import scipy.io
from tqdm import tqdm

from kdlandmark.data.formats._common import (
    DatasetWriter,
    Problems,
    as_uint8_image,
    check_box,
    check_landmarks,
)
from kdlandmark.data.samples import DatasetError, FaceSample
from kdlandmark.layouts import get_layout

__all__ = ["SPLITS", "read", "base_splits", "find_file", "COFWWriter", "write_cofw_v5", "write_mat73"]

LAYOUT = get_layout("cofw")
SPLITS: tuple[str, ...] = ("train", "test")
#: Candidate files per split, in order of preference (colour v7.3 first, then the old combined file).
FILES: dict[str, tuple[str, ...]] = {
    "train": ("COFW_train_color.mat", "COFW_train.mat", "COFW.mat"),
    "test": ("COFW_test_color.mat", "COFW_test.mat", "COFW.mat"),
}
_SUFFIX = {"train": "Tr", "test": "T"}


def variable_names(split: str) -> tuple[str, str, str]:
    """``(images, phis, boxes)`` variable names of ``split`` (``IsTr, phisTr, bboxesTr`` for train)."""
    s = _SUFFIX[split]
    return f"Is{s}", f"phis{s}", f"bboxes{s}"


def _variables_in(path: Path) -> set[str]:
    """Names of the variables stored in a MAT file (either version); DatasetError if unreadable."""
    try:
        if h5py.is_hdf5(path):
            with h5py.File(path, "r") as f:
                return {k for k in f if not k.startswith("#")}
        return {name for name, _, _ in scipy.io.whosmat(str(path))}
    except (OSError, ValueError, NotImplementedError) as err:
        raise DatasetError(path, f"cannot read MATLAB file: {err}") from None


def find_file(root: str | Path, split: str) -> Path | None:
    """The first existing candidate file of ``split`` under ``root`` or ``root/COFW``."""
    root = Path(root)
    for name in FILES[split]:
        for base in (root, root / "COFW"):
            if (base / name).is_file():
                return base / name
    return None


def base_splits(root: str | Path) -> list[str]:
    """``train`` and/or ``test``: the splits whose file exists and holds that split's variables."""
    found = []
    for split in SPLITS:
        path = find_file(root, split)
        if path is not None and set(variable_names(split)) <= _variables_in(path):
            found.append(split)
    if not found:
        raise DatasetError(root, "no COFW file found (COFW_train_color.mat, COFW_test_color.mat or COFW.mat)")
    return found


# ---------------------------------------------------------------------------------------------- read

def _to_bgr(where: str, image: np.ndarray) -> np.ndarray:
    """An image as MATLAB holds it (``H x W`` grey or ``H x W x 3`` RGB uint8) -> BGR uint8."""
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.dtype != np.uint8:
        raise DatasetError(where, f"image has dtype {image.dtype}, expected uint8")
    if image.size == 0 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise DatasetError(where, f"image has shape {image.shape}, expected H x W or H x W x 3")
    if image.ndim == 2:
        return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_GRAY2BGR)
    return np.ascontiguousarray(image[:, :, ::-1])


def _sample(where: str, image: np.ndarray, phi: np.ndarray, bbox: np.ndarray, index: int) -> FaceSample:
    k = LAYOUT.num_points
    landmarks = check_landmarks(where, np.stack([phi[:k], phi[k:2 * k]], axis=1) - 1.0, k)
    occ = phi[2 * k:3 * k]
    if not np.isfinite(occ).all():
        raise DatasetError(where, "non-finite occlusion flag")
    x, y, w, h = (float(v) for v in bbox)
    box = check_box(where, (x - 1.0, y - 1.0, x - 1.0 + w, y - 1.0 + h))
    return FaceSample(image_path=where, landmarks=landmarks, box=box, attributes={"index": index},
                      occluded=occ != 0, image=image)


def _check_tables(path: Path, names: tuple[str, str, str], n_images: int, phis: np.ndarray,
                  boxes: np.ndarray) -> None:
    """Structural checks: table shapes agree with the image count and the layout."""
    width = 3 * LAYOUT.num_points
    if phis.ndim != 2 or phis.shape != (n_images, width):
        raise DatasetError(path, f"{names[1]} is {' x '.join(map(str, phis.shape))}, expected "
                                 f"{n_images} x {width} ({n_images} images in {names[0]})")
    if boxes.ndim != 2 or boxes.shape != (n_images, 4):
        raise DatasetError(path, f"{names[2]} is {' x '.join(map(str, boxes.shape))}, expected "
                                 f"{n_images} x 4 ({n_images} images in {names[0]})")


def _missing(path: Path, names: tuple[str, ...], present: set[str]) -> None:
    missing = [n for n in names if n not in present]
    if missing:
        raise DatasetError(path, f"missing variable(s) {', '.join(missing)}; the file holds "
                                 f"{', '.join(sorted(present)) or 'nothing'}")


def _numeric(path: Path, name: str, node: object) -> np.ndarray:
    if not isinstance(node, h5py.Dataset) or node.dtype.kind not in "fiub":
        raise DatasetError(path, f"{name} is not a numeric array")
    return np.asarray(node[()], dtype=np.float64).T


def _read_v73(path: Path, split: str, problems: Problems) -> list[FaceSample]:
    names = variable_names(split)
    samples: list[FaceSample] = []
    with h5py.File(path, "r") as f:
        _missing(path, names, set(f.keys()))
        cell = f[names[0]]
        if not isinstance(cell, h5py.Dataset) or h5py.check_ref_dtype(cell.dtype) is not h5py.Reference:
            raise DatasetError(path, f"{names[0]} is not a cell array of images")
        refs = cell[()].ravel()  # C order over the transposed shape = MATLAB's column-major order
        phis = _numeric(path, names[1], f[names[1]])
        boxes = _numeric(path, names[2], f[names[2]])
        _check_tables(path, names, len(refs), phis, boxes)
        for i, ref in enumerate(tqdm(refs, desc=f"cofw {split}", unit="face", disable=None, leave=False)):
            where = f"{path}#{i}"
            try:
                if not ref:
                    raise DatasetError(where, "null image reference in the cell")
                node = f[ref]
                if not isinstance(node, h5py.Dataset) or int(node.attrs.get("MATLAB_empty", 0)):
                    raise DatasetError(where, "empty image")
                image = _to_bgr(where, node[()].T)
                samples.append(_sample(where, image, phis[i], boxes[i], i))
            except DatasetError as err:
                problems.report(err)
    return samples


def _read_v5(path: Path, split: str, problems: Problems) -> list[FaceSample]:
    names = variable_names(split)
    try:
        data = scipy.io.loadmat(str(path), variable_names=list(names))
    except (OSError, ValueError, NotImplementedError, TypeError) as err:
        raise DatasetError(path, f"cannot read MATLAB file: {err}") from None
    _missing(path, names, {k for k in data if not k.startswith("__")})
    cell = data.pop(names[0])
    if cell.dtype != object:
        raise DatasetError(path, f"{names[0]} is not a cell array of images")
    images = cell.ravel(order="F")  # MATLAB's linear order
    del cell
    phis = np.asarray(data[names[1]], dtype=np.float64)
    boxes = np.asarray(data[names[2]], dtype=np.float64)
    _check_tables(path, names, len(images), phis, boxes)
    samples: list[FaceSample] = []
    for i in tqdm(range(len(images)), desc=f"cofw {split}", unit="face", disable=None, leave=False):
        where = f"{path}#{i}"
        try:
            image = images[i]
            if not isinstance(image, np.ndarray):
                raise DatasetError(where, f"cell holds {type(image).__name__}, not an image")
            samples.append(_sample(where, _to_bgr(where, image), phis[i], boxes[i], i))
        except DatasetError as err:
            problems.report(err)
        images[i] = None  # release the RGB copy as soon as its BGR copy exists
    return samples


def read(root: str | Path, split: str, problems: Problems, verify_images: bool) -> list[FaceSample]:
    """Faces of ``split`` in cell order, each with its decoded BGR image (``verify_images`` is moot:
    embedded images are always checked)."""
    root = Path(root).absolute()
    path = find_file(root, split)
    if path is None:
        raise DatasetError(root, f"no COFW file for split {split!r}: looked for {', '.join(FILES[split])} "
                                 f"in {root} and {root / 'COFW'}")
    if h5py.is_hdf5(path):
        return _read_v73(path, split, problems)
    return _read_v5(path, split, problems)


# --------------------------------------------------------------------------------------------- write

_MATLAB_CLASS = {np.dtype(np.uint8): "uint8", np.dtype(np.float64): "double", np.dtype(np.float32): "single",
                 np.dtype(np.int32): "int32", np.dtype(np.uint16): "uint16", np.dtype(np.bool_): "logical"}


def _matlab_header() -> bytes:
    """The 128-byte MAT-file header MATLAB puts in the 512-byte userblock of a v7.3 file."""
    text = ("MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: "
            + time.strftime("%a %b %d %H:%M:%S %Y") + " HDF5 schema 1.00 .")
    return text.encode("ascii").ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM"


def _matlab_class(array: np.ndarray) -> str:
    try:
        return _MATLAB_CLASS[array.dtype]
    except KeyError:
        raise ValueError(f"no MATLAB class for dtype {array.dtype}") from None


def write_mat73(path: str | Path, variables: dict[str, np.ndarray | list[np.ndarray]]) -> None:
    """Write a MATLAB v7.3 (HDF5) MAT file.

    ``variables`` maps names to arrays in MATLAB orientation (rows x columns [x pages]), or to lists
    of arrays, written as N x 1 cell arrays.  As MATLAB does, arrays are stored transposed, cell
    elements live in ``#refs#`` and are referenced by object references, every dataset carries a
    ``MATLAB_class`` attribute, and the file starts with a 512-byte userblock holding the MAT header.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w", userblock_size=512) as f:
        refs = f.create_group("#refs#")
        counter = 0
        for name, value in variables.items():
            if isinstance(value, list):
                handles = np.empty((1, len(value)), dtype=h5py.ref_dtype)  # N x 1 cell, transposed
                for i, element in enumerate(value):
                    element = np.asarray(element)
                    ds = refs.create_dataset(f"e{counter}", data=np.ascontiguousarray(element.T))
                    counter += 1
                    ds.attrs["MATLAB_class"] = np.bytes_(_matlab_class(element))
                    handles[0, i] = ds.ref
                ds = f.create_dataset(name, data=handles, dtype=h5py.ref_dtype)
                ds.attrs["MATLAB_class"] = np.bytes_("cell")
            else:
                array = np.asarray(value)
                if array.ndim < 2:
                    array = array.reshape(1, -1)
                ds = f.create_dataset(name, data=np.ascontiguousarray(array.T))
                ds.attrs["MATLAB_class"] = np.bytes_(_matlab_class(array))
    with open(path, "r+b") as fh:
        fh.write(_matlab_header())


def write_cofw_v5(path: str | Path, images: list[np.ndarray], phis: np.ndarray, boxes: np.ndarray, *,
                  split: str = "train") -> None:
    """Write one split in the old ``COFW.mat`` format (MATLAB v5, scipy.io.savemat).

    Values are as the file holds them: ``images`` uint8 ``H x W`` (grey) or ``H x W x 3`` (RGB),
    ``phis`` N x 87 (1-based x's, y's, occlusion flags), ``boxes`` N x 4 (1-based x, y, width,
    height).  Variables of the other split already in ``path`` are kept, so calling this once per
    split builds the combined file.
    """
    path = Path(path)
    names = variable_names(split)
    existing: dict = {}
    if path.is_file():
        existing = {k: v for k, v in scipy.io.loadmat(str(path)).items() if not k.startswith("__")}
    cell = np.empty((len(images), 1), dtype=object)
    for i, image in enumerate(images):
        cell[i, 0] = np.asarray(image)
    existing.update({names[0]: cell, names[1]: np.asarray(phis, dtype=np.float64),
                     names[2]: np.asarray(boxes, dtype=np.float64)})
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(path), existing, format="5")


class COFWWriter(DatasetWriter):
    """Collects faces and writes ``COFW_train_color.mat`` / ``COFW_test_color.mat`` (v7.3) on close.

    ``part`` is ``train`` or ``test``.  Greyscale ``(H, W)`` input images are stored greyscale, colour
    ones as RGB.  ``sample.occluded`` (default: none occluded) gives the occlusion flags.
    """

    def __init__(self, root: str | Path) -> None:
        super().__init__(root)
        self.parts: dict[str, tuple[list, list, list]] = {s: ([], [], []) for s in SPLITS}

    def path_of(self, part: str) -> Path:
        return self.root / f"COFW_{part}_color.mat"

    def add(self, part: str, image_bgr: np.ndarray, sample: FaceSample) -> str:
        self._check_open()
        if part not in self.parts:
            raise ValueError(f"COFW part must be 'train' or 'test'; got {part!r}")
        image = as_uint8_image(image_bgr, f"cofw {part}")
        k = LAYOUT.num_points
        lm = np.asarray(sample.landmarks, dtype=np.float64)
        if lm.shape != (k, 2) or not np.isfinite(lm).all():
            raise ValueError(f"COFW needs finite ({k}, 2) landmarks, got {lm.shape}")
        occ = np.zeros(k) if sample.occluded is None else np.asarray(sample.occluded, dtype=np.float64)
        if occ.shape != (k,):
            raise ValueError(f"COFW occlusion flags must have shape ({k},), got {occ.shape}")
        x0, y0, x1, y1 = (float(v) for v in sample.box)
        images, phis, boxes = self.parts[part]
        images.append(image if image.ndim == 2 else np.ascontiguousarray(image[:, :, ::-1]))
        phis.append(np.concatenate([lm[:, 0] + 1.0, lm[:, 1] + 1.0, occ != 0]))
        boxes.append([x0 + 1.0, y0 + 1.0, x1 - x0, y1 - y0])
        return f"{self.path_of(part)}#{len(images) - 1}"

    def _finish(self) -> None:
        for part, (images, phis, boxes) in self.parts.items():
            if images:
                i, p, b = variable_names(part)
                write_mat73(self.path_of(part), {i: images, p: np.asarray(phis, dtype=np.float64),
                                                 b: np.asarray(boxes, dtype=np.float64)})
