"""Metrics: hand-computed cases and invariances."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kdlandmark.evaluate.metrics import (
    auc,
    bootstrap_ci,
    ced,
    failure_rate,
    nme_per_image,
    paired_bootstrap,
    per_landmark_error,
    summarise,
)
from kdlandmark.evaluate.protocols import score_protocol
from kdlandmark.layouts import get_layout


def _face(layout, rng):
    pts = rng.uniform(0, 100, (layout.num_points, 2))
    a, b = layout.inter_ocular
    pts[a], pts[b] = (20.0, 40.0), (80.0, 40.0)  # inter-ocular distance 60
    return pts


def test_identical_shapes_give_zero_and_known_offset_gives_known_nme() -> None:
    lay = get_layout("300w")
    gt = _face(lay, np.random.default_rng(0))[None]
    assert nme_per_image(gt, gt, lay)[0] == 0.0
    shifted = gt + np.array([3.0, 4.0])  # every point 5 px away
    assert nme_per_image(shifted, gt, lay)[0] == pytest.approx(5.0 / 60.0)


def test_known_error_distribution_gives_known_failure_rate_and_auc() -> None:
    nme = np.array([0.02, 0.04, 0.06, 0.12])
    assert failure_rate(nme, 0.10) == pytest.approx(0.25)
    # AUC = mean of (0.1 - e)/0.1 over images with e <= 0.1: (0.8 + 0.6 + 0.4 + 0) / 4
    assert auc(nme, 0.10) == pytest.approx(0.45)
    assert failure_rate(nme, 0.08) == pytest.approx(0.25)
    x, y = ced(nme, 0.10)
    assert y[0] == 0.0 and y[-1] == pytest.approx(0.75)
    # the sampled CED integrates to the exact AUC within 1e-4
    assert np.trapezoid(y, x) / 0.10 == pytest.approx(auc(nme, 0.10), abs=1e-4)
    s = summarise(nme)
    assert s.count == 4 and s.nme == pytest.approx(0.06)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(0.1, 20.0),
       name=st.sampled_from(["300w", "wflw", "cofw"]))
def test_nme_is_invariant_to_scaling_image_and_landmarks_together(seed, scale, name) -> None:
    lay = get_layout(name)
    rng = np.random.default_rng(seed)
    gt = _face(lay, rng)[None]
    pred = gt + rng.normal(0, 3, gt.shape)
    np.testing.assert_allclose(nme_per_image(pred * scale, gt * scale, lay), nme_per_image(pred, gt, lay),
                               rtol=1e-9)


def test_shape_mismatch_is_a_clear_error() -> None:
    lay = get_layout("cofw")
    with pytest.raises(ValueError, match="must both be"):
        nme_per_image(np.zeros((1, 68, 2)), np.zeros((1, 68, 2)), lay)


# --------------------------------------------------------------------------------------------- extensions
def test_failure_rate_and_auc_at_the_wflw_threshold_0_08() -> None:
    nme = np.array([0.02, 0.04, 0.06, 0.12])
    # AUC@0.08 = mean of (0.08 - e)/0.08 over e <= 0.08: (0.75 + 0.5 + 0.25 + 0) / 4
    assert auc(nme, 0.08) == pytest.approx(0.375)
    assert failure_rate(np.array([0.02, 0.079, 0.081, 0.09]), 0.08) == pytest.approx(0.5)
    x, y = ced(nme, 0.08)
    assert np.trapezoid(y, x) / 0.08 == pytest.approx(auc(nme, 0.08), abs=1e-4)
    s = summarise(nme, 0.08)
    assert s.threshold == 0.08 and s.as_percent()["fr"] == pytest.approx(25.0)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), threshold=st.sampled_from([0.08, 0.10]))
def test_sampled_ced_integrates_to_the_exact_auc_within_1e_4(seed, threshold) -> None:
    nme = np.random.default_rng(seed).gamma(2.0, 0.025, 300)
    x, y = ced(nme, threshold)
    assert np.trapezoid(y, x) / threshold == pytest.approx(auc(nme, threshold), abs=1e-4)


def test_inter_pupil_and_box_normalisations_by_hand() -> None:
    lay = get_layout("300w")
    gt = np.zeros((68, 2))
    gt[:, 0] = np.linspace(0, 90, 68)
    gt[:, 1] = np.linspace(0, 40, 68)             # landmark box 90 x 40: box size sqrt(3600) = 60
    gt[36:42] = (10.0, 20.0)                      # left eye centre (10, 20)
    gt[42:48] = (50.0, 20.0)                      # right eye centre (50, 20): inter-pupil 40
    pred = gt + np.array([0.0, 2.0])              # every point 2 px off
    assert nme_per_image(pred, gt, lay, "inter-pupil")[0] == pytest.approx(2.0 / 40.0)
    assert nme_per_image(pred, gt, lay, "box")[0] == pytest.approx(2.0 / 60.0)
    assert nme_per_image(pred, gt, lay, "inter-ocular")[0] == pytest.approx(2.0 / 40.0)  # corners at centres


def test_per_landmark_error_is_known_and_averages_to_the_nme() -> None:
    lay = get_layout("cofw")
    rng = np.random.default_rng(1)
    gt = np.stack([_face(lay, rng) for _ in range(5)])        # inter-ocular 60 everywhere
    pred = gt.copy()
    pred[:, 3] += (6.0, 0.0)                                   # point 3 off by 6 px = 0.1 in every image
    pl = per_landmark_error(pred, gt, lay)
    assert pl[3] == pytest.approx(0.1) and np.all(np.delete(pl, 3) == 0)
    noisy = gt + rng.normal(0, 2, gt.shape)
    assert per_landmark_error(noisy, gt, lay).mean() == pytest.approx(nme_per_image(noisy, gt, lay).mean())


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), angle=st.floats(-np.pi, np.pi), shift=st.floats(-500, 500))
def test_nme_is_invariant_to_rotating_and_moving_image_and_landmarks_together(seed, angle, shift) -> None:
    lay = get_layout("wflw")
    rng = np.random.default_rng(seed)
    gt = _face(lay, rng)[None]
    pred = gt + rng.normal(0, 3, gt.shape)
    r = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    for kind in ("inter-ocular", "inter-pupil"):
        np.testing.assert_allclose(nme_per_image(pred @ r.T + shift, gt @ r.T + shift, lay, kind),
                                   nme_per_image(pred, gt, lay, kind), rtol=1e-7)


def test_bootstrap_interval_contains_the_mean_and_shrinks_with_more_images() -> None:
    rng = np.random.default_rng(0)
    small = rng.gamma(2.0, 0.025, 50)
    large = rng.gamma(2.0, 0.025, 5000)
    lo_s, hi_s = bootstrap_ci(small, 1000, seed=1)
    lo_l, hi_l = bootstrap_ci(large, 1000, seed=1)
    assert lo_s <= small.mean() <= hi_s and lo_l <= large.mean() <= hi_l
    assert (hi_l - lo_l) < 0.2 * (hi_s - lo_s)                 # width ~ 1/sqrt(n): 10x more -> ~0.1
    assert bootstrap_ci(small, 1000, seed=1) == (lo_s, hi_s)   # seeded: reproducible
    s = summarise(small, bootstrap=500)
    assert s.nme_ci95 is not None and s.as_percent()["nme_ci95"][0] == pytest.approx(100 * s.nme_ci95[0])
    with pytest.raises(ValueError):
        bootstrap_ci(np.array([]), 10)


def test_paired_bootstrap_separates_a_clearly_better_model_from_identical_ones() -> None:
    rng = np.random.default_rng(0)
    a = rng.uniform(0.02, 0.20, 300)                           # image difficulty varies a lot ...
    b = a - 0.002 + rng.normal(0, 0.0005, 300)                 # ... B is better by 0.2 % on every image
    # unpaired intervals overlap: the gain is far smaller than the spread of image difficulty
    lo_a, hi_a = bootstrap_ci(a, 1000)
    lo_b, hi_b = bootstrap_ci(b, 1000)
    assert lo_a < hi_b
    better = paired_bootstrap(a, b, 1000)
    assert better.significant and better.ci95[1] < 0 and better.mean_diff == pytest.approx(-0.002, abs=2e-4)
    assert better.p_value < 0.01
    same = paired_bootstrap(a, a.copy(), 1000)
    assert not same.significant and same.mean_diff == 0.0 and same.p_value == 1.0
    d = rng.uniform(0.001, 0.01, 150)
    balanced = paired_bootstrap(a[:300], a[:300] + np.concatenate([d, -d]), 1000)   # mean difference 0
    assert not balanced.significant and balanced.ci95[0] < 0 < balanced.ci95[1]
    with pytest.raises(ValueError, match="same images"):
        paired_bootstrap(a, a[:10])


def test_protocol_pools_subsets_and_per_landmark_matches_the_subset_nme() -> None:
    lay = get_layout("300w")
    rng = np.random.default_rng(2)
    gts = {sp: np.stack([_face(lay, rng) for _ in range(m)]) for sp, m in
           (("test-common", 7), ("test-challenging", 3))}
    preds = {sp: g + rng.normal(0, 2, g.shape) for sp, g in gts.items()}
    score = score_protocol("300w", lay, preds, gts, bootstrap=0)
    assert list(score.subsets) == ["common", "challenging", "full"]
    full = np.concatenate([nme_per_image(preds[s], gts[s], lay) for s in ("test-common", "test-challenging")])
    assert score.subsets["full"].summary.nme == pytest.approx(full.mean())
    assert score.subsets["full"].summary.count == 10
    for sub in score.subsets.values():
        assert sub.per_landmark.mean() == pytest.approx(sub.summary.nme)
    with pytest.raises(ValueError, match="normalisation"):
        score_protocol("300w", lay, preds, gts, normalisation="eyes")
    with pytest.raises(ValueError, match="NaN"):
        score_protocol("300w", lay, {**preds, "test-common": preds["test-common"] * np.nan}, gts)
