"""Synthetic faces: determinism, geometry shared by the three layouts, labels, native-format datasets."""

import dataclasses
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kdlandmark.data.synth import (
    FaceShape,
    build_geometry,
    contact_sheet,
    format_summary,
    frontal_shape,
    landmarks_3d,
    mean_shape_baseline_nme,
    render_face,
    render_scene,
    sample_scene,
    synthesize,
)
from kdlandmark.data.synth.dataset import assign_parts, render_for_part
from kdlandmark.layouts import LAYOUTS, Layout, get_layout

ALL = sorted(LAYOUTS)
SIZE = 160  # small images keep the tests quick; the geometry does not depend on the size

#: The same anatomical points in the three layouts (0-based protocol indices).
SHARED = {
    "outer eye corners": ((36, 45), (60, 72), (8, 9)),
    "mouth corners": ((48, 54), (76, 82), (22, 23)),
    "chin": ((8,), (16,), (28,)),
    "nose tip": ((30,), (54,), (20,)),
    "upper lip top": ((51,), (79,), (24,)),
    "lower lip bottom": ((57,), (85,), (27,)),
}


def _clean(scene, **changes):
    """The scene with a plain camera (no blur, noise, JPEG, colour change) and no occluder."""
    scene = dataclasses.replace(scene, **changes)
    scene.post = {"blur": {"kind": "none"}, "noise": 0.0, "jpeg": None, "gamma": 1.0, "contrast": 1.0}
    if "occluder" not in changes:
        scene.occluder = None
    return scene


# ------------------------------------------------------------------------------------- determinism

def test_same_seed_same_face_and_different_seed_different_face() -> None:
    lay = get_layout("300w")
    a_img, a_lm, a_info = render_face(np.random.default_rng([3, 7]), lay, SIZE)
    b_img, b_lm, b_info = render_face(np.random.default_rng([3, 7]), lay, SIZE)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lm, b_lm)
    assert np.array_equal(a_info["occluded"], b_info["occluded"]) and a_info["box"] == b_info["box"]
    c_img, c_lm, _ = render_face(np.random.default_rng([3, 8]), lay, SIZE)
    assert not np.array_equal(a_img, c_img)
    assert np.abs(a_lm - c_lm).max() > 1.0


def test_image_shape_dtype_and_landmark_format() -> None:
    for name in ALL:
        lay = get_layout(name)
        img, lm, info = render_face(np.random.default_rng(11), lay, SIZE)
        assert img.shape == (SIZE, SIZE, 3) and img.dtype == np.uint8
        assert lm.shape == (lay.num_points, 2) and lm.dtype == np.float32
        assert info["occluded"].shape == (lay.num_points,) and info["occluded"].dtype == bool
        flags = {"pose", "expression", "illumination", "makeup", "occlusion", "blur"}
        assert set(info["attributes"]) == flags


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), name=st.sampled_from(ALL))
def test_landmarks_lie_inside_the_image_and_the_face_fills_45_to_75_percent(seed: int, name: str) -> None:
    lay = get_layout(name)
    face = render_scene(sample_scene(np.random.default_rng(seed), SIZE))
    curves = face.camera.project(np.concatenate(list(face.geometry.curves.values())))
    span = (curves.max(axis=0) - curves.min(axis=0)).max() / SIZE
    assert 0.45 - 1e-6 <= span <= 0.75 + 1e-6
    lm = face.landmarks(lay)
    assert np.isfinite(lm).all()
    assert (lm >= 0).all() and (lm <= SIZE - 1).all()


def test_near_frontal_faces_show_both_eyes_inside_the_face_box() -> None:
    lay = get_layout("300w")
    for seed in range(12):
        scene = _clean(sample_scene(np.random.default_rng([5, seed]), SIZE), yaw=5.0, pitch=-5.0, roll=3.0)
        lm = render_scene(scene).landmarks(lay)
        jaw = lm[list(lay.groups["jaw"])]
        for eye in ("eye_left", "eye_right"):
            pts = lm[list(lay.groups[eye])]
            assert jaw[:, 0].min() < pts[:, 0].min() and pts[:, 0].max() < jaw[:, 0].max()
        assert lm[list(lay.groups["eye_left"]), 0].mean() < lm[list(lay.groups["eye_right"]), 0].mean()


# ------------------------------------------------------------------------------------ layout geometry

@pytest.mark.parametrize("name", ALL)
def test_frontal_mean_face_is_its_own_mirror_image(name: str) -> None:
    """Mirror + the layout's flip permutation maps the symmetric frontal face onto itself.

    This checks layouts.py's flip tables against independently built symmetric geometry.
    """
    lay = get_layout(name)
    size = 256
    shape = frontal_shape(lay, size)
    assert shape.shape == (lay.num_points, 2)
    assert np.abs(lay.mirror(shape, size) - shape).max() < 1.0
    centre = (size - 1) / 2
    for left, right in lay.sides:
        assert (shape[list(lay.groups[left]), 0] < centre).all(), left
        assert (shape[list(lay.groups[right]), 0] > centre).all(), right


@pytest.mark.parametrize("name", ALL)
def test_a_wrong_flip_table_is_caught_by_the_mirror_check(name: str) -> None:
    lay = get_layout(name)
    flip = list(lay.flip)
    a, b = lay.inter_ocular
    c, d = lay.groups["eye_left"][1], lay.groups["eye_right"][1]
    flip[a], flip[c] = flip[c], flip[a]  # swap two entries: no longer the protocol's table
    wrong = dataclasses.replace(lay, flip=tuple(flip))
    shape = frontal_shape(lay)
    assert np.abs(wrong.mirror(shape, 256) - shape).max() > 1.0
    del b, d


@pytest.mark.parametrize("name", ALL)
def test_closed_contours_run_clockwise_from_the_image_left_end(name: str) -> None:
    lay = get_layout(name)
    shape = frontal_shape(lay).astype(np.float64)
    for group in ("eye_left", "eye_right"):
        p = shape[list(lay.groups[group])]
        x, y = p[:, 0], p[:, 1]
        area = 0.5 * (np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
        assert area > 0, f"{group} is not clockwise in image coordinates"
        assert np.argmin(x) == 0, f"{group} does not start at its image-left corner"


def test_same_face_gives_agreeing_landmarks_in_all_three_layouts() -> None:
    lays = [get_layout(n) for n in ("300w", "wflw", "cofw")]
    for seed in range(4):
        images, marks = [], []
        for lay in lays:
            img, lm, _ = render_face(np.random.default_rng([21, seed]), lay, SIZE)
            images.append(img)
            marks.append(lm)
        assert np.array_equal(images[0], images[1]) and np.array_equal(images[0], images[2])
        for what, idx in SHARED.items():
            ref = marks[0][list(idx[0])]
            for k in (1, 2):
                assert np.abs(marks[k][list(idx[k])] - ref).max() < 1e-3, what
        # pupils: WFLW 96/97 and COFW 16/17 are the same iris centres
        assert np.abs(marks[1][[96, 97]] - marks[2][[16, 17]]).max() < 1e-3
        # the inter-ocular distance is the same number in all three layouts
        io = [lay.normaliser(lm) for lay, lm in zip(lays, marks, strict=True)]
        assert io[0] == pytest.approx(io[1], abs=1e-3) and io[0] == pytest.approx(io[2], abs=1e-3)


def test_wflw_points_interleave_300w_points_along_the_shared_curves() -> None:
    """WFLW's contour (33) and eyes (8) resample the curves that give 300W's 17 and 6 points."""
    w3, wf = get_layout("300w"), get_layout("wflw")
    geo = build_geometry(FaceShape())
    a, b = landmarks_3d(geo, w3), landmarks_3d(geo, wf)
    assert np.abs(a[0:17] - b[0:33:2]).max() < 1e-9
    assert np.abs(a[[17, 19, 21]] - b[[33, 35, 37]]).max() < 1e-9  # brow upper arcs at 0, 1/2, 1
    assert np.abs(a[[27, 30]] - b[[51, 54]]).max() < 1e-9 and np.abs(a[31:36] - b[55:60]).max() < 1e-9


def test_unknown_part_is_rejected() -> None:
    lay = get_layout("cofw")
    odd = Layout(name="odd", num_points=2, groups={"ear_lobes": (0, 1)}, flip=(1, 0), inter_ocular=(0, 1),
                 pupils=((0,), (1,)))
    with pytest.raises(ValueError, match="ear_lobes"):
        landmarks_3d(build_geometry(FaceShape()), odd)
    assert landmarks_3d(build_geometry(FaceShape()), lay).shape == (29, 3)


def test_expressions_move_the_points_they_should() -> None:
    lay = get_layout("300w")
    neutral = landmarks_3d(build_geometry(FaceShape()), lay)
    opened = landmarks_3d(build_geometry(FaceShape(open=1.0)), lay)
    closed = landmarks_3d(build_geometry(FaceShape(close_l=1.0, close_r=1.0)), lay)
    raised = landmarks_3d(build_geometry(FaceShape(brow_raise=1.0)), lay)
    gap = lambda p: p[66, 1] - p[62, 1]  # noqa: E731 - inner lips apart
    assert gap(opened) > gap(neutral) + 0.15 and opened[8, 1] > neutral[8, 1] + 0.1
    lid = lambda p: p[41, 1] - p[37, 1]  # noqa: E731 - lower minus upper lid
    assert lid(neutral) > 0.05 and abs(lid(closed)) < 0.02
    assert (raised[17:27, 1] < neutral[17:27, 1] - 0.03).all()
    assert np.abs(raised[36:48] - neutral[36:48]).max() < 0.05  # eyes widen a little, no more


# ------------------------------------------------------------------------------------------- labels

@pytest.mark.parametrize(("kind", "covered", "free"), [
    ("glasses", ("eye_left", "eye_right"), ("mouth_outer", "jaw")),
    ("mask", ("mouth_outer", "mouth_inner"), ("eye_left", "eye_right", "brow_left", "brow_right")),
])
def test_occlusion_flags_mark_exactly_the_points_under_the_occluder(kind, covered, free) -> None:
    lay = get_layout("300w")
    base = sample_scene(np.random.default_rng(4), SIZE)
    occ = {"kind": kind, "colour": np.array([10.0, 200.0, 30.0]), "target": 0, "angle": 0.0, "size": 0.4,
           "shift": np.zeros(2), "radii": np.full(12, 0.8), "texture": 0.0}
    scene = _clean(base, yaw=0.0, pitch=0.0, roll=0.0, occluder=occ,
                   shape=FaceShape(open=0.2))
    face = render_scene(scene)
    flags = face.occluded(lay)
    lm = face.landmarks(lay)
    # flags agree with the occluder's own mask at each landmark's pixel
    ij = np.round(lm).astype(int)
    assert np.array_equal(flags, face.occluder_mask[ij[:, 1], ij[:, 0]] >= 128)
    for g in covered:
        assert flags[list(lay.groups[g])].all(), g
    for g in free:
        assert not flags[list(lay.groups[g])].any(), g
    # the same face without the occluder has no flags
    clear = render_scene(_clean(base, yaw=0.0, pitch=0.0, roll=0.0, shape=FaceShape(open=0.2)))
    assert not clear.occluded(lay).any() and clear.occluder_mask is None
    attrs = face.attributes(lay)
    assert attrs["occlusion"] and not clear.attributes(lay)["occlusion"]


def test_occluded_pixels_show_the_occluder_colour() -> None:
    lay = get_layout("cofw")
    occ = {"kind": "bar", "colour": np.array([0.0, 0.0, 255.0]), "target": 3, "angle": 0.0, "size": 0.6,
           "shift": np.zeros(2), "radii": np.full(12, 0.8), "texture": 0.0}
    scene = _clean(sample_scene(np.random.default_rng(9), SIZE), yaw=0.0, pitch=0.0, roll=0.0, occluder=occ)
    scene.light = dict(scene.light, tint=np.ones(3), exposure=1.0)
    face = render_scene(scene)
    flags = face.occluded(lay)
    assert 0 < flags.sum() < lay.num_points
    px = face.image[np.round(face.landmarks(lay)[flags]).astype(int)[:, 1],
                    np.round(face.landmarks(lay)[flags]).astype(int)[:, 0]].astype(int)
    assert (px[:, 0] > px[:, 2] + 40).all()  # blue in RGB is the dominant channel (BGR index 0)


def test_wflw_flags_follow_what_was_applied() -> None:
    lay = get_layout("wflw")
    base = _clean(sample_scene(np.random.default_rng(2), SIZE), yaw=0.0, pitch=0.0, roll=0.0,
                  shape=FaceShape())
    base.light = dict(base.light, strong=False, exposure=1.0)
    base.makeup = dict(base.makeup, strength=0.0)
    plain = render_scene(base).attributes(lay)
    assert not any(plain.values()), plain
    cases = {
        "pose": dict(yaw=50.0),
        "expression": dict(shape=FaceShape(smile=1.0)),
    }
    for flag, change in cases.items():
        attrs = render_scene(dataclasses.replace(base, **change)).attributes(lay)
        assert attrs[flag] and sum(attrs.values()) == 1, (flag, attrs)
    dark = dataclasses.replace(base, light=dict(base.light, exposure=0.4))
    assert render_scene(dark).attributes(lay)["illumination"]
    side = dataclasses.replace(base, light=dict(base.light, strong=True))
    assert render_scene(side).attributes(lay)["illumination"]
    lipstick = dict(base.makeup, lipstick=np.array([200.0, 20, 40]), strength=0.9)
    made = dataclasses.replace(base, makeup=lipstick)
    assert render_scene(made).attributes(lay)["makeup"]
    blurred = dataclasses.replace(base, post=dict(base.post, blur={"kind": "gauss", "sigma": 2.5}))
    attrs = render_scene(blurred).attributes(lay)
    assert attrs["blur"] and not attrs["pose"]
    assert render_scene(dataclasses.replace(base, roll=33.0)).attributes(lay)["pose"]


def test_blur_and_noise_change_pixels_but_not_landmarks() -> None:
    lay = get_layout("300w")
    base = _clean(sample_scene(np.random.default_rng(13), SIZE))
    sharp = render_scene(base)
    noisy = dataclasses.replace(base, post={"blur": {"kind": "motion", "length": 11.0, "angle": 30.0},
                                            "noise": 10.0, "jpeg": 40, "gamma": 1.0, "contrast": 1.0})
    soft = render_scene(noisy)
    assert np.array_equal(sharp.landmarks(lay), soft.landmarks(lay))
    # a blurred image has less high-frequency energy
    lap = lambda im: np.abs(np.diff(im.astype(float), axis=1)).mean()  # noqa: E731
    assert lap(soft.image) != lap(sharp.image)


# ------------------------------------------------------------------------------------------ datasets

def test_parts_cover_every_300w_folder_and_split_by_the_test_fraction() -> None:
    parts = assign_parts("300w", 40, 0, 0.25)
    assert len(parts) == 40
    test = [p for p in parts if p in ("helen/testset", "lfpw/testset", "ibug")]
    assert len(test) == 10
    assert set(parts) == {"afw", "helen/trainset", "lfpw/trainset", "helen/testset", "lfpw/testset", "ibug"}
    assert assign_parts("300w", 40, 0, 0.25) == parts and assign_parts("300w", 40, 1, 0.25) != parts
    wflw = assign_parts("wflw", 10, 0, 0.2)
    assert sorted(set(wflw)) == ["test", "train"] and wflw.count("test") == 2


def _read(fmt, root, split):
    formats = pytest.importorskip("kdlandmark.data.formats")
    if not hasattr(formats, "open_writer"):
        pytest.skip("kdlandmark.data.formats has no writer yet")
    return formats.read_dataset(fmt, root, split)


@pytest.mark.parametrize("fmt", ALL)
def test_synthesize_writes_a_native_dataset_the_readers_read_back(fmt: str, tmp_path) -> None:
    count = 14
    summary = synthesize(fmt, count, tmp_path / fmt, seed=5, size=SIZE, test_fraction=0.25, workers=1)
    assert summary["count"] == count and sum(summary["parts"].values()) == count
    assert "faces/s" in format_summary(summary)
    marker = json.loads((tmp_path / fmt / "synth.json").read_text())
    assert marker["format"] == fmt and marker["seed"] == 5
    lay = get_layout(fmt)
    splits = {"300w": ("train", "test-full"), "wflw": ("train", "test"), "cofw": ("train", "test")}[fmt]
    samples = [s for split in splits for s in _read(fmt, tmp_path / fmt, split)]
    assert len(samples) == count
    for s in samples:
        assert s.landmarks.shape == (lay.num_points, 2)
        x0, y0, x1, y1 = s.box
        assert x0 < x1 and y0 < y1
        assert (s.landmarks >= -0.01).all() and (s.landmarks <= SIZE - 0.99).all()
    # WFLW/COFW faces are the rendered ones (to the formats' precision), in index order within each split
    if fmt != "300w":  # (300W test faces may be redrawn to fit their subset)
        parts = assign_parts(fmt, count, 5, 0.25)
        for split in splits:
            indices = [i for i, p in enumerate(parts) if p == split]
            for i, s in zip(indices, _read(fmt, tmp_path / fmt, split), strict=True):
                _, lm, info = render_face(np.random.default_rng([5, i]), lay, SIZE)
                assert np.abs(s.landmarks - lm).max() < 0.01
                assert np.allclose(s.box, info["box"], atol=0.01)
                if fmt == "cofw":
                    assert np.array_equal(s.occluded, info["occluded"])
                else:
                    assert {k: s.attributes[k] for k in info["attributes"]} == info["attributes"]
    if fmt == "wflw":
        for s in samples:
            assert set(s.attributes) >= {"pose", "expression", "illumination", "makeup", "occlusion", "blur"}
    if fmt == "cofw":
        assert all(s.occluded is not None and s.occluded.shape == (29,) for s in samples)


def test_synthesize_does_not_depend_on_the_number_of_workers(tmp_path) -> None:
    one = synthesize("wflw", 8, tmp_path / "one", seed=2, size=96, workers=1)
    two = synthesize("wflw", 8, tmp_path / "two", seed=2, size=96, workers=2)
    assert one["parts"] == two["parts"]
    a = sorted(_read("wflw", tmp_path / "one", "train"), key=lambda s: s.image_path.split("/")[-1])
    b = sorted(_read("wflw", tmp_path / "two", "train"), key=lambda s: s.image_path.split("/")[-1])
    assert len(a) == len(b) == 6
    for sa, sb in zip(a, b, strict=True):
        assert np.array_equal(sa.landmarks, sb.landmarks) and sa.box == sb.box


def test_300w_test_parts_get_challenging_or_common_faces() -> None:
    for index in range(4):
        hard = render_for_part("300w", 1, index, 96, "ibug")[2]
        easy = render_for_part("300w", 1, index, 96, "lfpw/testset")[2]
        assert hard["challenging"] and not easy["challenging"]
        a = render_for_part("300w", 1, index, 96, "afw")
        b = render_face(np.random.default_rng([1, index]), get_layout("300w"), 96)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
        # WFLW and COFW faces are never redrawn
        c = render_for_part("wflw", 1, index, 96, "test")
        d = render_face(np.random.default_rng([1, index]), get_layout("wflw"), 96)
        assert np.array_equal(c[1], d[1])


def test_mean_shape_baseline_is_far_from_solving_the_task(tmp_path) -> None:
    synthesize("cofw", 40, tmp_path / "c", seed=0, size=SIZE, workers=1)
    nme = mean_shape_baseline_nme(tmp_path / "c", "cofw")
    assert 0.05 < nme < 0.6


def test_contact_sheet_is_a_grid_png(tmp_path) -> None:
    import cv2

    path = tmp_path / "sheet" / "s.png"
    contact_sheet("wflw", path, seed=1, size=64, count=7)
    img = cv2.imread(str(path))
    assert img.shape == (2 * 64, 6 * 64, 3)


def test_bad_arguments_are_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="format"):
        synthesize("afw", 3, tmp_path / "x")
    with pytest.raises(ValueError, match="count"):
        synthesize("300w", 0, tmp_path / "x")
    with pytest.raises(ValueError, match="test_fraction"):
        synthesize("300w", 3, tmp_path / "x", test_fraction=1.5)
