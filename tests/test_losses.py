"""KD-Loss (Fard & Mahoor 2022): ALoss regions, main loss, the total, and their gradients.

Hand-computed values use G = 0 unless stated.  Notation: d = |P - G|, t = |T - G|, r = beta_ratio.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from kdlandmark.losses import (
    KDLossConfig,
    assistive_loss,
    assistive_weight,
    beta_point,
    kd_loss,
    l2_loss,
    main_loss,
    reflect_teacher,
)

F64 = torch.float64


def _t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


def _aloss(p: float, t: float, g: float = 0.0, a_pos: float = 1.9, a_neg: float = -0.45, r: float = 0.4,
           ramp: bool = True) -> float:
    return float(assistive_loss(_t(p), _t(t), _t(g), a_pos, a_neg, r, ramp))


def _total(p: torch.Tensor, g: torch.Tensor, tough: torch.Tensor, tol: torch.Tensor,
           cfg: KDLossConfig) -> torch.Tensor:
    """Elementwise KD-Loss (kd_loss averages this)."""
    tau = (g - tol).abs()
    return (cfg.w_main * main_loss(p, g, tau, cfg.main_c)
            + cfg.w_tough * assistive_loss(p, tough, g, cfg.tough_alpha_pos, cfg.tough_alpha_neg,
                                           cfg.beta_ratio, cfg.low_influence_ramp)
            + cfg.w_tol * assistive_loss(p, tol, g, cfg.tol_alpha_pos, cfg.tol_alpha_neg, cfg.beta_ratio,
                                         cfg.low_influence_ramp))


# --------------------------------------------------------------------------- hand-computed values


def test_aloss_hand_computed_each_region() -> None:
    # teacher at 0.4, r = 0.4 -> beta at 0.16; official Tough constants alpha+ 1.9, alpha- -0.45
    # R_P: P = 0.5, d > t: w = 1.9, |T' - P| = 0.1 -> 0.19
    assert _aloss(0.5, 0.4) == pytest.approx(0.19)
    # R_N: P = 0.3, 0.16 <= d <= 0.4: w = -0.45, |T' - P| = 0.1 -> -0.045
    assert _aloss(0.3, 0.4) == pytest.approx(-0.045)
    # R_L with ramp: P = 0.08 (half-way to beta): w = -0.45 * 0.08 / 0.16 = -0.225, |T' - P| = 0.32
    # -> -0.072
    assert _aloss(0.08, 0.4) == pytest.approx(-0.072)
    # R_L without ramp (official code): 0
    assert _aloss(0.08, 0.4, ramp=False) == 0.0
    # at beta: -0.45 * (0.4 - 0.16) = -0.108, ramp or not (R_N is closed at beta, as in the code)
    # (P written as r * t: 0.16 itself is a hair below 0.4 * 0.4 in binary floating point)
    assert _aloss(0.4 * 0.4, 0.4) == pytest.approx(-0.108)
    assert _aloss(0.4 * 0.4, 0.4, ramp=False) == pytest.approx(-0.108)
    # teacher on the other side of G is reflected: P = -0.3, T = +0.4 -> T' = -0.4 -> -0.045
    assert _aloss(-0.3, 0.4) == pytest.approx(-0.045)
    # G not at 0: G = 1, T = 0.6 (t = 0.4), P = 1.5 (d = 0.5) -> R_P: 1.9 * 0.1
    assert _aloss(1.5, 0.6, g=1.0) == pytest.approx(0.19)
    # paper-figure constants, teacher at 0.49 -> beta 0.196; P = 0.6: w = 1, |0.49 - 0.6| = 0.11
    assert _aloss(0.6, 0.49, a_pos=1.0, a_neg=-0.5) == pytest.approx(0.11)
    # official r = 0.15: teacher 0.4 -> beta 0.06; P = 0.03: w = -0.45 * 0.5, |0.4 - 0.03| = 0.37
    assert _aloss(0.03, 0.4, r=0.15) == pytest.approx(-0.225 * 0.37)


def test_weight_hand_computed() -> None:
    w = assistive_weight(_t(0.5, 0.3, 0.08, 0.0, -0.08), _t(0.4, 0.4, 0.4, 0.4, 0.4), _t(0, 0, 0, 0, 0),
                         1.9, -0.45, 0.4)
    torch.testing.assert_close(w, _t(1.9, -0.45, -0.225, 0.0, -0.225))


def test_main_loss_hand_computed() -> None:
    # figure: tau = 0.5, c = 1.  P = 0.3 (inside): 0.3.  P = 0.7: 0.49 + 0.5 - 0.25 = 0.74
    torch.testing.assert_close(main_loss(_t(0.3, 0.7, -0.7), _t(0, 0, 0), 0.5, 1.0), _t(0.3, 0.74, 0.74))
    # code: c = 3, tau = 0.1.  P = 0.05: 0.15.  P = 0.3: 0.09 + 0.3 - 0.01 = 0.38
    torch.testing.assert_close(main_loss(_t(0.05, 0.3), _t(0, 0), _t(0.1, 0.1), 3.0), _t(0.15, 0.38))
    # tau = 0: plain square
    torch.testing.assert_close(main_loss(_t(0.3), _t(0), 0.0, 3.0), _t(0.09))


def test_kd_loss_hand_computed() -> None:
    # G = 0, P = 0.3, Tough 0.4, Tolerant 0.2, defaults (w 2/1/1, c 3, r 0.4, official alphas)
    # main: tau = 0.2 < d: 0.09 + 0.6 - 0.04 = 0.65
    # tough: R_N: -0.45 * 0.1 = -0.045;  tolerant: R_P: 1.8 * 0.1 = 0.18
    # total: 2 * 0.65 - 0.045 + 0.18 = 1.435
    total, parts = kd_loss(_t(0.3), _t(0.0), _t(0.4), _t(0.2))
    assert float(total) == pytest.approx(1.435)
    assert float(parts["main"]) == pytest.approx(0.65)
    assert float(parts["tough"]) == pytest.approx(-0.045)
    assert float(parts["tolerant"]) == pytest.approx(0.18)
    assert float(parts["total"]) == pytest.approx(1.435)


def test_l2_loss_is_mse() -> None:
    assert float(l2_loss(_t(1.0, 2.0), _t(0.0, 0.0))) == pytest.approx(2.5)


def test_reflect_and_beta() -> None:
    torch.testing.assert_close(reflect_teacher(_t(-0.3, 0.2), _t(0.4, -0.1), _t(0, 0)), _t(-0.4, 0.1))
    # the paper's figure: teacher at 0.4 -> beta 0.16, at 0.49 -> 0.196 (r = 0.4)
    torch.testing.assert_close(beta_point(_t(0.3, 0.3), _t(0.4, 0.49), _t(0, 0), 0.4), _t(0.16, 0.196))
    torch.testing.assert_close(beta_point(_t(-0.3), _t(0.49), _t(0), 0.4), _t(-0.196))


# --------------------------------------------------------------------------- shape properties

dist = st.floats(0.01, 0.6)
ratio = st.floats(0.05, 0.49)
alpha_pos = st.floats(0.1, 3.0)
alpha_neg = st.floats(-2.0, -0.05)


@settings(max_examples=50, deadline=None)
@given(t=dist, r=ratio, a_pos=alpha_pos, a_neg=alpha_neg, g=st.floats(-0.5, 0.5),
       side=st.sampled_from([-1, 1]))
def test_aloss_continuous_at_region_boundaries(t, r, a_pos, a_neg, g, side) -> None:
    eps = 1e-7
    lipschitz = max(a_pos, abs(a_neg) / r) * 2  # generous bound on |dALoss/dd|
    teacher = g + side * t
    for boundary in (t, r * t):  # R_P | R_N at the teacher, R_N | R_L at beta
        lo = _aloss(g + side * (boundary - eps), teacher, g, a_pos, a_neg, r)
        hi = _aloss(g + side * (boundary + eps), teacher, g, a_pos, a_neg, r)
        assert abs(hi - lo) <= lipschitz * 2 * eps + 1e-12
    # the values at the boundaries: 0 at the teacher, alpha- t (1 - r) at beta
    assert _aloss(g + side * t, teacher, g, a_pos, a_neg, r) == pytest.approx(0.0, abs=1e-12)
    assert _aloss(g + side * r * t, teacher, g, a_pos, a_neg, r) == pytest.approx(a_neg * t * (1 - r))


@settings(max_examples=30, deadline=None)
@given(t=dist, r=ratio, a_neg=alpha_neg)
def test_without_ramp_aloss_jumps_at_beta(t, r, a_neg) -> None:
    """The official code's R_L weight is 0, so the ALoss drops by alpha- t (1 - r) at beta."""
    eps = 1e-9
    lo = _aloss(r * t - eps, t, a_neg=a_neg, r=r, ramp=False)
    hi = _aloss(r * t + eps, t, a_neg=a_neg, r=r, ramp=False)
    assert lo == 0.0
    assert hi == pytest.approx(a_neg * t * (1 - r), rel=1e-6)


@settings(max_examples=50, deadline=None)
@given(tau=st.floats(0.0, 0.6), c=st.floats(0.5, 4.0), g=st.floats(-0.5, 0.5))
def test_main_loss_continuous_at_tau(tau, c, g) -> None:
    eps = 1e-7
    for side in (-1, 1):
        lo = float(main_loss(_t(g + side * (tau - eps)), _t(g), tau, c))
        hi = float(main_loss(_t(g + side * (tau + eps)), _t(g), tau, c))
        assert abs(hi - lo) <= (c + 2 * tau + 1) * 2 * eps + 1e-12


@settings(max_examples=50, deadline=None)
@given(p=st.floats(-1, 1), t=st.floats(-1, 1), tol=st.floats(-1, 1), g=st.floats(-1, 1))
def test_mirror_symmetry_about_g(p, t, tol, g) -> None:
    """Mirroring P and the teachers about G leaves every loss unchanged; so does mirroring only a
    teacher (the teacher is reflected to the student's side anyway)."""
    cfg = KDLossConfig()
    base = float(_total(_t(p), _t(g), _t(t), _t(tol), cfg))
    mirrored = float(_total(_t(2 * g - p), _t(g), _t(2 * g - t), _t(2 * g - tol), cfg))
    teacher_only = float(_total(_t(p), _t(g), _t(2 * g - t), _t(2 * g - tol), cfg))
    assert mirrored == pytest.approx(base, abs=1e-9)
    assert teacher_only == pytest.approx(base, abs=1e-9)


@settings(max_examples=50, deadline=None)
@given(t=dist, r=ratio, a_pos=alpha_pos, a_neg=alpha_neg, g=st.floats(-0.5, 0.5),
       ramp=st.booleans())
def test_aloss_zero_at_g_and_at_reflected_teacher_minimum_at_beta(t, r, a_pos, a_neg, g, ramp) -> None:
    for teacher in (g + t, g - t):
        assert _aloss(g, teacher, g, a_pos, a_neg, r, ramp) == 0.0
        for side in (-1, 1):
            assert _aloss(g + side * t, teacher, g, a_pos, a_neg, r, ramp) == pytest.approx(0.0, abs=1e-12)
            # minimum over a fine grid of P on this side lies at beta
            d = torch.linspace(0, 2 * t, 4001, dtype=F64)
            p = g + side * d
            full = torch.ones_like(p)
            loss = assistive_loss(p, teacher * full, g * full, a_pos, a_neg, r, ramp)
            i = int(loss.argmin())
            assert float(d[i]) == pytest.approx(r * t, abs=2 * t / 4000 + 1e-12)
            assert float(loss[i]) == pytest.approx(a_neg * t * (1 - r), rel=1e-3)


# --------------------------------------------------------------------------- the total pulls to G


def _slope_min(cfg: KDLossConfig, t_tough: float, t_tol: float, g: float) -> float:
    """Smallest finite-difference slope of the total along d = |P - G| on both sides of G."""
    d = torch.linspace(0, 0.8, 8001, dtype=F64)
    worst = math.inf
    for side in (-1.0, 1.0):
        p = g + side * d
        full = torch.ones_like(p)
        f = _total(p, g * full, (g + t_tough) * full, (g - t_tol) * full, cfg)
        worst = min(worst, float((f.diff() / (d[1] - d[0])).min()))
    return worst


@settings(max_examples=40, deadline=None)
@given(t_tough=st.floats(0.0, 0.6), t_tol=st.floats(0.0, 0.6), g=st.floats(-0.3, 0.3))
def test_defaults_total_rises_monotonically_with_distance(t_tough, t_tol, g) -> None:
    """REFERENCE.md's claim, for the default constants: the total KD-Loss rises strictly with |P - G|.

    Analytically the smallest slope is w_tol alpha+_tol - w_tough |alpha-_tough| / r = 1.8 - 1.125 = 0.675
    (Tough far, Tolerant at G, P just off G); any finite-difference slope is at least that.
    """
    assert _slope_min(KDLossConfig(), t_tough, t_tol, g) > 0.6


def test_where_other_settings_are_not_monotone() -> None:
    """Documented exceptions (docs/METHOD.md): the claim depends on the constants.

    * paper-figure constants (alpha+- 1/-0.5, c = 1): near G, when P is inside both teachers'
      low-influence regions, the slope is w_main c - (|a-| + |a-|)/r = 2 - 2.5 < 0;
    * defaults with r = 0.15 and the ramp: Tough far, Tolerant at G: 1.8 - 0.45/0.15 = -1.2 < 0;
    * official code (r = 0.15, no ramp): the total drops by w |alpha-| t (1 - r) at each beta.
    """
    assert _slope_min(KDLossConfig.paper_figure(), 0.5, 0.5, 0.0) == pytest.approx(-0.5, abs=0.02)
    assert _slope_min(KDLossConfig(beta_ratio=0.15), 0.6, 0.0, 0.0) == pytest.approx(-1.2, abs=0.02)
    cfg = KDLossConfig.official_code()
    eps = 1e-9
    below = _total(_t(0.15 * 0.4 - eps), _t(0), _t(0.4), _t(0.2), cfg)
    above = _total(_t(0.15 * 0.4 + eps), _t(0), _t(0.4), _t(0.2), cfg)
    assert float(above - below) == pytest.approx(-0.45 * 0.4 * 0.85, rel=1e-4)


def _region_batch(cfg: KDLossConfig, seed: int, restrict: str | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, N, 2) predictions covering every feasible pair of (Tough region, Tolerant region), both sides
    of G, teachers on random sides.  ``restrict='outside_low'`` keeps P out of both R_L."""
    gen = torch.Generator().manual_seed(seed)
    r = cfg.beta_ratio
    preds, gts, toughs, tols = [], [], [], []

    def u(a: float, b: float) -> float:
        return a + (b - a) * float(torch.rand((), generator=gen, dtype=F64))

    regions = {"L": (0.02, 0.98 * r), "N": (1.02 * r, 0.98), "P": (1.05, 3.0)}  # d / t
    for rt_name, (lo1, hi1) in regions.items():
        for rl_name, (lo2, hi2) in regions.items():
            if restrict == "outside_low" and "L" in (rt_name, rl_name):
                continue
            for _ in range(8):
                # choose d first, then the teachers' distances from the wanted d / t ratios
                d = u(0.01, 0.3)
                t_tough, t_tol = d / u(lo1, hi1), d / u(lo2, hi2)
                g = u(-0.4, 0.4)
                side = 1.0 if u(0, 1) < 0.5 else -1.0
                preds.append(g + side * d)
                gts.append(g)
                toughs.append(g + (1.0 if u(0, 1) < 0.5 else -1.0) * t_tough)
                tols.append(g + (1.0 if u(0, 1) < 0.5 else -1.0) * t_tol)
    shape = (-1, 4, 2)  # (B, N, 2)
    n = len(preds) - len(preds) % 8
    return tuple(torch.tensor(v[:n], dtype=F64).reshape(shape) for v in (preds, gts, toughs, tols))


def _sgd_step_moves_towards_g(cfg: KDLossConfig, restrict: str | None, seed: int) -> None:
    pred, gt, tough, tol = _region_batch(cfg, seed, restrict)
    p = pred.clone().requires_grad_(True)
    total, _ = kd_loss(p, gt, tough, tol, cfg)
    total.backward()
    assert torch.isfinite(p.grad).all()
    lr = 1e-4 * p.numel()  # per-element step = 1e-4 * slope: far smaller than any distance here
    new = pred - lr * p.grad
    before = (pred - gt).abs()
    after = (new - gt).abs()
    assert (after < before).all(), f"moved away from G at {((after >= before).nonzero()[:5]).tolist()}"


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_sgd_step_moves_towards_g_from_every_region_defaults(seed) -> None:
    _sgd_step_moves_towards_g(KDLossConfig(), None, seed)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_sgd_step_moves_towards_g_official_code_constants(seed) -> None:
    """No ramp: the R_L slope is 0, so the main loss alone decides there (towards G)."""
    _sgd_step_moves_towards_g(KDLossConfig.official_code(), None, seed)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_sgd_step_moves_towards_g_paper_figure_outside_low_influence(seed) -> None:
    """Paper-figure constants: towards G whenever P is outside both low-influence regions ..."""
    _sgd_step_moves_towards_g(KDLossConfig.paper_figure(), "outside_low", seed)


def test_paper_figure_constants_push_away_from_g_inside_low_influence() -> None:
    """... but not inside them: P = 0.01 with both teachers at 0.3 is pushed away from G (slope
    2 - 2 * 1.25 (1 - 2d/t) < 0 for d < 0.2 / (1/t + 1/t) = 0.03, so the total has its minima at
    d = 0.03, not at G).  Documented in docs/METHOD.md."""
    p = _t(0.01).requires_grad_(True)
    total, _ = kd_loss(p, _t(0.0), _t(0.3), _t(-0.3), KDLossConfig.paper_figure())
    total.backward()
    assert float(p.grad) < 0  # descent increases P, away from G = 0
    assert float(p.grad) == pytest.approx(2 - 2 * 1.25 * (1 - 2 * 0.01 / 0.3), rel=1e-9)


# --------------------------------------------------------------------------- tensors, edge cases


def test_batch_shapes_and_reduction() -> None:
    gen = torch.Generator().manual_seed(0)
    pred, gt, tough, tol = (torch.rand(3, 68, 2, generator=gen) - 0.5 for _ in range(4))
    total, parts = kd_loss(pred, gt, tough, tol)
    assert total.shape == () and total.dtype == torch.float32
    cfg = KDLossConfig()
    elementwise = _total(pred.double(), gt.double(), tough.double(), tol.double(), cfg)
    assert float(total) == pytest.approx(float(elementwise.mean()), rel=1e-5)
    assert float(parts["total"]) == pytest.approx(
        cfg.w_main * float(parts["main"]) + cfg.w_tough * float(parts["tough"])
        + cfg.w_tol * float(parts["tolerant"]), rel=1e-6)
    # a flattened (B, 2N) layout gives the same loss
    flat, _ = kd_loss(pred.reshape(3, -1), gt.reshape(3, -1), tough.reshape(3, -1), tol.reshape(3, -1))
    assert float(flat) == pytest.approx(float(total), rel=1e-6)
    # half precision input is computed in float32
    half, _ = kd_loss(pred.half(), gt.half(), tough.half(), tol.half())
    assert half.dtype == torch.float32
    with pytest.raises(ValueError, match="same shape"):
        kd_loss(pred, gt[:, :10], tough, tol)
    with pytest.raises(ValueError, match="same shape"):
        l2_loss(pred, gt[0])


def test_no_nan_at_p_equal_g_or_t_equal_g() -> None:
    g = torch.tensor([[0.1, -0.2], [0.3, 0.0], [0.0, 0.0]], dtype=F64)
    for cfg in (KDLossConfig(), KDLossConfig.paper_figure(), KDLossConfig.official_code()):
        for pred, tough, tol in ((g, g + 0.1, g - 0.2), (g + 0.05, g, g), (g, g, g)):
            p = pred.clone().requires_grad_(True)
            total, parts = kd_loss(p, g, tough, tol, cfg)
            total.backward()
            assert torch.isfinite(total) and all(torch.isfinite(v) for v in parts.values())
            assert torch.isfinite(p.grad).all()
            if torch.equal(pred, g):
                assert float(total.detach()) == 0.0
                assert torch.all(p.grad == 0)  # G is the minimum: zero (sub)gradient
    # teacher exactly at G: every P != G lies beyond it -> alpha+ d (the t -> 0 limit)
    assert _aloss(0.3, 0.0) == pytest.approx(1.9 * 0.3)
    assert _aloss(-0.3, 0.0) == pytest.approx(1.9 * 0.3)


def test_teachers_and_ground_truth_get_no_gradient() -> None:
    pred = torch.tensor([0.3, -0.1], requires_grad=True)
    gt = torch.tensor([0.0, 0.0], requires_grad=True)
    tough = torch.tensor([0.4, 0.2], requires_grad=True)
    tol = torch.tensor([0.2, -0.3], requires_grad=True)
    total, _ = kd_loss(pred, gt, tough, tol)
    total.backward()
    assert pred.grad is not None
    assert gt.grad is None and tough.grad is None and tol.grad is None


def test_config_validation_and_presets() -> None:
    with pytest.raises(ValueError, match="beta_ratio"):
        KDLossConfig(beta_ratio=0.0)
    with pytest.raises(ValueError, match="tough_alpha_neg"):
        KDLossConfig(tough_alpha_neg=0.3)
    with pytest.raises(ValueError, match="w_main"):
        KDLossConfig(w_main=-1)
    with pytest.raises(ValueError, match="l2_warmup_epochs"):
        KDLossConfig(l2_warmup_epochs=-1)
    assert KDLossConfig().l2_warmup_epochs == 0  # the paper: KD-Loss from the first step
    fig = KDLossConfig.paper_figure()
    assert (fig.tough_alpha_pos, fig.tough_alpha_neg, fig.main_c, fig.beta_ratio) == (1.0, -0.5, 1.0, 0.4)
    off = KDLossConfig.official_code()
    assert (off.beta_ratio, off.low_influence_ramp, off.main_c) == (0.15, False, 3.0)
    assert KDLossConfig(**KDLossConfig().to_dict()) == KDLossConfig()


@settings(max_examples=30, deadline=None)
@given(p=st.floats(-1, 1), t=st.floats(-1, 1), g=st.floats(-1, 1))
def test_matches_official_formula_away_from_ties(p, t, g) -> None:
    """With r = 0.15 and no ramp, assistive_loss equals the official code's sign-test formula."""
    assume(abs(p - g) > 1e-6 and abs(t - g) > 1e-6 and abs(abs(p - g) - abs(t - g)) > 1e-6)
    assume(abs(abs(p - g) - 0.15 * abs(t - g)) > 1e-6)
    sign = math.copysign
    s = sign(1.0, p - g)
    x_t = g + s * abs(t - g)
    b_t = g + s * abs(x_t - g) * 0.15
    pos = 1.9 if sign(1.0, p - x_t) * sign(1.0, x_t - g) > 0 else 0.0
    neg = -0.45 if sign(1.0, x_t - p) * sign(1.0, p - b_t) >= 0 else 0.0
    official = (pos + neg) * abs(x_t - p)
    assert _aloss(p, t, g, 1.9, -0.45, 0.15, ramp=False) == pytest.approx(official, abs=1e-12)
