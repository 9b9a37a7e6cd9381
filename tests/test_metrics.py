"""Metrics: hand-computed cases and invariances."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kdlandmark.evaluate.metrics import auc, ced, failure_rate, nme_per_image, summarise
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
