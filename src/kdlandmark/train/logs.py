"""What a training run reports, on the main process only: ``metrics.csv``, TensorBoard and the console.

``metrics.csv`` holds one row per epoch (rewritten whole each epoch, so a resumed run continues the
same file): ``epoch, step, lr``, every loss term, the validation NME, the best metric so far, then the
throughput columns.  TensorBoard (``tb/``) gets the same scalars; events logged after the checkpoint a
run resumes from are dropped.  The console shows a progress bar, or one line per epoch when the output
is not a terminal (a log file).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

__all__ = ["METRICS_CSV", "RunLog", "write_metrics_csv"]

METRICS_CSV = "metrics.csv"
#: Columns written last, in this order (how fast, not how well).
_TAIL = ("images_per_s", "train_seconds", "epoch_seconds")
#: Columns shown beside the progress bar.
_SHOWN = ("loss", "val_nme", "val_nme_soft")


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def write_metrics_csv(path: Path, history: list[dict]) -> None:
    """Write every epoch row of ``history`` to ``path`` (atomic rename; columns in a stable order)."""
    if not history:
        return
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    first = ["epoch", "step", "lr"]
    rest = [k for k in keys if k not in first]
    tail = [k for k in _TAIL if k in rest]
    cols = first + [k for k in rest if k not in tail] + tail
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for row in history:
            w.writerow({k: (_fmt(v) if isinstance(v, float) else v) for k, v in row.items()})
    os.replace(tmp, path)


class RunLog:
    """The run's reports.  Every method is a no-op on processes other than the main one.

    Args:
        out: the run folder.
        main: whether this is the main process (rank 0).
        tensorboard: write TensorBoard events under ``out/tb``.
        resumed_at: the epoch a resumed run continues from (None for a fresh run).
    """

    def __init__(self, out: Path, *, main: bool, tensorboard: bool, resumed_at: int | None) -> None:
        self.out = Path(out)
        self.main = main
        self.writer: Any = None
        if main and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = resumed_at + 1 if resumed_at is not None else None  # drop events after the checkpoint
            self.writer = SummaryWriter(str(self.out / "tb"), purge_step=purge)

    @property
    def csv_path(self) -> Path:
        return self.out / METRICS_CSV

    def say(self, text: str) -> None:
        if self.main:
            tqdm.write(text)

    def progress(self, start: int, total: int, role: str) -> tqdm:
        """The epochs progress bar (disabled off the main process and when stdout is not a terminal)."""
        return tqdm(range(start, total), initial=start, total=total, desc=f"{role} epochs",
                    dynamic_ncols=True, disable=None if self.main else True, unit="epoch")

    def epoch(self, row: dict, history: list[dict], bar: tqdm, epochs: int) -> None:
        """Report one finished epoch: the CSV, TensorBoard scalars, the bar (or a printed line)."""
        if not self.main:
            return
        write_metrics_csv(self.csv_path, history)
        if self.writer is not None:
            for k, v in row.items():
                if k != "epoch" and isinstance(v, int | float):
                    self.writer.add_scalar(k if k.startswith(("val", "lr", "best")) else f"train/{k}", v,
                                           row["epoch"])
            self.writer.flush()
        shown = {k: f"{v:.4g}" for k, v in row.items() if k in _SHOWN}
        bar.set_postfix(shown)
        if bar.disable:
            print(f"epoch {row['epoch']}/{epochs} " + " ".join(f"{k}={v}" for k, v in shown.items())
                  + f" {row['images_per_s']:.0f} img/s", flush=True)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
