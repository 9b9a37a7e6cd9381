"""The shared box -> crop geometry."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from kdlandmark.data.crop import (
    apply_affine,
    crop_affine,
    from_model_coords,
    invert_affine,
    landmark_box,
    model_to_image_affine,
    square_box,
    to_model_coords,
    upright_crop_affine,
)

boxes = st.tuples(st.floats(-50, 500), st.floats(-50, 500), st.floats(5, 400), st.floats(5, 400)).map(
    lambda t: (t[0], t[1], t[0] + t[2], t[1] + t[3]))


@settings(max_examples=50, deadline=None)
@given(box=boxes, size=st.integers(16, 512), margin=st.floats(0.0, 0.5))
def test_box_centre_maps_to_crop_centre_and_square_side_to_size(box, size, margin) -> None:
    a = crop_affine(box, size, margin)
    cx, cy, side = square_box(box, margin)
    centre = apply_affine(a, np.array([[cx, cy]]))[0]
    np.testing.assert_allclose(centre, [(size - 1) / 2] * 2, atol=1e-6)
    corners = apply_affine(a, np.array([[cx - side / 2, cy - side / 2], [cx + side / 2, cy + side / 2]]))
    np.testing.assert_allclose(corners, [[-0.5, -0.5], [size - 0.5, size - 0.5]], atol=1e-6)


@settings(max_examples=50, deadline=None)
@given(box=boxes, size=st.integers(16, 512), seed=st.integers(0, 1000))
def test_affine_round_trip_and_model_coords_round_trip(box, size, seed) -> None:
    pts = np.random.default_rng(seed).uniform(-100, 600, (7, 2))
    a = crop_affine(box, size)
    np.testing.assert_allclose(apply_affine(invert_affine(a), apply_affine(a, pts)), pts, atol=1e-6)
    crop_pts = apply_affine(a, pts)
    np.testing.assert_allclose(from_model_coords(to_model_coords(crop_pts, size), size), crop_pts,
                               rtol=1e-5, atol=1e-3)


def test_model_coords_span_minus_half_to_half() -> None:
    size = 224
    np.testing.assert_allclose(to_model_coords(np.array([[-0.5, size - 0.5]]), size), [[-0.5, 0.5]])


@settings(max_examples=50, deadline=None)
@given(lin=st.tuples(*[st.floats(-3, 3)] * 4), t=st.tuples(st.floats(-500, 500), st.floats(-500, 500)),
       size=st.integers(16, 512), seed=st.integers(0, 1000))
def test_model_to_image_affine_is_model_coords_then_the_inverse_crop(lin, t, size, seed) -> None:
    """The folded map equals from_model_coords followed by the inverse affine, rotated crops included."""
    a = np.array([[lin[0], lin[1], t[0]], [lin[2], lin[3], t[1]]])
    if abs(np.linalg.det(a[:, :2])) < 1e-2:
        return
    coords = np.random.default_rng(seed).uniform(-0.7, 0.7, (9, 2))
    expected = apply_affine(invert_affine(a), from_model_coords(coords, size).astype(np.float64))
    np.testing.assert_allclose(apply_affine(model_to_image_affine(a, size), coords), expected,
                               rtol=1e-6, atol=1e-6 * size / min(1.0, abs(np.linalg.det(a[:, :2]))))


def test_landmark_box_of_integer_and_float32_points_is_exact() -> None:
    pts = np.array([[3, 9], [7, -2], [5, 4]])
    assert landmark_box(pts) == (3.0, -2.0, 7.0, 9.0)
    assert landmark_box(pts.astype(np.float32) + np.float32(0.25)) == (3.25, -1.75, 7.25, 9.25)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 10_000), angle=st.floats(-3.1, 3.1), size=st.integers(16, 256),
       margin=st.floats(0.0, 0.5), centre=st.tuples(st.floats(-200, 800), st.floats(-200, 800)))
def test_upright_crop_of_a_turned_face_is_the_crop_of_the_face_before_it_turned(seed, angle, size, margin,
                                                                                centre) -> None:
    """Points turned by ``angle`` about any centre land, through ``upright_crop_affine(turned, angle)``,
    exactly where ``crop_affine`` of their landmark box puts the points before they turned; with angle 0
    the two crops are the same."""
    pts = np.random.default_rng(seed).uniform(0, 300, (9, 2))
    c, s = np.cos(angle), np.sin(angle)
    turned = (pts - centre) @ np.array([[c, -s], [s, c]]).T + centre
    upright = upright_crop_affine(turned, angle, size, margin)
    plain = crop_affine(landmark_box(pts), size, margin)
    np.testing.assert_allclose(apply_affine(upright, turned), apply_affine(plain, pts), atol=1e-6)
    np.testing.assert_allclose(upright_crop_affine(pts, 0.0, size, margin), plain, atol=1e-9)
