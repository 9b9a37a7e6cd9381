"""Pieces shared by the format readers and writers: bad-input bookkeeping, ``.pts`` files, image checks.

Every reader funnels per-sample problems through :class:`Problems`, so ``skip_bad`` behaves the same
in all formats: without it the first problem raises :class:`DatasetError`; with it the sample is
dropped, recorded and reported in one warning.  Nothing is dropped silently.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

from kdlandmark.data.crop import landmark_box
from kdlandmark.data.samples import DatasetError, FaceSample

__all__ = [
    "IMAGE_EXTENSIONS",
    "as_bgr",
    "Problems",
    "DatasetWriter",
    "read_pts",
    "write_pts",
    "format_pts",
    "images_by_stem",
    "check_image_file",
    "decode_image",
    "check_landmarks",
    "check_box",
    "write_jpeg",
    "as_uint8_image",
    "pts_sample",
]

log = logging.getLogger("kdlandmark")

#: Image extensions looked for beside a ``.pts`` file, in order of preference (compared lower-case).
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png")


class Problems:
    """Collects per-sample problems for one ``read_dataset`` call.

    ``report`` raises at once unless ``skip_bad``; otherwise it records ``(path, problem)`` (also into
    the caller's ``skipped`` list) and ``finish`` logs one warning naming every skipped file.
    """

    def __init__(self, skip_bad: bool, skipped: list[tuple[str, str]] | None) -> None:
        self.skip_bad = skip_bad
        self.external = skipped
        self.items: list[tuple[str, str]] = []
        #: set by a reader whose split is a filter of a non-empty set (e.g. WFLW ``test-pose``):
        #: then no matching face is a valid, empty answer rather than an empty dataset.
        self.allow_empty = False

    def report(self, error: DatasetError) -> None:
        """Raise ``error``, or record it when skipping bad samples."""
        if not self.skip_bad:
            raise error
        item = (error.path, error.problem)
        self.items.append(item)
        if self.external is not None:
            self.external.append(item)

    def finish(self, what: str, samples: list[FaceSample], root: str | Path) -> list[FaceSample]:
        """Warn about skipped samples; raise if nothing is left (unless ``allow_empty``)."""
        if self.items:
            listing = "; ".join(f"{path} ({problem})" for path, problem in self.items)
            log.warning("skipped %d bad sample(s) while reading %s: %s", len(self.items), what, listing)
        if not samples and not self.allow_empty:
            extra = f" ({len(self.items)} bad sample(s) skipped)" if self.items else ""
            raise DatasetError(root, f"no valid samples in {what}{extra}")
        return samples


class DatasetWriter:
    """Writes faces in a dataset's native format.  Use as a context manager or call ``close``.

    ``add(part, image_bgr, sample)`` writes (or queues) one face and returns the image path as a
    reader would report it.  Formats with index files (WFLW lists, COFW ``.mat``) write them on
    ``close``; leaving a ``with`` block by an exception closes without writing them.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).absolute()
        self.root.mkdir(parents=True, exist_ok=True)
        self._closed = False
        self._counter = 0

    def add(self, part: str, image_bgr: np.ndarray, sample: FaceSample) -> str:  # pragma: no cover
        raise NotImplementedError

    def _finish(self) -> None:
        """Write index files; formats without them need nothing."""

    def close(self) -> None:
        """Write whatever the format keeps until the end.  Closing twice does nothing."""
        if not self._closed:
            self._closed = True
            self._finish()

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"writer for {self.root} is closed")

    def _next_name(self, sample: FaceSample) -> str:
        """The sample's ``attributes["name"]`` if given, else ``image_00001``, ``image_00002``, ..."""
        self._counter += 1
        name = sample.attributes.get("name") if sample.attributes else None
        if name:
            name = str(name)
            if "/" in name or "\\" in name or name in (".", ".."):
                raise ValueError(f"sample name {name!r} must be a plain file name")
            return name
        return f"image_{self._counter:05d}"

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._closed = True


# ----------------------------------------------------------------------------------------- .pts files

def read_pts(path: str | Path, expected: int | None = None) -> np.ndarray:
    """Landmarks of one ``.pts`` file as ``(N, 2)`` float32, converted from 1-based to 0-based.

    The format (iBUG 300W)::

        version: 1
        n_points:  68
        {
        x y
        ...
        }

    Raises :class:`DatasetError` naming the file for missing braces, non-numbers, non-finite values,
    a point count that disagrees with ``n_points`` or with ``expected``.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig", errors="strict")
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(path, f"cannot read .pts file: {err}") from None
    lines = [(i + 1, ln.strip()) for i, ln in enumerate(text.splitlines())]
    lines = [(no, ln) for no, ln in lines if ln]
    open_at = next((k for k, (_, ln) in enumerate(lines) if ln == "{"), None)
    if open_at is None:
        raise DatasetError(path, "no opening brace '{' (not a .pts file?)")
    close_at = next((k for k in range(open_at + 1, len(lines)) if lines[k][1] == "}"), None)
    if close_at is None:
        raise DatasetError(path, "no closing brace '}' after the points (truncated file?)")
    declared = None
    for no, ln in lines[:open_at]:
        key, _, value = ln.partition(":")
        if key.strip().lower() == "n_points":
            try:
                declared = int(value.strip())
            except ValueError:
                raise DatasetError(path, f"line {no}: n_points is not an integer: {value.strip()!r}"
                                   ) from None
    points = []
    for no, ln in lines[open_at + 1:close_at]:
        fields = ln.split()
        if len(fields) != 2:
            raise DatasetError(path, f"line {no}: expected two numbers 'x y', found {ln!r}")
        try:
            x, y = float(fields[0]), float(fields[1])
        except ValueError:
            raise DatasetError(path, f"line {no}: not a number: {ln!r}") from None
        if not (math.isfinite(x) and math.isfinite(y)):
            raise DatasetError(path, f"line {no}: non-finite coordinate {ln!r}")
        points.append((x, y))
    trailing = [ln for _, ln in lines[close_at + 1:]]
    if trailing:
        raise DatasetError(path, f"unexpected text after the closing brace: {trailing[0]!r}")
    if declared is not None and declared != len(points):
        raise DatasetError(path, f"header says n_points {declared} but the file has {len(points)} points")
    if expected is not None and len(points) != expected:
        raise DatasetError(path, f"{len(points)} points, expected {expected}")
    if not points:
        raise DatasetError(path, "no points between the braces")
    return np.asarray(points, dtype=np.float64).astype(np.float32) - np.float32(1.0)


def format_pts(landmarks: np.ndarray) -> str:
    """``.pts`` text for 0-based ``(N, 2)`` landmarks (written 1-based, 3 decimals)."""
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.ndim != 2 or lm.shape[1] != 2 or not np.isfinite(lm).all():
        raise ValueError(f"landmarks must be finite (N, 2), got shape {lm.shape}")
    rows = "".join(f"{x + 1.0:.3f} {y + 1.0:.3f}\n" for x, y in lm)
    return f"version: 1\nn_points:  {lm.shape[0]}\n{{\n{rows}}}\n"


def write_pts(path: str | Path, landmarks: np.ndarray) -> None:
    """Write 0-based ``landmarks`` to ``path`` as a 1-based ``.pts`` file."""
    Path(path).write_text(format_pts(landmarks), encoding="ascii")


def images_by_stem(folder: Path) -> dict[str, Path]:
    """Image files directly in ``folder`` keyed by file stem (preferring .jpg, then .jpeg, then .png)."""
    rank = {ext: k for k, ext in enumerate(IMAGE_EXTENSIONS)}
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        ext = p.suffix.lower()
        if ext in rank and p.is_file():
            old = found.get(p.stem)
            if old is None or rank[ext] < rank[old.suffix.lower()]:
                found[p.stem] = p
    return found


# ------------------------------------------------------------------------------------------- images

def decode_image(path: str | Path) -> np.ndarray:
    """The BGR pixels of ``path``, or :class:`DatasetError` unless it is a complete, decodable image.

    Some OpenCV builds decode a truncated JPEG partially (with only a warning), so a JPEG must also
    have its end-of-image marker ``FFD9`` after the last start-of-scan marker ``FFDA`` (entropy-coded
    data cannot contain ``FFD9``; trailing bytes after the marker are tolerated), and a PNG must end
    with its ``IEND`` chunk.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DatasetError(path, f"cannot read image: {err}") from None
    if not data:
        raise DatasetError(path, "image file is empty")
    if data[:2] == b"\xff\xd8" and data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda"):
        raise DatasetError(path, "truncated JPEG (no end-of-image marker FFD9 after the last scan)")
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[-8:-4] != b"IEND":
        raise DatasetError(path, "truncated PNG (no IEND chunk at the end)")
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise DatasetError(path, "cannot decode image (corrupt or unsupported format)")
    return image


def as_bgr(image: np.ndarray, where: str | Path) -> np.ndarray:
    """A decoded image (greyscale, BGR or BGRA uint8) as 3-channel BGR uint8, or :class:`DatasetError`
    naming ``where`` (the file, or the image's position in a batch)."""
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.size == 0:
        raise DatasetError(where, f"expected a non-empty uint8 image, got {img.dtype} {img.shape}")
    if img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 1):
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.ndim == 3 and img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    if img.ndim == 3 and img.shape[2] == 3:
        return img
    raise DatasetError(where, f"unsupported image shape {img.shape} (expected H x W, H x W x 3 or 4)")


def check_image_file(path: str | Path) -> None:
    """Raise :class:`DatasetError` naming ``path`` unless it is a complete, decodable image."""
    decode_image(path)


def as_uint8_image(image: np.ndarray, where: str) -> np.ndarray:
    """Check a writer's input image: uint8, ``(H, W)`` or ``(H, W, 3)``."""
    img = np.asarray(image)
    if img.dtype != np.uint8 or not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3)) or img.size == 0:
        raise ValueError(f"{where}: image must be uint8 (H, W) or (H, W, 3), got {img.dtype} {img.shape}")
    return img


def write_jpeg(path: Path, image_bgr: np.ndarray, quality: int = 95) -> None:
    """Write a BGR (or greyscale) image as JPEG, creating folders; raise OSError on failure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image_bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)]):
        raise OSError(f"{path}: cv2.imwrite failed")


# --------------------------------------------------------------------------------------- validation

def check_landmarks(path: str | Path, landmarks: np.ndarray, expected: int) -> np.ndarray:
    """``landmarks`` as float32 ``(expected, 2)``; DatasetError naming ``path`` if not so or not finite."""
    lm = np.asarray(landmarks, dtype=np.float32)
    if lm.shape != (expected, 2):
        raise DatasetError(path, f"landmarks have shape {lm.shape}, expected ({expected}, 2)")
    if not np.isfinite(lm).all():
        raise DatasetError(path, "non-finite (NaN or inf) landmark coordinate")
    return lm


def check_box(path: str | Path, box: Iterable[float]) -> tuple[float, float, float, float]:
    """Box ``(x0, y0, x1, y1)`` as floats; DatasetError naming ``path`` if non-finite or empty."""
    b = tuple(float(v) for v in box)
    if len(b) != 4 or not all(math.isfinite(v) for v in b):
        raise DatasetError(path, f"face box {b} is not four finite numbers")
    if b[2] <= b[0] or b[3] <= b[1]:
        raise DatasetError(path, f"degenerate face box {b} (x1 <= x0 or y1 <= y0)")
    return b  # type: ignore[return-value]


def pts_sample(pts: Path, images: dict[str, Path], expected: int | None, verify_images: bool,
               attributes: dict) -> FaceSample:
    """One face from a ``.pts`` file and the image beside it (box = landmarks' bounding box).

    ``images`` maps stems to image files in the ``.pts`` file's folder (see :func:`images_by_stem`).
    """
    image = images.get(pts.stem)
    if image is None:
        wanted = "/".join(IMAGE_EXTENSIONS)
        raise DatasetError(pts, f"no image beside it (looked for {pts.stem} with {wanted}, any case)")
    landmarks = read_pts(pts, expected)
    if verify_images:
        check_image_file(image)
    box = check_box(pts, landmark_box(landmarks))
    return FaceSample(image_path=str(image), landmarks=landmarks, box=box,
                      attributes={**attributes, "name": pts.stem}, occluded=None)
