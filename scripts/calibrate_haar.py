"""Fit the Haar cascade -> landmark box transforms on synthetic faces and write them as package data.

    python scripts/calibrate_haar.py                     # 1,500 fit + 500 held-out faces, seed 0
    python scripts/calibrate_haar.py --out /tmp/h.py     # write elsewhere (default: the package's module)

Renders faces with the synthetic renderer (seeds ``seed`` and ``seed + 1``), runs the raw cascade once per
image, fits one :class:`~kdlandmark.infer.detect.BoxTransform` per layout with
:func:`~kdlandmark.infer.detect.calibrate_box_transform` (median ratios over the faces whose best
detection overlaps the landmark square with IoU >= 0.3), measures the residuals of the fitted transform
on the held-out faces, and writes ``src/kdlandmark/infer/haar_calibration.py``: the constants the
detector reads.  The detector itself never imports the renderer.  docs/INFERENCE.md has the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

_SRC = Path(__file__).resolve().parents[1] / "src"
if _SRC.is_dir():  # calibrate this checkout's code, installed or not
    sys.path.insert(0, str(_SRC))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from kdlandmark.data.synth.render import render  # noqa: E402
from kdlandmark.infer.detect import HaarDetector, calibrate_box_transform  # noqa: E402
from kdlandmark.layouts import get_layout  # noqa: E402

DEFAULT_OUT = _SRC / "kdlandmark" / "infer" / "haar_calibration.py"


def _sample(det: HaarDetector, layouts: Sequence, n: int, seed: int, size: int
            ) -> tuple[list[list], dict[str, list[np.ndarray]]]:
    """Raw cascade detections of ``n`` rendered faces and their landmarks in every layout."""
    rng = np.random.default_rng(seed)
    dets, lms = [], {lay.name: [] for lay in layouts}
    for _ in range(n):
        face = render(rng, size)
        dets.append(det.raw(face.image))
        for lay in layouts:
            lms[lay.name].append(face.landmarks(lay))
    return dets, lms


def calibrate(count: int = 1500, *, held_out: int = 500, seed: int = 0, size: int = 256,
              layouts: Sequence[str] = ("300w", "wflw", "cofw")) -> dict:
    """``{layout: {"transform": {...}, "fit": stats, "held_out": stats}, "setup": {...}}``.

    Stats as :func:`calibrate_box_transform` returns them; held-out residuals use the fitted transform
    unchanged.
    """
    det = HaarDetector(transform=None)
    lays = [get_layout(n) for n in layouts]
    fit_dets, fit_lms = _sample(det, lays, count, seed, size)
    test_dets, test_lms = _sample(det, lays, held_out, seed + 1, size)
    out: dict = {}
    for lay in lays:
        it_fit, it_test = iter(fit_dets), iter(test_dets)
        tr, fit_stats = calibrate_box_transform(lambda _img, it=it_fit: next(it), [None] * count,
                                                fit_lms[lay.name])
        entry = {"transform": {k: round(v, 4) for k, v in tr.to_json().items()}, "fit": fit_stats}
        if held_out:
            entry["held_out"] = calibrate_box_transform(lambda _img, it=it_test: next(it), [None] * held_out,
                                                        test_lms[lay.name], fixed=tr)[1]
        out[lay.name] = entry
    out["setup"] = {"cascade": os.path.basename(det.path), "scale_factor": det.scale_factor,
                    "min_neighbors": det.min_neighbors, "min_size": det.min_size, "image_size": size,
                    "fit_faces": count, "held_out_faces": held_out, "seed": seed, "opencv": cv2.__version__}
    return out


def module_text(result: dict) -> str:
    """The source of ``haar_calibration.py`` for a :func:`calibrate` result."""
    setup = result["setup"]
    transforms = {k: v["transform"] for k, v in result.items() if k != "setup"}
    held = {k: {s: round(x, 4) if isinstance(x, float) else x for s, x in v["held_out"].items()}
            for k, v in result.items() if k != "setup" and "held_out" in v}
    return (
        '"""Haar cascade -> landmark box transforms per layout, fitted on synthetic faces.\n\n'
        "Written by ``scripts/calibrate_haar.py`` (do not edit by hand; run the tool again).  "
        "A transform maps a\ncascade box of side ``s`` and centre ``c`` to the square of side "
        "``scale * s`` centred at\n``c + (dx, dy) * s`` (:class:`kdlandmark.infer.detect.BoxTransform`).\n"
        '"""\n\n'
        "#: How the constants were fitted (cascade parameters, faces, seed, OpenCV).\n"
        f"SETUP = {json.dumps(setup, indent=4)}\n\n"
        "#: layout -> {scale, dx, dy}.\n"
        f"HAAR_BOX_TRANSFORMS = {json.dumps(transforms, indent=4)}\n\n"
        "#: Residuals of the fitted transforms on the held-out faces.\n"
        f"HELD_OUT = {json.dumps(held, indent=4)}\n"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1500, help="faces to fit on")
    parser.add_argument("--held-out", type=int, default=500, help="further faces to check the fit on")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fit faces (held-out: seed + 1)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="module to write")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure as JSON")
    args = parser.parse_args(argv)
    result = calibrate(args.count, held_out=args.held_out, seed=args.seed, size=args.size)
    args.out.write_text(module_text(result), encoding="utf-8")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    for name, entry in result.items():
        if name != "setup":
            print(name, entry["transform"], "held-out:", entry.get("held_out"))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
