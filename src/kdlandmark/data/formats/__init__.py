"""Readers and writers of the benchmarks' native formats: 300W, WFLW, COFW and plain folders.

Readers turn files into :class:`~kdlandmark.data.samples.FaceSample` lists (0-based pixel landmarks,
face box, attributes, occlusion); writers produce the same files, so tests and the synthetic
generator exercise exactly the code path real data takes.  See ``docs/DATASETS.md``.

Bad input raises :class:`~kdlandmark.data.samples.DatasetError` naming the file and the problem.
With ``skip_bad=True`` per-sample problems (a broken ``.pts``, a missing or corrupt image, a bad
annotation line) are skipped instead, appended to ``skipped`` and reported in one warning on the
``kdlandmark`` logger; structural problems (missing annotation file or folder, no samples, a
``.mat`` without the expected variables) raise regardless.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from kdlandmark.data.formats import cofw, folder, w300, wflw
from kdlandmark.data.formats._common import DatasetWriter, Problems
from kdlandmark.data.formats.cofw import write_cofw_v5
from kdlandmark.data.samples import DatasetError, FaceSample

__all__ = [
    "FORMATS",
    "read_dataset",
    "base_splits",
    "all_splits",
    "open_writer",
    "DatasetWriter",
    "DatasetError",
    "write_cofw_v5",
]

_MODULES: dict[str, ModuleType] = {"300w": w300, "wflw": wflw, "cofw": cofw, "folder": folder}
_WRITERS: dict[str, type[DatasetWriter]] = {
    "300w": w300.W300Writer,
    "wflw": wflw.WFLWWriter,
    "cofw": cofw.COFWWriter,
    "folder": folder.FolderWriter,
}
#: Format names accepted by every function here.
FORMATS: tuple[str, ...] = tuple(_MODULES)


def _module(name: str) -> ModuleType:
    try:
        return _MODULES[name.lower()]
    except (KeyError, AttributeError):
        raise ValueError(f"unknown dataset format {name!r}; known: {', '.join(FORMATS)}") from None


def all_splits(name: str) -> list[str]:
    """Every split name the reader of ``name`` accepts (``folder`` also accepts subfolder paths)."""
    return list(_module(name).SPLITS)


def base_splits(name: str, root: str | Path) -> list[str]:
    """The non-overlapping splits of ``name`` present under ``root`` -- what ``prepare`` stores.

    300W: ``train``, ``test-common``, ``test-challenging`` and ``test-private`` where their folders
    exist; WFLW and COFW: ``train``/``test`` where their files exist; folder: ``all``.
    Raises :class:`DatasetError` when nothing of the format is found.
    """
    if not Path(root).is_dir():
        raise DatasetError(root, "dataset root folder does not exist")
    return _module(name).base_splits(root)


def read_dataset(name: str, root: str | Path, split: str, *, skip_bad: bool = False,
                 skipped: list[tuple[str, str]] | None = None, verify_images: bool = False
                 ) -> list[FaceSample]:
    """All faces of ``split`` of dataset format ``name`` stored under ``root``, in a fixed order.

    Args:
        name: ``300w``, ``wflw``, ``cofw`` or ``folder``.
        root: the dataset folder (layouts in docs/DATASETS.md).
        split: one of :func:`all_splits` (for ``folder`` also a subfolder path).
        skip_bad: skip malformed samples instead of raising; they are logged and listed.
        skipped: if given, ``(path, problem)`` of every skipped sample is appended to it.
        verify_images: decode every image file (slow) to catch corrupt or truncated images.

    Returns:
        FaceSample list: landmarks float32 ``(N, 2)`` 0-based pixels; COFW samples carry ``image``.

    Raises:
        DatasetError: naming the file and the problem.
        ValueError: an unknown format or split name.
    """
    module = _module(name)
    if name.lower() != "folder" and split not in module.SPLITS:
        raise ValueError(f"unknown {name} split {split!r}; known: {', '.join(module.SPLITS)}")
    if not Path(root).is_dir():
        raise DatasetError(root, "dataset root folder does not exist")
    problems = Problems(skip_bad, skipped)
    samples = module.read(root, split, problems, verify_images)
    return problems.finish(f"{name.lower()} split {split!r} under {root}", samples, root)


def open_writer(name: str, root: str | Path) -> DatasetWriter:
    """A writer producing dataset format ``name`` under ``root`` (created if needed).

    ``writer.add(part, image_bgr_uint8, sample) -> str`` writes one face and returns its image path;
    ``close()`` (or leaving a ``with`` block) writes index files.  Parts: 300W subset folders
    (``afw``, ``helen/trainset``, ... ``01_Indoor``); ``train``/``test`` for WFLW and COFW; any
    relative subfolder for ``folder``.
    """
    _module(name)
    return _WRITERS[name.lower()](root)
