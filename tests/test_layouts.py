"""Layouts: flip permutations, groups and normalisation points as the protocols define them."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kdlandmark.layouts import LAYOUTS, get_layout, layout_for_points

ALL = sorted(LAYOUTS)


@pytest.mark.parametrize("name", ALL)
def test_flip_is_an_involution(name: str) -> None:
    flip = LAYOUTS[name].flip_array
    assert np.array_equal(flip[flip], np.arange(LAYOUTS[name].num_points))


@pytest.mark.parametrize("name", ALL)
def test_flip_maps_each_left_group_onto_its_right_group(name: str) -> None:
    lay = LAYOUTS[name]
    assert lay.sides, "every layout names its mirror-image parts"
    for left, right in lay.sides:
        assert sorted(lay.flip_array[list(lay.groups[left])]) == sorted(lay.groups[right])


@pytest.mark.parametrize(
    ("name", "count", "io", "pupil_sizes"),
    [("300w", 68, (36, 45), (6, 6)), ("wflw", 98, (60, 72), (1, 1)), ("cofw", 29, (8, 9), (1, 1))],
)
def test_counts_and_normalisation_points_follow_the_protocol(name, count, io, pupil_sizes) -> None:
    lay = get_layout(name)
    assert lay.num_points == count
    assert lay.inter_ocular == io
    assert tuple(len(p) for p in lay.pupils) == pupil_sizes
    # the outer eye corners are a flip pair, as are the eye centres
    assert lay.flip[io[0]] == io[1]
    assert sorted(lay.flip_array[list(lay.pupils[0])]) == sorted(lay.pupils[1])
    assert layout_for_points(count) is lay


def test_reference_flip_pairs_300w_spot_checks() -> None:
    flip = get_layout("300w").flip
    for a, b in [(0, 16), (8, 8), (17, 26), (21, 22), (30, 30), (31, 35), (33, 33), (36, 45), (39, 42),
                 (40, 47), (48, 54), (51, 51), (55, 59), (57, 57), (60, 64), (62, 62), (65, 67), (66, 66)]:
        assert flip[a] == b and flip[b] == a


def test_reference_flip_pairs_wflw_and_cofw_spot_checks() -> None:
    wflw = get_layout("wflw").flip
    for a, b in [(0, 32), (16, 16), (33, 46), (38, 50), (51, 51), (57, 57), (55, 59), (60, 72), (64, 68),
                 (65, 75), (76, 82), (79, 79), (83, 87), (88, 92), (93, 95), (96, 97)]:
        assert wflw[a] == b and wflw[b] == a
    cofw = get_layout("cofw").flip
    for a, b in [(0, 1), (4, 6), (5, 7), (8, 9), (16, 17), (22, 23), (20, 20), (28, 28)]:
        assert cofw[a] == b and cofw[b] == a


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(ALL), seed=st.integers(0, 2**31 - 1), width=st.integers(16, 4000))
def test_mirror_twice_is_identity_and_keeps_normalisers(name: str, seed: int, width: int) -> None:
    lay = LAYOUTS[name]
    pts = np.random.default_rng(seed).uniform(0, width - 1, size=(lay.num_points, 2)).astype(np.float32)
    twice = lay.mirror(lay.mirror(pts, width), width)
    np.testing.assert_allclose(twice, pts, atol=1e-3)
    for kind in ("inter-ocular", "inter-pupil", "box"):
        np.testing.assert_allclose(lay.normaliser(lay.mirror(pts, width), kind), lay.normaliser(pts, kind),
                                   rtol=1e-5)


def test_normaliser_values_by_hand() -> None:
    lay = get_layout("300w")
    pts = np.zeros((68, 2))
    pts[36] = (10, 20)
    pts[45] = (40, 60)  # distance 50
    assert lay.normaliser(pts) == pytest.approx(50.0)
    pts[36:42] = (0, 0)
    pts[42:48] = (30, 40)
    assert lay.normaliser(pts, "inter-pupil") == pytest.approx(50.0)
    with pytest.raises(ValueError, match="unknown normalisation"):
        lay.normaliser(pts, "nose")


def test_unknown_layouts_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="no layout has 5 points"):
        layout_for_points(5)
    with pytest.raises(ValueError, match="unknown layout"):
        get_layout("aflw")


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(ALL), seed=st.integers(0, 2**31 - 1), bias=st.floats(-0.2, 0.2))
def test_flip_averaging_keeps_an_equivariant_answer_and_cancels_a_sideways_bias(name, seed, bias) -> None:
    """A model that answers the mirrored crop with the mirrored answer is left as it is; a model that
    always says ``bias`` too far right is corrected exactly (the mirror's bias points the other way)."""
    lay = LAYOUTS[name]
    rng = np.random.default_rng(seed)
    coords = rng.uniform(-0.4, 0.4, (3, lay.num_points, 2))
    vis = rng.random((3, lay.num_points))
    mirrored = coords[:, lay.flip_array].copy()
    mirrored[..., 0] *= -1
    out, v = lay.average_with_mirror(np.concatenate([coords, mirrored]),
                                     np.concatenate([vis, vis[:, lay.flip_array]]))
    np.testing.assert_allclose(out, coords, atol=1e-12)
    np.testing.assert_allclose(v, vis, atol=1e-12)
    shift = np.array([bias, 0.0])
    out, = lay.average_with_mirror(np.concatenate([coords + shift, mirrored + shift]))
    np.testing.assert_allclose(out, coords, atol=1e-12)
    with pytest.raises(ValueError, match="even batch"):
        lay.average_with_mirror(coords)


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(sorted(LAYOUTS)), seed=st.integers(0, 10_000), angle=st.floats(-3.0, 3.0))
def test_roll_is_the_eye_line_angle_and_turns_with_the_face(name: str, seed: int, angle: float) -> None:
    """Turning a face by ``angle`` adds ``angle`` to its roll (wrapped); a face with the image-left eye
    centre left of the other on one row has roll 0, and its mirror image too."""
    layout = get_layout(name)
    pts = np.random.default_rng(seed).uniform(0, 100, (layout.num_points, 2))
    c, s = np.cos(angle), np.sin(angle)
    turned = pts @ np.array([[c, -s], [s, c]]).T
    diff = np.angle(np.exp(1j * (layout.roll(turned) - layout.roll(pts) - angle)))
    assert abs(diff) < 1e-9
    level = pts.copy()
    for side, x in zip(layout.pupils, (20.0, 80.0), strict=True):
        level[list(side)] = [x, 50.0]
    assert layout.roll(level) == pytest.approx(0.0)
    assert layout.roll(layout.mirror(level, 100)) == pytest.approx(0.0)


@settings(max_examples=30, deadline=None)
@given(name=st.sampled_from(["300w", "wflw"]), seed=st.integers(0, 10_000), shift=st.floats(-0.4, 0.4))
def test_yaw_proxy_is_the_nose_tips_place_between_the_eyes_and_flips_with_the_mirror(
        name: str, seed: int, shift: float) -> None:
    """The nose tip put at ``0.5 + shift`` of the way from the image-left to the image-right inter-ocular
    point gives ``shift``; the mirror image gives ``-shift``; COFW (no nose bridge) is refused by name."""
    layout = get_layout(name)
    pts = np.random.default_rng(seed).uniform(0, 100, (layout.num_points, 2))
    a, b = layout.inter_ocular
    pts[a], pts[b] = [20.0, 40.0], [80.0, 45.0]
    pts[layout.groups["nose_bridge"][-1], 0] = 20.0 + (0.5 + shift) * 60.0
    assert layout.yaw_proxy(pts) == pytest.approx(shift)
    assert layout.yaw_proxy(layout.mirror(pts, 100)) == pytest.approx(-shift, abs=1e-6)   # float32 mirror
    assert layout.yaw_proxy(np.stack([pts, pts])).shape == (2,)
    with pytest.raises(ValueError, match="cofw"):
        get_layout("cofw").yaw_proxy(np.zeros((29, 2)))
