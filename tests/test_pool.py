"""Synthesis from real faces: the piecewise-affine warp, lifting, re-posing, hybrids and datasets.

The tests make their own "pool" from rendered faces (a user's clone has no real faces), and check the
one property everything rests on: the texture that was labelled moves exactly with its label.
"""

import json

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kdlandmark.data.formats import read_dataset
from kdlandmark.data.samples import DatasetError
from kdlandmark.data.synth import render_face, synthesize
from kdlandmark.data.synth.pool import (
    PoolStyle,
    lift_face,
    load_pool,
    render_hybrid_face,
    render_pool_face,
)
from kdlandmark.data.synth.render import render
from kdlandmark.data.synth.warp import signed_areas, warp_mesh
from kdlandmark.layouts import get_layout

LAYOUT = get_layout("300w")
SIZE = 128


@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory: pytest.TempPathFactory):
    """Six rendered faces written as a pool folder (``.jpg`` + 1-based ``.pts``)."""
    root = tmp_path_factory.mktemp("pool")
    for i in range(6):
        image, lm, _ = render_face(np.random.default_rng([99, i]), LAYOUT, 192)
        cv2.imwrite(str(root / f"face_{i}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
        lines = "".join(f"{x + 1:.3f} {y + 1:.3f}\n" for x, y in lm)
        (root / f"face_{i}.pts").write_text(f"version: 1\nn_points: 68\n{{\n{lines}}}\n")
    return root


@pytest.fixture(scope="module")
def pool(pool_dir):
    return load_pool(pool_dir)


# ------------------------------------------------------------------------------------------- warp

def _grid_mesh(n: int = 5, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    from scipy.spatial import Delaunay

    g = np.linspace(-10, size + 10, n)
    pts = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    return pts, Delaunay(pts).simplices


@settings(max_examples=25, deadline=None)
@given(angle=st.floats(-0.6, 0.6), scale=st.floats(0.7, 1.4), tx=st.floats(-6, 6), ty=st.floats(-6, 6))
def test_a_mesh_moved_by_one_affine_warps_like_that_affine(angle, scale, tx, ty) -> None:
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.uniform(0, 255, (64, 64, 3)).astype(np.float32), (0, 0), 2.0)
    src, tris = _grid_mesh()
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    fwd = np.array([[c, -s, tx + 32 - 32 * c + 32 * s], [s, c, ty + 32 - 32 * s - 32 * c]])
    dst = src @ fwd[:, :2].T + fwd[:, 2]
    ours = warp_mesh(image, src, dst, tris, (64, 64))
    ref = cv2.warpAffine(image, fwd, (64, 64), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    inner = (slice(8, 56), slice(8, 56))
    assert np.abs(ours[inner] - ref[inner]).max() < 1.0   # of 255: OpenCV interpolates in 1/32 px steps


def test_labelled_texture_lands_on_its_label() -> None:
    """A dot in the source appears where its triangle's affine map sends it, even when the mesh is bent."""
    from kdlandmark.data.synth.warp import triangle_affines

    src, tris = _grid_mesh(6, 96)
    rng = np.random.default_rng(1)
    dst = src + rng.normal(0, 2.5, src.shape)
    assert (np.sign(signed_areas(dst, tris)) == np.sign(signed_areas(src, tris))).all()
    image = np.zeros((96, 96), np.float32)
    cv2.circle(image, (40 * 16 + 5, 52 * 16 - 3), 16, 1.0, -1, cv2.LINE_AA, 4)   # radius 1 px

    def centroid(img):
        ys, xs = np.mgrid[0:img.shape[0], 0:img.shape[1]]
        return np.array([(xs * img).sum(), (ys * img).sum()]) / img.sum()

    c_src = centroid(image)
    t = next(k for k in range(len(tris))
             if cv2.pointPolygonTest(src[tris[k]].astype(np.float32), tuple(c_src), True) > 2.0)
    fwd = triangle_affines(dst, src, tris)[t]   # source -> destination of that triangle
    expect = fwd[:, :2] @ c_src + fwd[:, 2]
    out = warp_mesh(image, src, dst, tris, (96, 96))
    assert np.linalg.norm(centroid(out) - expect) < 0.15


def test_painter_order_draws_near_over_far_and_culls_turned_triangles() -> None:
    src = np.array([[5, 5], [35, 5], [5, 35], [45, 5], [75, 5], [75, 35]], float)
    tris = np.array([[0, 1, 2], [3, 4, 5]])
    image = np.zeros((80, 80), np.float32)
    cv2.fillConvexPoly(image, src[:3].astype(np.int32), 50.0)
    cv2.fillConvexPoly(image, src[3:].astype(np.int32), 200.0)
    dst = src.copy()
    dst[3:] -= [30, 0]                       # the second triangle now overlaps the first
    nowhere = np.array([[0.0, 0.0, -500.0], [0.0, 0.0, -500.0]])
    kw = dict(fallback=nowhere, border=cv2.BORDER_CONSTANT)
    overlap = (12, 28)                       # (row, column) inside both destination triangles
    near_first = warp_mesh(image, src, dst, tris, (80, 80), depth=np.array([1, 1, 1, 0, 0, 0.0]), **kw)
    near_second = warp_mesh(image, src, dst, tris, (80, 80), depth=np.array([0, 0, 0, 1, 1, 1.0]), **kw)
    assert near_first[overlap] == pytest.approx(50.0, abs=1)
    assert near_second[overlap] == pytest.approx(200.0, abs=1)
    turned = dst.copy()
    turned[4], turned[5] = dst[5].copy(), dst[4].copy()   # same place, mirrored: it faces away
    culled = warp_mesh(image, src, turned, tris, (80, 80), depth=np.zeros(6), **kw)
    assert culled[overlap] == pytest.approx(50.0, abs=1)                  # only the first is drawn
    assert culled[8, 42] == 0.0                                           # nothing where only the second was


# ------------------------------------------------------------------------------------------ pool

def test_lifting_keeps_the_landmarks(pool) -> None:
    face = pool[0]
    assert face.points[:68] == pytest.approx(face.landmarks, abs=1e-4)
    assert face.head.shape == (len(face.points), 3)
    assert abs(face.pose[0]) < 45 and abs(face.pose[1]) < 45


def test_lift_refuses_a_wrong_point_count() -> None:
    with pytest.raises(ValueError, match="68 landmarks"):
        lift_face("x", np.zeros((10, 10, 3), np.uint8), np.zeros((29, 2)))


def test_bad_pool_folder_names_the_file(tmp_path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"not a jpeg")
    points = "".join(f"{10 + i % 9} {10 + i // 9}\n" for i in range(68))
    (tmp_path / "a.pts").write_text(f"version: 1\nn_points: 68\n{{\n{points}}}\n")
    with pytest.raises(DatasetError, match="a.jpg"):
        load_pool(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError):
        load_pool(empty)


def test_pool_face_is_deterministic_and_inside_the_image(pool) -> None:
    a = render_pool_face(np.random.default_rng(5), pool, SIZE)
    b = render_pool_face(np.random.default_rng(5), pool, SIZE)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert a[0].shape == (SIZE, SIZE, 3) and a[0].dtype == np.uint8
    for seed in range(12):
        _, lm, info = render_pool_face(np.random.default_rng(seed), pool, SIZE)
        assert lm.shape == (68, 2) and (lm >= 0).all() and (lm <= SIZE - 1).all()
        assert {"yaw", "pitch", "roll", "source", "steps"} <= set(info)


def test_landmarks_follow_the_warped_texture(pool) -> None:
    """Dots on a pool face's landmarks stay under the new landmarks, and a dot inside a mesh triangle
    lands at the same barycentric place of that triangle in the new face."""
    import dataclasses

    from kdlandmark.data.synth.pool import _model

    face = pool[1]
    tris = [t for t in _model().triangles if (t < 68).all()][::7]       # some triangles of the face
    marked = np.zeros(face.image.shape[:2], np.float32)
    probe = [36, 45, 30, 48, 54, 8]
    spots = [face.points[t].mean(axis=0) for t in tris]
    for x, y in [face.landmarks[k] for k in probe] + spots:
        cv2.circle(marked, (int(round(x * 16)), int(round(y * 16))), 16, 255.0, -1, cv2.LINE_AA, 4)
    probe_face = dataclasses.replace(face, image=cv2.merge([marked] * 3).astype(np.uint8))
    style = PoolStyle.plain(yaw=5.0, pitch=4.0, roll=15.0)
    image, lm, info = render_pool_face(np.random.default_rng(3), [probe_face], 192, style)
    grey = image[..., 0].astype(np.float32)
    for k in probe:   # the dot's centre maps to the vertex
        x, y = np.round(lm[k]).astype(int)
        assert grey[y - 1:y + 2, x - 1:x + 2].max() > 100, (k, info)
    rng = np.random.default_rng(3)
    rng.integers(1)                              # the face choice render_pool_face made
    from kdlandmark.data.synth.pool import _target

    dst = _target(rng, probe_face, style, 192)[0]
    checked = 0
    for t in tris:
        c = dst[t].mean(axis=0)
        x0, y0 = int(c[0]) - 4, int(c[1]) - 4
        win = grey[y0:y0 + 9, x0:x0 + 9]
        inside = cv2.pointPolygonTest(dst[t].astype(np.float32), tuple(c), True)
        if inside < 3 or win.sum() == 0:           # a sliver, or a triangle hidden by a nearer one
            continue
        ys, xs = np.mgrid[0:win.shape[0], 0:win.shape[1]]
        centre = np.array([(xs * win).sum(), (ys * win).sum()]) / win.sum() + [x0, y0]
        assert np.linalg.norm(centre - c) < 0.75, (t, centre, c)   # sub-pixel; a wrong map is pixels off
        checked += 1
    assert checked >= 3


@settings(max_examples=30, deadline=None)
@given(pitch=st.floats(-30, 30), roll=st.floats(-40, 40))
def test_an_unturned_head_keeps_its_frontal_outline(pitch, roll) -> None:
    """Without yaw the outline is the frontal one, whatever the pitch and roll: nothing moves."""
    from kdlandmark.data.synth.face import rotation
    from kdlandmark.data.synth.pool import _model, _outline_points

    frontal = _outline_points(rotation(0.0, 0.0, 0.0))
    np.testing.assert_allclose(frontal, np.concatenate([_model().landmarks, _model().anchors])[_model().side],
                               atol=0.01)
    np.testing.assert_allclose(_outline_points(rotation(0.0, pitch, roll)), frontal, atol=1e-9)


@settings(max_examples=30, deadline=None)
@given(yaw=st.floats(-45, 45))
def test_a_turned_heads_outline_is_as_wide_as_its_rotated_cross_section(yaw) -> None:
    """At the temples the mean head's cross-section is an ellipse (half-width a, half-depth c): turned
    by ``yaw`` it shows sqrt(a^2 cos^2 + c^2 sin^2) on each side of its centre, not the a cos(yaw) where
    its frontal outline points go."""
    import math

    from kdlandmark.data.synth.face import FaceShape, build_geometry, rotation
    from kdlandmark.data.synth.pool import PIVOT, _model, _outline_points

    m = _model()
    rot = rotation(yaw, 0.0, 0.0)
    temples = len(m.side) - 2, len(m.side) - 1
    left, right = ((_outline_points(rot)[list(temples)] - PIVOT) @ rot.T)[:, 0]
    a, z0, cf, cb = build_geometry(FaceShape()).rows(np.array([m.sections[temples[0], 0, 1]]))
    assert cf[0] == pytest.approx(cb[0])
    t = math.radians(yaw)
    half = math.sqrt((a[0] * math.cos(t)) ** 2 + (cf[0] * math.sin(t)) ** 2)
    assert (right - left) / 2 == pytest.approx(half, rel=2e-3)
    frontal = ((np.concatenate([m.landmarks, m.anchors])[m.side[list(temples)]] - PIVOT) @ rot.T)[:, 0]
    assert (right - left) >= (frontal[1] - frontal[0]) - 1e-6


def test_outline_moves_a_turned_jaw_outwards_and_nothing_else(pool, monkeypatch) -> None:
    """``PoolStyle.outline``: the jaw points of a turned face move out to the head's outline on both
    sides, and the inner landmarks stay where they were (the same draws; the placement, which fits the
    landmark box into the picture, may scale them)."""
    from kdlandmark.data.synth import pool as pool_module

    face = pool[4]                      # nearly frontal in its own picture (yaw about 5 degrees)
    for yaw in (-25.0, 25.0):
        got = {}
        monkeypatch.setattr(pool_module, "_pose", lambda rng, style, y=yaw: (y, 0.0, 0.0))
        for outline in (0.0, 1.0):
            style = PoolStyle.plain(yaw=1.0, pitch=0.0, roll=0.0, identity=0.0, expression=0.0,
                                    outline=outline)
            dst, _, info = pool_module._target(np.random.default_rng(0), face, style, 192)
            assert info["yaw"] == yaw
            got[outline] = dst
        inner = np.arange(17, 68)
        centre = got[0.0][inner].mean(0)
        centre1 = got[1.0][inner].mean(0)
        # the same placement draws; the jaw's widening may only rescale the placement a little
        spread0 = np.linalg.norm(got[0.0][inner] - centre, axis=1)
        spread1 = np.linalg.norm(got[1.0][inner] - centre1, axis=1)
        scale = spread1.mean() / spread0.mean()
        np.testing.assert_allclose((got[1.0][inner] - centre1) / scale, got[0.0][inner] - centre, atol=0.05)
        width0 = got[0.0][16, 0] - got[0.0][0, 0]
        width1 = (got[1.0][16, 0] - got[1.0][0, 0]) / scale
        assert got[1.0][0, 0] / scale - centre1[0] / scale < got[0.0][0, 0] - centre[0]   # left side out
        assert got[1.0][16, 0] / scale - centre1[0] / scale > got[0.0][16, 0] - centre[0]  # right side out
        assert width1 > 1.05 * width0, (yaw, width1 / width0)


def test_plain_style_applies_no_appearance_step(pool) -> None:
    for seed in range(6):
        _, _, info = render_pool_face(np.random.default_rng(seed), pool, SIZE, PoolStyle.plain())
        assert set(info["steps"]) <= {"mouth"} and "low_res_iod" not in info



@settings(max_examples=30, deadline=None)
@given(x=st.floats(-400, 600), y=st.floats(-3000, 400), length=st.floats(0.5, 40), seed=st.integers(0, 99))
def test_hair_strands_are_finite_and_bounded_wherever_the_crown_is(x, y, length, seed) -> None:
    """The strand texture is a brightness factor in [0, 1] over the whole picture, also for a crown far
    outside it (the polar map must reach every pixel, never leaving NaN or an unfilled black corner)."""
    from kdlandmark.data.synth.pool import _strands

    tex = _strands(np.random.default_rng(seed), 64, np.array([x, y]), length)
    assert tex.shape == (64, 64) and np.isfinite(tex).all()
    assert tex.min() >= 0.0 and tex.max() <= 1.0

    class Flat:  # noise without strands: every pixel the polar map reaches is 0.5, one it misses 0
        def random(self, shape: tuple[int, int]) -> np.ndarray:
            return np.ones(shape)

    flat = _strands(Flat(), 64, np.array([x, y]), length)  # type: ignore[arg-type]
    # (not a count of dark pixels of the real texture: seen from a far crown, the picture spans a few
    # rays, and one dark strand, the texture's clipped tail, can cover a few % of it)
    assert flat.min() > 0.4, (flat.min(), np.argwhere(flat <= 0.4)[:3])


def test_hair_covers_the_head_and_never_moves_a_landmark(pool) -> None:
    """``PoolStyle.hair``: the same draws give the same landmarks with and without hair; hair changes the
    top of the head (above the highest landmark) and leaves the mouth and chin as they were."""
    changed_top = []
    for seed in range(6):
        out = {}
        for hair in (0.0, 1.0):
            style = PoolStyle.plain(expression=0.0, hair=hair)
            out[hair] = render_pool_face(np.random.default_rng(seed), pool, SIZE, style)
        (img0, lm0, info0), (img1, lm1, info1) = out[0.0], out[1.0]
        np.testing.assert_array_equal(lm0, lm1)
        assert "hair" in info1["steps"] and "hair" not in info0["steps"]
        diff = np.abs(img1.astype(np.int16) - img0.astype(np.int16)).max(axis=2)
        x0, y0 = np.floor(lm0[48:68].min(0)).astype(int)
        x1, y1 = np.ceil(lm0[48:68].max(0)).astype(int)
        assert diff[y0:y1 + 1, x0:x1 + 1].max() == 0, seed      # the mouth: untouched
        top = int(np.floor(lm0[:, 1].min())) - 2                 # the rows above every landmark
        if top > 4:
            band = diff[max(0, top - 8):top, int(lm0[:, 0].min()):int(lm0[:, 0].max())]
            changed_top.append(float((band > 8).mean()))
    assert changed_top and np.mean(changed_top) > 0.5, changed_top


# ---------------------------------------------------------------------------------------- hybrid

def test_albedo_hook_changes_pixels_not_geometry() -> None:
    calls = []

    def paint(img, geo, cam):
        calls.append(1)
        img[:] = 0

    a = render(np.random.default_rng(4), SIZE)
    b = render(np.random.default_rng(4), SIZE, albedo=paint)
    assert calls == [1]
    assert np.array_equal(a.landmarks(LAYOUT), b.landmarks(LAYOUT))
    assert not np.array_equal(a.image, b.image)


def test_hybrid_face_has_the_renderers_landmarks(pool) -> None:
    image, lm, info = render_hybrid_face(np.random.default_rng(8), pool, SIZE)
    assert np.array_equal(lm, info["face"].landmarks(LAYOUT))
    assert info["source"] in {f.name for f in pool}
    assert image.shape == (SIZE, SIZE, 3) and info["occluded"].shape == (68,)


# -------------------------------------------------------------------------------------- datasets

def test_synthesize_mixes_the_three_sources(pool_dir, tmp_path) -> None:
    out = tmp_path / "mix"
    summary = synthesize("300w", 24, out, seed=1, size=SIZE, workers=1, pool=pool_dir, pool_fraction=0.4,
                         hybrid_fraction=0.3, pool_style=PoolStyle(glasses=1.0))
    assert summary["count"] == 24
    marker = json.loads((out / "synth.json").read_text())
    assert marker["pool_fraction"] == 0.4 and marker["hybrid_fraction"] == 0.3
    assert marker["pool_style"]["glasses"] == 1.0
    from kdlandmark.data.synth.dataset import face_source

    kinds = [face_source(1, i, 0.4, 0.3) for i in range(24)]
    assert {"pool", "hybrid", "render"} == set(kinds)
    faces = read_dataset("300w", out, "train") + read_dataset("300w", out, "test-full")
    assert len(faces) == 24


def test_synthesize_refuses_pool_faces_in_another_layout(pool_dir, tmp_path) -> None:
    with pytest.raises(ValueError, match="300w"):
        synthesize("wflw", 4, tmp_path / "w", pool=pool_dir)
    with pytest.raises(ValueError, match="sum"):
        synthesize("300w", 4, tmp_path / "x", pool=pool_dir, pool_fraction=0.7, hybrid_fraction=0.5)
