"""Fit the MTCNN -> landmark box transforms on real faces and write them as package data.

    python scripts/calibrate_mtcnn.py                                  # ../shared/realfaces
    python scripts/calibrate_mtcnn.py --realfaces DIR --out /tmp/m.py  # elsewhere

Real faces (``DIR/photos.json``, ``DIR/photos/``; README of that folder):

* **fit** on the photos whose faces form the training pool (``crop`` under ``pool/``): the score
  threshold (the lowest of :data:`SCORES` that keeps every pool face found and finds no other box)
  and the 300W transform (:func:`~kdlandmark.infer.detect.calibrate_box_transform`: medians over the
  faces whose best detection overlaps the landmark square with IoU >= 0.3);
* **measure only** on the development photos (``crop`` under ``faces/``): faces found, false
  positives per photo and the residuals of the fitted transform.  Nothing is fitted on them.

WFLW and COFW landmark boxes differ from 300W's (COFW has no jaw line); their transforms compose the
300W one with the median 300W-square -> layout-square map measured on synthetic faces, whose
landmarks in the three layouts come from the same 3D points.  Writes
``src/kdlandmark/infer/mtcnn_calibration.py``: the constants :class:`~kdlandmark.infer.detect.MtcnnDetector`
reads.  docs/INFERENCE.md reports the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

_SRC = Path(__file__).resolve().parents[1] / "src"
if _SRC.is_dir():  # calibrate this checkout's code, installed or not
    sys.path.insert(0, str(_SRC))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from kdlandmark.data.crop import landmark_box  # noqa: E402
from kdlandmark.data.synth.render import render  # noqa: E402
from kdlandmark.infer.detect import _match_faces, _square, calibrate_box_transform  # noqa: E402
from kdlandmark.infer.mtcnn import MTCNN  # noqa: E402
from kdlandmark.layouts import get_layout  # noqa: E402

DEFAULT_OUT = _SRC / "kdlandmark" / "infer" / "mtcnn_calibration.py"
DEFAULT_REAL = Path(__file__).resolve().parents[2] / "shared" / "realfaces"
#: Candidate O-Net score thresholds, lowest first.
SCORES = (0.7, 0.8, 0.9, 0.95)


def _photos(root: Path, folder: str) -> list[tuple[str, np.ndarray]]:
    """``(photo, (F, 68, 2) landmarks)`` of the photos whose faces are cropped into ``folder``."""
    index = json.loads((root / "photos.json").read_text())
    out = []
    for name, faces in sorted(index.items()):
        if faces and all(str(f["crop"]).startswith(folder + "/") for f in faces):
            out.append((name, np.asarray([f["landmarks"] for f in faces], np.float64)))
    return out


def _detect(net: MTCNN, root: Path, photos: list) -> list[list]:
    dets = []
    for name, _ in photos:
        image = cv2.imread(str(root / "photos" / name))
        if image is None:
            raise SystemExit(f"error: {root / 'photos' / name}: cannot read the image")
        dets.append(net.detect(image))
    return dets


def _counts(dets: list[list], photos: list, score: float) -> tuple[int, int, int]:
    """Faces found, faces in all, boxes that are no labelled face (at ``score``)."""
    found = total = false = 0
    for faces, (_, lms) in zip(dets, photos, strict=True):
        boxes = [f.box for f in faces if f.score >= score]
        matched = _match_faces(boxes, lms, 0.3)
        found += len(matched)
        total += len(lms)
        false += len(boxes) - len(matched)
    return found, total, false


def _layout_maps(count: int = 400, seed: int = 0, size: int = 256) -> dict[str, dict]:
    """Median map from the 300W landmark square to each layout's (units of the 300W side)."""
    rng = np.random.default_rng(seed)
    lays = [get_layout(n) for n in ("300w", "wflw", "cofw")]
    rows: dict[str, list] = {lay.name: [] for lay in lays[1:]}
    for _ in range(count):
        face = render(rng, size)
        cx, cy, s = _square(landmark_box(face.landmarks(lays[0])))
        for lay in lays[1:]:
            lx, ly, ls = _square(landmark_box(face.landmarks(lay)))
            rows[lay.name].append((ls / s, (lx - cx) / s, (ly - cy) / s))
    return {k: dict(zip(("scale", "dx", "dy"), np.median(np.asarray(v), axis=0).tolist(), strict=True))
            for k, v in rows.items()}


def calibrate(root: Path) -> dict:
    net = MTCNN()
    fit, dev = _photos(root, "pool"), _photos(root, "faces")
    if not fit:
        raise SystemExit(f"error: {root / 'photos.json'}: no photo whose faces are all in pool/")
    fit_dets, dev_dets = _detect(net, root, fit), _detect(net, root, dev)
    base_found = _counts(fit_dets, fit, SCORES[0])[0]
    score = next((t for t in SCORES if _counts(fit_dets, fit, t)[2] == 0
                  and _counts(fit_dets, fit, t)[0] == base_found), SCORES[-1])

    def raw(dets: list[list]):
        it = iter(dets)
        return lambda _img: [(f.box, f.score) for f in next(it) if f.score >= score]

    tr, fit_stats = calibrate_box_transform(raw(fit_dets), [None] * len(fit), [lms for _, lms in fit])
    transforms = {"300w": {k: round(v, 4) for k, v in tr.to_json().items()}}
    for name, m in _layout_maps().items():
        transforms[name] = {"scale": round(tr.scale * m["scale"], 4),
                            "dx": round(tr.dx + tr.scale * m["dx"], 4),
                            "dy": round(tr.dy + tr.scale * m["dy"], 4)}
    found, total, false = _counts(dev_dets, dev, score)
    dev_stats = calibrate_box_transform(raw(dev_dets), [None] * len(dev), [lms for _, lms in dev],
                                        fixed=tr)[1] if dev else {}
    dev_stats.update(found=found, faces=total, false_positives=false, photos=len(dev),
                     false_positives_per_photo=false / max(1, len(dev)))
    f_found, f_total, f_false = _counts(fit_dets, fit, score)
    fit_stats.update(found=f_found, false_positives=f_false, photos=len(fit))
    setup = {"fit_photos": [n for n, _ in fit], "scores_tried": list(SCORES), "min_face": net.min_face,
             "thresholds": list(net.thresholds), "opencv": cv2.__version__}
    return {"transforms": transforms, "min_score": score, "fit": fit_stats, "development": dev_stats,
            "setup": setup}


def module_text(result: dict) -> str:
    """The source of ``mtcnn_calibration.py`` for a :func:`calibrate` result."""
    def rounded(d: dict) -> dict:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()}

    return (
        '"""MTCNN -> landmark box transforms per layout and the score threshold, fitted on real faces.\n\n'
        "Written by ``scripts/calibrate_mtcnn.py`` (do not edit by hand; run the tool again).  "
        "Fitted on the\nphotos of the training pool of ``../shared/realfaces``; the development photos "
        "are only measured\n(``DEVELOPMENT``).  A transform maps an MTCNN box of side ``s`` and centre "
        "``c`` to the square of\nside ``scale * s`` centred at ``c + (dx, dy) * s`` "
        "(:class:`kdlandmark.infer.detect.BoxTransform`).\n"
        '"""\n\n'
        "#: What was fitted on (photos, MTCNN settings, OpenCV).\n"
        f"SETUP = {json.dumps(result['setup'], indent=4)}\n\n"
        "#: O-Net face probability a detection needs.\n"
        f"MTCNN_MIN_SCORE = {result['min_score']}\n\n"
        "#: layout -> {scale, dx, dy}.\n"
        f"MTCNN_BOX_TRANSFORMS = {json.dumps(result['transforms'], indent=4)}\n\n"
        "#: Residuals on the faces fitted on.\n"
        f"FIT = {json.dumps(rounded(result['fit']), indent=4)}\n\n"
        "#: Measured (never fitted) on the development photos: faces found, false positives, residuals.\n"
        f"DEVELOPMENT = {json.dumps(rounded(result['development']), indent=4)}\n"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--realfaces", type=Path, default=DEFAULT_REAL, help="folder with photos.json")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="module to write")
    args = parser.parse_args(argv)
    if not (args.realfaces / "photos.json").is_file():
        print(f"error: {args.realfaces / 'photos.json'}: not found", file=sys.stderr)
        return 2
    result = calibrate(args.realfaces)
    args.out.write_text(module_text(result), encoding="utf-8")
    print(json.dumps({k: v for k, v in result.items() if k != "setup"}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
