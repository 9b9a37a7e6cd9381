"""Training: one engine for the teachers and the students (:mod:`.trainer`), with its distributed
context (:mod:`.distributed`), data tensors (:mod:`.tensors`), checkpoints and resume
(:mod:`.checkpoint`) and logs (:mod:`.logs`).  Model files themselves are :mod:`kdlandmark.modelfile`.

Heavy imports (torch, timm) happen on first use, so ``import kdlandmark.train`` stays cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Trainer", "train", "train_main"]

_LAZY = {
    "Trainer": "kdlandmark.train.trainer",
    "train": "kdlandmark.train.trainer",
    "train_main": "kdlandmark.train.trainer",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kdlandmark.train' has no attribute {name!r}")
