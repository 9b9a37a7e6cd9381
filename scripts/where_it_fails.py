"""Where a model fails on a set of faces: NME and failure rate by pose, by face size and by region.

    python scripts/where_it_fails.py runs/pretrained-68/eval/folder-faces/kd

Reads an evaluation folder (``predictions.npz`` + ``predictions.json`` of ``kdlandmark evaluate``) and
prints the inter-ocular NME (%) and the failure rate (NME > 10 %) of

* turned and near-frontal faces (`Layout.yaw_proxy`: where the labelled nose tip sits between the outer eye
  corners, turned when more than ``--turned`` of the eye span off centre);
* small and larger faces (the width of the labelled landmark box against ``--small`` pixels);
* each region of the layout (jaw, brows, nose, eyes, mouth: the mean of its points' errors).

These are the breakdowns README.md and docs/MODEL_CARD.md quote for the shipped model.
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

#: Regions reported, as unions of the layout's groups (those a layout lacks are left out).
REGIONS = {"jaw": ("jaw",), "brows": ("brow_left", "brow_right"), "nose": ("nose_bridge", "nostrils"),
           "eyes": ("eye_left", "eye_right"), "mouth": ("mouth_outer", "mouth_inner")}


def breakdown(eval_dir: Path, turned: float = 0.1, small: float = 45.0, threshold: float = 0.1
              ) -> dict[str, tuple[int, float, float]]:
    """``{name: (faces, NME %, failure rate %)}`` of the evaluation in ``eval_dir`` for all faces, the
    turned and near-frontal ones, the small and larger ones, and ``{"region NAME": (faces, NME %, nan)}``
    per region; SystemExit naming the folder on bad input."""
    try:
        layout, p, g = load_split(eval_dir)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    try:
        t = layout.yaw_proxy(g)
    except ValueError as exc:
        raise SystemExit(f"error: {eval_dir}: {exc}") from None
    point_err = np.linalg.norm(p - g, axis=2) / layout.normaliser(g)[:, None]   # (F, N), share of the iod
    nme = point_err.mean(1)
    width = g[:, :, 0].max(1) - g[:, :, 0].min(1)
    subsets = {"all": np.ones(len(nme), bool),
               f"turned (|yaw proxy| > {turned:g})": np.abs(t) > turned, "near-frontal": np.abs(t) <= turned,
               f"small (landmark box < {small:g} px wide)": width < small, "larger": width >= small}
    out = {name: (int(m.sum()), 100 * float(nme[m].mean()) if m.any() else float("nan"),
                  100 * float((nme[m] > threshold).mean()) if m.any() else float("nan"))
           for name, m in subsets.items()}
    for region, groups in REGIONS.items():
        idx = [i for grp in groups if grp in layout.groups for i in layout.groups[grp]]
        if idx:
            out[f"region {region}"] = (len(nme), 100 * float(point_err[:, idx].mean()), float("nan"))
    return out


def format_breakdown(rows: dict[str, tuple[int, float, float]]) -> list[str]:
    """One line per row of :func:`breakdown`."""
    return [f"{name:36s} n={n:3d}  NME {nme:5.2f} %" + ("" if np.isnan(fr) else f"  failures {fr:5.1f} %")
            for name, (n, nme, fr) in rows.items()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("eval_dir", type=Path, help="a `kdlandmark evaluate` output folder")
    parser.add_argument("--turned", type=float, default=0.1, help="yaw proxy above which a face is turned")
    parser.add_argument("--small", type=float, default=45.0, help="landmark box width (px) of a small face")
    args = parser.parse_args(argv)
    print("\n".join(format_breakdown(breakdown(args.eval_dir, args.turned, args.small))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
