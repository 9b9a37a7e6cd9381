"""How far ``kd.teacher_cache`` moves the teachers' guidance: on augmented training batches of a KD run,
each teacher's live prediction (what KD-Loss uses by default) against its at-rest prediction moved with
the augmentation (what the cache gives), and both against the ground truth.  Inter-ocular NME, %.

    python scripts/teacher_cache_gap.py runs/x/kd/config.yaml [--images 1024]

The run's config names the prepared data and both teachers; nothing is trained or written.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile

import numpy as np
import torch

from kdlandmark.config import load_train_config
from kdlandmark.evaluate.metrics import nme_per_image
from kdlandmark.train.trainer import Trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", help="a KD run's config.yaml (data and teachers)")
    ap.add_argument("--images", type=int, default=1024, help="augmented training images to draw")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(1)
    cfg = load_train_config(a.config)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = dataclasses.replace(cfg, out=tmp, tensorboard=False,
                                  kd=dataclasses.replace(cfg.kd, l2_warmup_epochs=0, teacher_cache=True))
        tr = Trainer(cfg)
        idx_all = torch.randperm(tr.n_train, generator=torch.Generator().manual_seed(a.seed))[:a.images]
        rows: dict[str, list[np.ndarray]] = {}
        for start in range(0, len(idx_all), 64):
            x, targets, moved = tr.batch(idx_all[start:start + 64])
            assert moved is not None
            live = tr.teacher_predict(x)
            gt = targets[0].numpy()
            for name in live:
                lv, mv = live[name].numpy(), moved[name].numpy()
                for key, (p, g) in {f"{name}: moved vs live": (mv, lv), f"{name}: live vs truth": (lv, gt),
                                    f"{name}: moved vs truth": (mv, gt)}.items():
                    rows.setdefault(key, []).append(nme_per_image(p, g, tr.layout))
    print(f"{len(idx_all)} augmented training images of {cfg.data}, inter-ocular NME %")
    for key, values in rows.items():
        print(f"  {key:28s} {100 * np.concatenate(values).mean():6.2f}")


if __name__ == "__main__":
    main()
