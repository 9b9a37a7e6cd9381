"""Is a model's error on a set of faces systematic?  The mean signed error per point, in each face's frame.

    python scripts/shape_bias.py runs/pretrained-68/eval/folder-faces/kd
    python scripts/shape_bias.py EVAL_DIR --labels ../shared/realfaces/pool ../shared/realfaces/faces

Reads an evaluation folder (``predictions.npz`` + ``predictions.json`` of ``kdlandmark evaluate``),
turns each face's error ``pred - truth`` into the frame of its inter-ocular line (x along it, y square
to it, downwards; units: % of the inter-ocular distance) and prints, per landmark group:

* the group's NME and the length of its mean signed error (the part that every face shares);
* the spread of the prediction against the truth's around their centroids, along x and along y
  (below 1: the model draws that group smaller than the labels, as a regressor pulled towards its
  training data's mean shape does on faces unlike them);

then the NME with that shared part taken away (in-sample, and leave-one-out: each face corrected by
the others' mean only), which bounds what a fixed correction could win.  ``--labels`` folders of
``.pts`` files (68-point iBUG order) add the shape statistics of their labels (inner-lip gap, brow
height over the eyes, jaw width; % of the inter-ocular distance), to compare a training pool, its
synthetic data and a measurement set.
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

from kdlandmark.data.formats._common import read_pts  # noqa: E402
from kdlandmark.evaluate.evaluator import load_split  # noqa: E402


def eye_frame(points: np.ndarray, ref: np.ndarray, a: int, b: int) -> np.ndarray:
    """``points`` (F, N, 2) as offsets in the frame of ``ref``'s inter-ocular line ``a`` -> ``b``, in
    units of that distance (x along the line, y square to it)."""
    axis = ref[:, b] - ref[:, a]
    iod = np.linalg.norm(axis, axis=1)
    ux = axis / iod[:, None]
    uy = np.stack([-ux[:, 1], ux[:, 0]], axis=1)            # image y is down: uy points down the face
    return np.stack([np.einsum("fpk,fk->fp", points, ux), np.einsum("fpk,fk->fp", points, uy)],
                    axis=-1) / iod[:, None, None]


def shape_bias(eval_dir: Path) -> list[str]:
    """The report's lines for the evaluation in ``eval_dir``; SystemExit naming the file on bad input."""
    try:
        layout, p, g = load_split(eval_dir)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    if len(g) < 2:
        raise SystemExit(f"error: {eval_dir}: {len(g)} face(s); the shared error needs at least 2")
    a, b = layout.inter_ocular
    err = eye_frame(p - g, g, a, b)                                    # (F, N, 2)
    bias = err.mean(0)
    lines = [f"{len(g)} faces, layout {layout.name}; % of the inter-ocular distance",
             f"{'group':14s} {'NME':>6s} {'|mean err|':>10s} {'mean dx':>8s} {'mean dy':>8s} "
             f"{'spread x':>9s} {'spread y':>9s}"]
    for name, idx in layout.groups.items():
        idx = list(idx)
        nme = np.linalg.norm(err[:, idx], axis=2).mean() * 100
        shared = np.linalg.norm(bias[idx], axis=1).mean() * 100
        dx, dy = bias[idx].mean(0) * 100
        spread = []
        for k in range(2):
            pc = eye_frame(p[:, idx] - p[:, idx].mean(1, keepdims=True), g, a, b)[..., k]
            gc = eye_frame(g[:, idx] - g[:, idx].mean(1, keepdims=True), g, a, b)[..., k]
            spread.append(np.abs(pc).sum() / max(np.abs(gc).sum(), 1e-12))
        lines.append(f"{name:14s} {nme:6.2f} {shared:10.2f} {dx:+8.2f} {dy:+8.2f} {spread[0]:9.3f} "
                     f"{spread[1]:9.3f}")
    nme = np.linalg.norm(err, axis=2).mean() * 100
    fixed = np.linalg.norm(err - bias, axis=2).mean() * 100
    loo = np.mean([np.linalg.norm(err[i] - np.delete(err, i, 0).mean(0), axis=1).mean()
                   for i in range(len(err))]) * 100
    lines.append(f"NME {nme:.2f}; with the shared error removed {fixed:.2f} (in-sample), {loo:.2f} "
                 "(leave-one-out)")
    return lines


#: 68-point statistics: name -> (function of the eye-frame points (F, 68, 2)).
_STATS = {
    "inner-lip gap (62-66)": lambda q: q[:, 66, 1] - q[:, 62, 1],
    "mouth height (51-57)": lambda q: q[:, 57, 1] - q[:, 51, 1],
    "brow height over the eyes (19, 24)": lambda q: -(q[:, 19, 1] + q[:, 24, 1]) / 2,
    "jaw width (0-16)": lambda q: q[:, 16, 0] - q[:, 0, 0],
    "chin below the eyes (8)": lambda q: q[:, 8, 1],
}


def label_stats(folder: Path) -> list[str]:
    """Shape statistics of the 68-point ``.pts`` labels under ``folder`` (searched recursively)."""
    files = sorted(folder.rglob("*.pts"))
    if not files:
        raise SystemExit(f"error: {folder}: no .pts files")
    pts = np.stack([read_pts(f, 68) for f in files])
    centre = pts[:, [36, 45]].mean(1, keepdims=True)
    q = eye_frame(pts - centre, pts, 36, 45) * 100
    out = [f"{folder} ({len(files)} faces)"]
    out += [f"  {name:36s} {fn(q).mean():7.2f} +- {fn(q).std():5.2f}" for name, fn in _STATS.items()]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("eval_dir", type=Path, help="a `kdlandmark evaluate` output folder")
    parser.add_argument("--labels", type=Path, nargs="*", default=[],
                        help="folders of 68-point .pts labels whose shape statistics to print")
    args = parser.parse_args(argv)
    print("\n".join(shape_bias(args.eval_dir)))
    for folder in args.labels:
        print("\n".join(label_stats(folder)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
