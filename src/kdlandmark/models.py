"""Landmark regression networks: any timm backbone, global pooling, dropout and a linear head.

The paper's networks are exactly this shape (official code: EfficientNet-B3 teachers and a MobileNetV2
student, each with global average pooling, dropout 0.5 and a dense layer of ``2 N`` outputs), so one
class covers every role.  :class:`LandmarkRegressor` takes RGB images scaled to ``[0, 1]`` and does
the backbone's mean/std normalisation itself (as buffers), so a saved or exported model needs no
preprocessing beyond "crop, resize, divide by 255".  It returns ``(B, N, 2)`` model coordinates,
``(p - (side - 1) / 2) / side``, about ``[-0.5, 0.5]`` (DESIGN.md).

Weights: random by default (the paper's student starts from random weights).  ``pretrained=True``
asks timm for ImageNet weights, which needs the network or a filled timm/Hugging Face cache; it fails
loudly instead of silently training from scratch.  ``pretrained="file.safetensors"`` loads a local
file of backbone weights (a timm ImageNet checkpoint, classifier included or not).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from kdlandmark.config import HEAD_NAMES  # the optional per-landmark heads, in output order

__all__ = [
    "PRESETS",
    "HEAD_NAMES",
    "LandmarkRegressor",
    "InferenceOutputs",
    "PointHead",
    "head_outputs",
    "count_parameters",
    "count_flops",
    "count_macs",
]

#: Backbones of the paper's two roles (official code: EfficientNet-B3 teachers, MobileNetV2 student).
PRESETS: dict[str, str] = {"teacher": "efficientnet_b3", "student": "mobilenetv2_100"}

#: Initial guesses of the heads (their biases): points visible with probability sigmoid(2) = 0.88,
#: errors of 2 b = 0.04 crop sides; the head weights start near zero, so every point starts there.
_VIS_BIAS = 2.0
_ERROR_SCALE = 0.02

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _channel_stats(values: Sequence[float], in_chans: int) -> list[float]:
    """Per-channel statistics for ``in_chans`` channels from timm's (usually 3-channel) values."""
    vals = [float(v) for v in values]
    if len(vals) == in_chans:
        return vals
    mean = sum(vals) / len(vals)
    return [mean] * in_chans


def _load_local_backbone_weights(backbone: nn.Module, path: Path, name: str) -> None:
    """Load backbone weights from a local ``.safetensors`` file, failing on any mismatch.

    Classifier weights of an ImageNet checkpoint (timm's ``pretrained_cfg['classifier']``) are
    dropped; every other backbone tensor must be present and of the right shape, so a file of the
    wrong architecture is an error rather than a silent partial load.
    """
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file not found: {path} (pretrained takes a .safetensors "
                                "file of backbone weights, or a checkpoint folder holding model.json)")
    if path.suffix != ".safetensors":
        raise ValueError(
            f"{path}: pretrained weights must be a .safetensors file (pickled .pth/.bin files are not "
            "loaded); convert with safetensors.torch.save_file(state_dict, 'model.safetensors')"
        )
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{path}: cannot read safetensors file ({exc})") from exc
    classifier = backbone.pretrained_cfg.get("classifier") if hasattr(backbone, "pretrained_cfg") else None
    heads = (classifier,) if isinstance(classifier, str) else tuple(classifier or ())
    for head in heads:
        state.pop(f"{head}.weight", None)
        state.pop(f"{head}.bias", None)
    try:
        result = backbone.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise ValueError(f"{path}: weights do not fit backbone {name!r}: {exc}") from exc
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{path}: weights do not fit backbone {name!r}: "
            f"missing {list(result.missing_keys)[:5]}{'...' if len(result.missing_keys) > 5 else ''}, "
            f"unexpected {list(result.unexpected_keys)[:5]}{'...' if len(result.unexpected_keys) > 5 else ''}"
        )


def _create_backbone(name: str, pretrained: bool | str, in_chans: int) -> nn.Module:
    """A timm backbone returning pooled features, with weights as ``pretrained`` asks."""
    kwargs = dict(num_classes=0, global_pool="avg", in_chans=in_chans)
    if pretrained is True:
        try:
            return timm.create_model(name, pretrained=True, **kwargs)
        except Exception as exc:  # noqa: BLE001 -- re-raised with the fix; never fall back silently
            raise RuntimeError(
                f"could not load ImageNet weights for backbone {name!r} through timm "
                f"({type(exc).__name__}: {exc}). This usually means there is no network (or the Hugging "
                "Face hub is offline) and the weights are not in the local cache. Download them on a "
                f"machine with network (e.g. the model.safetensors of hf.co/timm/{name}.<tag>, or "
                f"safetensors.torch.save_file(timm.create_model({name!r}, pretrained=True).state_dict(), "
                "'w.safetensors')) and pass pretrained='/path/to/w.safetensors'; or use pretrained=False "
                "to train from random weights."
            ) from exc
    model = timm.create_model(name, pretrained=False, **kwargs)
    if isinstance(pretrained, str | Path) and not isinstance(pretrained, bool):
        if str(pretrained):
            _load_local_backbone_weights(model, Path(pretrained), name)
    elif pretrained is not False:
        raise TypeError(f"pretrained must be True, False or a file path, got {pretrained!r}")
    return model


class LandmarkRegressor(nn.Module):
    """timm backbone + global average pooling + dropout + linear head -> ``(B, N, 2)`` coordinates.

    Args:
        backbone: any timm model name (``efficientnet_b3``, ``mobilenetv2_100``, ``resnet18``, ...).
        num_points: landmarks per face (the layout's ``num_points``).
        pretrained: ``False`` (random weights), ``True`` (ImageNet weights through timm; needs the
            network or a cache, raises ``RuntimeError`` otherwise) or a local ``.safetensors`` path.
        dropout: dropout probability before the head (0.5 in the paper's code).
        in_chans: input channels (3 for RGB).

        heads: optional per-landmark outputs, any of :data:`HEAD_NAMES`: ``"visibility"`` (a logit per
            point, positive = visible) and ``"error"`` (``log b`` per point: the scale of a radial 2D
            Laplace of the point's error, whose mean distance is ``2 b``, in model units).  Each is a
            :class:`PointHead`: it reads the backbone's stride-16 feature map at the point's predicted
            position (what is *there*: skin, hand, scarf, border) together with the pooled features and
            a learnt embedding of the point.  They are built after the coordinate head, so a network
            with heads starts with the same backbone and coordinate weights as one without (same seed).
        head_hidden: width of the hidden ReLU layer of each head (0: linear).
        detach_heads: the heads see the features detached (their losses leave the backbone alone); a
            training choice, not part of the architecture.

    Input: float ``(B, in_chans, H, W)`` in ``[0, 1]``, RGB.  The backbone's mean/std normalisation
    is applied inside (non-persistent buffers: they are rebuilt from the backbone name, and an ONNX
    export bakes them in).  ``model(x)`` returns the coordinates; ``model(x, heads=True)`` returns
    ``(coordinates, visibility logits, log b)`` (the last two ``None`` for a head the model lacks).
    """

    def __init__(self, backbone: str, num_points: int, *, pretrained: bool | str = False,
                 dropout: float = 0.5, in_chans: int = 3, heads: tuple[str, ...] | list[str] = (),
                 head_hidden: int = 0, detach_heads: bool = False) -> None:
        super().__init__()
        if num_points <= 0:
            raise ValueError(f"num_points must be positive, got {num_points}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        unknown = [h for h in heads if h not in HEAD_NAMES]
        if unknown or len(set(heads)) != len(heads):
            raise ValueError(f"heads must be distinct names of {HEAD_NAMES}, got {list(heads)}")
        if head_hidden < 0:
            raise ValueError(f"head_hidden must be >= 0, got {head_hidden}")
        self.backbone_name = backbone
        self.num_points = int(num_points)
        self.dropout_p = float(dropout)
        self.in_chans = int(in_chans)
        self.backbone = _create_backbone(backbone, pretrained, in_chans)
        cfg = getattr(self.backbone, "pretrained_cfg", {}) or {}
        mean = _channel_stats(cfg.get("mean", _IMAGENET_MEAN), in_chans)
        std = _channel_stats(cfg.get("std", _IMAGENET_STD), in_chans)
        self.register_buffer("mean", torch.tensor(mean).view(1, in_chans, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, in_chans, 1, 1), persistent=False)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.backbone.num_features, 2 * self.num_points)
        # near-zero start: the first predictions sit at the crop centre, about where faces are, instead
        # of the ~0.5 (half a crop) errors of a default-initialised head
        nn.init.normal_(self.head.weight, std=1e-3)
        nn.init.zeros_(self.head.bias)
        # the optional heads come last: the backbone and the coordinate head draw the same random numbers
        self.heads = tuple(h for h in HEAD_NAMES if h in heads)
        self.head_hidden = int(head_hidden)
        self.detach_heads = bool(detach_heads)
        self.head_stage = -1
        if self.heads:
            self.head_stage, local = _local_stage(self.backbone, backbone)
            bias = {"visibility": _VIS_BIAS, "error": math.log(_ERROR_SCALE)}
            for name in self.heads:
                setattr(self, f"{name}_head", PointHead(local, self.backbone.num_features, self.num_points,
                                                        self.head_hidden, bias[name]))

    @property
    def has_heads(self) -> bool:
        return bool(self.heads)

    @property
    def normalisation(self) -> dict[str, list[float]]:
        """Input normalisation applied inside the model (inputs are ``[0, 1]``)."""
        return {"mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist(),
                "input_range": [0, 1]}

    def architecture(self) -> dict:
        """What rebuilds this network (without weights); stored in ``model.json``."""
        arch = {
            "backbone": self.backbone_name,
            "num_points": self.num_points,
            "dropout": self.dropout_p,
            "in_chans": self.in_chans,
            "normalisation": self.normalisation,
            "output": "model coordinates (p - (side - 1) / 2) / side, shape (B, N, 2), x then y",
        }
        if self.heads:  # only then: a model without heads writes exactly the model.json it always did
            arch["heads"] = list(self.heads)
            arch["head_hidden"] = self.head_hidden
        return arch

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features ``(B, C)`` of ``[0, 1]`` RGB images."""
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return self.backbone(x)

    def forward(self, x: torch.Tensor, heads: bool = False) -> Any:
        if not heads:
            f = self.dropout(self.forward_features(x))
            return self.head(f).view(x.shape[0], self.num_points, 2)
        if not self.heads:
            raise ValueError("this network has no confidence heads")
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        final, stages = self.backbone.forward_intermediates(x, indices=[self.head_stage], norm=False)
        f = self.dropout(self.backbone.forward_head(final, pre_logits=True))
        coords = self.head(f).view(x.shape[0], self.num_points, 2)
        # the stride-16 features at each predicted point: a grid value g addresses pixel (g + 1) S / 2 - 1/2
        # (align_corners=False), so the model coordinate u = (p - (S - 1) / 2) / S is g = 2 u, at any S
        grid = (2.0 * coords.detach()).unsqueeze(2)
        local = nn.functional.grid_sample(stages[0], grid.to(stages[0].dtype), mode="bilinear",
                                          padding_mode="zeros", align_corners=False)
        local = local.squeeze(-1).transpose(1, 2)                              # (B, N, C)
        g = f
        if self.detach_heads:
            local, g = local.detach(), f.detach()
        vis = self.visibility_head(local, g) if "visibility" in self.heads else None
        log_b = self.error_head(local, g) if "error" in self.heads else None
        return coords, vis, log_b


def _local_stage(backbone: nn.Module, name: str) -> tuple[int, int]:
    """The index (in ``feature_info``) and channels of the backbone's stride-16 stage (the deepest stage
    of stride at most 16) for :class:`PointHead`."""
    info = list(getattr(backbone, "feature_info", None) or [])
    if not info or not hasattr(backbone, "forward_intermediates"):
        raise ValueError(f"backbone {name!r} gives no intermediate features (timm forward_intermediates): "
                         "it cannot carry the confidence heads")
    ok = [i for i, d in enumerate(info) if int(d["reduction"]) <= 16]
    if not ok:
        raise ValueError(f"backbone {name!r} has no stage of stride 16 or finer for the confidence heads")
    return ok[-1], int(info[ok[-1]]["num_chs"])


class PointHead(nn.Module):
    """One value per landmark: an MLP on the backbone's local features at the landmark, a projection of
    the pooled features, and a learnt embedding of the landmark (which point it is).

    Input: local ``(B, N, C)``, pooled ``(B, F)``; output ``(B, N)``.  The last layer starts near zero
    with the bias ``bias``, so every point starts at the same value.
    """

    def __init__(self, local: int, pooled: int, num_points: int, hidden: int, bias: float,
                 embed: int = 16, glob: int = 32) -> None:
        super().__init__()
        self.glob = nn.Linear(pooled, glob)
        self.embed = nn.Parameter(0.1 * torch.randn(num_points, embed))
        width = local + glob + embed
        last = nn.Linear(hidden or width, 1)
        nn.init.normal_(last.weight, std=1e-3)
        nn.init.constant_(last.bias, bias)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(inplace=True), last) if hidden else last

    def forward(self, local: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        b, n, _ = local.shape
        g = self.glob(pooled).unsqueeze(1).expand(b, n, -1)
        e = self.embed.to(local.dtype).unsqueeze(0).expand(b, n, -1)
        return self.mlp(torch.cat([local, g.to(local.dtype), e], dim=-1)).squeeze(-1)


def head_outputs(vis_logit: torch.Tensor | None, log_b: torch.Tensor | None
                 ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """What the heads mean: ``(visibility probability, expected point error in model units)``.

    The error head's ``log b`` is the scale of a radial 2D Laplace, whose mean distance is ``2 b``.
    """
    vis = torch.sigmoid(vis_logit) if vis_logit is not None else None
    err = 2.0 * torch.exp(log_b) if log_b is not None else None
    return vis, err


class InferenceOutputs(nn.Module):
    """A :class:`LandmarkRegressor` as inference (and ONNX export) sees it, with one input and nothing
    else to pass: ``x -> coordinates (B, N, 2)`` for a plain model; with heads ``x -> (coordinates, then
    per head (B, N): visibility probability, expected error in model units)``, in :data:`HEAD_NAMES`
    order."""

    def __init__(self, model: LandmarkRegressor) -> None:
        super().__init__()
        self.model = model
        self.in_chans = model.in_chans

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if not self.model.heads:
            return self.model(x)
        coords, vis_logit, log_b = self.model(x, heads=True)
        vis, err = head_outputs(vis_logit, log_b)
        return (coords, *(t for t in (vis, err) if t is not None))


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with ``requires_grad``); buffers not counted."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _input_shape(model: nn.Module, input_size: int | Sequence[int]) -> tuple[int, int, int, int]:
    chans = int(getattr(model, "in_chans", 3))
    if isinstance(input_size, int):
        return (1, chans, input_size, input_size)
    size = tuple(int(v) for v in input_size)
    if len(size) == 2:
        return (1, chans, *size)
    if len(size) == 3:
        return (1, *size)
    if len(size) == 4:
        return size  # type: ignore[return-value]
    raise ValueError(f"input_size must be a side, (H, W), (C, H, W) or (B, C, H, W); got {input_size!r}")


def count_flops(model: nn.Module, input_size: int | Sequence[int]) -> int:
    """Forward FLOPs of one inference, counted by ``torch.utils.flop_counter.FlopCounterMode``.

    Convention: **FLOPs = 2 x multiply-accumulates** (PyTorch's counter counts a multiply-add as two
    operations), for batch 1 unless ``input_size`` is a full ``(B, C, H, W)`` shape.  Papers that
    quote "FLOPs" for mobile networks often mean MACs (MobileNetV2-1.0 at 224: ~300 M MACs =
    ~600 M FLOPs here); use :func:`count_macs` for that number.  Only convolutions, matrix products
    and similar are counted (not activations, normalisation or pooling), as usual.

    ``input_size``: a side (square input), ``(H, W)``, ``(C, H, W)`` or ``(B, C, H, W)``.
    """
    from torch.utils.flop_counter import FlopCounterMode

    shape = _input_shape(model, input_size)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(torch.zeros(shape, device=device, dtype=dtype))
        return int(counter.get_total_flops())
    finally:
        model.train(was_training)


def count_macs(model: nn.Module, input_size: int | Sequence[int]) -> int:
    """Multiply-accumulates of one forward pass: :func:`count_flops` / 2."""
    return count_flops(model, input_size) // 2
