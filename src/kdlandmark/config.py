"""Configuration: dataclasses loaded from YAML, overridable from the command line, saved with every run.

Two levels:

* :class:`TrainConfig` -- everything one training run needs (one role: ``tough``, ``tolerant``, ``kd``
  or ``l2``).  :class:`kdlandmark.train.Trainer` consumes it and writes it into the run folder.
* :class:`ExperimentConfig` -- the whole paper pipeline for one dataset (prepare, ASM, the two
  teachers, the student, KD-Loss, augmentation, evaluation).  :func:`train_config` derives the
  :class:`TrainConfig` of one role from it.

YAML files hold nested mappings with the dataclass field names; missing keys take the defaults, and an
unknown key is an error that names the key and the file (a typo must not silently train with a
default).  Command-line overrides are ``key.sub=value`` strings whose value is parsed as YAML
(``optim.lr=3e-4``, ``model.pretrained=true``, ``augment.scale=[0.9,1.1]``, ``teachers.tough=null``).

:func:`save_config` writes the config together with a ``provenance`` block (Python, torch, timm,
numpy and kdlandmark versions, the git revision where available) so that a run folder alone says
how it was made; :func:`load_config` / :func:`load_train_config` read such a file back (the
provenance block is ignored).
"""

from __future__ import annotations

import dataclasses
import platform
import subprocess
import sys
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

from kdlandmark.atomic import atomic_write_bytes
from kdlandmark.errors import ConfigError

__all__ = [
    "ConfigError",
    "AugmentConfig",
    "KDLossConfig",
    "HeadsConfig",
    "ModelConfig",
    "OptimConfig",
    "TeachersConfig",
    "TrainConfig",
    "PoolStyle",
    "SynthConfig",
    "PrepareConfig",
    "AsmConfig",
    "StageConfig",
    "RuntimeConfig",
    "EvalConfig",
    "ExperimentConfig",
    "ROLES",
    "HEAD_NAMES",
    "config_from_dict",
    "config_to_dict",
    "apply_overrides",
    "load_config",
    "load_train_config",
    "save_config",
    "provenance",
    "train_config",
]

#: The optional per-landmark heads of a model, in the order of its outputs (:class:`HeadsConfig`).
HEAD_NAMES = ("visibility", "error")
#: Training roles: the two teachers, the KD-Loss student and the plain-L2 student (baseline).
ROLES = ("tough", "tolerant", "kd", "l2")
_SCHEDULES = ("cosine", "step", "constant", "inverse-time")
_OPTIMIZERS = ("adam", "adamw", "sgd")
_AMP = ("auto", "bf16", "off")
_BATCHNORM = ("train", "frozen", "sync")

T = TypeVar("T")


# --------------------------------------------------------------------------------------------- dataclasses
@dataclass
class AugmentConfig:
    """Random augmentation applied by :class:`BatchAugmenter` in training mode.

    Defaults suit face landmarks at the paper's scale (the official code augments offline with
    scale 0.7-1.3, rotation up to 0.55 rad, noise, colour changes and crop jitter; REFERENCE.md 2).
    Setting a field to 0 (or a probability to 0, or a range to ``(1, 1)``) turns that operation off.

    Attributes:
        rotation_deg: rotation angle drawn uniformly from ``[-rotation_deg, rotation_deg]`` degrees.
        scale: zoom factor drawn uniformly from this range; ``> 1`` makes the face larger in the output.
        translate: shift drawn uniformly from ``[-translate, translate]`` per axis, as a fraction of the
            output side (0.08 moves the face by up to 8 % of the model input).
        flip_prob: probability of a horizontal mirror; landmark indices are then permuted with the
            layout's flip table, so index i still names the same facial part.
        brightness: brightness factor drawn from ``[1 - brightness, 1 + brightness]`` (multiplies RGB).
        contrast: contrast factor drawn from ``[1 - contrast, 1 + contrast]`` around the image's mean grey.
        saturation: saturation factor drawn from ``[1 - saturation, 1 + saturation]`` around each pixel's
            grey value (0 gives a grey image).
        blur_prob: probability that a sample is blurred by a Gaussian.
        blur_sigma: Gaussian standard deviation range in output pixels, drawn uniformly per sample.
        noise_prob: probability that a sample gets additive Gaussian pixel noise.
        noise_std: noise standard deviation range (on the [0, 1] intensity scale), drawn per sample.
        cutout_prob: probability that a sample gets one occluding rectangle (teaches robustness to
            occlusion, as in COFW).
        cutout_size: rectangle width and height, each drawn uniformly from this range as a fraction of
            the output side; the centre is uniform over the image, so a rectangle may be clipped.
        cutout_fill: ``"noise"`` (uniform random pixels) or ``"grey"`` (one random grey level per sample).
    """

    rotation_deg: float = 30.0
    scale: tuple[float, float] = (0.85, 1.15)
    translate: float = 0.08
    flip_prob: float = 0.5
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.3
    blur_prob: float = 0.2
    blur_sigma: tuple[float, float] = (0.5, 1.5)
    noise_prob: float = 0.2
    noise_std: tuple[float, float] = (0.01, 0.05)
    cutout_prob: float = 0.3
    cutout_size: tuple[float, float] = (0.1, 0.35)
    cutout_fill: str = "noise"

    def __post_init__(self) -> None:
        self.scale = (float(self.scale[0]), float(self.scale[1]))
        self.blur_sigma = (float(self.blur_sigma[0]), float(self.blur_sigma[1]))
        self.noise_std = (float(self.noise_std[0]), float(self.noise_std[1]))
        self.cutout_size = (float(self.cutout_size[0]), float(self.cutout_size[1]))
        for name in ("flip_prob", "blur_prob", "noise_prob", "cutout_prob"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"AugmentConfig.{name} must be a probability in [0, 1], got {v}")
        for name in ("rotation_deg", "translate", "brightness", "contrast", "saturation"):
            if getattr(self, name) < 0:
                raise ValueError(f"AugmentConfig.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("brightness", "contrast", "saturation"):
            if getattr(self, name) > 1:
                raise ValueError(f"AugmentConfig.{name} must be <= 1 (factor range 1 +- value)")
        for name, lo_min in (("scale", 1e-6), ("blur_sigma", 1e-6), ("noise_std", 0.0), ("cutout_size", 0.0)):
            lo, hi = getattr(self, name)
            if not lo_min <= lo <= hi:
                raise ValueError(f"AugmentConfig.{name} must be a range (lo, hi) with {lo_min} <= lo <= hi, "
                                 f"got {(lo, hi)}")
        if self.cutout_fill not in ("noise", "grey"):
            raise ValueError(f"AugmentConfig.cutout_fill must be 'noise' or 'grey', got {self.cutout_fill!r}")

    @classmethod
    def geometric_only(cls, **overrides: object) -> AugmentConfig:
        """Rotation, scale, translation and flip only (no photometric changes); fields overridable."""
        base: dict[str, object] = dict(brightness=0.0, contrast=0.0, saturation=0.0, blur_prob=0.0,
                                       noise_prob=0.0, cutout_prob=0.0)
        base.update(overrides)
        return cls(**base)  # type: ignore[arg-type]

    @classmethod
    def off(cls) -> AugmentConfig:
        """No augmentation at all (training mode then equals the at-rest view)."""
        return cls.geometric_only(rotation_deg=0.0, scale=(1.0, 1.0), translate=0.0, flip_prob=0.0)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)



@dataclass
class KDLossConfig:
    """Constants of KD-Loss.  Defaults: the official code's values, except ``beta_ratio`` and the ramp,
    which follow the paper's figures (REFERENCE.md section 2).

    Attributes:
        w_main: weight of the main loss.  Official README example: 2.
        w_tough: weight of the Tough-Teacher's ALoss.  Official README example: 1.
        w_tol: weight of the Tolerant-Teacher's ALoss.  Official README example: 1.
        beta_ratio: ``r`` in ``beta = G + sign(P - G) r |T - G|``.  Paper figures: 0.4 (teacher at 0.4
            -> beta 0.16; at 0.49 -> 0.196); official code: 0.15.  Default 0.4.
        tough_alpha_pos: ``alpha+`` of the Tough ALoss.  Official code 1.9 (paper figure 1).
        tough_alpha_neg: ``alpha-`` of the Tough ALoss.  Official code -0.45 (paper figure -0.5).
        tol_alpha_pos: ``alpha+`` of the Tolerant ALoss.  Official code 1.8 (paper figure 1).
        tol_alpha_neg: ``alpha-`` of the Tolerant ALoss.  Official code -0.4 (paper figure -0.5).
        low_influence_ramp: weight in ``R_L`` ramps from 0 at ``G`` to ``alpha-`` at ``beta`` (paper
            figure "loss_weight"); ``False`` leaves it at 0 as the official code does (its ramp line is
            commented out).  Default True.
        main_c: ``c`` of the main loss.  Official code 3; paper figure "main_loss" draws 1.
        l2_warmup_epochs: the KD student's first epochs use plain L2 to the hard landmarks (the
            baseline's loss) before KD-Loss takes over, with fresh optimiser moments and the
            learning-rate warm-up again; the teachers are not run in them.  Not in the paper (0, the
            default, is the paper).  The CPU demo uses it: from random weights the student first
            sits on the mean-shape plateau, and the L1-like KD-Loss leaves it more slowly than L2
            within a short schedule (docs/RESULTS.md).
        teacher_cache: run each teacher once per training image, at rest (unaugmented), and carry its
            prediction through every sample's augmentation like the landmarks (geometric transform and
            flip), instead of running both teachers on every augmented batch.  A KD-Loss epoch then costs
            about what an L2 epoch costs (the teachers' forwards were most of it on a CPU), at the price
            of teachers that do not see each sample's own augmentation (their at-rest prediction moved
            with the image; photometric changes unseen).  The paper's official code trains on offline-
            augmented data with the teachers' predictions computed beforehand, which is close to this.
            Off by default (the teachers run on each augmented batch); docs/TRAINING.md.
    """

    w_main: float = 2.0
    w_tough: float = 1.0
    w_tol: float = 1.0
    beta_ratio: float = 0.4
    tough_alpha_pos: float = 1.9
    tough_alpha_neg: float = -0.45
    tol_alpha_pos: float = 1.8
    tol_alpha_neg: float = -0.4
    low_influence_ramp: bool = True
    main_c: float = 3.0
    l2_warmup_epochs: int = 0
    teacher_cache: bool = False

    def __post_init__(self) -> None:
        if not self.l2_warmup_epochs >= 0:
            raise ValueError(f"KDLossConfig.l2_warmup_epochs must be >= 0, got {self.l2_warmup_epochs}")
        for name in ("w_main", "w_tough", "w_tol", "main_c", "tough_alpha_pos", "tol_alpha_pos"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"KDLossConfig.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("tough_alpha_neg", "tol_alpha_neg"):
            if not getattr(self, name) <= 0:
                raise ValueError(f"KDLossConfig.{name} must be <= 0 (the negative region), "
                                 f"got {getattr(self, name)}")
        if not 0.0 < self.beta_ratio < 1.0:
            raise ValueError(f"beta_ratio must lie in (0, 1), got {self.beta_ratio}")

    @classmethod
    def paper_figure(cls) -> KDLossConfig:
        """The constants drawn in the paper's figures: ``alpha+ = 1``, ``alpha- = -0.5`` for both
        teachers, ``c = 1``, ``r = 0.4``, ramp on; weights of the README example (2, 1, 1).

        Note: with these constants the total KD-Loss is *not* monotone in ``|P - G|`` very close to
        ``G`` when a teacher's low-influence region covers ``P`` (see docs/METHOD.md).
        """
        return cls(tough_alpha_pos=1.0, tough_alpha_neg=-0.5, tol_alpha_pos=1.0, tol_alpha_neg=-0.5,
                   main_c=1.0, beta_ratio=0.4, low_influence_ramp=True)

    @classmethod
    def official_code(cls) -> KDLossConfig:
        """Exactly the official code (``custom_Losses.py``): defaults with ``r = 0.15`` and no ramp."""
        return cls(beta_ratio=0.15, low_influence_ramp=False)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)



def _amp_value(value: str | bool) -> str:
    """``amp`` as one of :data:`_AMP`; YAML reads a bare ``off`` as false (and ``on`` as true)."""
    if value is False:
        return "off"
    if value is True:
        return "auto"
    if value not in _AMP:
        raise ValueError(f"amp must be one of {_AMP}, got {value!r}")
    return value


@dataclass
class HeadsConfig:
    """Per-landmark confidence outputs beside the coordinates (not in the paper; off by default).

    Each head is on when its loss weight is positive; the coordinates keep the role's own loss (L2 or
    KD-Loss) and the heads add their terms: ``visibility * BCE(visible) + error * NLL(error scale)``
    (:func:`kdlandmark.losses.visibility_loss`, :func:`kdlandmark.losses.error_nll`).

    Attributes:
        visibility: weight of the visibility head's loss: binary cross-entropy against "visible", where
            a point is hidden when the data flag it occluded (COFW's flags; the renderer's occluders),
            when an augmentation cutout covers it, or when it lies outside the model's input.
        error: weight of the error head's loss: negative log-likelihood of the point's distance to the
            ground truth under a radial 2D Laplace of scale ``b`` (predicted), whose mean distance is
            ``2 b``; the coordinates are detached in it, so it trains the head only.
        hidden: width of the hidden ReLU layer of each head (:class:`kdlandmark.models.PointHead`, which
            reads the backbone's stride-16 features at the predicted point, the pooled features and an
            embedding of the point); 0 makes each head linear.
        detach: the heads see the features detached, so their losses do not train the backbone (the
            coordinates then train exactly as without the heads).
    """

    visibility: float = 0.0
    error: float = 0.0
    hidden: int = 64
    detach: bool = False

    def __post_init__(self) -> None:
        if self.visibility < 0 or self.error < 0:
            raise ValueError(f"heads.visibility and heads.error are loss weights (>= 0; 0 turns a head off), "
                             f"got {self.visibility} and {self.error}")
        if self.hidden < 0:
            raise ValueError(f"heads.hidden must be >= 0, got {self.hidden}")

    @property
    def names(self) -> tuple[str, ...]:
        """The heads that are on, in the fixed order ``visibility``, ``error``."""
        weights = {"visibility": self.visibility, "error": self.error}
        return tuple(n for n in HEAD_NAMES if weights[n] > 0)


@dataclass
class ModelConfig:
    """Network of one role: a timm backbone with the regression head (:class:`LandmarkRegressor`).

    Attributes:
        backbone: timm model name (paper: ``efficientnet_b3`` teachers, ``mobilenetv2_100`` student).
        input_size: side of the square model input in pixels (paper: 224).
        dropout: dropout before the linear head (paper's code: 0.5).
        pretrained: ``false`` (random init; the paper's student), ``true`` (ImageNet through timm;
            needs network or cache), a local ``.safetensors`` file of backbone weights, or a kdlandmark
            checkpoint folder (``model.json`` + ``model.safetensors``, e.g. a run's ``best/`` or the
            shipped model's folder): the whole network starts from it, to fine-tune it.
        heads: per-landmark visibility and error outputs (:class:`HeadsConfig`; off by default).
    """

    backbone: str = "mobilenetv2_100"
    input_size: int = 224
    dropout: float = 0.5
    pretrained: bool | str = False
    heads: HeadsConfig = field(default_factory=HeadsConfig)

    def __post_init__(self) -> None:
        if self.input_size < 8:
            raise ValueError(f"model.input_size must be >= 8, got {self.input_size}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class OptimConfig:
    """Optimiser, learning-rate schedule and batch of one role.

    Defaults follow the paper's official code: Adam, lr 1e-3, betas (0.9, 0.999), 1e-4 decay, batch 70,
    150 epochs.  Note: the official code passes ``decay=1e-4`` to Keras' Adam, which in Keras is an
    inverse-time *learning-rate* decay (``lr / (1 + decay * step)``), not weight decay; ``schedule:
    inverse-time`` with ``lr_decay: 1e-4`` and ``weight_decay: 0`` reproduces that reading exactly.

    Attributes:
        name: ``adam``, ``adamw`` or ``sgd`` (momentum ``momentum``, Nesterov).
        lr: peak learning rate (after warm-up).
        betas: Adam/AdamW betas.
        momentum: SGD momentum.
        weight_decay: L2 penalty (Adam, SGD) or decoupled decay (AdamW).
        schedule: ``cosine`` (to ``min_lr``), ``step`` (x ``step_gamma`` every ``step_epochs``),
            ``constant`` or ``inverse-time`` (``lr / (1 + lr_decay * step)``, Keras' ``decay``).
        warmup_epochs: linear warm-up from ~0 to ``lr`` over this many epochs (may be fractional).
        min_lr: final learning rate of the cosine schedule.
        restarts: ``cosine`` only: epochs at which the cosine starts again (warm restarts, SGDR,
            Loshchilov & Hutter 2017), e.g. ``[60]`` with ``epochs: 100`` = a 60-epoch cycle then a
            40-epoch one.  Each cycle begins with the warm-up again and peaks at ``lr`` times
            ``restart_decay`` per restart so far.  The optimiser state is kept across a restart, so a
            finished ``epochs: 60`` run resumed with ``epochs: 100, restarts: [60]`` continues exactly
            as a run started with those settings would.
        restart_decay: peak multiplier per restart (1.0: every cycle peaks at ``lr``).
        step_epochs, step_gamma: the ``step`` schedule.
        lr_decay: the ``inverse-time`` schedule's per-step decay.
        epochs: training epochs.
        batch_size: images per optimiser step *per process*; with N processes (DDP) the global batch
            is ``N * batch_size`` (the learning rate is not rescaled automatically).
        grad_clip: clip the global gradient norm to this value (``null``: no clipping).
        ema_decay: keep an exponential moving average of the weights with this decay per step
            (e.g. 0.999); validation and the saved model then use the averaged weights.  ``null``: off.
    """

    name: str = "adam"
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    step_epochs: int = 50
    step_gamma: float = 0.1
    lr_decay: float = 0.0
    epochs: int = 150
    batch_size: int = 70
    grad_clip: float | None = None
    ema_decay: float | None = None
    restarts: list[int] = field(default_factory=list)
    restart_decay: float = 1.0

    def __post_init__(self) -> None:
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        if self.name not in _OPTIMIZERS:
            raise ValueError(f"optim.name must be one of {_OPTIMIZERS}, got {self.name!r}")
        if self.schedule not in _SCHEDULES:
            raise ValueError(f"optim.schedule must be one of {_SCHEDULES}, got {self.schedule!r}")
        if self.lr <= 0 or self.epochs <= 0 or self.batch_size <= 0:
            raise ValueError("optim.lr, optim.epochs and optim.batch_size must be positive")
        if self.warmup_epochs < 0 or self.step_epochs <= 0:
            raise ValueError("optim.warmup_epochs must be >= 0 and optim.step_epochs > 0")
        if self.warmup_epochs > self.epochs:
            raise ValueError(f"optim.warmup_epochs ({self.warmup_epochs}) is longer than the run "
                             f"(optim.epochs {self.epochs}): the learning rate would never reach optim.lr")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"optim.grad_clip must be positive or null, got {self.grad_clip}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"optim.ema_decay must be in (0, 1) or null, got {self.ema_decay}")
        self.restarts = [int(e) for e in self.restarts]
        if self.restarts and self.schedule != "cosine":
            raise ValueError(f"optim.restarts needs schedule 'cosine', got {self.schedule!r}")
        cycles = [b - a for a, b in zip([0, *self.restarts], [*self.restarts, self.epochs], strict=True)]
        if min(cycles) <= 0:
            raise ValueError(f"optim.restarts must rise strictly inside (0, optim.epochs={self.epochs}), "
                             f"got {self.restarts}")
        if self.restarts and self.warmup_epochs > min(cycles):
            raise ValueError(f"optim.warmup_epochs ({self.warmup_epochs}) is longer than a cycle of "
                             f"optim.restarts {self.restarts} (optim.epochs {self.epochs})")
        if not 0.0 < self.restart_decay <= 1.0:
            raise ValueError(f"optim.restart_decay must be in (0, 1], got {self.restart_decay}")


@dataclass
class TeachersConfig:
    """Checkpoint folders of the two frozen teachers (role ``kd`` only): ``.../best`` of each run."""

    tough: str | None = None
    tolerant: str | None = None


@dataclass
class TrainConfig:
    """One training run of one role.

    Attributes:
        role: ``tough`` (L2 to hard landmarks), ``tolerant`` (L2 to soft landmarks), ``kd`` (KD-Loss
            with both teachers) or ``l2`` (plain-L2 student, the baseline).
        data: prepared-set folder (``kdlandmark prepare``; soft landmarks needed for ``tolerant``).
        out: run folder (checkpoints ``best/`` and ``last/``, ``config.yaml``, ``metrics.csv``, ``tb/``).
        model, optim: network and optimisation (see :class:`ModelConfig`, :class:`OptimConfig`).
        augment: random augmentation of training batches (:class:`AugmentConfig`).
        random_augment: ``false`` trains on the central view only (no random augmentation at all).
        kd: KD-Loss constants (:class:`KDLossConfig`), role ``kd`` only.
        teachers: teacher checkpoints, role ``kd`` only.
        seed: seeds the data order, augmentation, dropout and the held-out validation split.
        deterministic: deterministic kernels (``torch.use_deterministic_algorithms``, no cuDNN
            autotuning); same seed, same hardware and software -> same weights.
        compile: ``torch.compile`` the training model.
        channels_last: NHWC memory format (faster convolutions on GPUs with tensor cores).
        amp: ``auto`` (bf16 autocast on CUDA, off on CPU), ``bf16`` or ``off`` (YAML ``false``/``off``
            mean ``off``, ``true`` means ``auto``).
        device: ``auto`` (``cuda:LOCAL_RANK`` when CUDA is available, else CPU), ``cpu``, ``cuda``...
        batchnorm: ``train`` (usual), ``frozen`` (BatchNorm layers use their running statistics and
            do not update them) or ``sync`` (``SyncBatchNorm`` across DDP processes).
        train_split: prepared split to train on.
        val_split: prepared split to validate on; ``null`` holds out ``val_fraction`` of the training
            split instead (seeded, so every run and every process holds out the same images).
        val_fraction: share of the training split held out when ``val_split`` is null (0: no validation;
            the best checkpoint then follows the training loss).
        num_val: cap on validation images (``null``: all).
        eval_batch_size: validation batch (``null``: twice ``optim.batch_size``).
        checkpoint_every: write ``last/`` every this many epochs (and always after the final epoch).
        resume: continue from ``out/last`` if it exists (exactly, see docs/TRAINING.md).
        data_on_device: keep the uint8 training images on the GPU (``null``: when they fit easily).
        log_every: steps between progress-bar loss updates (each costs one host-device sync).
        tensorboard: write TensorBoard event files under ``out/tb``.
    """

    role: str = "tough"
    data: str = ""
    out: str = "runs/train"
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    random_augment: bool = True
    kd: KDLossConfig = field(default_factory=KDLossConfig)
    teachers: TeachersConfig = field(default_factory=TeachersConfig)
    seed: int = 0
    deterministic: bool = False
    compile: bool = False
    channels_last: bool = True
    amp: str | bool = "auto"
    device: str = "auto"
    batchnorm: str = "train"
    train_split: str = "train"
    val_split: str | None = None
    val_fraction: float = 0.1
    num_val: int | None = None
    eval_batch_size: int | None = None
    checkpoint_every: int = 1
    resume: bool = False
    data_on_device: bool | None = None
    log_every: int = 50
    tensorboard: bool = True

    def __post_init__(self) -> None:
        self.amp = _amp_value(self.amp)
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {self.role!r}")
        if self.amp not in _AMP:
            raise ValueError(f"amp must be one of {_AMP}, got {self.amp!r}")
        if self.batchnorm not in _BATCHNORM:
            raise ValueError(f"batchnorm must be one of {_BATCHNORM}, got {self.batchnorm!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.checkpoint_every < 1 or self.log_every < 1:
            raise ValueError("checkpoint_every and log_every must be >= 1")
        if self.role == "kd" and self.kd.l2_warmup_epochs >= self.optim.epochs:
            raise ValueError(f"kd.l2_warmup_epochs ({self.kd.l2_warmup_epochs}) must be below optim.epochs "
                             f"({self.optim.epochs}): otherwise KD-Loss never starts")


@dataclass(frozen=True)
class PoolStyle:
    """What :func:`kdlandmark.data.synth.pool.render_pool_face` randomises (probabilities per face; 0
    switches a step off).

    Attributes:
        yaw, pitch, roll: standard deviation of the new head pose in degrees (clipped at 2.5 sd).
        renormalise: up to this share (drawn uniformly) of the pool face's own landmark geometry is
            replaced by the mean face's, so that the pool's few identities do not become the model's
            shape prior (0 keeps the pool face's proportions).
        identity: how much of a random synthetic identity's shape is added (0 keeps the pool face's).
        outline: how far the jaw points and the temples of a turned head move from where their 3D points
            project to the head's outline at the new pose (1: on the outline, as 300W and dlib label a
            turned face's jaw; 0: the 3D points, which a turned head shows inside its outline).
        expression: probability of a random synthetic expression (mouth, smile, eyes, brows).
        face_fraction: range of the landmark box's side as a fraction of the image side.
        mix: probability of taking eyes, nose and mouth from a second pool face.
        background: probability of replacing the background outside the head.
        glasses: probability of drawing glasses.
        hair: probability of drawing hair over the head (a hairline or fringe anywhere from the top of
            the forehead to over the brows, sometimes locks down the sides of the face): the pool's faces
            are mostly bald or cropped close.
        colour: probability of a random colour change (hue, channel gains, saturation, grey).
        light: probability of a random directional light / shadow over the face.
        low_res: probability of reducing the resolution (inter-ocular 10-40 px) and enlarging it back.
        blur, noise, jpeg: probabilities of Gaussian/motion blur, sensor noise and JPEG compression.
    """

    yaw: float = 14.0
    pitch: float = 9.0
    roll: float = 10.0
    renormalise: float = 0.0
    identity: float = 0.8
    outline: float = 0.0
    expression: float = 0.6
    face_fraction: tuple[float, float] = (0.45, 0.7)
    mix: float = 0.5
    background: float = 0.6
    glasses: float = 0.15
    hair: float = 0.0
    colour: float = 0.8
    light: float = 0.5
    low_res: float = 0.5
    blur: float = 0.3
    noise: float = 0.5
    jpeg: float = 0.7

    @classmethod
    def plain(cls, **changes: float) -> PoolStyle:
        """Only the warp (pose, identity, expression): no appearance step (the ablation's base)."""
        geometry = ("yaw", "pitch", "roll", "renormalise", "identity", "outline", "expression",
                    "face_fraction")
        off = {f.name: 0.0 for f in dataclasses.fields(cls) if f.name not in geometry}
        off.update(changes)
        return cls(**off)  # type: ignore[arg-type]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def __post_init__(self) -> None:
        lo, hi = self.face_fraction
        object.__setattr__(self, "face_fraction", (float(lo), float(hi)))
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name in ("yaw", "pitch", "roll"):
                if v < 0:
                    raise ValueError(f"synth.style.{f.name} must be >= 0 degrees, got {v}")
            elif f.name == "face_fraction":
                if not 0.05 <= v[0] <= v[1] <= 0.95:
                    raise ValueError(f"synth.style.face_fraction must be a range in [0.05, 0.95], got {v}")
            elif not 0.0 <= v <= 1.0:
                raise ValueError(f"synth.style.{f.name} must lie in [0, 1], got {v}")


@dataclass
class SynthConfig:
    """Synthetic training data the pipeline makes itself (its first stage), in ``<out>/data``.

    Attributes:
        count: faces to make (0: no synthesis; ``data_root`` then names a dataset on disk).
        size: image side in pixels.
        test_fraction: share of the faces in the test parts.
        pool: folder of real faces (images with 68-point ``.pts`` files) lending their appearance
            (``null``: rendered faces only); a relative path is taken from the current folder.
        pool_fraction: share of pool faces warped onto new shapes and poses.
        hybrid_fraction: share of rendered heads with a pool face's skin and features.
        style: what the pool faces randomise (:class:`PoolStyle`).
        workers: processes (``null``: all cores).
    """

    count: int = 0
    size: int = 256
    test_fraction: float = 0.2
    pool: str | None = None
    pool_fraction: float = 1.0
    hybrid_fraction: float = 0.0
    style: PoolStyle = field(default_factory=PoolStyle)
    workers: int | None = None

    def __post_init__(self) -> None:
        if self.count < 0 or self.size < 32:
            raise ValueError(f"synth.count must be >= 0 and synth.size >= 32, got {self.count}, {self.size}")
        if not 0.0 <= self.test_fraction <= 1.0:
            raise ValueError(f"synth.test_fraction must lie in [0, 1], got {self.test_fraction}")
        if not (0.0 <= self.pool_fraction <= 1.0 and 0.0 <= self.hybrid_fraction <= 1.0
                and self.pool_fraction + self.hybrid_fraction <= 1.0):
            raise ValueError("synth.pool_fraction and synth.hybrid_fraction must lie in [0, 1] with a sum of "
                             f"at most 1, got {self.pool_fraction} and {self.hybrid_fraction}")


@dataclass
class PrepareConfig:
    """Settings of ``kdlandmark prepare`` (``null`` margins: the prepare module's defaults)."""

    size: int = 256
    margin: float | None = None
    context_margin: float | None = None
    splits: list[str] | None = None
    skip_bad: bool = False
    workers: int | None = None


@dataclass
class AsmConfig:
    """Soft landmarks (:func:`kdlandmark.shape.asm.fit_asm`).

    Attributes:
        variance: share of the shape variance the kept components explain (paper: 0.9).
        procrustes: align the shapes by generalised Procrustes analysis first (classic ASM).
        clip: shape parameters clipped to ``+- clip * sqrt(lambda)`` (``null``: no clipping).
        max_iter: cap on the Procrustes iterations.
    """

    variance: float = 0.9
    procrustes: bool = True
    clip: float | None = 3.0
    max_iter: int = 20

    def __post_init__(self) -> None:
        if self.clip is not None and not self.clip > 0:
            raise ValueError(f"asm.clip must be positive or null, got {self.clip}")
        if self.max_iter < 1:
            raise ValueError(f"asm.max_iter must be >= 1, got {self.max_iter}")


@dataclass
class StageConfig:
    """Network and optimisation of one stage (teachers or student)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)


def _teacher_stage() -> StageConfig:
    return StageConfig(model=ModelConfig(backbone="efficientnet_b3"))


def _student_stage() -> StageConfig:
    return StageConfig(model=ModelConfig(backbone="mobilenetv2_100"))


@dataclass
class RuntimeConfig:
    """How every training run of an experiment executes (fields as in :class:`TrainConfig`)."""

    deterministic: bool = False
    compile: bool = False
    channels_last: bool = True
    amp: str | bool = "auto"
    device: str = "auto"
    batchnorm: str = "train"
    random_augment: bool = True
    train_split: str = "train"
    val_split: str | None = None
    val_fraction: float = 0.1
    num_val: int | None = None
    eval_batch_size: int | None = None
    checkpoint_every: int = 1
    data_on_device: bool | None = None
    log_every: int = 50
    tensorboard: bool = True

    def __post_init__(self) -> None:
        self.amp = _amp_value(self.amp)


@dataclass
class EvalConfig:
    """Evaluation settings of the pipeline's evaluate stage.

    Attributes:
        normalisation: NME normaliser (``inter-ocular``, ``inter-pupil`` or ``box``).
        failure_threshold: failure threshold and AUC limit (0.10; 0.08 for some WFLW tables).
        batch_size: faces per forward pass.
        splits: prepared splits to evaluate (``null``: every test split of the protocol).
        folders: further folders of faces (images with ``.pts`` files, the ``folder`` dataset) every
            model is also evaluated on, e.g. real faces; a folder that is not there is skipped with a
            message (a relative path is taken from the current folder).
    """

    normalisation: str = "inter-ocular"
    failure_threshold: float = 0.1
    batch_size: int = 64
    splits: list[str] | None = None
    folders: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"eval.batch_size must be >= 1, got {self.batch_size}")


@dataclass
class ExperimentConfig:
    """The paper's pipeline for one dataset.

    Attributes:
        name: experiment name (used in reports).
        dataset: ``300w``, ``wflw``, ``cofw`` or ``folder``.
        data_root: the dataset's root folder (native files).
        out: experiment folder; stages write ``prepared/``, ``tough/``, ``tolerant/``, ``kd/``, ``l2/``.
        seed: seed of every stage.
        synth: synthetic training data made by the first stage (``count: 0``: none).
        prepare, asm: data preparation and soft landmarks.
        teacher: network and optimisation of both teachers (paper: EfficientNet-B3).
        student: network and optimisation of the students (paper: MobileNetV2, random init).
        kd: KD-Loss constants.
        augment: training augmentation of every stage.
        runtime: execution settings shared by every training run.
        eval: evaluation settings.
        jobs: training stages run at the same time, each in its own process (1: one after another).
            The CPU threads are shared out between them; with at least ``jobs`` GPUs each job gets
            its own.  The Tough-Teacher, Tolerant-Teacher and L2 student are independent; the KD
            student starts when both teachers are done.
    """

    name: str = "experiment"
    dataset: str = "300w"
    data_root: str = ""
    out: str = "runs/experiment"
    seed: int = 0
    synth: SynthConfig = field(default_factory=SynthConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    asm: AsmConfig = field(default_factory=AsmConfig)
    teacher: StageConfig = field(default_factory=_teacher_stage)
    student: StageConfig = field(default_factory=_student_stage)
    kd: KDLossConfig = field(default_factory=KDLossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    jobs: int = 1

    def __post_init__(self) -> None:
        if self.jobs < 1:
            raise ValueError(f"jobs must be >= 1, got {self.jobs}")


# --------------------------------------------------------------------------------------------- conversion
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(tp: Any, value: Any, key: str, source: str, template: Any = None) -> Any:
    """``value`` converted to type ``tp`` or a :class:`ConfigError` naming ``key`` and ``source``.

    ``template``: for a nested dataclass, the instance whose values fill the keys ``value`` omits
    (the parent's default, e.g. the teacher stage's EfficientNet-B3 rather than ModelConfig's default).
    """

    def fail(why: str = "") -> ConfigError:
        return ConfigError(f"{source}: {key}: expected {_type_name(tp)}, got {value!r}{why}")

    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise fail()
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key, source)
            except ConfigError as exc:
                errors.append(exc)
        raise fail()
    if origin is typing.Literal:
        if value in args:
            return value
        raise fail()
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _from_dict(tp, value, key, source, template if isinstance(template, tp) else None)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise fail()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise fail()
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise fail()
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, Path):
            return str(value)
        raise fail()
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise fail()
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{key}[{i}]", source) for i, v in enumerate(value))
        if len(value) != len(args):
            raise fail(f" ({len(args)} values needed)")
        return tuple(_coerce(a, v, f"{key}[{i}]", source) for i, (a, v) in enumerate(zip(args, value,
                                                                                        strict=True)))
    if origin is list:
        if not isinstance(value, list | tuple):
            raise fail()
        return [_coerce(args[0], v, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise fail()
        return {_coerce(args[0], k, key, source): _coerce(args[1], v, f"{key}.{k}", source)
                for k, v in value.items()}
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise fail()


def _from_dict(cls: type[T], data: Any, prefix: str, source: str, template: Any = None) -> T:
    """Build ``cls`` from mapping ``data``; omitted keys keep ``template``'s values (default: ``cls()``)."""
    if isinstance(data, cls):
        return data
    where = prefix or "top level"
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {where}: expected a mapping of {cls.__name__} fields, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]
    for key in data:
        if key not in names:
            full = f"{prefix}.{key}" if prefix else str(key)
            raise ConfigError(f"{source}: unknown key {full!r} (known keys of {where}: {', '.join(names)})")
    if template is None:
        template = cls()
    kwargs = {k: _coerce(hints[k], v, f"{prefix}.{k}" if prefix else k, source, getattr(template, k, None))
              for k, v in data.items()}
    try:
        return dataclasses.replace(template, **kwargs)
    except (ValueError, TypeError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{source}: {where}: {exc}") from exc


def config_from_dict(cls: type[T], data: dict | None, source: str = "<dict>",
                     overrides: Sequence[str] = ()) -> T:
    """Build dataclass ``cls`` from a nested mapping plus ``key.sub=value`` overrides, validating keys."""
    raw = _plain(data or {})
    apply_overrides(raw, cls, overrides)
    return _from_dict(cls, raw, "", source)


def _plain(obj: Any) -> Any:
    """Dataclasses/tuples/Paths -> plain YAML-able dicts, lists, strings."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path | str):  # str subclasses (torch's TorchVersion) too
        return str(obj)
    return obj


def config_to_dict(cfg: Any) -> dict:
    """A config dataclass as a plain nested dict (tuples become lists), ready for YAML or JSON."""
    return _plain(cfg)


def _field_type(cls: Any, name: str) -> Any | None:
    """Type of field ``name`` of dataclass ``cls`` (Optional unwrapped), or None if there is none."""
    if not (dataclasses.is_dataclass(cls) and isinstance(cls, type)):
        return None
    hints = typing.get_type_hints(cls)
    if name not in hints:
        return None
    tp = hints[name]
    if typing.get_origin(tp) in (Union, types.UnionType):
        dcs = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        if dcs:
            return dcs[0]
    return tp


def apply_overrides(raw: dict, cls: type, overrides: Sequence[str]) -> dict:
    """Apply ``key.sub=value`` strings (value parsed as YAML) to the nested mapping ``raw`` in place.

    Keys are checked against the dataclass ``cls`` so that a mistyped override fails at once, naming it.
    """
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key.sub=value")
        path, text = item.split("=", 1)
        parts = [p for p in path.strip().split(".")]
        if not path.strip() or any(not p for p in parts):
            raise ConfigError(f"override {item!r}: empty key")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({exc})") from exc
        node, tp = raw, cls
        for depth, part in enumerate(parts):
            ftype = _field_type(tp, part)
            if ftype is None:
                where = ".".join(parts[:depth]) or "top level"
                known = [f.name for f in dataclasses.fields(tp)] if dataclasses.is_dataclass(tp) else []
                raise ConfigError(f"override {item!r}: unknown key {'.'.join(parts[:depth + 1])!r}"
                                  + (f" (known keys of {where}: {', '.join(known)})" if known else ""))
            if depth == len(parts) - 1:
                node[part] = value
            else:
                child = node.get(part)
                if not isinstance(child, dict):
                    child = {} if child is None else _plain(child)
                    if not isinstance(child, dict):
                        where = ".".join(parts[:depth + 1])
                        raise ConfigError(f"override {item!r}: {where} is not a mapping")
                    node[part] = child
                node, tp = child, ftype
    return raw


def _read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({exc})") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level, got {type(data).__name__}")
    data.pop("provenance", None)  # written by save_config; informative only
    return data


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """An :class:`ExperimentConfig` from a YAML file (or defaults if ``path`` is None) plus overrides."""
    data = _read_yaml(path) if path is not None else {}
    source = str(path) if path is not None else "<defaults>"
    return config_from_dict(ExperimentConfig, data, source, overrides)


def load_train_config(path: str | Path | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """A :class:`TrainConfig` from a YAML file (e.g. a run folder's ``config.yaml``) plus overrides."""
    data = _read_yaml(path) if path is not None else {}
    return config_from_dict(TrainConfig, data, str(path) if path is not None else "<defaults>", overrides)


# --------------------------------------------------------------------------------------------- provenance
def _git_revision() -> dict | None:
    """Git commit (and whether tracked files differ from it) of the source tree, if it is a checkout."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=False)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(here), "diff-index", "--quiet", "HEAD", "--"],
                               capture_output=True, timeout=10, check=False)
        return {"commit": rev.stdout.strip(), "dirty": dirty.returncode != 0}
    except (OSError, subprocess.SubprocessError):
        return None


def provenance() -> dict:
    """Versions of Python, torch, timm, numpy and kdlandmark, the platform and the git revision."""
    import numpy
    import timm
    import torch

    import kdlandmark

    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "torch": str(torch.__version__),
        "cuda": torch.version.cuda,
        "timm": str(timm.__version__),
        "numpy": str(numpy.__version__),
        "kdlandmark": str(kdlandmark.__version__),
        "platform": platform.platform(),
        "git": _git_revision(),
    }
    return info


def save_config(cfg: Any, path: str | Path, extra: dict | None = None) -> Path:
    """Write config dataclass ``cfg`` as YAML with a ``provenance`` block (and ``extra`` facts in it).

    The file loads back with :func:`load_config` / :func:`load_train_config` (provenance ignored).
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    data = config_to_dict(cfg)
    prov = provenance()
    if extra:
        prov.update(_plain(extra))
    data["provenance"] = _plain(prov)
    text = f"# {type(cfg).__name__} written by kdlandmark {prov['kdlandmark']}\n"
    text += yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
    atomic_write_bytes(p, text.encode("utf-8"))  # several processes of one pipeline may save at once
    return p


# ------------------------------------------------------------------------------------------ experiment -> run
def train_config(exp: ExperimentConfig, role: str, *, data: str | Path | None = None,
                 out: str | Path | None = None, teachers: TeachersConfig | None = None,
                 resume: bool = False) -> TrainConfig:
    """The :class:`TrainConfig` of ``role`` in experiment ``exp``.

    Teachers (``tough``, ``tolerant``) use ``exp.teacher``; students (``kd``, ``l2``) ``exp.student``.
    Default folders under ``exp.out``: data ``prepared/``, run ``<role>/``, teachers ``tough/best``
    and ``tolerant/best``.
    """
    if role not in ROLES:
        raise ConfigError(f"role must be one of {ROLES}, got {role!r}")
    root = Path(exp.out)
    stage = exp.teacher if role in ("tough", "tolerant") else exp.student
    if teachers is None:
        teachers = TeachersConfig(tough=str(root / "tough" / "best"),
                                  tolerant=str(root / "tolerant" / "best"))
    rt = dataclasses.asdict(exp.runtime)
    return TrainConfig(
        role=role,
        data=str(data if data is not None else root / "prepared"),
        out=str(out if out is not None else root / role),
        model=dataclasses.replace(stage.model, heads=dataclasses.replace(stage.model.heads)),
        optim=dataclasses.replace(stage.optim),
        augment=dataclasses.replace(exp.augment),
        kd=dataclasses.replace(exp.kd),
        teachers=teachers,
        seed=exp.seed,
        resume=resume,
        **rt,
    )
