"""Typed model metadata: what a checkpoint's ``model.json`` and an export's ``model.onnx.json`` say.

:meth:`ModelMeta.from_json` parses and validates the JSON once, where a model file is opened
(:func:`kdlandmark.modelfile.load_checkpoint`, :func:`kdlandmark.infer.export.load_onnx`); everything
downstream reads typed fields (``meta.layout``, ``meta.input_size``, ``meta.margin`` ...) instead of
looking keys up again.  Entries this class does not type (epoch, training config, ONNX precision, ...)
stay in :attr:`ModelMeta.raw`, so a file read and written again keeps every entry.

This module imports neither torch nor ONNX Runtime.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdlandmark.config import HEAD_NAMES
from kdlandmark.data.crop import DEFAULT_MARGIN
from kdlandmark.errors import CheckpointError
from kdlandmark.layouts import Layout, get_layout, layout_from_meta

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "ONNX_FORMAT",
    "ONNX_VERSION",
    "MODEL_COORDINATES",
    "HEAD_OUTPUTS",
    "CropSpec",
    "ModelMeta",
    "read_json",
]

CHECKPOINT_FORMAT = "kdlandmark-checkpoint"
CHECKPOINT_VERSION = 1
ONNX_FORMAT = "kdlandmark-onnx"
ONNX_VERSION = 1
MODEL_COORDINATES = "model coordinates (p - (side - 1) / 2) / side of the input crop"
#: The optional per-landmark outputs of a model beside the coordinates, in output order.
HEAD_OUTPUTS = HEAD_NAMES


def read_json(path: Path) -> dict:
    """A JSON object from ``path``; missing, unreadable or not an object is a :class:`CheckpointError`."""
    if not path.is_file():
        raise CheckpointError(path, "file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(path, f"cannot read JSON ({exc}); truncated or corrupt?") from exc
    if not isinstance(data, dict):
        raise CheckpointError(path, "expected a JSON object")
    return data


def _number(value: Any, kind: type, key: str, where: str | Path) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CheckpointError(where, f"{key!r} must be a number, got {value!r}")
    if kind is int and float(value) != int(value):
        raise CheckpointError(where, f"{key!r} must be a whole number, got {value!r}")
    return kind(value)


@dataclass(frozen=True)
class CropSpec:
    """How the model's input crops were cut (``crop`` of the metadata; every entry may be absent).

    Attributes:
        margin: border around the face box on each side, as a fraction of the box side: the crop is
            ``crop_affine(box, input_size, margin)``.  None in files that did not record it.
        context_margin: the prepared set's wider stored crop (training data; evaluation prepares raw
            test data the same way).
        stored_size: side of the prepared set's stored crops.
        view_scale: ``view_scale(margin, context_margin)`` of :mod:`kdlandmark.data.store`, recorded.
    """

    margin: float | None = None
    context_margin: float | None = None
    stored_size: int | None = None
    view_scale: float | None = None

    @classmethod
    def from_json(cls, data: Any, where: str | Path) -> CropSpec:
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise CheckpointError(where, f"'crop' must be a JSON object, got {data!r}")
        kinds = {"margin": float, "context_margin": float, "stored_size": int, "view_scale": float}
        values = {k: _number(data[k], kind, f"crop.{k}", where) for k, kind in kinds.items()
                  if data.get(k) is not None}
        spec = cls(**values)
        if spec.margin is not None and not 0.0 <= spec.margin < 10.0:
            raise CheckpointError(where, f"crop margin {spec.margin} outside [0, 10)")
        if spec.stored_size is not None and spec.stored_size <= 0:
            raise CheckpointError(where, f"crop.stored_size must be positive, got {spec.stored_size}")
        return spec

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(frozen=True)
class ModelMeta:
    """The metadata of one model file, validated.

    Attributes:
        layout: the landmark layout the model predicts (checked against ``architecture.num_points``).
        input_size: side of the square model input in pixels.
        architecture: ``backbone``, ``num_points``, ``dropout``, ``in_chans``, ``normalisation`` (as
            :meth:`kdlandmark.models.LandmarkRegressor.architecture` writes it).
        crop: how inputs are cut (:class:`CropSpec`).
        role: training role (``tough``, ``tolerant``, ``kd``, ``l2``) or None.
        metrics: validation figures recorded with the model.
        raw: the whole JSON object, including the entries not typed here.
    """

    layout: Layout
    input_size: int
    architecture: dict[str, Any]
    crop: CropSpec = field(default_factory=CropSpec)
    role: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------------------------------ parsing
    @classmethod
    def from_json(cls, data: Any, where: str | Path, *,
                  formats: tuple[str, ...] = (CHECKPOINT_FORMAT, ONNX_FORMAT)) -> ModelMeta:
        """Validate a metadata JSON object; any problem is a :class:`CheckpointError` naming ``where``.

        ``formats``: the ``format`` entries accepted (a checkpoint's ``model.json`` must say
        ``kdlandmark-checkpoint``; an export's ``kdlandmark-onnx``).
        """
        if not isinstance(data, Mapping):
            raise CheckpointError(where, "expected a JSON object")
        fmt = data.get("format")
        if fmt not in formats:
            what = "checkpoint" if formats == (CHECKPOINT_FORMAT,) else (
                "ONNX metadata" if formats == (ONNX_FORMAT,) else "model file")
            raise CheckpointError(where, f"not a kdlandmark {what} (format {fmt!r})")
        arch = data.get("architecture")
        if fmt == CHECKPOINT_FORMAT or arch is not None:
            if not isinstance(arch, Mapping):
                raise CheckpointError(where, "missing 'architecture'")
            for key in ("backbone", "num_points"):
                if key not in arch:
                    raise CheckpointError(where, f"missing 'architecture.{key}'")
        for key in ("input_size", "layout"):
            if key not in data:
                raise CheckpointError(where, f"missing {key!r}")
        size = _number(data["input_size"], int, "input_size", where)
        if size <= 0:
            raise CheckpointError(where, f"input_size must be positive, got {size}")
        metrics = data.get("metrics") or {}
        if not isinstance(metrics, Mapping):
            raise CheckpointError(where, f"'metrics' must be a JSON object, got {metrics!r}")
        role = data.get("role")
        heads = (arch or {}).get("heads", [])
        known = isinstance(heads, list) and all(h in HEAD_OUTPUTS for h in heads)
        if not known or len(set(heads)) != len(heads):
            raise CheckpointError(where, f"'architecture.heads' must list distinct heads of {HEAD_OUTPUTS}, "
                                         f"got {heads!r}")
        return cls(layout=layout_from_meta(data, where), input_size=size, architecture=dict(arch or {}),
                   crop=CropSpec.from_json(data.get("crop"), where),
                   role=str(role) if role is not None else None, metrics=dict(metrics), raw=dict(data))

    def to_json(self) -> dict[str, Any]:
        """The JSON object (``raw`` with the typed entries written back)."""
        out = dict(self.raw)
        crop = {**(self.raw.get("crop") or {}), **self.crop.to_json()}
        out.update({"layout": self.layout.to_json(), "input_size": self.input_size,
                    "architecture": dict(self.architecture), "role": self.role, "metrics": dict(self.metrics),
                    "crop": crop or None})
        return out

    # ------------------------------------------------------------------------------------------ facts
    @property
    def format(self) -> str:
        return str(self.raw.get("format"))

    @property
    def backbone(self) -> str | None:
        value = self.architecture.get("backbone")
        return str(value) if value is not None else None

    @property
    def num_points(self) -> int:
        return self.layout.num_points

    @property
    def in_chans(self) -> int:
        return int(self.architecture.get("in_chans", 3))

    @property
    def dropout(self) -> float:
        return float(self.architecture.get("dropout", 0.0))

    @property
    def normalisation(self) -> dict | None:
        """Mean and std applied inside the model (informative: the graph does it itself)."""
        return self.architecture.get("normalisation") or self.raw.get("normalisation")

    @property
    def heads(self) -> tuple[str, ...]:
        """The per-landmark outputs beside the coordinates (``visibility``, ``error``); () if none."""
        return tuple(self.architecture.get("heads") or ())

    @property
    def head_hidden(self) -> int:
        """Width of the heads' hidden layer (0: linear heads)."""
        return int(self.architecture.get("head_hidden") or 0)

    def require_heads(self, where: str | Path, heads: tuple[str, ...] = HEAD_OUTPUTS) -> None:
        """Raise :class:`CheckpointError` naming ``where`` unless the model has every head of ``heads``."""
        missing = [h for h in heads if h not in self.heads]
        if missing:
            have = f"only {', '.join(self.heads)}" if self.heads else "no confidence heads"
            raise CheckpointError(where, f"this model has {have}: it predicts no per-landmark "
                                         f"{' or '.join(missing)} (train one with model.heads.visibility / "
                                         "model.heads.error > 0, docs/TRAINING.md)")

    @property
    def margin(self) -> float:
        """The crop margin inference uses: the recorded one, else :data:`DEFAULT_MARGIN`."""
        return self.crop.margin if self.crop.margin is not None else DEFAULT_MARGIN

    @property
    def weights_sha256(self) -> str | None:
        """SHA-256 of ``model.safetensors`` (checkpoints) or of the exported checkpoint's (ONNX)."""
        weights = self.raw.get("weights") or {}
        source = self.raw.get("source") or {}
        return weights.get("sha256") or source.get("weights_sha256")

    @property
    def weights_bytes(self) -> int | None:
        value = (self.raw.get("weights") or {}).get("bytes")
        return int(value) if value is not None else None

    @property
    def precision(self) -> str:
        """``fp32``, ``fp16`` or ``int8`` (exports); checkpoints are fp32."""
        return str(self.raw.get("precision") or "fp32")

    def check_layout(self, layout: Layout | str | None, where: str | Path) -> None:
        """Raise :class:`CheckpointError` naming ``where`` unless the model is for ``layout`` (None: any)."""
        if layout is None:
            return
        want = get_layout(layout) if isinstance(layout, str) else layout
        if want.name != self.layout.name or want.num_points != self.layout.num_points:
            raise CheckpointError(where, f"model is for layout {self.layout.name!r} "
                                         f"({self.layout.num_points} points) but layout {want.name!r} "
                                         f"({want.num_points} points) is needed")
