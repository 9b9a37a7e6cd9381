"""Losses of Fard & Mahoor (2022): L2 for the teachers, KD-Loss for the student.

Everything works per coordinate (each x and each y of each landmark on its own) and is averaged over
coordinates and batch at the end.  Notation (REFERENCE.md section 2): ``P`` student prediction, ``G``
ground truth (hard landmarks), ``T`` a teacher's prediction; ``d = |P - G|``, ``t = |T - G|``.

Assistive loss (ALoss), one per teacher:

* the teacher is reflected to the student's side of ``G``: ``T' = G + sign(P - G) t``;
* ``beta = G + sign(P - G) r t`` lies between ``G`` and ``T'`` (``r`` = ``beta_ratio``);
* the weight ``w`` depends on the region of ``P``:

  ============================  ==================  =============================================
  region                        where               ``w``
  ============================  ==================  =============================================
  positive ``R_P``              ``d > t``           ``alpha_pos`` (> 0)
  negative ``R_N``              ``r t <= d <= t``   ``alpha_neg`` (< 0)
  low influence ``R_L``         ``d < r t``         ramps linearly from 0 at ``G`` to
                                                    ``alpha_neg`` at ``beta``: ``alpha_neg d / (r t)``
                                                    (0 when the ramp is disabled, as in the
                                                    official code)
  ============================  ==================  =============================================

* ``ALoss = w |T' - P|``.  Since ``T'`` and ``P`` lie on the same side of ``G``,
  ``|T' - P| = |t - d|``, which is how it is computed here.

The ALoss is 0 at ``P = G`` and at ``P = T'``, negative between them and smallest at ``beta``; it is
continuous at ``d = t`` (both sides 0) and, with the ramp, at ``d = r t`` (both sides
``alpha_neg t (1 - r)``).  Without the ramp it jumps by ``alpha_neg t (1 - r)`` at ``beta``.

Main loss, towards the ground truth, with ``tau = |G - T_tol|`` (the Tolerant teacher's distance)::

    Loss_main = c d                      if d <= tau
                d^2 + c tau - tau^2      otherwise          (continuous at d = tau)

KD-Loss = ``w_main Loss_main + w_tough ALoss_Tough + w_tol ALoss_Tolerant``.

Edge cases, defined explicitly (no NaN, finite gradients):

* ``P == G`` (``sign(0)``): ``d = 0`` lies in ``R_L`` where the weight is 0, so the ALoss is 0, as in
  the official code (which gets 0 from ``T' = G``).  The main loss is 0 too.  The gradient there is 0
  (``|x|``'s subgradient at 0), which is right: ``G`` is the minimum of the total for the defaults.
* ``T == G`` (``t = 0``): ``beta = T' = G``, ``R_L`` and ``R_N`` shrink to the point ``G`` and every
  ``P != G`` lies beyond the teacher: ``ALoss = alpha_pos d``, the limit of ``t -> 0``.  (The official
  code's ``sign`` tests give 0 in this measure-zero case.)  A zero ``r t`` never divides: the ramp
  uses a safe denominator.
* ``tau == 0``: the main loss is ``d^2``.

Teacher predictions and the ground truth are targets: they are detached, so no gradient reaches a
teacher.  Inputs of lower precision (fp16/bf16 under autocast) are computed in float32.

The optional per-landmark heads (not in the paper) have losses of their own, added to the role's loss
with the weights of :class:`~kdlandmark.config.HeadsConfig`: :func:`visibility_loss` (binary
cross-entropy of the visibility logit) and :func:`error_nll` (negative log-likelihood of each point's
error under a radial 2D Laplace of the predicted scale; the coordinates are detached in it).
"""

from __future__ import annotations

import torch
from torch import Tensor

from kdlandmark.config import KDLossConfig

__all__ = [
    "KDLossConfig",
    "l2_loss",
    "assistive_weight",
    "assistive_loss",
    "main_loss",
    "kd_loss",
    "reflect_teacher",
    "beta_point",
    "visibility_loss",
    "error_nll",
]


def _check_beta_ratio(beta_ratio: float) -> None:
    if not 0.0 < beta_ratio < 1.0:
        raise ValueError(f"beta_ratio must lie in (0, 1), got {beta_ratio}")


def _float(x: Tensor) -> Tensor:
    """At least float32 (autocast may hand over fp16/bf16)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _check_same_shape(**tensors: Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        desc = ", ".join(f"{k} {v}" for k, v in shapes.items())
        raise ValueError(f"loss inputs must have the same shape, got {desc}")


def l2_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error over all coordinates and the batch (the teachers' loss)."""
    _check_same_shape(pred=pred, target=target)
    return torch.mean((_float(pred) - _float(target).detach()) ** 2)


def reflect_teacher(pred: Tensor, teacher: Tensor, gt: Tensor) -> Tensor:
    """``T' = G + sign(P - G) |T - G|``: the teacher moved to the student's side of ``G``.

    At ``P == G`` the side is taken as positive (the ALoss is 0 there whatever the side).
    """
    side = torch.where(pred >= gt, 1.0, -1.0).to(pred.dtype)
    return gt + side * (teacher - gt).abs()


def beta_point(pred: Tensor, teacher: Tensor, gt: Tensor, beta_ratio: float) -> Tensor:
    """``beta = G + sign(P - G) r |T - G|`` (side positive at ``P == G``)."""
    side = torch.where(pred >= gt, 1.0, -1.0).to(pred.dtype)
    return gt + side * beta_ratio * (teacher - gt).abs()


def assistive_weight(pred: Tensor, teacher: Tensor, gt: Tensor, alpha_pos: float, alpha_neg: float,
                     beta_ratio: float, low_influence_ramp: bool = True) -> Tensor:
    """Elementwise ALoss weight ``w`` (see the module docstring for the regions)."""
    _check_beta_ratio(beta_ratio)
    pred, teacher, gt = _float(pred), _float(teacher).detach(), _float(gt).detach()
    d = (pred - gt).abs()
    t = (teacher - gt).abs()
    rt = beta_ratio * t
    if low_influence_ramp:
        # ramp from 0 at G to alpha_neg at beta; the safe denominator keeps rt == 0 finite (then R_L is
        # the single point d == 0, where the ramp is 0 anyway)
        low = alpha_neg * d / torch.where(rt > 0, rt, torch.ones_like(rt))
    else:
        low = torch.zeros_like(d)
    neg = torch.full_like(d, alpha_neg)
    pos = torch.full_like(d, alpha_pos)
    return torch.where(d > t, pos, torch.where(d >= rt, neg, low))


def assistive_loss(pred: Tensor, teacher: Tensor, gt: Tensor, alpha_pos: float, alpha_neg: float,
                   beta_ratio: float, low_influence_ramp: bool = True) -> Tensor:
    """Elementwise (not reduced) ALoss ``w |T' - P|`` of one teacher.

    Args:
        pred: student prediction ``P`` (any shape).
        teacher: the teacher's prediction ``T`` (same shape; detached).
        gt: ground truth ``G`` (same shape; detached).
        alpha_pos: weight beyond the teacher (``R_P``).
        alpha_neg: weight between ``beta`` and the teacher (``R_N``), negative.
        beta_ratio: ``r`` placing ``beta`` at ``r |T - G|`` from ``G``, in ``(0, 1)``.
        low_influence_ramp: ramp the weight in ``R_L`` (paper figure) or leave it 0 (official code).
    """
    _check_same_shape(pred=pred, teacher=teacher, gt=gt)
    w = assistive_weight(pred, teacher, gt, alpha_pos, alpha_neg, beta_ratio, low_influence_ramp)
    pred, teacher, gt = _float(pred), _float(teacher).detach(), _float(gt).detach()
    d = (pred - gt).abs()
    t = (teacher - gt).abs()
    return w * (t - d).abs()  # |T' - P| = |t - d|: T' and P are on the same side of G


def main_loss(pred: Tensor, gt: Tensor, tau: Tensor | float, c: float) -> Tensor:
    """Elementwise (not reduced) main loss: ``c d`` for ``d <= tau``, ``d^2 + c tau - tau^2`` beyond.

    ``tau`` (a tensor broadcastable to ``pred`` or a number; detached) is ``|G - T_tol|`` in KD-Loss.
    """
    _check_same_shape(pred=pred, gt=gt)
    pred, gt = _float(pred), _float(gt).detach()
    tau_t = torch.as_tensor(tau, dtype=pred.dtype, device=pred.device).detach().abs()
    d = (gt - pred).abs()
    return torch.where(d <= tau_t, c * d, d * d + c * tau_t - tau_t * tau_t)


def kd_loss(pred: Tensor, gt: Tensor, tough: Tensor, tolerant: Tensor, config: KDLossConfig | None = None
            ) -> tuple[Tensor, dict[str, Tensor]]:
    """KD-Loss of the student.

    Args:
        pred: student predictions, e.g. ``(B, N, 2)`` crop-normalised coordinates.
        gt: hard landmarks, same shape.
        tough: the Tough-Teacher's predictions (trained on hard landmarks), same shape.
        tolerant: the Tolerant-Teacher's predictions (trained on soft landmarks), same shape.
        config: the constants; ``None`` uses :class:`KDLossConfig` defaults.

    Returns:
        ``(total, parts)``: ``total`` is the differentiable scalar
        ``w_main main + w_tough tough + w_tol tolerant``; ``parts`` holds the *unweighted* means
        ``"main"``, ``"tough"``, ``"tolerant"`` and the ``"total"``, all detached (for logging).
    """
    cfg = config or KDLossConfig()
    _check_same_shape(pred=pred, gt=gt, tough=tough, tolerant=tolerant)
    tau = (_float(gt) - _float(tolerant)).abs().detach()
    main = main_loss(pred, gt, tau, cfg.main_c).mean()
    a_tough = assistive_loss(pred, tough, gt, cfg.tough_alpha_pos, cfg.tough_alpha_neg, cfg.beta_ratio,
                             cfg.low_influence_ramp).mean()
    a_tol = assistive_loss(pred, tolerant, gt, cfg.tol_alpha_pos, cfg.tol_alpha_neg, cfg.beta_ratio,
                           cfg.low_influence_ramp).mean()
    total = cfg.w_main * main + cfg.w_tough * a_tough + cfg.w_tol * a_tol
    parts = {"main": main.detach(), "tough": a_tough.detach(), "tolerant": a_tol.detach(),
             "total": total.detach()}
    return total, parts


def visibility_loss(logits: Tensor, hidden: Tensor) -> Tensor:
    """Binary cross-entropy of the visibility head: ``logits`` ``(B, N)`` (positive = visible) against
    ``hidden`` ``(B, N)`` bool (True = occluded, covered or outside the input), mean over points and batch."""
    if tuple(logits.shape) != tuple(hidden.shape):
        raise ValueError(f"visibility logits {tuple(logits.shape)} and flags {tuple(hidden.shape)} differ "
                         "in shape")
    visible = (~hidden.bool()).to(torch.float32)
    return torch.nn.functional.binary_cross_entropy_with_logits(_float(logits), visible)


def error_nll(log_b: Tensor, pred: Tensor, gt: Tensor) -> Tensor:
    """Negative log-likelihood of each point's error under a radial 2D Laplace of scale ``b``.

    The density of the error vector ``e`` is ``exp(-|e| / b) / (2 pi b^2)``: its distance ``|e|`` then has
    mean ``2 b``.  Per point the loss is ``|e| / b + 2 log b`` (the constant ``log 2 pi`` left out),
    smallest at ``b = |e| / 2``; averaged over points and batch.  ``pred`` and ``gt`` are ``(B, N, 2)``
    and **detached** here: the loss trains the error head only, never the coordinates.
    """
    _check_same_shape(pred=pred, gt=gt)
    if tuple(log_b.shape) != tuple(pred.shape[:-1]):
        raise ValueError(f"log scales {tuple(log_b.shape)} must be {tuple(pred.shape[:-1])} (one per point)")
    dist = torch.linalg.vector_norm(_float(pred).detach() - _float(gt).detach(), dim=-1)
    lb = _float(log_b)
    return (dist * torch.exp(-lb) + 2.0 * lb).mean()
