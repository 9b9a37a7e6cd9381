"""Checkpoints without pickle: safetensors for tensors, JSON for everything else.

A checkpoint is a folder::

    model.safetensors   network weights (the EMA weights when EMA is on: the weights validated)
    model.json          architecture, layout, input size, normalisation, crop margin, training
                        config, metrics, epoch, and the size and SHA-256 of model.safetensors
    state.safetensors   (training checkpoints only) optimiser tensors, raw weights when EMA is on,
                        the EMA model
    state.json          (training checkpoints only) epoch, step, scheduler, optimiser scalars and
                        param groups, RNG states of torch / CUDA / numpy / python and the generators
                        (base64 or lists), best metric

Writing is crash-safe: the files go into a temporary sibling folder (each written to a temporary file,
fsynced, renamed; JSON last), and the folder then replaces the old one by two renames.  A run killed
at any moment leaves either the old or the new checkpoint complete; :func:`resolve_checkpoint_dir`
finds whichever survived.  Loading checks everything it can and says which file is wrong.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kdlandmark.atomic import atomic_write_bytes
from kdlandmark.atomic import fsync_dir as _fsync_dir
from kdlandmark.errors import CheckpointError
from kdlandmark.layouts import Layout, get_layout

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "atomic_write_bytes",
    "write_checkpoint_dir",
    "model_meta",
    "save_model_checkpoint",
    "resolve_checkpoint_dir",
    "model_checkpoint_files",
    "read_model_meta",
    "load_checkpoint",
    "load_state_dict_file",
    "read_training_state",
    "flatten_optimizer_state",
    "unflatten_optimizer_state",
    "rng_state",
    "set_rng_state",
    "generator_state",
    "set_generator_state",
]

CHECKPOINT_FORMAT = "kdlandmark-checkpoint"
CHECKPOINT_VERSION = 1
MODEL_WEIGHTS = "model.safetensors"
MODEL_META = "model.json"
STATE_TENSORS = "state.safetensors"
STATE_META = "state.json"


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
    _fsync_dir(tmp)
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    if old.exists():
        shutil.rmtree(old)
    return final


def model_meta(model: nn.Module, *, layout: Layout | str, input_size: int, crop: dict | None = None,
               role: str | None = None, metrics: dict | None = None, **extra: Any) -> dict:
    """The ``model.json`` content for ``model`` (a :class:`~kdlandmark.models.LandmarkRegressor`).

    ``crop`` records how inputs were cut (``margin`` etc.: inference must crop the same way);
    ``extra`` adds further top-level entries (epoch, training config, ...).
    """
    lay = get_layout(layout) if isinstance(layout, str) else layout
    arch = model.architecture()  # type: ignore[operator]
    if int(arch["num_points"]) != lay.num_points:
        raise ValueError(f"model has {arch['num_points']} points, layout {lay.name} {lay.num_points}")
    meta: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "role": role,
        "architecture": arch,
        "layout": lay.to_json(),
        "input_size": int(input_size),
        "crop": crop,
        "coordinates": "model coordinates (p - (side - 1) / 2) / side of the input crop",
        "metrics": metrics or {},
    }
    meta.update(extra)
    return meta


def save_model_checkpoint(directory: str | Path, model: nn.Module, *, layout: Layout | str, input_size: int,
                          crop: dict | None = None, role: str | None = None, metrics: dict | None = None,
                          **extra: Any) -> Path:
    """Write ``model.safetensors`` + ``model.json`` for ``model`` into ``directory`` (crash-safe)."""
    meta = model_meta(model, layout=layout, input_size=input_size, crop=crop, role=role, metrics=metrics,
                      **extra)
    return write_checkpoint_dir(directory, {MODEL_WEIGHTS: model.state_dict()}, {MODEL_META: meta})


def _complete(directory: Path, marker: str) -> bool:
    return (directory / marker).is_file()


def resolve_checkpoint_dir(directory: str | Path, marker: str = MODEL_META) -> Path | None:
    """The complete checkpoint at ``directory``, or the one a crash during writing left beside it.

    A write replaces the folder by two renames; killed between them, the new checkpoint is in
    ``.<name>.tmp`` (complete once its JSON exists) and the old one in ``.<name>.old``.
    """
    d = Path(directory)
    for cand in (d, d.with_name(f".{d.name}.tmp"), d.with_name(f".{d.name}.old")):
        if cand.is_dir() and _complete(cand, marker):
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
        p = found
        return p / MODEL_META, p / MODEL_WEIGHTS
    if p.suffix == ".json":
        return p, p.with_name(MODEL_WEIGHTS)
    if p.suffix == ".safetensors":
        return p.with_name(MODEL_META), p
    raise CheckpointError(p, "expected a checkpoint folder, model.json or model.safetensors")


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(path, "file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(path, f"cannot read JSON ({exc}); truncated or corrupt?") from exc
    if not isinstance(data, dict):
        raise CheckpointError(path, "expected a JSON object")
    return data


def read_model_meta(path: str | Path) -> dict:
    """The validated ``model.json`` of a checkpoint (folder or file path)."""
    meta_path, _ = model_checkpoint_files(path)
    meta = _read_json(meta_path)
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(meta_path, f"not a kdlandmark checkpoint (format {meta.get('format')!r})")
    arch = meta.get("architecture")
    if not isinstance(arch, dict):
        raise CheckpointError(meta_path, "missing 'architecture'")
    for key in ("backbone", "num_points"):
        if key not in arch:
            raise CheckpointError(meta_path, f"missing 'architecture.{key}'")
    for key in ("input_size", "layout"):
        if key not in meta:
            raise CheckpointError(meta_path, f"missing {key!r}")
    return meta


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


def _layout_of(meta: dict, meta_path: Path) -> tuple[str | None, int]:
    lay = meta["layout"]
    if isinstance(lay, dict):
        return lay.get("name"), int(lay.get("num_points", meta["architecture"]["num_points"]))
    if isinstance(lay, str):
        return lay, int(meta["architecture"]["num_points"])
    raise CheckpointError(meta_path, f"bad 'layout' entry {lay!r}")


def check_layout(meta: dict, layout: Layout | str | None, meta_path: str | Path) -> None:
    """Raise :class:`CheckpointError` unless the checkpoint was trained for ``layout``."""
    if layout is None:
        return
    want = get_layout(layout) if isinstance(layout, str) else layout
    name, num = _layout_of(meta, Path(meta_path))
    if num != want.num_points or (name is not None and name != want.name):
        raise CheckpointError(meta_path, f"checkpoint is for layout {name!r} ({num} points) but layout "
                                         f"{want.name!r} ({want.num_points} points) is needed")


def load_checkpoint(path: str | Path, *, device: str | torch.device = "cpu",
                    layout: Layout | str | None = None, verify_checksum: bool = True
                    ) -> tuple[nn.Module, dict]:
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
    check_layout(meta, layout, meta_path)
    arch = meta["architecture"]
    winfo = meta.get("weights") or {}
    state = load_state_dict_file(weights_path, "cpu", expected_bytes=winfo.get("bytes"))
    try:
        model = LandmarkRegressor(arch["backbone"], int(arch["num_points"]), pretrained=False,
                                  dropout=float(arch.get("dropout", 0.0)),
                                  in_chans=int(arch.get("in_chans", 3)))
    except Exception as exc:  # noqa: BLE001 -- unknown timm name etc., reported against the file
        raise CheckpointError(meta_path, f"cannot build architecture {arch!r}: {exc}") from exc
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise CheckpointError(weights_path, f"tensors do not match backbone {arch['backbone']!r} with "
                                            f"{arch['num_points']} points: missing {missing[:5]}"
                                            f"{' ...' if len(missing) > 5 else ''}, unexpected "
                                            f"{unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    bad = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
           if tuple(state[k].shape) != tuple(v.shape)]
    if bad:
        raise CheckpointError(weights_path, f"tensor shapes do not match the architecture: {bad[:5]}")
    if verify_checksum and winfo.get("sha256"):
        digest = hashlib.sha256(Path(weights_path).read_bytes()).hexdigest()
        if digest != winfo["sha256"]:
            raise CheckpointError(weights_path, f"SHA-256 differs from the one in {meta_path.name}: the file "
                                                "was modified or only partly written")
    model.load_state_dict(state, strict=True)
    model.to(device)
    model.eval()
    return model, meta


def read_training_state(directory: str | Path, device: str | torch.device = "cpu"
                        ) -> tuple[dict[str, torch.Tensor], dict]:
    """``(state.safetensors tensors, state.json)`` of a training checkpoint folder."""
    d = Path(directory)
    meta = _read_json(d / STATE_META)
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(d / STATE_META, "not a kdlandmark training state")
    tensors = load_state_dict_file(d / STATE_TENSORS, device, expected_bytes=meta.get("tensors_bytes"))
    return tensors, meta


# --------------------------------------------------------------------------------------------- optimiser
def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, float | int | str | bool) or value is None:
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in JSON")


def flatten_optimizer_state(state_dict: dict, prefix: str = "optim.") -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into tensors (``optim.state.<i>.<name>``) and a JSON part."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in state_dict["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}state.{idx}.{name}"] = value
            else:
                scalars.setdefault(str(idx), {})[name] = _jsonable(value)
    meta = {
        "param_groups": _jsonable(state_dict["param_groups"]),
        "scalars": scalars,
        "tensor_keys": sorted(tensors),
    }
    return tensors, meta


def unflatten_optimizer_state(tensors: Mapping[str, torch.Tensor], meta: dict, prefix: str = "optim."
                              ) -> dict:
    """Inverse of :func:`flatten_optimizer_state`: a dict for ``optimizer.load_state_dict``."""
    state: dict[int, dict[str, Any]] = {}
    for key in meta["tensor_keys"]:
        if key not in tensors:
            raise KeyError(f"optimiser tensor {key} missing from the training state")
        idx, name = key[len(prefix) + len("state."):].split(".", 1)
        state.setdefault(int(idx), {})[name] = tensors[key]
    for idx, entry in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(entry)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


# --------------------------------------------------------------------------------------------- RNG
def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _unb64(text: str) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(base64.b64decode(text), dtype=np.uint8).copy())


def generator_state(gen: torch.Generator) -> dict:
    """A torch.Generator's state as JSON (device and base64 bytes)."""
    return {"device": str(gen.device), "state": _b64(gen.get_state())}


def set_generator_state(gen: torch.Generator, state: dict) -> None:
    gen.set_state(_unb64(state["state"]))


def rng_state() -> dict:
    """Global RNG states of torch (CPU and every CUDA device), numpy and python, as JSON."""
    np_state = np.random.get_state()  # noqa: NPY002 -- the legacy global state is what we save
    py_state = random.getstate()
    out: dict[str, Any] = {
        "torch": _b64(torch.get_rng_state()),
        "numpy": [np_state[0], np.asarray(np_state[1]).tolist(), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return out


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(_unb64(state["torch"]))
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), int(n[2]), int(n[3]),  # noqa: NPY002
                         float(n[4])))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    if "cuda" in state and torch.cuda.is_available():
        states = [_unb64(s) for s in state["cuda"]]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
