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


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(fn, steps: int, warmup: int, batch: int, device) -> float:
    """Images per second of ``fn`` (one step of ``batch`` images), synchronised only at the ends."""
    for _ in range(warmup):
        fn()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return steps * batch / (time.perf_counter() - t0)


def _breakdown(trainer, idx_batches, teacher_forward: bool) -> dict[str, float]:
    """Milliseconds per step in each part of the real step, measured with a sync after each part.

    The syncs serialise the parts, so the sum exceeds the overlapped step time; the shares say where
    the time goes.
    """
    import torch

    dev = trainer.device
    parts = {"data_wait": 0.0, "augmentation": 0.0, "teacher_forwards": 0.0, "student_step": 0.0}
    for idx in idx_batches:
        _sync(dev)
        t0 = time.perf_counter()
        images = trainer._fetch(trainer.train_images, idx)
        _sync(dev)
        t1 = time.perf_counter()
        idx_dev = idx.to(dev)
        lms = [trainer.train_hard.index_select(0, idx_dev)]
        if trainer.train_soft is not None:
            lms.append(trainer.train_soft.index_select(0, idx_dev))
        with torch.no_grad():
            x, targets = trainer.augmenter(images, lms, train=True, generator=trainer.aug_gen)
        if trainer.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        _sync(dev)
        t2 = time.perf_counter()
        if teacher_forward:
            trainer._teacher_predict(x)
            _sync(dev)
        t3 = time.perf_counter()
        trainer._optimise(x, targets)
        _sync(dev)
        t4 = time.perf_counter()
        parts["data_wait"] += t1 - t0
        parts["augmentation"] += t2 - t1
        parts["teacher_forwards"] += t3 - t2
        parts["student_step"] += t4 - t3
    n = max(len(idx_batches), 1)
    return {k: 1000 * v / n for k, v in parts.items()}


def bench_train(config: str | Path = "paper-300w", overrides: tuple[str, ...] = (), *,
                data: str | Path | None = None, count: int = 1000, steps: int = 30, warmup: int = 10,
                roles: tuple[str, ...] = ("tough", "kd"), workers: int | None = None
                ) -> dict[str, dict[str, float]]:
    """Model-only ceiling vs the real data path for the teacher step and the KD-student step.

    Uses the experiment ``config`` (preset or YAML) with the engine's own settings (bf16 and
    channels-last on CUDA, ``runtime.compile``).  ``data`` is a prepared set; by default ``count``
    synthetic faces are made and prepared in a temporary folder (``workers`` processes; default: all
    cores).  The KD step uses randomly
    initialised teachers of the configured architecture: their cost, not their quality, matters here.
    """
    import dataclasses

    import torch

    from kdlandmark.config import TeachersConfig, load_config, train_config
    from kdlandmark.data.store import PreparedSet
    from kdlandmark.models import LandmarkRegressor
    from kdlandmark.pipeline import resolve_preset
    from kdlandmark.shape.soften import soften_prepared
    from kdlandmark.train.checkpoint import save_model_checkpoint
    from kdlandmark.train.trainer import Trainer

    exp = load_config(resolve_preset(config), overrides)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        if data is None:
            from kdlandmark.data import synth
            from kdlandmark.data.prepare import prepare_dataset

            synth.synthesize(exp.dataset, count, tmp_path / "synth", seed=0, size=exp.prepare.size,
                             workers=workers)
            data = tmp_path / "prepared"
            prepare_dataset(exp.dataset, tmp_path / "synth", data, size=exp.prepare.size, workers=workers)
            soften_prepared(data, exp.asm.variance, out=tmp_path / "asm", report=False)
        teachers = None
        for role in roles:
            cfg = train_config(exp, role, data=data, out=tmp_path / f"run-{role}", teachers=teachers)
            if role == "kd" and teachers is None:
                layout = PreparedSet(data).layout
                tm = exp.teacher.model
                teacher = LandmarkRegressor(tm.backbone, layout.num_points, dropout=tm.dropout)
                dirs = {name: str(tmp_path / f"teacher-{name}") for name in ("tough", "tolerant")}
                for d in dirs.values():
                    save_model_checkpoint(d, teacher, layout=layout, input_size=tm.input_size)
                teachers = TeachersConfig(**dirs)
                cfg = dataclasses.replace(cfg, teachers=teachers)
            cfg.val_fraction, cfg.tensorboard = 0.0, False
            trainer = Trainer(cfg)
            dev, b = trainer.device, cfg.optim.batch_size
            gen = torch.Generator().manual_seed(0)
            idx_batches = [torch.randperm(trainer.n_train, generator=gen)[:b] for _ in range(steps)]
            trainer.train_model.train()
            x0, t0 = trainer._batch(idx_batches[0])
            ceiling = _rate(lambda x0=x0, t0=t0, tr=trainer: tr._optimise(x0, t0), steps, warmup, b, dev)
            it = iter(range(10**9))

            def real_step(tr=trainer, batches=idx_batches, it=it) -> None:
                tr._optimise(*tr._batch(batches[next(it) % len(batches)]))

            real = _rate(real_step, steps, warmup, b, dev)
            parts = _breakdown(trainer, idx_batches[: min(steps, 10)], teacher_forward=role == "kd")
            label = "teacher" if role in ("tough", "tolerant") else f"{role}-student"
            results[label] = {"ceiling_img_s": ceiling, "pipeline_img_s": real, "ratio": real / ceiling,
                              **{f"{k}_ms": v for k, v in parts.items()}}
            print(f"{label:12s} {cfg.model.backbone} @{cfg.model.input_size} batch {b} on {dev}: "
                  f"ceiling {ceiling:8.1f} img/s, pipeline {real:8.1f} img/s, ratio {real / ceiling:5.1%}")
            shares = ", ".join(f"{k} {v:.1f} ms" for k, v in parts.items())
            print(f"             per step (serialised): {shares}")
            del trainer
    return results
