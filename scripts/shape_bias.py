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
``.pts`` files (the evaluation's layout) add the shape statistics of their labels, from the layout's
groups (inner-lip gap, brow height over the eyes, jaw width; % of the inter-ocular distance), to
compare a training pool, its synthetic data and a measurement set.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

_SRC = Path(__file__).resolve().parents[1] / "src"
if _SRC.is_dir():
    sys.path.insert(0, str(_SRC))

import numpy as np  # noqa: E402

from kdlandmark.data.formats._common import read_pts  # noqa: E402
from kdlandmark.evaluate.evaluator import load_split  # noqa: E402
from kdlandmark.layouts import Layout  # noqa: E402


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
        pc = np.abs(eye_frame(p[:, idx] - p[:, idx].mean(1, keepdims=True), g, a, b)).sum((0, 1))
        gc = np.abs(eye_frame(g[:, idx] - g[:, idx].mean(1, keepdims=True), g, a, b)).sum((0, 1))
        spread = pc / np.maximum(gc, 1e-12)                               # along x, along y
        lines.append(f"{name:14s} {nme:6.2f} {shared:10.2f} {dx:+8.2f} {dy:+8.2f} {spread[0]:9.3f} "
                     f"{spread[1]:9.3f}")
    nme = np.linalg.norm(err, axis=2).mean() * 100
    fixed = np.linalg.norm(err - bias, axis=2).mean() * 100
    others = (err.sum(0) - err) / (len(err) - 1)                      # each face's others' mean
    loo = np.linalg.norm(err - others, axis=2).mean() * 100
    lines.append(f"NME {nme:.2f}; with the shared error removed {fixed:.2f} (in-sample), {loo:.2f} "
                 "(leave-one-out)")
    return lines


def _stats(layout: Layout) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """Shape statistics from the layout's groups: name -> function of eye-frame points (F, N, 2)."""
    g = layout.groups
    try:
        inner, outer, jaw = g["mouth_inner"], g["mouth_outer"], g["jaw"]
        brows = (g["brow_left"][len(g["brow_left"]) // 2], g["brow_right"][len(g["brow_right"]) // 2])
    except KeyError as exc:
        raise SystemExit(f"error: layout {layout.name} has no group {exc}") from None
    # the lips' middle points: each lip line runs round from the image-left mouth corner
    top_in, bottom_in = inner[len(inner) // 4], inner[3 * len(inner) // 4]
    top_out, bottom_out = outer[len(outer) // 4], outer[3 * len(outer) // 4]
    return {
        "inner-lip gap": lambda q: q[:, bottom_in, 1] - q[:, top_in, 1],
        "mouth height": lambda q: q[:, bottom_out, 1] - q[:, top_out, 1],
        "brow height over the eyes": lambda q: -(q[:, brows[0], 1] + q[:, brows[1], 1]) / 2,
        "jaw width": lambda q: q[:, jaw[-1], 0] - q[:, jaw[0], 0],
        "chin below the eyes": lambda q: q[:, jaw[len(jaw) // 2], 1],
    }


def label_stats(folder: Path, layout: Layout) -> list[str]:
    """Shape statistics of the ``.pts`` labels (``layout``'s points) under ``folder``, searched
    recursively."""
    files = sorted(folder.rglob("*.pts"))
    if not files:
        raise SystemExit(f"error: {folder}: no .pts files")
    stats = _stats(layout)
    pts = np.stack([read_pts(f, layout.num_points) for f in files])
    a, b = layout.inter_ocular
    q = eye_frame(pts - pts[:, [a, b]].mean(1, keepdims=True), pts, a, b) * 100
    out = [f"{folder} ({len(files)} faces)"]
    out += [f"  {name:26s} {fn(q).mean():7.2f} +- {fn(q).std():5.2f}" for name, fn in stats.items()]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("eval_dir", type=Path, help="a `kdlandmark evaluate` output folder")
    parser.add_argument("--labels", type=Path, nargs="*", default=[],
                        help="folders of .pts labels (the evaluation's layout) to print shape statistics of")
    args = parser.parse_args(argv)
    print("\n".join(shape_bias(args.eval_dir)))
    layout = load_split(args.eval_dir)[0]
    for folder in args.labels:
        print("\n".join(label_stats(folder, layout)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
