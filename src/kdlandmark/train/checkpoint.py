"""Training checkpoints: ``last/`` (the state to resume from exactly) and ``best/``, written and read back.

``best/`` is a model checkpoint (:mod:`kdlandmark.modelfile.checkpoint`).  ``last/`` adds::

    state.safetensors   optimiser tensors, raw weights when EMA is on, the EMA model
    state.json          epoch, step, scheduler, optimiser scalars and param groups, RNG states of torch /
                        CUDA / numpy / python and the generators (base64 or lists), best metric, history

:func:`save_checkpoints` writes them (rank 0; every rank takes part in the RNG gather) and
:func:`resume` restores a :class:`~kdlandmark.train.trainer.Trainer` from ``last/`` exactly, after
checking that the run it continues is the same (role, backbone, steps per epoch).
"""

from __future__ import annotations

import base64
import datetime as _dt
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from kdlandmark.config import config_to_dict
from kdlandmark.errors import CheckpointError
from kdlandmark.modelfile.checkpoint import (
    MODEL_META,
    MODEL_WEIGHTS,
    load_state_dict_file,
    model_meta,
    resolve_checkpoint_dir,
    write_checkpoint_dir,
)
from kdlandmark.modelfile.meta import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, ModelMeta, read_json
from kdlandmark.models import count_parameters

__all__ = [
    "STATE_TENSORS",
    "STATE_META",
    "checkpoint_meta",
    "save_checkpoints",
    "has_training_state",
    "resume",
    "read_training_state",
    "flatten_optimizer_state",
    "unflatten_optimizer_state",
    "rng_state",
    "set_rng_state",
    "generator_state",
    "set_generator_state",
]

STATE_TENSORS = "state.safetensors"
STATE_META = "state.json"


# --------------------------------------------------------------------------------------------- writing
def checkpoint_meta(trainer: Any, metrics: dict) -> ModelMeta:
    """``model.json`` of the trainer's model now: layout, input size, crop, metrics, epoch, config."""
    cfg, ps = trainer.cfg, trainer.prepared
    crop = {"margin": float(ps.margin), "context_margin": float(ps.context_margin),
            "stored_size": int(ps.size), "view_scale": trainer.view_scale}
    return model_meta(trainer.model, layout=trainer.layout, input_size=cfg.model.input_size, crop=crop,
                      role=cfg.role, metrics=metrics, ema=trainer.ema is not None, epoch=trainer.epoch,
                      step=trainer.step, best={"metric": trainer.best_metric, "epoch": trainer.best_epoch},
                      parameters=count_parameters(trainer.model), train_config=config_to_dict(cfg),
                      created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))


def _state_json(trainer: Any, opt_meta: dict, rngs: list[dict]) -> dict:
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "epoch": trainer.epoch,
        "step": trainer.step,
        "steps_per_epoch": trainer.steps_per_epoch,
        "world_size": trainer.dist.world_size,
        "best_metric": trainer.best_metric,
        "best_epoch": trainer.best_epoch,
        "optimizer": opt_meta,
        "scheduler": {k: v for k, v in trainer.scheduler.state_dict().items() if k != "lr_lambdas"},
        "data_gen": generator_state(trainer.data_gen),
        "ranks": rngs,
        "history": trainer.history,
        "train_config": config_to_dict(trainer.cfg),
    }


def save_checkpoints(trainer: Any, metrics: dict, *, best: bool, last: bool) -> None:
    """Write ``best/`` and/or ``last/`` of ``trainer`` (rank 0; every rank must call it: RNG gather)."""
    rngs = trainer.dist.all_gather_object({"rng": rng_state(), "aug_gen": generator_state(trainer.aug_gen)}
                                          ) if last else []
    if not trainer.dist.is_main:
        return
    weights = trainer.eval_model().state_dict()
    meta = checkpoint_meta(trainer, metrics).to_json()
    if best:
        write_checkpoint_dir(trainer.out / "best", {MODEL_WEIGHTS: weights}, {MODEL_META: meta})
    if last:
        opt_tensors, opt_meta = flatten_optimizer_state(trainer.optimizer.state_dict())
        state_tensors: dict[str, torch.Tensor] = dict(opt_tensors)
        if trainer.ema is not None:
            state_tensors.update({f"model.{k}": v for k, v in trainer.model.state_dict().items()})
            state_tensors.update({f"ema.{k}": v for k, v in trainer.ema.state_dict().items()})
        write_checkpoint_dir(trainer.out / "last", {MODEL_WEIGHTS: weights, STATE_TENSORS: state_tensors},
                             {STATE_META: _state_json(trainer, opt_meta, rngs), MODEL_META: meta})


# --------------------------------------------------------------------------------------------- resuming
def has_training_state(run: str | Path) -> bool:
    """Whether the run folder holds a complete ``last/`` to resume from (or one a crash left beside it)."""
    return resolve_checkpoint_dir(Path(run) / "last", STATE_META) is not None


def read_training_state(directory: str | Path, device: str | torch.device = "cpu"
                        ) -> tuple[dict[str, torch.Tensor], dict]:
    """``(state.safetensors tensors, state.json)`` of a training checkpoint folder."""
    d = Path(directory)
    meta = read_json(d / STATE_META)
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(d / STATE_META, "not a kdlandmark training state")
    tensors = load_state_dict_file(d / STATE_TENSORS, device, expected_bytes=meta.get("tensors_bytes"))
    return tensors, meta


def _check_same_run(trainer: Any, state: dict, where: Path) -> None:
    saved = state.get("train_config", {})
    if saved.get("role") != trainer.cfg.role:
        raise CheckpointError(where, f"cannot resume: saved role {saved.get('role')!r} differs from the "
                                     f"config's {trainer.cfg.role!r}")
    saved_backbone = saved.get("model", {}).get("backbone")
    if saved_backbone != trainer.cfg.model.backbone:
        raise CheckpointError(where, f"cannot resume: the saved backbone {saved_backbone!r} differs from "
                                     f"{trainer.cfg.model.backbone!r}")
    if state.get("steps_per_epoch") != trainer.steps_per_epoch:
        raise CheckpointError(where, f"cannot resume: {state.get('steps_per_epoch')} steps per epoch "
                                     f"saved, {trainer.steps_per_epoch} now (data, batch size or number of "
                                     "processes changed)")


def resume(trainer: Any) -> bool:
    """Restore ``trainer`` from ``out/last`` exactly; False when there is nothing to resume."""
    found = resolve_checkpoint_dir(trainer.out / "last", STATE_META)
    if found is None:
        return False
    tensors, state = read_training_state(found, "cpu")
    _check_same_run(trainer, state, found / STATE_META)
    if trainer.ema is not None:
        raw = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        trainer.ema.load_state_dict({k[len("ema."):]: v for k, v in tensors.items() if k.startswith("ema.")})
    else:
        raw = load_state_dict_file(found / MODEL_WEIGHTS)
    trainer.model.load_state_dict(raw)
    trainer.optimizer.load_state_dict(unflatten_optimizer_state(tensors, state["optimizer"]))
    sched = dict(state["scheduler"])
    sched["lr_lambdas"] = [None] * len(trainer.optimizer.param_groups)
    trainer.scheduler.load_state_dict(sched)
    # the next step's rate from the schedule of the config now running, not the one saved with the
    # optimiser: the same value when the schedule is unchanged, the new one when a finished run is
    # extended (more epochs, a warm restart)
    lrs = [base * fn(trainer.scheduler.last_epoch)
           for base, fn in zip(trainer.scheduler.base_lrs, trainer.scheduler.lr_lambdas, strict=True)]
    for group, lr in zip(trainer.optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    trainer.scheduler._last_lr = lrs
    trainer.epoch = int(state["epoch"])
    trainer.step = int(state["step"])
    trainer.best_metric = float(state["best_metric"])
    trainer.best_epoch = int(state["best_epoch"])
    trainer.history = list(state.get("history", []))
    set_generator_state(trainer.data_gen, state["data_gen"])
    ranks = state.get("ranks", [])
    if len(ranks) == trainer.dist.world_size:
        mine = ranks[trainer.dist.rank]
        set_rng_state(mine["rng"])
        set_generator_state(trainer.aug_gen, mine["aug_gen"])
    elif trainer.dist.is_main:
        tqdm.write(f"resume: {len(ranks)} process(es) saved RNG states, {trainer.dist.world_size} running "
                   "now; augmentation/dropout randomness will differ from an uninterrupted run")
    return True


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
