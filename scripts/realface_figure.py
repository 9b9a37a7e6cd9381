"""The README's picture: the shipped model on real development photos, end to end (its own detector).

    python scripts/realface_figure.py --out docs/img/realfaces.jpg

Runs ``Landmarker.from_pretrained()`` (ONNX Runtime, MTCNN) on the named photos of
``../shared/realfaces/photos``, draws the landmarks and the boxes, scales each photo to one height and
puts them side by side, each at twice its size (the faces are small).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

_SRC = Path(__file__).resolve().parents[1] / "src"
if _SRC.is_dir():
    sys.path.insert(0, str(_SRC))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from kdlandmark.infer.landmarker import Landmarker  # noqa: E402
from kdlandmark.infer.predict import annotate  # noqa: E402

PHOTOS = ("2008_002079.jpg", "2008_004176.jpg", "2008_007676.jpg")


def _zoom(image: np.ndarray, face, side: int) -> np.ndarray:
    """The face at ``side`` pixels (its box grown 1.5x), landmarks drawn at that size."""
    x0, y0, x1, y1 = face.box
    c = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
    half = 0.75 * max(x1 - x0, y1 - y0)
    k = side / (2 * half)
    m = np.array([[k, 0, side / 2 - k * c[0]], [0, k, side / 2 - k * c[1]]], np.float32)
    crop = cv2.warpAffine(image, m, (side, side), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    moved = dataclasses.replace(face, landmarks=face.landmarks * k + m[:, 2])
    return annotate(crop, [moved])


def figure(photos: Sequence[Path], height: int = 360, zoom: int = 8) -> np.ndarray:
    lmk = Landmarker.from_pretrained(threads=1)
    tiles, faces_seen = [], []
    for path in photos:
        image = cv2.imread(str(path))
        if image is None:
            raise SystemExit(f"error: {path}: cannot read the image")
        faces = lmk(image)                # as a user runs it: the photo as it is
        faces_seen += [(image, f) for f in sorted(faces, key=lambda f: f.box[0])]
        big = cv2.resize(image, None, fx=2.0, fy=2.0, interpolation=cv2.INTER_CUBIC)
        shown = [dataclasses.replace(f, landmarks=f.landmarks * 2.0 + 0.5, box=tuple(2.0 * v for v in f.box))
                 for f in faces]          # drawn at twice the size (pixel centres kept)
        drawn = annotate(big, shown, show_box=True)
        scale = height / drawn.shape[0]
        tiles.append(cv2.resize(drawn, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA))
    top = np.concatenate(tiles, axis=1)
    step = max(1, len(faces_seen) // zoom)
    chosen = faces_seen[::step][:zoom]
    side = top.shape[1] // len(chosen)
    strip = np.concatenate([_zoom(img, f, side) for img, f in chosen], axis=1)
    strip = np.pad(strip, ((0, 0), (0, top.shape[1] - strip.shape[1]), (0, 0)))
    return np.concatenate([top, strip], axis=0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--realfaces", type=Path, default=Path("../shared/realfaces"))
    parser.add_argument("--photos", nargs="+", default=list(PHOTOS))
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--out", type=Path, default=Path("docs/img/realfaces.jpg"))
    args = parser.parse_args(argv)
    image = figure([args.realfaces / "photos" / p for p in args.photos], args.height)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), image, [cv2.IMWRITE_JPEG_QUALITY, 88])
    print(f"wrote {args.out} ({image.shape[1]} x {image.shape[0]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
