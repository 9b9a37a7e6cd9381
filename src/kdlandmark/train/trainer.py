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

Data path (no DataLoader): the training split's uint8 crops are read once into one tensor (on the
GPU when they fit easily, else in host memory and copied per batch through a pinned staging buffer,
``non_blocking``).  Each epoch draws one permutation from a seeded ``torch.Generator``; every step
takes the next global batch from it, each DDP process its own contiguous shard.  The batch is
augmented on the device by :class:`~kdlandmark.data.augment.BatchAugmenter` (one transform for hard
and soft landmarks); KD teachers predict on the very same augmented images.

Step: bf16 autocast on CUDA, channels_last, optional ``torch.compile``, gradient clipping, optional
EMA of the weights; loss terms are accumulated on the device and read once per epoch (and every
``log_every`` steps for the progress bar), so the GPU is never stalled by per-step ``.item()``.

Every epoch: validation NME (mean point error over the layout's inter-ocular distance) on the
validation split, ``metrics.csv`` and TensorBoard rows, ``best/`` (best validation NME) and ``last/``
checkpoints.  ``resume=True`` continues from ``last/`` exactly (weights, optimiser, scheduler, epoch,
every RNG and the data order).  Multi-GPU / multi-node with ``torchrun`` (DDP), see docs/TRAINING.md.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as _dt
import math
import os
import random
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from kdlandmark.config import (
    ExperimentConfig,
    TrainConfig,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
    train_config,
)
from kdlandmark.data.augment import BatchAugmenter
from kdlandmark.losses import kd_loss, l2_loss
from kdlandmark.models import LandmarkRegressor, count_parameters
from kdlandmark.train.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    MODEL_META,
    MODEL_WEIGHTS,
    STATE_META,
    STATE_TENSORS,
    CheckpointError,
    flatten_optimizer_state,
    generator_state,
    load_checkpoint,
    load_state_dict_file,
    model_meta,
    read_training_state,
    resolve_checkpoint_dir,
    rng_state,
    set_generator_state,
    set_rng_state,
    unflatten_optimizer_state,
    write_checkpoint_dir,
)

__all__ = ["Trainer", "train", "train_main", "DistContext"]

_BN_TYPES = (nn.modules.batchnorm._BatchNorm,)


# --------------------------------------------------------------------------------------------- distributed
@dataclasses.dataclass
class DistContext:
    """Process rank and world size (1 process unless launched by torchrun with WORLD_SIZE > 1)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device_type: str) -> DistContext:
        """Join the process group described by ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (torchrun)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        rank = int(os.environ["RANK"])
        local = int(os.environ.get("LOCAL_RANK", "0"))
        owns = False
        if not dist.is_initialized():
            backend = "nccl" if device_type == "cuda" else "gloo"
            if device_type == "cuda":
                torch.cuda.set_device(local)
            dist.init_process_group(backend=backend, init_method="env://",
                                    timeout=_dt.timedelta(minutes=30))
            owns = True
        return cls(rank=rank, local_rank=local, world_size=world, owns_group=owns)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t


def _pick_device(spec: str) -> torch.device:
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {spec!r} requested but CUDA is not available")
    return dev


def _open_prepared(root: str | Path) -> Any:
    from kdlandmark.data.store import PreparedSet

    return PreparedSet(root)


# --------------------------------------------------------------------------------------------- schedule
def lr_factor_fn(cfg_optim: Any, steps_per_epoch: int, restart_epoch: int = 0) -> Any:
    """Multiplier of the peak learning rate at optimiser step ``s`` (0-based), warm-up included.

    ``restart_epoch > 0``: the optimiser starts afresh there (the KD student's switch from its L2
    warm-up), so the linear warm-up is applied again from that epoch, on top of the schedule.
    """
    total = max(1, cfg_optim.epochs * steps_per_epoch)
    warm = int(round(cfg_optim.warmup_epochs * steps_per_epoch))
    floor = cfg_optim.min_lr / cfg_optim.lr
    restart = restart_epoch * steps_per_epoch

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
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

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


def _b2s(x: float) -> str:
    return f"{x:.6g}"


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
        self.device = _pick_device(cfg.device)
        if cfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.set_float32_matmul_precision("high")
        self.dist = DistContext.from_env(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        use_amp = cfg.amp == "bf16" or (cfg.amp == "auto" and self.device.type == "cuda")
        self.amp_dtype = torch.bfloat16 if use_amp else None
        if self.amp_dtype is not None and self.device.type != "cuda":
            raise ValueError("amp 'bf16' needs a CUDA device; use amp 'off' (or 'auto') on CPU")

        # ---- data
        self.prepared = prepared if prepared is not None else _open_prepared(cfg.data)
        self.layout = self.prepared.layout
        if cfg.train_split not in self.prepared.split_names:
            raise ValueError(f"{cfg.data}: no split {cfg.train_split!r} "
                             f"(splits: {self.prepared.split_names})")
        self._load_data()
        self.view_scale = (1 + 2 * self.prepared.margin) / (1 + 2 * self.prepared.context_margin)
        self.augmenter = BatchAugmenter(self.layout, self.prepared.size, cfg.model.input_size,
                                        self.view_scale, cfg.augment)
        self.world_batch = cfg.optim.batch_size * self.dist.world_size
        self.steps_per_epoch = self.n_train // self.world_batch
        if self.steps_per_epoch == 0:
            raise ValueError(f"global batch {self.world_batch} (optim.batch_size {cfg.optim.batch_size} x "
                             f"{self.dist.world_size} processes) exceeds the {self.n_train} training images")

        # ---- model (identical initial weights on every rank: seeded before construction)
        self._seed_everything(cfg.seed)
        model = LandmarkRegressor(cfg.model.backbone, self.layout.num_points, pretrained=cfg.model.pretrained,
                                  dropout=cfg.model.dropout)
        if cfg.batchnorm == "sync" and self.dist.enabled:
            if self.device.type != "cuda":
                raise ValueError("batchnorm 'sync' needs CUDA (PyTorch's SyncBatchNorm does not run on CPU); "
                                 "use 'frozen' or 'train'")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model.to(self.device)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        self.ema: torch.optim.swa_utils.AveragedModel | None = None
        if cfg.optim.ema_decay is not None:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.optim.ema_decay),
                                     use_buffers=True)
        train_model: nn.Module = model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            train_model = DDP(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if cfg.compile:
            train_model = torch.compile(train_model)  # type: ignore[assignment]
        self.train_model = train_model

        # ---- teachers (before the per-rank seeding below: building them draws random numbers, and a
        # KD student must see the same dropout and augmentation as the L2 baseline of the same seed)
        self.teachers: dict[str, nn.Module] = {}
        if cfg.role == "kd":
            self._load_teachers()

        # per-rank streams of randomness after the shared initialisation (dropout, augmentation)
        self._seed_everything(cfg.seed + 7919 * (self.dist.rank + 1))
        self.data_gen = torch.Generator()
        self.data_gen.manual_seed(cfg.seed)
        self.aug_gen = torch.Generator(device=self.device)
        self.aug_gen.manual_seed(cfg.seed * 1000 + 17 + self.dist.rank)

        # ---- optimisation
        self.optimizer = _make_optimizer(list(model.parameters()), cfg.optim)
        # the KD student's switch from its L2 warm-up to KD-Loss (0: KD-Loss from the start)
        self.kd_start_epoch = cfg.kd.l2_warmup_epochs if cfg.role == "kd" else 0
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_factor_fn(cfg.optim, self.steps_per_epoch, restart_epoch=self.kd_start_epoch))
        self.epoch = 0
        self.step = 0
        self.best_metric = math.inf
        self.best_epoch = -1
        self.history: list[dict] = []

    # ----------------------------------------------------------------------------------------- setup
    def _seed_everything(self, seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed % (2**32))  # noqa: NPY002 -- seeds code that uses the legacy global RNG
        torch.manual_seed(seed)

    def _load_data(self) -> None:
        cfg, ps = self.cfg, self.prepared
        split = ps.split(cfg.train_split)
        n_all = len(split)
        need_soft = cfg.role == "tolerant"
        if need_soft and split.soft_landmarks is None:
            raise ValueError(f"{cfg.data}: split {cfg.train_split!r} has no soft landmarks, which the "
                             "Tolerant-Teacher trains on; run the ASM (soft landmarks) stage first")
        order = np.random.default_rng(cfg.seed).permutation(n_all)
        if cfg.val_split is not None:
            if cfg.val_split not in ps.split_names:
                raise ValueError(f"{cfg.data}: no validation split {cfg.val_split!r} "
                                 f"(splits: {ps.split_names})")
            train_idx = np.arange(n_all)
            vsplit = ps.split(cfg.val_split)
            val_idx = np.random.default_rng(cfg.seed + 1).permutation(len(vsplit))
        else:
            vsplit = split
            n_val = int(round(n_all * cfg.val_fraction))
            if cfg.val_fraction > 0:
                n_val = max(1, n_val)
            val_idx, train_idx = order[:n_val], np.sort(order[n_val:])
        if cfg.num_val is not None:
            val_idx = val_idx[: cfg.num_val]
        val_idx = np.sort(val_idx)
        if need_soft and len(val_idx) and vsplit.soft_landmarks is None:
            raise ValueError(f"{cfg.data}: validation split {cfg.val_split!r} has no soft landmarks")

        def take(arr: Any, idx: np.ndarray) -> np.ndarray:
            return np.ascontiguousarray(np.asarray(arr[idx]))

        self.n_train = int(len(train_idx))
        train_images = torch.from_numpy(take(split.images, train_idx))
        val_images = torch.from_numpy(take(vsplit.images, val_idx)) if len(val_idx) else None
        on_device = cfg.data_on_device
        if on_device is None:
            on_device = False
            if self.device.type == "cuda":
                free, _total = torch.cuda.mem_get_info(self.device)
                total_bytes = train_images.numel() + (val_images.numel() if val_images is not None else 0)
                on_device = total_bytes < 0.25 * free
        self.data_on_device = bool(on_device) and self.device.type == "cuda"
        store = self.device if self.data_on_device else torch.device("cpu")
        self.train_images = train_images.to(store)
        self.val_images = val_images.to(store) if val_images is not None else None
        dev = self.device
        self.train_hard = torch.from_numpy(take(split.landmarks, train_idx)).float().to(dev)
        self.train_soft = (torch.from_numpy(take(split.soft_landmarks, train_idx)).float().to(dev)
                           if need_soft else None)
        self.n_val = int(len(val_idx))
        if self.n_val:
            hard = take(vsplit.landmarks, val_idx).astype(np.float32)
            self.val_hard = torch.from_numpy(hard).to(dev)
            self.val_soft = (torch.from_numpy(take(vsplit.soft_landmarks, val_idx)).float().to(dev)
                             if need_soft else None)
            # normaliser in model coordinates: the eval view only scales stored pixels by 1/(view*S)
            view = (1 + 2 * ps.margin) / (1 + 2 * ps.context_margin) * ps.size
            norm = np.asarray(self.layout.normaliser(hard), dtype=np.float64) / view
            if not np.all(np.isfinite(norm)) or np.any(norm <= 0):
                bad = int(np.flatnonzero(~(norm > 0))[0]) if np.any(~(norm > 0)) else -1
                raise ValueError(f"{cfg.data}: validation face {bad} has a zero normalising distance")
            self.val_norm = torch.from_numpy(norm.astype(np.float32)).to(dev)

    def _load_teachers(self) -> None:
        cfg = self.cfg
        for name in ("tough", "tolerant"):
            path = getattr(cfg.teachers, name)
            if not path:
                raise ValueError(f"role 'kd' needs teachers.{name} (the {name} teacher's checkpoint folder)")
            teacher, meta = load_checkpoint(path, device=self.device, layout=self.layout)
            for p in teacher.parameters():
                p.requires_grad_(False)
            teacher.eval()
            if cfg.channels_last:
                teacher.to(memory_format=torch.channels_last)
            teacher.input_size = int(meta["input_size"])  # type: ignore[assignment]
            self.teachers[name] = teacher

    # ----------------------------------------------------------------------------------------- batches
    def _autocast(self) -> Any:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _fetch(self, images: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """uint8 images ``idx`` of ``images`` on the training device."""
        if images.device == self.device:
            return images.index_select(0, idx.to(self.device, non_blocking=True))
        if self.device.type != "cuda":
            return images.index_select(0, idx)
        # host -> GPU through a pinned staging buffer, so that the copy is asynchronous (the caching
        # host allocator does not hand the buffer out again before the copy has finished)
        buf = torch.empty((len(idx), *images.shape[1:]), dtype=images.dtype, pin_memory=True)
        torch.index_select(images, 0, idx, out=buf)
        return buf.to(self.device, non_blocking=True)

    def _teacher_predict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
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

    def _loss(self, pred: torch.Tensor, targets: list[torch.Tensor], x: torch.Tensor
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        role = self.cfg.role
        if role == "kd" and self.epoch >= self.kd_start_epoch:
            t = self._teacher_predict(x)
            return kd_loss(pred, targets[0], t["tough"], t["tolerant"], self.cfg.kd)
        target = targets[1] if role == "tolerant" else targets[0]  # kd: its L2 warm-up epochs
        loss = l2_loss(pred, target)
        return loss, {"l2": loss.detach()}

    # ----------------------------------------------------------------------------------------- steps
    def _batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Augmented input batch and its targets (model coords) for training-set rows ``idx``."""
        images = self._fetch(self.train_images, idx)
        idx_dev = idx.to(self.device, non_blocking=True)
        lms = [self.train_hard.index_select(0, idx_dev)]
        if self.train_soft is not None:
            lms.append(self.train_soft.index_select(0, idx_dev))
        with torch.no_grad():
            x, targets = self.augmenter(images, lms, train=self.cfg.random_augment, generator=self.aug_gen)
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, targets

    def _optimise(self, x: torch.Tensor, targets: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """One optimiser step on a ready batch (teachers' forwards included for KD); detached loss terms."""
        cfg = self.cfg
        with self._autocast():
            pred = self.train_model(x)
        loss, terms = self._loss(pred.float(), targets, x)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optim.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        self.step += 1
        return {"loss": loss.detach(), **{k: v for k, v in terms.items() if k not in ("loss", "total")}}

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
            x, targets = self._batch(perm[start:start + b])
            terms = self._optimise(x, targets)
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

    def _eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean NME (in units of the inter-ocular distance) on the validation images, all ranks."""
        if not self.n_val:
            return {}
        model = self._eval_model()
        model.eval()
        bs = self.cfg.eval_batch_size or 2 * self.cfg.optim.batch_size
        mine = torch.arange(self.dist.rank, self.n_val, self.dist.world_size)
        tol = self.val_soft is not None
        acc = torch.zeros(3, device=self.device, dtype=torch.float64)  # sum NME(hard), sum NME(soft), count
        for i in range(0, len(mine), bs):
            idx = mine[i:i + bs]
            idx_dev = idx.to(self.device)
            images = self._fetch(self.val_images, idx)
            lms = [self.val_hard.index_select(0, idx_dev)]
            if tol:
                lms.append(self.val_soft.index_select(0, idx_dev))
            x, targets = self.augmenter(images, lms, train=False)
            if self.cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with self._autocast():
                pred = model(x).float()
            norm = self.val_norm.index_select(0, idx_dev)
            acc[0] += ((pred - targets[0]).norm(dim=-1).mean(dim=-1) / norm).sum().double()
            if tol:
                acc[1] += ((pred - targets[1]).norm(dim=-1).mean(dim=-1) / norm).sum().double()
            acc[2] += len(idx)
        acc = self.dist.all_reduce_sum(acc)
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

    # ----------------------------------------------------------------------------------------- checkpoints
    def _model_meta(self, metrics: dict) -> dict:
        cfg = self.cfg
        crop = {"margin": float(self.prepared.margin), "context_margin": float(self.prepared.context_margin),
                "stored_size": int(self.prepared.size), "view_scale": self.view_scale}
        return model_meta(self.model, layout=self.layout, input_size=cfg.model.input_size, crop=crop,
                          role=cfg.role, metrics=metrics, ema=self.ema is not None, epoch=self.epoch,
                          step=self.step, best={"metric": self.best_metric, "epoch": self.best_epoch},
                          parameters=count_parameters(self.model), train_config=config_to_dict(cfg),
                          created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))

    def _gather_rng(self) -> list[dict]:
        mine = {"rng": rng_state(), "aug_gen": generator_state(self.aug_gen)}
        if not self.dist.enabled:
            return [mine]
        gathered: list[Any] = [None] * self.dist.world_size
        dist.all_gather_object(gathered, mine)
        return gathered

    def save(self, metrics: dict, *, best: bool, last: bool) -> None:
        """Write ``best/`` and/or ``last/`` (rank 0 only; every rank must call it for the RNG gather)."""
        rngs = self._gather_rng() if last else []
        if not self.dist.is_main:
            return
        eval_model = self._eval_model()
        weights = eval_model.state_dict()
        meta = self._model_meta(metrics)
        if best:
            write_checkpoint_dir(self.out / "best", {MODEL_WEIGHTS: weights}, {MODEL_META: meta})
        if last:
            opt_tensors, opt_meta = flatten_optimizer_state(self.optimizer.state_dict())
            state_tensors: dict[str, torch.Tensor] = dict(opt_tensors)
            if self.ema is not None:
                state_tensors.update({f"model.{k}": v for k, v in self.model.state_dict().items()})
                state_tensors.update({f"ema.{k}": v for k, v in self.ema.state_dict().items()})
            state = {
                "format": CHECKPOINT_FORMAT,
                "version": CHECKPOINT_VERSION,
                "epoch": self.epoch,
                "step": self.step,
                "steps_per_epoch": self.steps_per_epoch,
                "world_size": self.dist.world_size,
                "best_metric": self.best_metric,
                "best_epoch": self.best_epoch,
                "optimizer": opt_meta,
                "scheduler": {k: v for k, v in self.scheduler.state_dict().items() if k != "lr_lambdas"},
                "data_gen": generator_state(self.data_gen),
                "ranks": rngs,
                "history": self.history,
                "train_config": config_to_dict(self.cfg),
            }
            write_checkpoint_dir(self.out / "last", {MODEL_WEIGHTS: weights, STATE_TENSORS: state_tensors},
                                 {STATE_META: state, MODEL_META: meta})

    def _resume(self) -> bool:
        """Restore everything from ``out/last``; False when there is nothing to resume."""
        found = resolve_checkpoint_dir(self.out / "last", STATE_META)
        if found is None:
            return False
        tensors, state = read_training_state(found, "cpu")
        saved = state.get("train_config", {})
        where = found / STATE_META
        if saved.get("role") != self.cfg.role:
            raise CheckpointError(where, f"cannot resume: saved role {saved.get('role')!r} differs from the "
                                         f"config's {self.cfg.role!r}")
        saved_backbone = saved.get("model", {}).get("backbone")
        if saved_backbone != self.cfg.model.backbone:
            raise CheckpointError(where, f"cannot resume: the saved backbone {saved_backbone!r} differs from "
                                         f"{self.cfg.model.backbone!r}")
        if state.get("steps_per_epoch") != self.steps_per_epoch:
            raise CheckpointError(where, f"cannot resume: {state.get('steps_per_epoch')} steps per epoch "
                                         f"saved, {self.steps_per_epoch} now (data, batch size or number of "
                                         "processes changed)")
        if self.ema is not None:
            raw = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
            self.ema.load_state_dict({k[len("ema."):]: v for k, v in tensors.items() if k.startswith("ema.")})
        else:
            raw = load_state_dict_file(found / MODEL_WEIGHTS)
        self.model.load_state_dict(raw)
        self.optimizer.load_state_dict(unflatten_optimizer_state(tensors, state["optimizer"]))
        sched = dict(state["scheduler"])
        sched["lr_lambdas"] = [None] * len(self.optimizer.param_groups)
        self.scheduler.load_state_dict(sched)
        self.epoch = int(state["epoch"])
        self.step = int(state["step"])
        self.best_metric = float(state["best_metric"])
        self.best_epoch = int(state["best_epoch"])
        self.history = list(state.get("history", []))
        set_generator_state(self.data_gen, state["data_gen"])
        ranks = state.get("ranks", [])
        if len(ranks) == self.dist.world_size:
            mine = ranks[self.dist.rank]
            set_rng_state(mine["rng"])
            set_generator_state(self.aug_gen, mine["aug_gen"])
        elif self.dist.is_main:
            tqdm.write(f"resume: {len(ranks)} process(es) saved RNG states, {self.dist.world_size} running "
                       "now; augmentation/dropout randomness will differ from an uninterrupted run")
        return True

    # ----------------------------------------------------------------------------------------- logging
    def _csv_path(self) -> Path:
        return self.out / "metrics.csv"

    def _write_csv(self) -> None:
        if not self.history:
            return
        keys: list[str] = []
        for row in self.history:
            keys += [k for k in row if k not in keys]
        first = ["epoch", "step", "lr"]
        rest = [k for k in keys if k not in first]
        tail = [k for k in ("images_per_s", "train_seconds", "epoch_seconds") if k in rest]
        cols = first + [k for k in rest if k not in tail] + tail
        tmp = self._csv_path().with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=cols)
            w.writeheader()
            for row in self.history:
                w.writerow({k: (_b2s(v) if isinstance(v, float) else v) for k, v in row.items()})
        os.replace(tmp, self._csv_path())

    # ----------------------------------------------------------------------------------------- main loop
    def fit(self) -> dict:
        """Train to ``optim.epochs``; returns the best metric and epoch, the checkpoint paths, the history."""
        cfg = self.cfg
        try:
            resumed = False
            if cfg.resume:
                resumed = self._resume()
            elif resolve_checkpoint_dir(self.out / "last", STATE_META) is not None:
                raise FileExistsError(f"{self.out}: already holds a training checkpoint (last/); pass "
                                      "resume=true to continue it or choose another output folder")
            writer = None
            if self.dist.is_main:
                self.out.mkdir(parents=True, exist_ok=True)
                save_config(cfg, self.out / "config.yaml",
                            extra={"world_size": self.dist.world_size, "device": str(self.device),
                                   "resumed_at_epoch": self.epoch if resumed else None})
                if cfg.tensorboard:
                    from torch.utils.tensorboard import SummaryWriter

                    purge = self.epoch + 1 if resumed else None  # drop events logged after the checkpoint
                    writer = SummaryWriter(str(self.out / "tb"), purge_step=purge)
                if resumed:
                    tqdm.write(f"resumed {self.out} at epoch {self.epoch} (step {self.step})")
                else:
                    tqdm.write(f"training {cfg.role}: {cfg.model.backbone} ({count_parameters(self.model):,} "
                               f"parameters), {self.n_train} train / {self.n_val} val images, "
                               f"{self.steps_per_epoch} steps x {self.world_batch} per epoch on "
                               f"{self.dist.world_size} x {self.device}")
            self.dist.barrier()
            epochs = tqdm(range(self.epoch, cfg.optim.epochs), initial=self.epoch, total=cfg.optim.epochs,
                          desc=f"{cfg.role} epochs", dynamic_ncols=True,
                          disable=None if self.dist.is_main else True, unit="epoch")
            for epoch in epochs:
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
                final = self.epoch == cfg.optim.epochs
                want_last = final or self.epoch % cfg.checkpoint_every == 0
                row["epoch_seconds"] = time.perf_counter() - t0
                self.history.append(row)
                self.save({**val, "loss": train["loss"]}, best=improved, last=want_last)
                if self.dist.is_main:
                    self._write_csv()
                    if writer is not None:
                        for k, v in row.items():
                            if k != "epoch" and isinstance(v, int | float):
                                writer.add_scalar(k if k.startswith(("val", "lr", "best")) else f"train/{k}",
                                                  v, self.epoch)
                        writer.flush()
                    shown = {k: f"{v:.4g}" for k, v in row.items()
                             if k in ("loss", "val_nme", "val_nme_soft")}
                    epochs.set_postfix(shown)
                    if epochs.disable:
                        print(f"epoch {self.epoch}/{cfg.optim.epochs} "
                              + " ".join(f"{k}={v}" for k, v in shown.items())
                              + f" {train['images_per_s']:.0f} img/s", flush=True)
                self.dist.barrier()
            epochs.close()
            if writer is not None:
                writer.close()
            return {
                "role": cfg.role,
                "best_metric": self.best_metric,
                "best_epoch": self.best_epoch,
                "epochs": self.epoch,
                "best": str(self.out / "best"),
                "last": str(self.out / "last"),
                "metrics_csv": str(self._csv_path()),
                "history": self.history,
            }
        finally:
            if self.dist.owns_group and dist.is_initialized():
                dist.destroy_process_group()


# --------------------------------------------------------------------------------------------- entry points
def train(cfg: TrainConfig, **kwargs: Any) -> dict:
    """``Trainer(cfg, **kwargs).fit()``."""
    return Trainer(cfg, **kwargs).fit()


def _looks_like_train_config(data: dict) -> bool:
    """A run config has run-only keys (an experiment config has none of them)."""
    return bool(set(data) & {"role", "data", "model", "optim", "teachers"})


def train_main(config: str | Path | TrainConfig | ExperimentConfig | None, overrides: Sequence[str] = (),
               role: str | None = None, *, data: str | Path | None = None, out: str | Path | None = None,
               resume: bool | None = None) -> dict:
    """Command-line entry: train ``role`` from a config file (or object) with ``key=value`` overrides.

    ``config`` is a :class:`TrainConfig` / :class:`ExperimentConfig`, or a YAML file of either kind (a
    run's ``config.yaml`` is a TrainConfig; a preset such as ``configs/paper-300w.yaml`` an
    ExperimentConfig).  For an experiment, ``role`` is required, the run's paths default to
    :func:`~kdlandmark.config.train_config`'s, overrides whose first key is an experiment field apply
    to the experiment (``student.optim.lr=3e-4``) and the others to the derived run (``resume=true``,
    ``optim.epochs=5``).  ``data``, ``out`` and ``resume`` override the run's fields.
    """
    import yaml

    exp_keys = {f.name for f in dataclasses.fields(ExperimentConfig)}
    if isinstance(config, str | Path):
        raw = yaml.safe_load(Path(config).read_text(encoding="utf-8")) if Path(config).is_file() else None
        if raw is None and not Path(config).is_file():
            raise FileNotFoundError(f"{config}: config file not found")
        raw = raw or {}
        if _looks_like_train_config(raw):
            from kdlandmark.config import load_train_config

            cfg = load_train_config(config, overrides)
        else:
            exp_over = [o for o in overrides if o.split("=", 1)[0].split(".")[0] in exp_keys]
            run_over = [o for o in overrides if o not in exp_over]
            exp = load_config(config, exp_over)
            if role is None:
                raise ValueError(f"{config} is an experiment config: say which role to train "
                                 "(tough, tolerant, kd or l2)")
            cfg = config_from_dict(TrainConfig, config_to_dict(train_config(exp, role, data=data, out=out)),
                                   f"{config} ({role})", run_over)
    elif isinstance(config, ExperimentConfig):
        if role is None:
            raise ValueError("an ExperimentConfig needs a role (tough, tolerant, kd or l2)")
        exp_over = [o for o in overrides if o.split("=", 1)[0].split(".")[0] in exp_keys]
        exp = config_from_dict(ExperimentConfig, config_to_dict(config), "<experiment>", exp_over)
        cfg = config_from_dict(TrainConfig, config_to_dict(train_config(exp, role, data=data, out=out)),
                               f"<experiment> ({role})", [o for o in overrides if o not in exp_over])
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
