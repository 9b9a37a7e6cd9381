"""Checkpoint folders without pickle: safetensors for tensors, JSON for everything else.

A model checkpoint is a folder::

    model.safetensors   network weights (the EMA weights when EMA is on: the weights validated)
    model.json          architecture, layout, input size, normalisation, crop margin, training
                        config, metrics, epoch, and the size and SHA-256 of model.safetensors

(A training checkpoint, ``last/``, adds ``state.safetensors`` + ``state.json``: see
:mod:`kdlandmark.train.checkpoint`.)

Writing is crash-safe: the files go into a temporary sibling folder (each written to a temporary file,
fsynced, renamed; JSON last), and the folder then replaces the old one by two renames.  A run killed
at any moment leaves either the old or the new checkpoint complete; :func:`resolve_checkpoint_dir`
finds whichever survived.  Loading checks everything it can and says which file is wrong; the
metadata is parsed once into a :class:`~kdlandmark.modelfile.meta.ModelMeta`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdlandmark.atomic import atomic_write_bytes, fsync_dir
from kdlandmark.errors import CheckpointError
from kdlandmark.layouts import Layout, get_layout
from kdlandmark.modelfile.meta import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    MODEL_COORDINATES,
    ModelMeta,
    read_json,
)

__all__ = [
    "MODEL_WEIGHTS",
    "MODEL_META",
    "write_checkpoint_dir",
    "model_meta",
    "save_model_checkpoint",
    "resolve_checkpoint_dir",
    "model_checkpoint_files",
    "read_model_meta",
    "load_checkpoint",
    "load_state_dict_file",
    "is_checkpoint_path",
    "init_from_checkpoint",
]

MODEL_WEIGHTS = "model.safetensors"
MODEL_META = "model.json"


# --------------------------------------------------------------------------------------------- writing
def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, allow_nan=True) + "\n").encode("utf-8")


def _safetensors_bytes(tensors: Mapping[str, torch.Tensor], path_for_errors: str) -> bytes:
    from safetensors.torch import save

    plain: dict[str, torch.Tensor] = {}
    for k, v in tensors.items():
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"{path_for_errors}: {k} is not a tensor ({type(v).__name__})")
        # clone: no shared storage (safetensors refuses it), plain row-major layout (channels_last weights)
        plain[k] = v.detach().to("cpu").contiguous().clone()
    return save(plain)


def write_checkpoint_dir(directory: str | Path, tensors: Mapping[str, Mapping[str, torch.Tensor]],
                         jsons: Mapping[str, Any]) -> Path:
    """Write a checkpoint folder crash-safely.

    Args:
        directory: the checkpoint folder (replaced if it exists).
        tensors: file name -> tensors, saved as safetensors (written first).
        jsons: file name -> JSON-able object (written last).  ``model.json`` automatically receives
            ``weights: {file, bytes, sha256}`` describing ``model.safetensors`` when both are written.
    """
    final = Path(directory)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp")
    old = final.with_name(f".{final.name}.old")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    blobs: dict[str, bytes] = {}
    for name, tens in tensors.items():
        blobs[name] = _safetensors_bytes(tens, str(final / name))
        atomic_write_bytes(tmp / name, blobs[name])
    for name, obj in jsons.items():
        if name == MODEL_META and MODEL_WEIGHTS in blobs:
            obj = dict(obj)
            obj["weights"] = {"file": MODEL_WEIGHTS, "bytes": len(blobs[MODEL_WEIGHTS]),
                              "sha256": hashlib.sha256(blobs[MODEL_WEIGHTS]).hexdigest()}
        atomic_write_bytes(tmp / name, _json_bytes(obj))
    fsync_dir(tmp)
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    if old.exists():
        shutil.rmtree(old)
    return final


def model_meta(model: nn.Module, *, layout: Layout | str, input_size: int, crop: dict | None = None,
               role: str | None = None, metrics: dict | None = None, **extra: Any) -> ModelMeta:
    """The metadata of ``model`` (a :class:`~kdlandmark.models.LandmarkRegressor`), as ``model.json`` says it.

    ``crop`` records how inputs were cut (``margin`` etc.: inference must crop the same way);
    ``extra`` adds further top-level entries (epoch, training config, ...).
    """
    lay = get_layout(layout) if isinstance(layout, str) else layout
    arch = model.architecture()  # type: ignore[operator]
    if int(arch["num_points"]) != lay.num_points:
        raise ValueError(f"model has {arch['num_points']} points, layout {lay.name} {lay.num_points}")
    data: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "role": role,
        "architecture": arch,
        "layout": lay.to_json(),
        "input_size": int(input_size),
        "crop": crop,
        "coordinates": MODEL_COORDINATES,
        "metrics": metrics or {},
    }
    data.update(extra)
    return ModelMeta.from_json(data, f"<metadata of {arch.get('backbone')}>")


def save_model_checkpoint(directory: str | Path, model: nn.Module, *, layout: Layout | str, input_size: int,
                          crop: dict | None = None, role: str | None = None, metrics: dict | None = None,
                          **extra: Any) -> Path:
    """Write ``model.safetensors`` + ``model.json`` for ``model`` into ``directory`` (crash-safe)."""
    meta = model_meta(model, layout=layout, input_size=input_size, crop=crop, role=role, metrics=metrics,
                      **extra)
    return write_checkpoint_dir(directory, {MODEL_WEIGHTS: model.state_dict()}, {MODEL_META: meta.to_json()})


def resolve_checkpoint_dir(directory: str | Path, marker: str = MODEL_META) -> Path | None:
    """The complete checkpoint at ``directory``, or the one a crash during writing left beside it.

    A write replaces the folder by two renames; killed between them, the new checkpoint is in
    ``.<name>.tmp`` (complete once its JSON ``marker`` exists) and the old one in ``.<name>.old``.
    """
    d = Path(directory)
    for cand in (d, d.with_name(f".{d.name}.tmp"), d.with_name(f".{d.name}.old")):
        if cand.is_dir() and (cand / marker).is_file():
            return cand
    return None


# --------------------------------------------------------------------------------------------- reading
def model_checkpoint_files(path: str | Path) -> tuple[Path, Path]:
    """``(model.json, model.safetensors)`` of a checkpoint given as a folder or either file."""
    p = Path(path)
    if p.is_dir() or not p.suffix:
        found = resolve_checkpoint_dir(p)
        if found is None:
            if not p.exists():
                raise CheckpointError(p, "checkpoint folder not found")
            raise CheckpointError(p / MODEL_META, "not found: not a complete kdlandmark checkpoint folder")
        return found / MODEL_META, found / MODEL_WEIGHTS
    if p.suffix == ".json":
        return p, p.with_name(MODEL_WEIGHTS)
    if p.suffix == ".safetensors":
        return p.with_name(MODEL_META), p
    raise CheckpointError(p, "expected a checkpoint folder, model.json or model.safetensors")


def read_model_meta(path: str | Path) -> ModelMeta:
    """The validated ``model.json`` of a checkpoint (folder or file path)."""
    meta_path, _ = model_checkpoint_files(path)
    return ModelMeta.from_json(read_json(meta_path), meta_path, formats=(CHECKPOINT_FORMAT,))


def load_state_dict_file(path: str | Path, device: str | torch.device = "cpu",
                         expected_bytes: int | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file; a missing, truncated or corrupt file is a :class:`CheckpointError`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(p, "file not found")
    size = p.stat().st_size
    if expected_bytes is not None and size != expected_bytes:
        raise CheckpointError(p, f"file has {size} bytes, {expected_bytes} expected: truncated or replaced "
                                 "(was the run killed while writing?)")
    try:
        return load_file(str(p), device=str(device))
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise CheckpointError(p, f"cannot read safetensors ({exc}); truncated or corrupt?") from exc


def _check_tensors(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], meta: ModelMeta,
                   weights_path: Path) -> None:
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise CheckpointError(weights_path, f"tensors do not match backbone {meta.backbone!r} with "
                                            f"{meta.num_points} points: missing {missing[:5]}"
                                            f"{' ...' if len(missing) > 5 else ''}, unexpected "
                                            f"{unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    bad = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
           if tuple(state[k].shape) != tuple(v.shape)]
    if bad:
        raise CheckpointError(weights_path, f"tensor shapes do not match the architecture: {bad[:5]}")


def load_checkpoint(path: str | Path, *, device: str | torch.device = "cpu",
                    layout: Layout | str | None = None, verify_checksum: bool = True
                    ) -> tuple[nn.Module, ModelMeta]:
    """Rebuild the network of a checkpoint and load its weights; returns ``(model in eval mode, meta)``.

    Args:
        path: checkpoint folder (``best/``, ``last/``) or its ``model.json`` / ``model.safetensors``.
        device: where to put the model.
        layout: if given, the checkpoint must have been trained for this layout.
        verify_checksum: compare the weights file with the SHA-256 stored in ``model.json``.

    Raises:
        CheckpointError: missing or corrupt files, wrong layout, missing/unexpected/misshapen tensors
            (the message names the file).
    """
    from kdlandmark.models import LandmarkRegressor

    meta_path, weights_path = model_checkpoint_files(path)
    meta = read_model_meta(meta_path)
    meta.check_layout(layout, meta_path)
    state = load_state_dict_file(weights_path, "cpu", expected_bytes=meta.weights_bytes)
    try:
        model = LandmarkRegressor(meta.backbone, meta.num_points, pretrained=False, dropout=meta.dropout,
                                  in_chans=meta.in_chans, heads=meta.heads, head_hidden=meta.head_hidden)
    except Exception as exc:  # noqa: BLE001 -- unknown timm name etc., reported against the file
        raise CheckpointError(meta_path, f"cannot build architecture {meta.architecture!r}: {exc}") from exc
    _check_tensors(state, model.state_dict(), meta, weights_path)
    sha = (meta.raw.get("weights") or {}).get("sha256")
    if verify_checksum and sha:
        digest = hashlib.sha256(Path(weights_path).read_bytes()).hexdigest()
        if digest != sha:
            raise CheckpointError(weights_path, f"SHA-256 differs from the one in {meta_path.name}: the file "
                                                "was modified or only partly written")
    model.load_state_dict(state, strict=True)
    model.to(device)
    model.eval()
    return model, meta


# ------------------------------------------------------------------------------------------- fine-tuning


def is_checkpoint_path(value: Any) -> bool:
    """Whether ``value`` (a config's ``model.pretrained``) names a model checkpoint: a folder holding
    ``model.json`` (``best/``, the shipped model's folder) or that file itself."""
    if isinstance(value, bool) or not isinstance(value, str | Path) or not str(value):
        return False
    p = Path(value)
    return (p.is_dir() and (p / MODEL_META).is_file()) or (p.name == MODEL_META and p.is_file())


def init_from_checkpoint(model: nn.Module, path: str | Path) -> ModelMeta:
    """Copy the weights of a checkpoint into a freshly built :class:`~kdlandmark.models.LandmarkRegressor`
    of the same backbone and point count: training then starts from a trained model (fine-tuning the
    shipped model on one's own data, or a further cycle of a run).  Confidence heads only one of the two
    has start as built (the network's) or are left out (the checkpoint's); every other tensor must be
    present with its shape.  The input size may differ (the networks pool globally).

    Raises:
        CheckpointError: the files are missing or corrupt, or they hold another architecture (naming
            the file and both architectures).
    """
    from kdlandmark.config import HEAD_NAMES

    meta_path, weights_path = model_checkpoint_files(path)
    source, meta = load_checkpoint(meta_path)                   # every check of loading, checksum included
    want = (getattr(model, "backbone_name", None), getattr(model, "num_points", None))
    if (meta.backbone, meta.num_points) != want:
        raise CheckpointError(meta_path, f"holds a {meta.backbone} with {meta.num_points} points, the "
                                         f"network to train is a {want[0]} with {want[1]}: start from a "
                                         "checkpoint of the same backbone and layout (model.backbone, the "
                                         "dataset)")
    state = source.state_dict()
    expected = model.state_dict()
    heads = tuple(f"{h}_head." for h in HEAD_NAMES)
    state = {k: v for k, v in state.items() if k in expected or not k.startswith(heads)}
    _check_tensors(state, {k: v for k, v in expected.items() if k in state or not k.startswith(heads)},
                   meta, weights_path)
    model.load_state_dict(state, strict=False)
    return meta
