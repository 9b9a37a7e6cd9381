"""The training data as tensors: the held-out validation split, device placement, fetching a batch.

No DataLoader: the training split's uint8 crops are read once into one tensor (on the GPU when they fit
easily, else in host memory and copied per batch through a pinned staging buffer, ``non_blocking``).
Landmarks live on the training device; the validation normalisers (the layout's normalising distance
in model units) are computed once, here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from kdlandmark.config import TrainConfig
from kdlandmark.data.store import view_scale

__all__ = ["TrainingTensors", "load_training_tensors", "split_indices", "fetch"]


@dataclass
class TrainingTensors:
    """Training and validation images (uint8 ``(M, S, S, 3)``) and landmarks (stored-crop pixels).

    ``val_norm``: each validation face's normalising distance in model coordinates (float64, NumPy).
    Soft landmarks are present for the Tolerant-Teacher only; the occlusion flags (``(M, N)`` bool, on
    the training device) only when the model has a visibility head.
    """

    train_images: torch.Tensor
    train_hard: torch.Tensor
    train_soft: torch.Tensor | None
    val_images: torch.Tensor | None
    val_hard: torch.Tensor | None
    val_soft: torch.Tensor | None
    val_norm: np.ndarray | None
    on_device: bool
    train_occluded: torch.Tensor | None = None
    val_occluded: torch.Tensor | None = None

    @property
    def n_train(self) -> int:
        return int(len(self.train_images))

    @property
    def n_val(self) -> int:
        return 0 if self.val_images is None else int(len(self.val_images))


def split_indices(cfg: TrainConfig, n_all: int, n_val_split: int | None) -> tuple[np.ndarray, np.ndarray]:
    """``(train rows, validation rows)``, both sorted and seeded by ``cfg.seed``.

    With a separate validation split (``n_val_split`` faces) every training face trains; otherwise
    ``val_fraction`` of the training split is held out (at least one face when the fraction is > 0).
    ``num_val`` caps the validation rows.
    """
    order = np.random.default_rng(cfg.seed).permutation(n_all)
    if n_val_split is not None:
        train_idx = np.arange(n_all)
        val_idx = np.random.default_rng(cfg.seed + 1).permutation(n_val_split)
    else:
        n_val = int(round(n_all * cfg.val_fraction))
        if cfg.val_fraction > 0:
            n_val = max(1, n_val)
        val_idx, train_idx = order[:n_val], np.sort(order[n_val:])
    if cfg.num_val is not None:
        val_idx = val_idx[: cfg.num_val]
    return train_idx, np.sort(val_idx)


def _take(arr: Any, idx: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(arr[idx]))


def _keep_on_device(cfg: TrainConfig, device: torch.device, nbytes: int) -> bool:
    """``data_on_device``, or (``null``) whether the images use under a quarter of the free GPU memory."""
    on_device = cfg.data_on_device
    if on_device is None:
        on_device = False
        if device.type == "cuda":
            free, _total = torch.cuda.mem_get_info(device)
            on_device = nbytes < 0.25 * free
    return bool(on_device) and device.type == "cuda"


def load_training_tensors(cfg: TrainConfig, prepared: Any, device: torch.device) -> TrainingTensors:
    """Read the splits ``cfg`` names from ``prepared`` (a ``PreparedSet``) onto ``device``.

    Raises ``ValueError`` naming the prepared set for a missing split, missing soft landmarks (role
    ``tolerant``) or a validation face whose normalising distance is zero.
    """
    split = prepared.split(cfg.train_split)
    need_soft = cfg.role == "tolerant"
    if need_soft and split.soft_landmarks is None:
        raise ValueError(f"{cfg.data}: split {cfg.train_split!r} has no soft landmarks, which the "
                         "Tolerant-Teacher trains on; run the ASM (soft landmarks) stage first")
    vsplit = split
    if cfg.val_split is not None:
        if cfg.val_split not in prepared.split_names:
            raise ValueError(f"{cfg.data}: no validation split {cfg.val_split!r} "
                             f"(splits: {prepared.split_names})")
        vsplit = prepared.split(cfg.val_split)
    train_idx, val_idx = split_indices(cfg, len(split), len(vsplit) if cfg.val_split is not None else None)
    if need_soft and len(val_idx) and vsplit.soft_landmarks is None:
        raise ValueError(f"{cfg.data}: validation split {cfg.val_split!r} has no soft landmarks")

    train_images = torch.from_numpy(_take(split.images, train_idx))
    val_images = torch.from_numpy(_take(vsplit.images, val_idx)) if len(val_idx) else None
    on_device = _keep_on_device(cfg, device, train_images.numel()
                                + (val_images.numel() if val_images is not None else 0))
    store = device if on_device else torch.device("cpu")

    def landmarks(arr: Any, idx: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(_take(arr, idx)).float().to(device)

    out = TrainingTensors(
        train_images=train_images.to(store), train_hard=landmarks(split.landmarks, train_idx),
        train_soft=landmarks(split.soft_landmarks, train_idx) if need_soft else None,
        val_images=None, val_hard=None, val_soft=None, val_norm=None, on_device=on_device)
    need_flags = cfg.model.heads.visibility > 0
    if need_flags:
        out.train_occluded = torch.from_numpy(_take(split.occluded, train_idx)).to(device)
    if val_images is not None:
        hard = _take(vsplit.landmarks, val_idx).astype(np.float32)
        out.val_images = val_images.to(store)
        out.val_hard = torch.from_numpy(hard).to(device)
        out.val_soft = landmarks(vsplit.soft_landmarks, val_idx) if need_soft else None
        if need_flags:
            out.val_occluded = torch.from_numpy(_take(vsplit.occluded, val_idx)).to(device)
        # the eval view only scales stored pixels by 1 / (view_scale * S): the normaliser in model units
        view = view_scale(prepared.margin, prepared.context_margin) * prepared.size
        norm = np.asarray(prepared.layout.normaliser(hard), dtype=np.float64) / view
        if not np.all(np.isfinite(norm)) or np.any(norm <= 0):
            bad = int(np.flatnonzero(~(norm > 0))[0]) if np.any(~(norm > 0)) else -1
            raise ValueError(f"{cfg.data}: validation face {bad} has a zero normalising distance")
        out.val_norm = norm
    return out


def fetch(images: torch.Tensor, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 images ``idx`` of ``images`` on ``device`` (host -> GPU through a pinned staging buffer)."""
    if images.device == device:
        return images.index_select(0, idx.to(device, non_blocking=True))
    if device.type != "cuda":
        return images.index_select(0, idx)
    # asynchronous copy: the caching host allocator does not hand the buffer out again before it is done
    buf = torch.empty((len(idx), *images.shape[1:]), dtype=images.dtype, pin_memory=True)
    torch.index_select(images, 0, idx, out=buf)
    return buf.to(device, non_blocking=True)
