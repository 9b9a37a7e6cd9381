"""Where a turned face's jaw goes wrong: the signed error of the jaw points along the face's eye axis.

    python scripts/jaw_side.py runs/pretrained-68/eval/folder-faces/kd

Reads an evaluation folder (``predictions.npz`` + ``predictions.json`` of ``kdlandmark evaluate``) and
prints, for faces turned one way, the other way and near-frontal (yaw proxy: where the nose tip sits
between the outer eye corners), the mean error of the image-left and image-right jaw halves along the
eye axis (% of the inter-ocular distance, + = towards image right), then the near and far side of the
turned faces (far: the side the nose points to; + = predicted further out than the label).  The
points come from the evaluation's layout (its ``jaw`` or ``contour`` group, the end of its nose
bridge, its inter-ocular corners).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

_SRC = Path(__file__).resolve().parents[1] / "src"
if _SRC.is_dir():
    sys.path.insert(0, str(_SRC))

import numpy as np  # noqa: E402

from kdlandmark.evaluate.evaluator import load_split  # noqa: E402

#: |yaw proxy| above this counts as turned (the nose tip 10 % of the eye span off centre).
TURNED = 0.1


def jaw_side(eval_dir: Path) -> list[str]:
    """The report's lines for the evaluation in ``eval_dir``; SystemExit naming the file on bad input."""
    try:
        layout, p, g = load_split(eval_dir)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    jaw = layout.groups.get("jaw", layout.groups.get("contour"))
    if jaw is None or "nose_bridge" not in layout.groups:
        raise SystemExit(f"error: {eval_dir}: layout {layout.name} has no jaw line and nose bridge")
    a, b = layout.inter_ocular
    iod = layout.normaliser(g)
    axis = (g[:, b] - g[:, a]) / iod[:, None]
    t = layout.yaw_proxy(g)                                                # > 0: nose towards image right
    err = np.einsum("fpk,fk->fp", p - g, axis) / iod[:, None] * 100        # signed, % of iod
    half = len(jaw) // 2 - 1                                               # each side, the chin left out
    left, right = list(jaw[:half]), list(jaw[-half:])
    lines = []
    for name, mask in ((f"turned, nose right (t>{TURNED})", t > TURNED),
                       (f"turned, nose left (t<-{TURNED})", t < -TURNED),
                       ("near-frontal", np.abs(t) <= TURNED)):
        if mask.any():
            lines.append(f"{name:28s} n={mask.sum():2d}  left-jaw dx {err[mask][:, left].mean():+.2f}  "
                         f"right-jaw dx {err[mask][:, right].mean():+.2f}  (% iod; + = to image right)")
    far = np.where(t[:, None] > 0, err[:, right], -err[:, left])   # + = far jaw predicted further out
    near = np.where(t[:, None] > 0, -err[:, left], err[:, right])
    m = np.abs(t) > TURNED
    if m.any():
        lines.append(f"turned faces: far-side jaw outward error {far[m].mean():+.2f} % iod "
                     f"(per face sd {far[m].mean(1).std():.2f}), near-side {near[m].mean():+.2f}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("eval_dir", type=Path, help="a `kdlandmark evaluate` output folder")
    args = parser.parse_args(argv)
    print("\n".join(jaw_side(args.eval_dir)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
