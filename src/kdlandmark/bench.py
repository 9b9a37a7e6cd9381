"""Throughput benchmarks that print figures (never timed unit tests)."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

__all__ = ["bench_data"]


def _device(name: str | None) -> str:
    import torch

    return name or ("cuda" if torch.cuda.is_available() else "cpu")


def bench_data(*, count: int = 300, size: int = 256, input_size: int = 224, batch: int = 64,
               device: str | None = None, workers: int | None = None) -> dict[str, float]:
    """Synthetic generation rate (one core), prepare time (all cores) and augmentation throughput."""
    from kdlandmark.data import synth
    from kdlandmark.data.augment import benchmark_augment
    from kdlandmark.data.prepare import prepare_dataset

    figures: dict[str, float] = {}
    rate = synth.benchmark(count=min(count, 300), size=size)
    figures["synth_faces_per_s_one_core"] = rate
    print(f"synthesis   : {rate:8.1f} faces/s at {size}x{size} on one core (render + JPEG encode)")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "synth"
        synth.synthesize("300w", count, root, seed=0, size=size, workers=workers)
        t0 = time.perf_counter()
        prepare_dataset("300w", root, Path(tmp) / "prepared", size=size, workers=workers)
        dt = time.perf_counter() - t0
    figures["prepare_faces_per_s"] = count / dt
    figures["prepare_seconds_per_3000"] = 3000 * dt / count
    print(f"prepare     : {count / dt:8.1f} faces/s with {workers or os.cpu_count()} processes "
          f"({count} faces in {dt:.1f} s; 3,000 faces would take {3000 * dt / count:.0f} s)")

    dev = _device(device)
    res = benchmark_augment(batch=batch, stored=size, out=input_size, device=dev)
    figures.update({f"augment_{k}": float(v) for k, v in res.items() if isinstance(v, int | float)})
    print(f"augmentation: {res['batches_per_s']:8.2f} batches/s = {res['images_per_s']:.0f} images/s "
          f"(batch {batch}, {size}->{input_size}, {dev})")
    return figures
