"""Choose the One Euro filter's two parameters on synthetic clips (tracking + smoothing).

    python scripts/tune_one_euro.py --model runs/issue12/kd-heads/best --clips CLIP_DIR --out tune.json

Grid search of :func:`kdlandmark.infer.video.tune_one_euro`: every ``min_cutoff`` x ``beta`` x
``crop_from``; the choice is the lowest pooled jitter among the settings whose per-frame NME is at most
``1 + --nme-margin`` times the frame-by-frame NME.  Tune on clips of another seed than those reported
(docs/INFERENCE.md, "Video").
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kdlandmark.infer.landmarker import Landmarker
from kdlandmark.infer.video import tune_one_euro


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--clips", type=Path, nargs="+", required=True)
    p.add_argument("--out", type=Path, required=True, help="JSON of the grid and the choice")
    p.add_argument("--min-cutoffs", type=float, nargs="+", default=[0.1, 0.3, 0.5, 1.0, 2.0, 4.0])
    p.add_argument("--betas", type=float, nargs="+", default=[0.0, 2.0, 5.0, 10.0, 20.0, 50.0])
    p.add_argument("--crop-from", nargs="+", default=["raw", "smoothed"])
    p.add_argument("--nme-margin", type=float, default=0.03)
    a = p.parse_args()
    lmk = Landmarker.from_checkpoint(a.model, backend="torch", detector=None, threads=1, batch_size=1)
    result = tune_one_euro(lmk, a.clips, min_cutoffs=a.min_cutoffs, betas=a.betas, crop_froms=a.crop_from,
                           nme_margin=a.nme_margin, progress=False)
    ref, best = result["reference_frame_by_frame"], result["best"]
    print(f"frame by frame: NME {ref['nme']:.3f} %, jitter {ref['jitter']:.3f} %")
    result["choice"] = "lowest jitter within the NME margin"
    if best is None:
        best = result["best"] = min(result["grid"], key=lambda g: g["nme"])
        result["choice"] = "no setting within the NME margin: the lowest NME"
        print(result["choice"])
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"model": str(a.model), **result}, indent=1) + "\n")
    print(f"choice: min_cutoff {best['min_cutoff']:g} Hz, beta {best['beta']:g}, crop from "
          f"{best['crop_from']}: NME {best['nme']:.3f} %, jitter {best['jitter']:.3f} % "
          f"({ref['jitter'] / best['jitter']:.2f}x lower)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
