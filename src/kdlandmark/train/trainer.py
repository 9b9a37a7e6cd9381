"""One training engine for every role: Tough-Teacher, Tolerant-Teacher, KD-Loss student, plain-L2 student.

The roles differ only in their target and loss (REFERENCE.md section 2):

=========  ============================  =====================================================
role       target                        loss
=========  ============================  =====================================================
tough      hard landmarks (ground truth)  L2
tolerant   soft landmarks (ASM)           L2
l2         hard landmarks                 L2 (the student baseline)
kd         hard landmarks                 KD-Loss with both frozen teachers' predictions (plain L2 in
                                          its first ``kd.l2_warmup_epochs``, 0 by default)
=========  ============================  =====================================================

This module keeps the loop; its helpers have their own modules: :mod:`.distributed` (device, DDP),
:mod:`.tensors` (the data split as tensors, batches fetched without a DataLoader), :mod:`.checkpoint`
(``best/`` and ``last/``, exact resume) and :mod:`.logs` (``metrics.csv``, TensorBoard, console).

Each epoch draws one permutation from a seeded ``torch.Generator``; every step takes the next global
batch from it, each DDP process its own contiguous shard.  :meth:`Trainer.train_step` is the whole
step: fetch, augment on the device (:class:`~kdlandmark.data.augment.BatchAugmenter`, one transform for
hard and soft landmarks), the teachers' predictions on the very same augmented images (KD), bf16
autocast on CUDA, channels_last, optional ``torch.compile``, gradient clipping, optional EMA of the
weights.  Loss terms are accumulated on the device and read once per epoch (and every ``log_every``
steps for the progress bar), so the GPU is never stalled by per-step ``.item()``.

Every epoch: validation NME (:func:`kdlandmark.evaluate.metrics.nme_per_image`, normalised by the
layout's inter-ocular distance) on the validation split, ``metrics.csv`` and TensorBoard rows,
``best/`` (best validation NME) and ``last/`` checkpoints.  ``resume=True`` continues from ``last/``
exactly (weights, optimiser, scheduler, epoch, every RNG and the data order).  Multi-GPU / multi-node
with ``torchrun`` (DDP), see docs/TRAINING.md.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from kdlandmark.config import (
    ExperimentConfig,
    TrainConfig,
    config_from_dict,
    config_to_dict,
    load_config,
    load_train_config,
    save_config,
    train_config,
)
from kdlandmark.data.augment import BatchAugmenter
from kdlandmark.data.store import view_scale
from kdlandmark.evaluate.metrics import nme_per_image
from kdlandmark.losses import error_nll, kd_loss, l2_loss, visibility_loss
from kdlandmark.modelfile.checkpoint import init_from_checkpoint, is_checkpoint_path, load_checkpoint
from kdlandmark.models import LandmarkRegressor, count_parameters
from kdlandmark.train import checkpoint as ckpt
from kdlandmark.train.distributed import DistContext, autocast_dtype, configure_backends, pick_device
from kdlandmark.train.logs import RunLog
from kdlandmark.train.tensors import fetch, load_training_tensors

__all__ = ["Trainer", "train", "train_main", "lr_factor_fn", "load_teachers", "build_student", "head_losses",
           "cached_teachers"]

_BN_TYPES = (nn.modules.batchnorm._BatchNorm,)
#: ``mark(phase)`` is called after each phase of a step (``kdlandmark bench train`` times them).
Mark = Callable[[str], None]


# --------------------------------------------------------------------------------------------- schedule
def lr_factor_fn(cfg_optim: Any, steps_per_epoch: int, restart_epoch: int = 0) -> Callable[[int], float]:
    """Multiplier of the peak learning rate at optimiser step ``s`` (0-based), warm-up included.

    ``restart_epoch > 0``: the optimiser starts afresh there (the KD student's switch from its L2
    warm-up), so the linear warm-up is applied again from that epoch, on top of the schedule.
    ``cfg_optim.restarts``: the cosine starts again at those epochs (SGDR), each cycle with its warm-up.
    """
    warm = int(round(cfg_optim.warmup_epochs * steps_per_epoch))
    floor = cfg_optim.min_lr / cfg_optim.lr
    restart = restart_epoch * steps_per_epoch
    # cosine cycles (one unless optim.restarts): [start, end) in steps and the peak of each
    edges = [e * steps_per_epoch for e in (0, *cfg_optim.restarts, cfg_optim.epochs)]
    cycles = [(a, max(a + 1, b), max(floor, cfg_optim.restart_decay ** k))
              for k, (a, b) in enumerate(zip(edges[:-1], edges[1:], strict=True))]

    def factor(step: int) -> float:
        if 0 < restart <= step < restart + warm:
            return base(step) * (step - restart + 1) / warm
        return base(step)

    def base(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if cfg_optim.schedule == "constant":
            return 1.0
        if cfg_optim.schedule == "step":
            return cfg_optim.step_gamma ** ((step // steps_per_epoch) // cfg_optim.step_epochs)
        if cfg_optim.schedule == "inverse-time":
            return 1.0 / (1.0 + cfg_optim.lr_decay * step)
        start, end, peak = next((c for c in cycles if step < c[1]), cycles[-1])
        if start > 0 and step < start + warm:  # a warm restart warms up again
            return peak * (step - start + 1) / warm
        lead = warm if start == 0 else start + warm
        progress = min(1.0, (step - lead) / max(1, end - lead))
        return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _make_optimizer(params: Sequence[nn.Parameter], o: Any) -> torch.optim.Optimizer:
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
    if o.name == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=True)


def _set_train_mode(model: nn.Module, batchnorm: str) -> None:
    model.train()
    if batchnorm == "frozen":
        for m in model.modules():
            if isinstance(m, _BN_TYPES):
                m.eval()


@torch.no_grad()
def cached_teachers(trainer: Trainer) -> dict[str, torch.Tensor]:
    """``kd.teacher_cache``: each of ``trainer``'s teachers' prediction on every training image at rest
    (the unaugmented view), in stored-crop pixels like ``trainer.data.train_hard``, so that
    :meth:`Trainer.batch` moves it with the image."""
    data, augmenter = trainer.data, trainer.augmenter
    out = {name: torch.empty_like(data.train_hard) for name in trainer.teachers}
    bs = trainer.cfg.eval_batch_size or 2 * trainer.cfg.optim.batch_size
    for start in tqdm(range(0, trainer.n_train, bs), desc="teacher predictions (cached)", leave=False,
                      unit="batch", disable=None if trainer.dist.is_main else True):
        idx = torch.arange(start, min(start + bs, trainer.n_train))
        x, _ = augmenter(fetch(data.train_images, idx, trainer.device), [], train=False)
        if trainer.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        for name, pred in trainer.teacher_predict(x).items():
            out[name][start:start + len(idx)] = augmenter.model_to_stored(pred)
    return out


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))  # noqa: NPY002 -- seeds code that uses the legacy global RNG
    torch.manual_seed(seed)


def _open_prepared(root: str | Path) -> Any:
    from kdlandmark.data.store import PreparedSet

    return PreparedSet(root)


def load_teachers(cfg: TrainConfig, device: torch.device, layout: Any) -> dict[str, nn.Module]:
    """The two frozen teachers of role ``kd`` (``teachers.tough``, ``teachers.tolerant``) on ``device``.

    Each keeps its own input size (``teacher.input_size``): a teacher may see a resized view.
    """
    teachers: dict[str, nn.Module] = {}
    for name in ("tough", "tolerant"):
        path = getattr(cfg.teachers, name)
        if not path:
            raise ValueError(f"role 'kd' needs teachers.{name} (the {name} teacher's checkpoint folder)")
        teacher, meta = load_checkpoint(path, device=device, layout=layout)
        for p in teacher.parameters():
            p.requires_grad_(False)
        teacher.eval()
        if cfg.channels_last:
            teacher.to(memory_format=torch.channels_last)
        teacher.input_size = meta.input_size  # type: ignore[assignment]
        teachers[name] = teacher
    return teachers


def build_student(cfg: TrainConfig, num_points: int, device: torch.device, dist: DistContext
                  ) -> tuple[nn.Module, torch.optim.swa_utils.AveragedModel | None, nn.Module]:
    """The network being trained, its EMA copy (``optim.ema_decay``) and the module the steps run (DDP,
    ``torch.compile``)."""
    heads = cfg.model.heads
    start = cfg.model.pretrained if is_checkpoint_path(cfg.model.pretrained) else None
    model: nn.Module = LandmarkRegressor(cfg.model.backbone, num_points,
                                         pretrained=False if start else cfg.model.pretrained,
                                         dropout=cfg.model.dropout, heads=heads.names,
                                         head_hidden=heads.hidden, detach_heads=heads.detach)
    if start:  # a trained model's weights, all of them: fine-tuning
        init_from_checkpoint(model, start)
    if cfg.batchnorm == "sync" and dist.enabled:
        if device.type != "cuda":
            raise ValueError("batchnorm 'sync' needs CUDA (PyTorch's SyncBatchNorm does not run on CPU); "
                             "use 'frozen' or 'train'")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    ema = None
    if cfg.optim.ema_decay is not None:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.optim.ema_decay), use_buffers=True)
    train_model: nn.Module = model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        train_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        train_model = torch.compile(train_model)  # type: ignore[assignment]
    return model, ema, train_model


def _open_run(trainer: Trainer) -> RunLog:
    """Resume (``cfg.resume``) or refuse a folder that holds a run; write the config; open the log."""
    cfg = trainer.cfg
    resumed = ckpt.resume(trainer) if cfg.resume else False
    if not cfg.resume and ckpt.has_training_state(trainer.out):
        raise FileExistsError(f"{trainer.out}: already holds a training checkpoint (last/); pass "
                              "resume=true to continue it or choose another output folder")
    if trainer.dist.is_main:
        trainer.out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, trainer.out / "config.yaml",
                    extra={"world_size": trainer.dist.world_size, "device": str(trainer.device),
                           "resumed_at_epoch": trainer.epoch if resumed else None})
    log = RunLog(trainer.out, main=trainer.dist.is_main, tensorboard=cfg.tensorboard,
                 resumed_at=trainer.epoch if resumed else None)
    if resumed:
        log.say(f"resumed {trainer.out} at epoch {trainer.epoch} (step {trainer.step})")
    else:
        log.say(f"training {cfg.role}: {cfg.model.backbone} ({count_parameters(trainer.model):,} "
                f"parameters), {trainer.n_train} train / {trainer.n_val} val images, "
                f"{trainer.steps_per_epoch} steps x {trainer.world_batch} per epoch on "
                f"{trainer.dist.world_size} x {trainer.device}")
    return log


def head_losses(weights: Any, loss: torch.Tensor, terms: dict[str, torch.Tensor], pred: torch.Tensor,
                vis_logit: torch.Tensor | None, log_b: torch.Tensor | None, targets: list[torch.Tensor]
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The role's ``loss`` plus the confidence heads' terms weighted by ``weights`` (a
    :class:`~kdlandmark.config.HeadsConfig`): visibility BCE against the hidden mask (the last target),
    error NLL against the hard landmarks (the first target, whatever the role trains on)."""
    terms = dict(terms)
    if vis_logit is not None:
        vis = visibility_loss(vis_logit, targets[-1])
        loss = loss + weights.visibility * vis
        terms["visibility"] = vis.detach()
    if log_b is not None:
        nll = error_nll(log_b, pred, targets[0])
        loss = loss + weights.error * nll
        terms["error_nll"] = nll.detach()
    return loss, terms


# --------------------------------------------------------------------------------------------- trainer
class Trainer:
    """Train one role on a prepared set; see the module docstring and docs/TRAINING.md.

    Args:
        cfg: the run's :class:`TrainConfig`.
        prepared: an opened prepared set (anything with ``PreparedSet``'s interface); by default
            ``PreparedSet(cfg.data)``.
    """

    def __init__(self, cfg: TrainConfig, *, prepared: Any = None) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.device = pick_device(cfg.device)
        configure_backends(self.device, cfg.deterministic)
        self.dist = DistContext.from_env(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.amp_dtype = autocast_dtype(cfg.amp, self.device)

        # ---- data
        self.prepared = prepared if prepared is not None else _open_prepared(cfg.data)
        self.layout = self.prepared.layout
        if cfg.train_split not in self.prepared.split_names:
            raise ValueError(f"{cfg.data}: no split {cfg.train_split!r} "
                             f"(splits: {self.prepared.split_names})")
        self.data = load_training_tensors(cfg, self.prepared, self.device)
        self.view_scale = view_scale(self.prepared.margin, self.prepared.context_margin)
        self.augmenter = BatchAugmenter(self.layout, self.prepared.size, cfg.model.input_size,
                                        self.view_scale, cfg.augment)
        self.world_batch = cfg.optim.batch_size * self.dist.world_size
        self.steps_per_epoch = self.n_train // self.world_batch
        if self.steps_per_epoch == 0:
            raise ValueError(f"global batch {self.world_batch} (optim.batch_size {cfg.optim.batch_size} x "
                             f"{self.dist.world_size} processes) exceeds the {self.n_train} training images")

        # ---- model (identical initial weights on every rank: seeded before construction)
        _seed_everything(cfg.seed)
        self.model, self.ema, self.train_model = build_student(cfg, self.layout.num_points, self.device,
                                                               self.dist)
        # ---- teachers (before the per-rank seeding below: building them draws random numbers, and a
        # KD student must see the same dropout and augmentation as the L2 baseline of the same seed)
        self.teachers = load_teachers(cfg, self.device, self.layout) if cfg.role == "kd" else {}
        self.teacher_cache = cached_teachers(self) if cfg.kd.teacher_cache and self.teachers else {}

        # per-rank streams of randomness after the shared initialisation (dropout, augmentation)
        _seed_everything(cfg.seed + 7919 * (self.dist.rank + 1))
        self.data_gen = torch.Generator()
        self.data_gen.manual_seed(cfg.seed)
        self.aug_gen = torch.Generator(device=self.device)
        self.aug_gen.manual_seed(cfg.seed * 1000 + 17 + self.dist.rank)

        # ---- optimisation
        self.optimizer = _make_optimizer(list(self.model.parameters()), cfg.optim)
        # the KD student's switch from its L2 warm-up to KD-Loss (0: KD-Loss from the start)
        self.kd_start_epoch = cfg.kd.l2_warmup_epochs if cfg.role == "kd" else 0
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_factor_fn(cfg.optim, self.steps_per_epoch, restart_epoch=self.kd_start_epoch))
        self.epoch = 0
        self.step = 0            # optimiser steps taken
        self.best_metric = math.inf
        self.best_epoch = -1
        self.history: list[dict] = []

    # ----------------------------------------------------------------------------------------- data
    @property
    def n_train(self) -> int:
        return self.data.n_train

    @property
    def n_val(self) -> int:
        return self.data.n_val

    def _autocast(self) -> Any:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    # ----------------------------------------------------------------------------------------- the step
    def batch(self, idx: torch.Tensor, mark: Mark | None = None
              ) -> tuple[torch.Tensor, list[torch.Tensor], dict[str, torch.Tensor] | None]:
        """Augmented input batch, its targets (model coords) and the teachers' predictions, rows ``idx``.

        Targets: hard landmarks, soft ones (Tolerant-Teacher), last (visibility head only) the ``(B, N)``
        bool mask of hidden points (:meth:`BatchAugmenter.with_visibility`).  Teachers: with
        ``kd.teacher_cache`` in a KD-Loss epoch their cached predictions, moved by the same augmentation as
        the landmarks; else None (:meth:`optimise` runs them on the batch).  ``mark``: called with
        ``"data_wait"`` once the images are on the device and ``"augmentation"`` once the batch is ready.
        """
        images = fetch(self.data.train_images, idx, self.device)
        if mark is not None:
            mark("data_wait")
        idx_dev = idx.to(self.device, non_blocking=True)
        lms = [self.data.train_hard.index_select(0, idx_dev)]
        if self.data.train_soft is not None:
            lms.append(self.data.train_soft.index_select(0, idx_dev))
        cached, n = (list(self.teacher_cache) if self.uses_teachers else []), len(lms)
        lms += [self.teacher_cache[name].index_select(0, idx_dev) for name in cached]
        with torch.no_grad():
            train = self.cfg.random_augment
            if self.data.train_occluded is not None:
                occ = self.data.train_occluded.index_select(0, idx_dev)
                x, targets, hidden = self.augmenter.with_visibility(images, lms, occ, train=train,
                                                                    generator=self.aug_gen)
                targets.append(hidden)
            else:
                x, targets = self.augmenter(images, lms, train=train, generator=self.aug_gen)
        teachers = dict(zip(cached, targets[n:n + len(cached)], strict=True)) if cached else None
        del targets[n:n + len(cached)]
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if mark is not None:
            mark("augmentation")
        return x, targets, teachers

    @property
    def uses_teachers(self) -> bool:
        """Whether the current epoch's loss is KD-Loss (role ``kd`` after its L2 warm-up)."""
        return self.cfg.role == "kd" and self.epoch >= self.kd_start_epoch

    def teacher_predict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Both teachers' predictions (model coords, float32) on the input batch ``x``, without gradients."""
        out = {}
        with torch.no_grad(), self._autocast():
            for name, teacher in self.teachers.items():
                size = teacher.input_size
                xt = x
                if size != x.shape[-1]:
                    # model coordinates are relative to the side, so a resized view keeps the targets
                    xt = nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                                                   antialias=size < x.shape[-1])
                out[name] = teacher(xt).float()
        return out

    def _loss(self, pred: torch.Tensor, targets: list[torch.Tensor], teachers: dict[str, torch.Tensor] | None
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if teachers is not None:
            return kd_loss(pred, targets[0], teachers["tough"], teachers["tolerant"], self.cfg.kd)
        target = targets[1] if self.cfg.role == "tolerant" else targets[0]  # kd: its L2 warm-up epochs
        loss = l2_loss(pred, target)
        return loss, {"l2": loss.detach()}

    def optimise(self, x: torch.Tensor, targets: list[torch.Tensor], mark: Mark | None = None,
                 teachers: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """One optimiser step on a ready batch (a KD-Loss epoch runs the teachers on ``x`` unless
        ``teachers`` is given); detached terms.  ``mark``: with ``"teacher_forwards"``, ``"student_step"``.
        """
        cfg = self.cfg
        if teachers is None and self.uses_teachers:
            teachers = self.teacher_predict(x)
        if mark is not None:
            mark("teacher_forwards")
        heads = self.model.has_heads  # type: ignore[union-attr]
        with self._autocast():
            out = self.train_model(x, heads=True) if heads else self.train_model(x)
        pred = (out[0] if heads else out).float()
        loss, terms = self._loss(pred, targets, teachers)
        if heads:
            loss, terms = head_losses(self.cfg.model.heads, loss, terms, pred, out[1], out[2], targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optim.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        self.step += 1
        if mark is not None:
            mark("student_step")
        return {"loss": loss.detach(), **{k: v for k, v in terms.items() if k not in ("loss", "total")}}

    def train_step(self, idx: torch.Tensor, mark: Mark | None = None) -> dict[str, torch.Tensor]:
        """The whole training step on training-set rows ``idx``: :meth:`batch`, then :meth:`optimise`."""
        x, targets, teachers = self.batch(idx, mark)
        return self.optimise(x, targets, mark, teachers)

    # ----------------------------------------------------------------------------------------- epochs
    def _train_epoch(self, epoch: int) -> dict[str, float]:
        cfg = self.cfg
        if epoch == self.kd_start_epoch > 0:
            # KD-Loss takes over from the L2 warm-up.  Its gradients are on another scale (a slope of
            # order 1 per coordinate against L2's 2|P - G|), so the optimiser starts afresh: Adam's
            # second moments remember ~1000 steps and would make the first KD steps far too large.
            self.optimizer.state.clear()
        _set_train_mode(self.train_model, cfg.batchnorm)
        perm = torch.randperm(self.n_train, generator=self.data_gen)
        b, rank = cfg.optim.batch_size, self.dist.rank
        sums: dict[str, torch.Tensor] = {}
        bar = tqdm(total=self.steps_per_epoch, desc=f"{cfg.role} {epoch + 1}/{cfg.optim.epochs}", leave=False,
                   dynamic_ncols=True, disable=None if self.dist.is_main else True, unit="step")
        t0 = time.perf_counter()
        for s in range(self.steps_per_epoch):
            start = s * self.world_batch + rank * b
            terms = self.train_step(perm[start:start + b])
            for k, v in terms.items():
                sums[k] = sums[k] + v.float() if k in sums else v.float().clone()
            bar.update(1)
            if (s + 1) % cfg.log_every == 0 and not bar.disable:
                bar.set_postfix(loss=f"{(sums['loss'] / (s + 1)).item():.4g}")
        bar.close()
        keys = sorted(sums)
        vec = torch.stack([sums[k] for k in keys]) / self.steps_per_epoch
        vec = self.dist.all_reduce_sum(vec) / self.dist.world_size
        values = dict(zip(keys, vec.tolist(), strict=True))  # the epoch's one host-device sync
        seconds = time.perf_counter() - t0
        values["images_per_s"] = self.steps_per_epoch * self.world_batch / max(seconds, 1e-9)
        values["train_seconds"] = seconds
        return values

    def eval_model(self) -> nn.Module:
        """The weights validated and saved: the EMA model when EMA is on."""
        return self.ema.module if self.ema is not None else self.model

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean NME (in units of the inter-ocular distance) on the validation images, all ranks."""
        if not self.n_val:
            return {}
        model = self.eval_model()
        model.eval()
        data = self.data
        bs = self.cfg.eval_batch_size or 2 * self.cfg.optim.batch_size
        mine = torch.arange(self.dist.rank, self.n_val, self.dist.world_size)
        tol = data.val_soft is not None
        sums = np.zeros(3)                        # sum NME(hard), sum NME(soft), count
        for i in range(0, len(mine), bs):
            idx = mine[i:i + bs]
            idx_dev = idx.to(self.device)
            lms = [data.val_hard.index_select(0, idx_dev)]
            if tol:
                lms.append(data.val_soft.index_select(0, idx_dev))
            x, targets = self.augmenter(fetch(data.val_images, idx, self.device), lms, train=False)
            if self.cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with self._autocast():
                pred = model(x).float().cpu().numpy()
            norm = data.val_norm[idx.numpy()]
            # the normaliser is the hard shape's, for the soft targets too
            sums[0] += nme_per_image(pred, targets[0].cpu().numpy(), self.layout, norm=norm).sum()
            if tol:
                sums[1] += nme_per_image(pred, targets[1].cpu().numpy(), self.layout, norm=norm).sum()
            sums[2] += len(idx)
        acc = self.dist.all_reduce_sum(torch.tensor(sums, dtype=torch.float64, device=self.device))
        s_hard, s_soft, count = acc.tolist()
        out = {"val_nme": s_hard / count}
        if tol:
            out["val_nme_soft"] = s_soft / count
        return out

    def _selection_metric(self, val: dict[str, float], train: dict[str, float]) -> float:
        """Lower is better: NME to the role's own target (soft for the Tolerant-Teacher), else train loss."""
        if self.cfg.role == "tolerant" and "val_nme_soft" in val:
            return val["val_nme_soft"]
        if "val_nme" in val:
            return val["val_nme"]
        return train["loss"]

    # ----------------------------------------------------------------------------------------- the loop
    def save(self, metrics: dict, *, best: bool, last: bool) -> None:
        """Write ``best/`` and/or ``last/`` (rank 0 only; every rank must call it for the RNG gather)."""
        ckpt.save_checkpoints(self, metrics, best=best, last=last)

    def _run_epoch(self, epoch: int) -> tuple[dict, dict, bool]:
        """Train and validate one epoch: its CSV row, the metrics saved with it, whether it is the best."""
        t0 = time.perf_counter()
        train = self._train_epoch(epoch)
        val = self.validate()
        self.epoch = epoch + 1
        metric = self._selection_metric(val, train)
        improved = metric < self.best_metric
        if improved:
            self.best_metric, self.best_epoch = metric, self.epoch
        row = {"epoch": self.epoch, "step": self.step, "lr": self.optimizer.param_groups[0]["lr"],
               **{k: v for k, v in train.items() if k not in ("images_per_s", "train_seconds")},
               **val, "best": self.best_metric, "images_per_s": train["images_per_s"],
               "train_seconds": train["train_seconds"]}
        row["epoch_seconds"] = time.perf_counter() - t0
        return row, {**val, "loss": train["loss"]}, improved

    def fit(self) -> dict:
        """Train to ``optim.epochs``; returns the best metric and epoch, the checkpoint paths, the history."""
        cfg = self.cfg
        try:
            log = _open_run(self)
            self.dist.barrier()
            bar = log.progress(self.epoch, cfg.optim.epochs, cfg.role)
            for epoch in bar:
                row, metrics, improved = self._run_epoch(epoch)
                self.history.append(row)
                final = self.epoch == cfg.optim.epochs
                self.save(metrics, best=improved, last=final or self.epoch % cfg.checkpoint_every == 0)
                log.epoch(row, self.history, bar, cfg.optim.epochs)
                self.dist.barrier()
            bar.close()
            log.close()
            return {"role": cfg.role, "best_metric": self.best_metric, "best_epoch": self.best_epoch,
                    "epochs": self.epoch, "best": str(self.out / "best"), "last": str(self.out / "last"),
                    "metrics_csv": str(log.csv_path), "history": self.history}
        finally:
            self.dist.close()


# --------------------------------------------------------------------------------------------- entry points
def train(cfg: TrainConfig, **kwargs: Any) -> dict:
    """``Trainer(cfg, **kwargs).fit()``."""
    return Trainer(cfg, **kwargs).fit()


def _looks_like_train_config(data: dict) -> bool:
    """A run config has run-only keys (an experiment config has none of them)."""
    return bool(set(data) & {"role", "data", "model", "optim", "teachers"})


def _from_experiment(exp: ExperimentConfig, role: str | None, overrides: Sequence[str], source: str, *,
                     data: str | Path | None, out: str | Path | None) -> TrainConfig:
    """The run of ``role`` in experiment ``exp``: overrides of experiment keys apply to it, the rest to
    the derived run."""
    if role is None:
        raise ValueError(f"{source} is an experiment config: say which role to train "
                         "(tough, tolerant, kd or l2)")
    exp_keys = {f.name for f in dataclasses.fields(ExperimentConfig)}
    exp_over = [o for o in overrides if o.split("=", 1)[0].split(".")[0] in exp_keys]
    exp = config_from_dict(ExperimentConfig, config_to_dict(exp), source, exp_over)
    return config_from_dict(TrainConfig, config_to_dict(train_config(exp, role, data=data, out=out)),
                            f"{source} ({role})", [o for o in overrides if o not in exp_over])


def _config_from_file(path: Path, overrides: Sequence[str], role: str | None, *,
                      data: str | Path | None, out: str | Path | None) -> TrainConfig:
    import yaml

    if not path.is_file():
        raise FileNotFoundError(f"{path}: config file not found")
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if isinstance(raw, dict) and _looks_like_train_config(raw):
        return load_train_config(path, overrides)
    return _from_experiment(load_config(path), role, overrides, str(path), data=data, out=out)


def train_main(config: str | Path | TrainConfig | ExperimentConfig | None, overrides: Sequence[str] = (),
               role: str | None = None, *, data: str | Path | None = None, out: str | Path | None = None,
               resume: bool | None = None) -> dict:
    """Command-line entry: train ``role`` from a config file (or object) with ``key=value`` overrides.

    ``config`` is a :class:`TrainConfig` / :class:`ExperimentConfig`, or a YAML file of either kind (a
    run's ``config.yaml`` is a TrainConfig; a bundled preset such as ``configs/paper-300w.yaml`` an
    ExperimentConfig).  For an experiment, ``role`` is required, the run's paths default to
    :func:`~kdlandmark.config.train_config`'s, overrides whose first key is an experiment field apply
    to the experiment (``student.optim.lr=3e-4``) and the others to the derived run (``resume=true``,
    ``optim.epochs=5``).  ``data``, ``out`` and ``resume`` override the run's fields.
    """
    if isinstance(config, str | Path):
        cfg = _config_from_file(Path(config), overrides, role, data=data, out=out)
    elif isinstance(config, ExperimentConfig):
        cfg = _from_experiment(config, role, overrides, "<experiment>", data=data, out=out)
    elif isinstance(config, TrainConfig):
        cfg = config_from_dict(TrainConfig, config_to_dict(config), "<config>", overrides)
    elif config is None:
        cfg = config_from_dict(TrainConfig, {}, "<defaults>", overrides)
    else:
        raise TypeError("config must be a path, TrainConfig or ExperimentConfig, "
                        f"got {type(config).__name__}")
    if role is not None:
        cfg.role = role
        cfg.__post_init__()
    if data is not None:
        cfg.data = str(data)
    if out is not None:
        cfg.out = str(out)
    if resume is not None:
        cfg.resume = resume
    if not cfg.data:
        raise ValueError("no prepared data folder given (data=...)")
    return train(cfg)
