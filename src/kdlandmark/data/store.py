"""The prepared set on disk: fixed-size uint8 face crops and their geometry, memory-mapped for training.

A prepared set is a folder written by :func:`kdlandmark.data.prepare.prepare_dataset`::

    meta.json                  format version, dataset, layout, crop size and margins, splits, skipped files
    <split>/images.npy         (M, S, S, 3) uint8 RGB crops (opened memory-mapped)
    <split>/landmarks.npy      (M, N, 2) float32 landmarks in stored-crop pixels
    <split>/affines.npy        (M, 2, 3) float64 original image pixels -> stored-crop pixels
    <split>/occluded.npy       (M, N) bool occlusion flags (all False where the format has none)
    <split>/boxes.npy          (M, 4) float32 original face boxes (x0, y0, x1, y1)
    <split>/samples.json       [{"image_path": ..., "attributes": {...}}, ...]
    <split>/soft_landmarks.npy optional (M, N, 2) float32, written later by the ASM stage

Every file is written atomically (temporary file, fsync, rename) and ``meta.json`` is written last, so
a folder whose writer was killed never looks complete.  docs/DATA_PIPELINE.md describes the format.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kdlandmark.atomic import save_array_atomic, write_json_atomic
from kdlandmark.data.samples import DatasetError
from kdlandmark.layouts import Layout, get_layout

__all__ = [
    "FORMAT_VERSION",
    "PreparedSet",
    "PreparedSplit",
    "save_array_atomic",
    "write_json_atomic",
    "write_soft_landmarks",
    "view_scale",
]

#: Version of the on-disk layout; bumped when files or meaning change.
FORMAT_VERSION = 1

META = "meta.json"
SAMPLES = "samples.json"
SOFT = "soft_landmarks.npy"


def view_scale(margin: float, context_margin: float) -> float:
    """Fraction of the stored crop side that the model sees at rest: ``(1 + 2m) / (1 + 2c)``."""
    return (1.0 + 2.0 * margin) / (1.0 + 2.0 * context_margin)


def _load_array(path: Path, *, mmap: bool = False) -> np.ndarray:
    if not path.is_file():
        raise DatasetError(path, "missing file (prepared set incomplete: run prepare again)")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DatasetError(path, f"corrupt array file ({exc})") from exc


def _check_shape(path: Path, arr: np.ndarray, shape: tuple[int | None, ...], dtype: np.dtype | type) -> None:
    ok = arr.ndim == len(shape) and all(want is None or got == want for got, want in zip(arr.shape, shape,
                                                                                         strict=True))
    if not ok:
        want = "(" + ", ".join("?" if s is None else str(s) for s in shape) + ")"
        raise DatasetError(path, f"shape {tuple(arr.shape)} does not match the expected {want}")
    if arr.dtype != np.dtype(dtype):
        raise DatasetError(path, f"dtype {arr.dtype} does not match the expected {np.dtype(dtype)}")


@dataclass
class PreparedSplit:
    """One split of a prepared set.

    ``images`` is a read-only memory map (pages are read on access); the other arrays are small and
    loaded into memory.  Index ``i`` of every field refers to the same face.
    """

    name: str
    images: np.ndarray
    landmarks: np.ndarray
    affines: np.ndarray
    occluded: np.ndarray
    boxes: np.ndarray
    image_paths: list[str]
    attributes: list[dict]
    soft_landmarks: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])


class PreparedSet:
    """A prepared set opened from its folder; every file is checked against ``meta.json`` on opening.

    Raises:
        DatasetError: naming the file when ``meta.json`` or a split file is missing, unreadable, or its
            shape/dtype/count disagrees with the rest.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        meta_path = self.root / META
        if not meta_path.is_file():
            raise DatasetError(meta_path, "missing (not a prepared set, or its prepare did not finish)")
        try:
            self.meta: dict = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DatasetError(meta_path, f"corrupt JSON ({exc})") from exc
        try:
            version = int(self.meta["format_version"])
            self.layout: Layout = get_layout(str(self.meta["layout"]))
            self.size = int(self.meta["size"])
            self.margin = float(self.meta["margin"])
            self.context_margin = float(self.meta["context_margin"])
            splits = self.meta["splits"]
            self._counts = {str(k): int(v["count"]) for k, v in splits.items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DatasetError(meta_path, f"malformed meta ({type(exc).__name__}: {exc})") from exc
        if version != FORMAT_VERSION:
            raise DatasetError(meta_path, f"format_version {version}, this kdlandmark reads "
                                          f"{FORMAT_VERSION}: prepare the dataset again")
        if int(self.meta.get("num_points", self.layout.num_points)) != self.layout.num_points:
            raise DatasetError(meta_path, f"num_points {self.meta['num_points']} disagrees with layout "
                                          f"{self.layout.name} ({self.layout.num_points})")
        self._splits = {name: self._open_split(name) for name in self._counts}

    # ------------------------------------------------------------------ properties
    @property
    def split_names(self) -> list[str]:
        return list(self._counts)

    @property
    def view_scale(self) -> float:
        """Fraction of the stored side the model sees at rest (see :func:`view_scale`)."""
        return view_scale(self.margin, self.context_margin)

    @property
    def dataset(self) -> str:
        return str(self.meta.get("dataset", ""))

    def split(self, name: str) -> PreparedSplit:
        """The split called ``name``; ``KeyError`` listing the known splits otherwise."""
        try:
            return self._splits[name]
        except KeyError:
            raise KeyError(f"{self.root}: no split {name!r}; splits: {', '.join(self._counts)}") from None

    def __repr__(self) -> str:
        counts = ", ".join(f"{k}={v}" for k, v in self._counts.items())
        return f"PreparedSet({str(self.root)!r}, layout={self.layout.name}, size={self.size}, {counts})"

    # ------------------------------------------------------------------ opening
    def _open_split(self, name: str) -> PreparedSplit:
        d = self.root / name
        m, n, s = self._counts[name], self.layout.num_points, self.size
        images = _load_array(d / "images.npy", mmap=True)
        _check_shape(d / "images.npy", images, (m, s, s, 3), np.uint8)
        arrays = {}
        for fname, shape, dtype in (("landmarks", (m, n, 2), np.float32), ("affines", (m, 2, 3), np.float64),
                                    ("occluded", (m, n), np.bool_), ("boxes", (m, 4), np.float32)):
            arr = _load_array(d / f"{fname}.npy")
            _check_shape(d / f"{fname}.npy", arr, shape, dtype)
            arrays[fname] = arr
        soft = None
        if (d / SOFT).exists():
            soft = _load_array(d / SOFT)
            _check_shape(d / SOFT, soft, (m, n, 2), np.float32)
        samples_path = d / SAMPLES
        if not samples_path.is_file():
            raise DatasetError(samples_path, "missing file (prepared set incomplete: run prepare again)")
        try:
            records = json.loads(samples_path.read_text(encoding="utf-8"))
            paths = [str(r["image_path"]) for r in records]
            attrs = [dict(r.get("attributes") or {}) for r in records]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise DatasetError(samples_path, f"corrupt sample list ({type(exc).__name__}: {exc})") from exc
        if len(paths) != m:
            raise DatasetError(samples_path, f"{len(paths)} records, meta.json says {m}")
        return PreparedSplit(name=name, images=images, soft_landmarks=soft, image_paths=paths,
                             attributes=attrs, **arrays)

    @staticmethod
    def is_complete(root: str | Path) -> bool:
        """True when ``meta.json`` exists and every split file is present with consistent shapes."""
        try:
            PreparedSet(root)
        except (DatasetError, KeyError, OSError, ValueError):
            return False
        return True


def write_soft_landmarks(root: str | Path, split: str, soft: np.ndarray) -> None:
    """Store soft landmarks ``(M, N, 2)`` (stored-crop pixels, like ``landmarks.npy``) for ``split``.

    Checked against the split's count and layout; written atomically.  The prepared set must be
    complete.  Re-running prepare removes them, since they belong to the crops they were made from.
    """
    prepared = PreparedSet(root)
    sp = prepared.split(split)
    arr = np.asarray(soft)
    path = prepared.root / split / SOFT
    want = (len(sp), prepared.layout.num_points, 2)
    if arr.shape != want:
        raise DatasetError(path, f"soft landmarks of shape {arr.shape}, split {split!r} needs {want}")
    if not np.all(np.isfinite(arr)):
        raise DatasetError(path, "soft landmarks contain NaN or infinity")
    save_array_atomic(path, arr.astype(np.float32))
