"""Whole photographs turned and scaled: does the inference path hold on tilted heads and other face sizes?

Makes copies of the photos of a real-faces root (``../shared/realfaces``: ``photos/`` + ``photos.json``)
turned by each angle about the photo centre (the canvas grown to hold it) or scaled by each factor, with
their labelled landmarks moved the same way, and runs ``kdlandmark evaluate --photos``'s benchmark
(:func:`kdlandmark.evaluate.photos.photo_benchmark`) on each copy, once per ``--upright`` setting of the
shipped model (flip averaging as by default)::

    python scripts/turned_photos.py --set pool --angles 0 15 30 45 -15 -30 -45 --upright off 5 10 15 20 25
    python scripts/turned_photos.py --set faces --angles 0 15 30 45 -15 -30 -45 --upright off 10
    python scripts/turned_photos.py --set faces --scales 0.75 2 4 --upright 10

``--set pool`` (the training pool's two photos) is where the default threshold was chosen; ``--set
faces`` (the development photos) is only measured.  Prints one line per copy and setting and writes
them as JSON into ``--out`` (docs/perf/realfaces/upright/ has the figures of docs/INFERENCE.md).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import cv2

from kdlandmark.evaluate.photos import photo_benchmark, read_photos
from kdlandmark.infer.landmarker import Landmarker


def transformed_copy(root: Path, folder: str, out: Path, angle: float = 0.0, scale: float = 1.0) -> Path:
    """``out`` holding the photos of ``root`` whose faces were cut into ``folder`` (as
    :func:`~kdlandmark.evaluate.photos.read_photos` finds them), turned by ``angle`` degrees
    (counter-clockwise on screen, canvas grown) and scaled by ``scale``, and their ``photos.json`` with
    the landmarks moved alike."""
    (out / "photos").mkdir(parents=True, exist_ok=True)
    kept = {}
    for path, lms in read_photos(root, folder):
        image = cv2.imread(str(path))
        if image is None:
            raise SystemExit(f"error: {path}: cannot read the photo")
        h, w = image.shape[:2]
        m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, scale)
        c, s = abs(m[0, 0]), abs(m[0, 1])
        nw, nh = int(round(h * s + w * c)), int(round(h * c + w * s))
        m[0, 2] += (nw - w) / 2
        m[1, 2] += (nh - h) / 2
        flags = cv2.INTER_AREA if scale < 1 and angle == 0 else cv2.INTER_LINEAR
        cv2.imwrite(str(out / "photos" / path.name), cv2.warpAffine(image, m, (nw, nh), flags=flags),
                    [cv2.IMWRITE_JPEG_QUALITY, 95])
        moved = lms @ m[:, :2].T + m[:, 2]
        kept[path.name] = [{"crop": f"{folder}/{path.stem}_{k}", "landmarks": lm.tolist()}
                           for k, lm in enumerate(moved)]
    (out / "photos.json").write_text(json.dumps(kept), encoding="utf-8")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--realfaces", type=Path, default=Path("../shared/realfaces"))
    parser.add_argument("--set", choices=("faces", "pool"), default="pool")
    parser.add_argument("--angles", type=float, nargs="*", default=[])
    parser.add_argument("--scales", type=float, nargs="*", default=[])
    parser.add_argument("--upright", nargs="+", default=["off", "10"], help="thresholds in degrees, or off")
    parser.add_argument("--no-flip", action="store_true", help="one pass per crop instead of flip averaging")
    parser.add_argument("--out", type=Path, default=None, help="folder for the JSON of the figures")
    args = parser.parse_args()
    if not (args.realfaces / "photos.json").is_file():
        raise SystemExit(f"error: {args.realfaces}: no photos.json")
    copies = [(f"turned {a:+g} deg", a, 1.0) for a in args.angles]
    copies += [(f"scaled x{s:g}", 0.0, s) for s in args.scales]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        made = [(label, transformed_copy(args.realfaces, args.set, Path(tmp) / str(k), a, s))
                for k, (label, a, s) in enumerate(copies)]
        for up in args.upright:
            upright = None if up == "off" else float(up)
            lmk = Landmarker.from_pretrained(threads=1, flip=not args.no_flip, upright=upright)
            for label, root in made:
                r = photo_benchmark(lmk, root, folder=args.set)
                row = {"set": args.set, "copy": label, "upright": upright, "flip": lmk.flip,
                       **{k: r[k] for k in ("faces", "found", "false_positives", "nme_found", "nme_given",
                                            "nme_given_all", "failure_rate_found")}}
                rows.append(row)
                print(f"{args.set} {label:>16} upright {up:>4}: found {r['found']:>2}/{r['faces']} "
                      f"false positives {r['false_positives']}  NME found {100 * r['nme_found']:.2f} %  "
                      f"same faces from true boxes {100 * r['nme_given']:.2f} %  every face from its true "
                      f"box {100 * r['nme_given_all']:.2f} %", flush=True)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        name = f"{args.set}_{'turned' if args.angles else 'scaled'}.json"
        (args.out / name).write_text(json.dumps(rows, indent=1), encoding="utf-8")
        print(f"figures: {args.out / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
