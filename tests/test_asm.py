"""Point distribution model (ASM) and soft landmarks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kdlandmark.layouts import get_layout
from kdlandmark.shape.asm import ShapeModel, fit_asm, similarity_fit

LAYOUT = get_layout("300w")


def _arc(n: int, cx: float, cy: float, rx: float, ry: float, a0: float, a1: float) -> np.ndarray:
    a = np.linspace(a0, a1, n)
    return np.stack([cx + rx * np.cos(a), cy + ry * np.sin(a)], axis=-1)


def face_mean() -> np.ndarray:
    """A plausible frontal 68-point face (x right, y down, about unit size), built group by group."""
    g = LAYOUT.groups
    pts = np.zeros((LAYOUT.num_points, 2))

    def closed(n: int, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
        return _arc(n + 1, cx, cy, rx, ry, np.pi, 3 * np.pi)[:-1]

    jaw = np.linspace(0, np.pi, len(g["jaw"]))  # image-left temple, round the chin, image-right temple
    pts[list(g["jaw"])] = np.stack([-0.5 * np.cos(jaw), -0.1 + 0.6 * np.sin(jaw)], axis=-1)
    pts[list(g["brow_left"])] = _arc(len(g["brow_left"]), -0.22, -0.2, 0.15, 0.06, np.pi, 2 * np.pi)
    pts[list(g["brow_right"])] = _arc(len(g["brow_right"]), 0.22, -0.2, 0.15, 0.06, np.pi, 2 * np.pi)
    nb = g["nose_bridge"]
    pts[list(nb)] = np.stack([np.zeros(len(nb)), np.linspace(-0.12, 0.1, len(nb))], axis=-1)
    pts[list(g["nostrils"])] = _arc(len(g["nostrils"]), 0, 0.1, 0.08, 0.04, np.pi, 0)
    pts[list(g["eye_left"])] = closed(len(g["eye_left"]), -0.2, -0.08, 0.09, 0.04)
    pts[list(g["eye_right"])] = closed(len(g["eye_right"]), 0.2, -0.08, 0.09, 0.04)
    pts[list(g["mouth_outer"])] = closed(len(g["mouth_outer"]), 0, 0.3, 0.2, 0.08)
    pts[list(g["mouth_inner"])] = closed(len(g["mouth_inner"]), 0, 0.3, 0.12, 0.03)
    return pts


def _rotation(theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, -s], [s, c]])


def random_similarity(rng: np.random.Generator, scale: tuple[float, float] = (0.5, 3.0)) -> np.ndarray:
    """A random 2x3 similarity transform (no reflection)."""
    a = np.zeros((2, 3))
    a[:, :2] = rng.uniform(*scale) * _rotation(rng.uniform(-np.pi, np.pi))
    a[:, 2] = rng.uniform(-200, 200, 2)
    return a


def _apply(a: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ a[:, :2].T + a[:, 2]


def face_set(seed: int, m: int = 60, noise: float = 0.01, pose: bool = True) -> np.ndarray:
    """``m`` faces: mean face + smooth shape modes (jaw width, mouth opening, brow raise) + iid noise per
    point, each in a random pose (similarity transform) when ``pose``."""
    rng = np.random.default_rng(seed)
    mean = face_mean()
    g = LAYOUT.groups
    jaw_width = np.zeros_like(mean)
    jaw_width[list(g["jaw"]), 0] = mean[list(g["jaw"]), 0]
    mouth_open = np.zeros_like(mean)
    mouth_open[list(g["mouth_inner"]) + list(g["mouth_outer"]), 1] = \
        mean[list(g["mouth_inner"]) + list(g["mouth_outer"]), 1] - 0.3
    brows = np.zeros_like(mean)
    brows[list(g["brow_left"]) + list(g["brow_right"]), 1] = -1.0
    modes = [jaw_width * 0.3, mouth_open * 2.0, brows * 0.05]
    out = []
    for _ in range(m):
        s = mean + sum(rng.normal() * mode for mode in modes) + noise * rng.normal(size=mean.shape)
        out.append(_apply(random_similarity(rng), s) if pose else s)
    return np.asarray(out, dtype=np.float64)


def jaw_roughness(shapes: np.ndarray) -> float:
    """Mean second-difference energy along the jaw, relative to the jaw's squared size."""
    jaw = shapes[:, list(LAYOUT.groups["jaw"])]
    d2 = jaw[:, 2:] - 2 * jaw[:, 1:-1] + jaw[:, :-2]
    size = np.linalg.norm(jaw - jaw.mean(axis=1, keepdims=True), axis=(1, 2)) ** 2
    return float(np.mean((d2 ** 2).sum(axis=(1, 2)) / size))


# --------------------------------------------------------------------------- soft == hard at 100 %


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), procrustes=st.booleans(), m=st.integers(2, 40))
def test_full_variance_soft_equals_hard(seed: int, procrustes: bool, m: int) -> None:
    shapes = face_set(seed, m=m)
    model = fit_asm(shapes, 1.0, procrustes=procrustes)
    assert model.num_components == 2 * LAYOUT.num_points
    assert model.clip is None
    soft = model.soften(shapes)
    scale = np.abs(shapes).max()
    np.testing.assert_allclose(soft, shapes, rtol=0, atol=1e-4 * scale)
    # also for shapes the model never saw (the complete basis spans every shape)
    unseen = face_set(seed + 1, m=3)
    np.testing.assert_allclose(model.soften(unseen), unseen, rtol=0, atol=1e-4 * np.abs(unseen).max())


def test_soften_keeps_float32_and_single_shape() -> None:
    shapes = face_set(3, m=20).astype(np.float32)
    model = fit_asm(shapes, 0.9)
    soft = model.soften(shapes)
    assert soft.dtype == np.float32 and soft.shape == shapes.shape
    one = model.soften(shapes[4])
    assert one.shape == shapes[4].shape
    np.testing.assert_allclose(one, soft[4], atol=1e-4)


# --------------------------------------------------------------------------- smoothing


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), procrustes=st.booleans())
def test_lower_variance_gives_smoother_jaws(seed: int, procrustes: bool) -> None:
    shapes = face_set(seed, m=80, noise=0.02, pose=procrustes)
    hard = jaw_roughness(shapes)
    r90 = jaw_roughness(fit_asm(shapes, 0.9, procrustes=procrustes).soften(shapes))
    r50 = jaw_roughness(fit_asm(shapes, 0.5, procrustes=procrustes).soften(shapes))
    assert r90 < 0.8 * hard
    assert r50 < r90


def test_soft_landmarks_move_towards_the_model() -> None:
    """At 90 % the soft shapes are closer to the noise-free shapes than the noisy hard ones."""
    rng_seed = 11
    clean = face_set(rng_seed, m=100, noise=0.0, pose=False)
    noisy = clean + 0.02 * np.random.default_rng(5).normal(size=clean.shape)
    soft = fit_asm(noisy, 0.9).soften(noisy)
    assert np.linalg.norm(soft - clean) < 0.7 * np.linalg.norm(noisy - clean)


# --------------------------------------------------------------------------- geometry


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_align_unalign_round_trip(seed: int) -> None:
    rng = np.random.default_rng(seed)
    model = fit_asm(face_set(seed, m=30), 0.9)
    base = face_set(seed + 7, m=5, pose=False)
    shapes = np.stack([_apply(random_similarity(rng, (0.01, 100.0)), s) for s in base])
    aligned, transforms = model.align(shapes)
    assert transforms.shape == (5, 2, 3)
    # similarity (no reflection): linear part is s * rotation
    lin = transforms[:, :, :2]
    np.testing.assert_allclose(lin[:, 0, 0], lin[:, 1, 1], atol=1e-12 * np.abs(lin).max())
    np.testing.assert_allclose(lin[:, 0, 1], -lin[:, 1, 0], atol=1e-12 * np.abs(lin).max())
    back = model.unalign(aligned, transforms)
    np.testing.assert_allclose(back, shapes, rtol=1e-9, atol=1e-9 * np.abs(shapes).max())
    # pose is removed: every copy lands near the model's reference (scale 1)
    norms = np.linalg.norm(aligned - aligned.mean(axis=1, keepdims=True), axis=(1, 2))
    assert np.all(np.abs(norms - 1.0) < 0.3)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), variance=st.sampled_from([0.5, 0.8, 0.9, 0.95]))
def test_soften_is_similarity_equivariant(seed: int, variance: float) -> None:
    rng = np.random.default_rng(seed)
    shapes = face_set(seed, m=40)
    model = fit_asm(shapes, variance)
    probe = face_set(seed + 3, m=4, noise=0.05)
    g = random_similarity(rng, (0.05, 20.0))
    moved = np.stack([_apply(g, s) for s in probe])
    soft_of_moved = model.soften(moved)
    moved_soft = np.stack([_apply(g, s) for s in model.soften(probe)])
    np.testing.assert_allclose(soft_of_moved, moved_soft, rtol=0, atol=1e-7 * np.abs(moved).max())


def test_similarity_fit_recovers_a_known_transform() -> None:
    rng = np.random.default_rng(0)
    src = face_mean()[None]
    a = random_similarity(rng)
    fitted = similarity_fit(src, _apply(a, src[0]))
    np.testing.assert_allclose(fitted[0], a, atol=1e-9)


def test_procrustes_removes_pose_entirely() -> None:
    """Copies of one shape in random poses have no shape variance after alignment; the authors' PCA
    (no Procrustes) sees large variance."""
    rng = np.random.default_rng(1)
    base = face_mean()
    shapes = np.stack([_apply(random_similarity(rng), base) for _ in range(10)])
    with_gpa = fit_asm(shapes, 0.9)
    assert with_gpa.eigenvalues.max() < 1e-16
    np.testing.assert_allclose(with_gpa.soften(shapes), shapes, atol=1e-8 * np.abs(shapes).max())
    without = fit_asm(shapes, 0.9, procrustes=False)
    assert without.eigenvalues.max() > 1.0


# --------------------------------------------------------------------------- the PCA itself


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_components_monotone_in_variance(seed: int) -> None:
    shapes = face_set(seed, m=30, noise=0.02)
    counts = [fit_asm(shapes, v).num_components for v in (0.3, 0.5, 0.7, 0.9, 0.95, 0.99, 1.0)]
    assert counts == sorted(counts)
    assert counts[-1] == 2 * LAYOUT.num_points


def test_fewest_components_reaching_variance_and_explained_spectrum() -> None:
    shapes = face_set(2, m=50, noise=0.02)
    model = fit_asm(shapes, 0.9)
    assert model.explained.shape == (2 * LAYOUT.num_points,)
    assert np.all(np.diff(model.explained) >= -1e-12)
    np.testing.assert_allclose(model.explained[-1], 1.0)
    k = model.num_components
    assert model.explained[k - 1] >= 0.9 - 1e-9
    assert k == 1 or model.explained[k - 2] < 0.9
    # components orthonormal, eigenvalues descending
    np.testing.assert_allclose(model.components @ model.components.T, np.eye(k), atol=1e-10)
    assert np.all(np.diff(model.eigenvalues) <= 1e-15)


def test_without_procrustes_matches_plain_pca_with_clipping() -> None:
    """procrustes=False is the authors' recipe: mean + V clip(V^T (x - mean)) on the raw shapes."""
    shapes = face_set(4, m=50, noise=0.02)
    model = fit_asm(shapes, 0.9, procrustes=False)
    flat = shapes.reshape(len(shapes), -1)
    mean = flat.mean(axis=0)
    u, s, vt = np.linalg.svd(flat - mean, full_matrices=False)
    lam = s ** 2 / (len(shapes) - 1)
    k = int(np.searchsorted(np.cumsum(lam) / lam.sum(), 0.9)) + 1
    assert model.num_components == k
    np.testing.assert_allclose(model.eigenvalues, lam[:k], rtol=1e-8)
    v = vt[:k]
    b = np.clip((flat - mean) @ v.T, -3 * np.sqrt(lam[:k]), 3 * np.sqrt(lam[:k]))
    expected = (mean + b @ v).reshape(shapes.shape)
    np.testing.assert_allclose(model.soften(shapes), expected, atol=1e-8 * np.abs(shapes).max())


def test_project_clips_to_three_sigma() -> None:
    shapes = face_set(5, m=40, noise=0.01)
    # without Procrustes, align is the identity, so a push along a component stays along it
    plain = fit_asm(shapes, 0.9, procrustes=False)
    far = shapes[0].reshape(1, -1) + 50 * np.sqrt(plain.eigenvalues[0]) * plain.components[0]
    b = plain.project(far.reshape(1, -1, 2))
    np.testing.assert_allclose(b[0, 0], 3 * np.sqrt(plain.eigenvalues[0]), rtol=1e-9)
    model = fit_asm(shapes, 0.9)
    aligned, transforms = model.align(shapes[:4])
    # re-alignment absorbs part of a large push (the shape's scale changes), so push moderately along
    # the mouth-opening mode, which alignment cannot undo
    pushed = aligned.reshape(4, -1) + 8 * np.sqrt(model.eigenvalues[1]) * model.components[1]
    wild = model.unalign(pushed.reshape(aligned.shape), transforms)
    b = model.project(wild)
    limit = 3 * np.sqrt(model.eigenvalues)
    assert np.all(np.abs(b) <= limit * (1 + 1e-12))
    assert np.any(np.isclose(np.abs(b), limit, rtol=1e-12))  # the clip did bite somewhere
    # reconstruct(b, transforms) puts the shape back into the original frame
    rec = model.reconstruct(model.project(shapes[:3]), model.align(shapes[:3])[1])
    np.testing.assert_allclose(rec, model.soften(shapes[:3]), atol=1e-9 * np.abs(shapes).max())


# --------------------------------------------------------------------------- persistence


@pytest.mark.parametrize("procrustes", [True, False])
def test_save_load_round_trip(tmp_path, procrustes: bool) -> None:
    shapes = face_set(6, m=30).astype(np.float32)
    model = fit_asm(shapes, 0.9, procrustes=procrustes)
    t_path, j_path = model.save(tmp_path / "asm")
    assert t_path.name == "asm.safetensors" and j_path.name == "asm.json"
    loaded = ShapeModel.load(tmp_path / "asm.safetensors")
    assert loaded.num_components == model.num_components and loaded.procrustes == procrustes
    assert loaded.variance == model.variance and loaded.clip == model.clip
    np.testing.assert_array_equal(loaded.soften(shapes), model.soften(shapes))
    raw = t_path.read_bytes()
    assert b"pickle" not in raw and not raw.startswith(b"\x80")


def test_load_rejects_foreign_json(tmp_path) -> None:
    model = fit_asm(face_set(6, m=10), 0.9)
    _, j_path = model.save(tmp_path / "m")
    j_path.write_text('{"format": "something-else"}')
    with pytest.raises(ValueError, match="not a kdlandmark shape model"):
        ShapeModel.load(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="missing"):
        ShapeModel.load(tmp_path / "absent")


# --------------------------------------------------------------------------- bad input


def test_bad_input_raises_clear_errors() -> None:
    good = face_set(0, m=10)
    with pytest.raises(ValueError, match="at least 2 shapes"):
        fit_asm(good[:1])
    with pytest.raises(ValueError, match=r"\(M, N, 2\)"):
        fit_asm(good[:, :, :1])
    with pytest.raises(ValueError, match=r"\(M, N, 2\)"):
        fit_asm(good.reshape(10, -1))
    nan = good.copy()
    nan[3, 5, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or inf .*index 3"):
        fit_asm(nan)
    with pytest.raises(ValueError, match="did you mean 0.9"):
        fit_asm(good, 90)
    with pytest.raises(ValueError, match="variance"):
        fit_asm(good, 0.0)
    degenerate = good.copy()
    degenerate[2] = 5.0
    with pytest.raises(ValueError, match="degenerate"):
        fit_asm(degenerate)
    model = fit_asm(good, 0.9)
    with pytest.raises(ValueError, match="68 points"):
        model.soften(good[:, :10])
    with pytest.raises(ValueError, match="NaN or inf"):
        model.soften(nan)
    with pytest.raises(ValueError, match="b: expected shape"):
        model.reconstruct(np.zeros((2, model.num_components + 1)))
