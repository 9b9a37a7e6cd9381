"""The model-file format: checkpoint folders (safetensors + JSON) and their typed metadata.

A layer of its own, below training, evaluation and inference: :mod:`.meta` (:class:`ModelMeta`,
torch-free, also used for exported ONNX models) and :mod:`.checkpoint` (writing and loading checkpoint
folders).  The errors are :class:`kdlandmark.errors.CheckpointError`.  Imports are lazy, so
``from kdlandmark.modelfile import ModelMeta`` loads no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["ModelMeta", "CropSpec", "CheckpointError", "load_checkpoint", "read_model_meta",
           "save_model_checkpoint", "model_meta", "resolve_checkpoint_dir", "write_checkpoint_dir"]

_LAZY = {
    "ModelMeta": "kdlandmark.modelfile.meta",
    "CropSpec": "kdlandmark.modelfile.meta",
    "CheckpointError": "kdlandmark.errors",
    "load_checkpoint": "kdlandmark.modelfile.checkpoint",
    "read_model_meta": "kdlandmark.modelfile.checkpoint",
    "save_model_checkpoint": "kdlandmark.modelfile.checkpoint",
    "model_meta": "kdlandmark.modelfile.checkpoint",
    "resolve_checkpoint_dir": "kdlandmark.modelfile.checkpoint",
    "write_checkpoint_dir": "kdlandmark.modelfile.checkpoint",
}

if TYPE_CHECKING:  # pragma: no cover
    from kdlandmark.errors import CheckpointError
    from kdlandmark.modelfile.checkpoint import (
        load_checkpoint,
        model_meta,
        read_model_meta,
        resolve_checkpoint_dir,
        save_model_checkpoint,
        write_checkpoint_dir,
    )
    from kdlandmark.modelfile.meta import CropSpec, ModelMeta


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kdlandmark.modelfile' has no attribute {name!r}")
