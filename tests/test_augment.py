"""Batched on-device augmentation: geometry of images and landmarks agrees, flips permute, eval is exact."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kdlandmark.data.augment import AugmentConfig, BatchAugmenter
from kdlandmark.data.crop import DEFAULT_MARGIN, apply_affine, crop_affine, to_model_coords
from kdlandmark.layouts import get_layout

LAYOUT = get_layout("300w")
S, OUT = 256, 224
CONTEXT = 0.4
VIEW = (1 + 2 * DEFAULT_MARGIN) / (1 + 2 * CONTEXT)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# Dotted landmarks: image-left outer eye corner (red), image-right outer eye corner (green), nose tip
# (blue, its own mirror image).  Each colour channel holds exactly one dot.
LEFT_EYE, RIGHT_EYE = LAYOUT.inter_ocular
NOSE = 30
assert LAYOUT.flip[LEFT_EYE] == RIGHT_EYE and LAYOUT.flip[NOSE] == NOSE
DOTS = {LEFT_EYE: 0, RIGHT_EYE: 1, NOSE: 2}


def dot_image(points: dict[int, np.ndarray], sigma: float = 1.5) -> np.ndarray:
    """Dark ``S x S`` RGB image with a Gaussian dot (peak 255) at each landmark, in its own channel."""
    ys, xs = np.mgrid[0:S, 0:S].astype(np.float64)
    img = np.full((S, S, 3), 4.0)
    for idx, ch in DOTS.items():
        x, y = points[idx]
        img[..., ch] += 250.0 * np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2))
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def landmarks_with_dots(positions: dict[int, tuple[float, float]]) -> np.ndarray:
    lm = np.full((LAYOUT.num_points, 2), (S - 1) / 2.0, dtype=np.float32)
    for idx, p in positions.items():
        lm[idx] = p
    return lm


def dot_centroid(channel: np.ndarray, radius: int = 6) -> np.ndarray:
    """Brightness centroid (x, y) around the brightest pixel of one output channel."""
    y0, x0 = np.unravel_index(np.argmax(channel), channel.shape)
    assert channel[y0, x0] > 0.3, "dot not found in the output"
    h, w_ = channel.shape
    ys = slice(max(0, y0 - radius), min(h, y0 + radius + 1))
    xs = slice(max(0, x0 - radius), min(w_, x0 + radius + 1))
    w = np.clip(channel[ys, xs] - np.median(channel), 0, None)
    yy, xx = np.mgrid[ys, xs]
    return np.array([(w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()])


def cross2(a: np.ndarray, b: np.ndarray) -> float:
    return float(a[0] * b[1] - a[1] * b[0])


def model_to_out_px(m: np.ndarray) -> np.ndarray:
    return m * OUT + (OUT - 1) / 2.0


def three_dots(angle: float, radius: float) -> dict[int, tuple[float, float]]:
    """Dot positions on a circle around the crop centre, 120 degrees apart, image-left eye on the left."""
    c = (S - 1) / 2.0
    out = {}
    for k, idx in enumerate((LEFT_EYE, NOSE, RIGHT_EYE)):
        a = angle + math.pi + k * 2 * math.pi / 3
        out[idx] = (c + radius * math.cos(a), c + radius * math.sin(a))
    return out


GEOMETRIC = {
    "rotation": AugmentConfig.geometric_only(scale=(1, 1), translate=0.0, flip_prob=0.0),
    "scale": AugmentConfig.geometric_only(rotation_deg=0.0, translate=0.0, flip_prob=0.0),
    "translation": AugmentConfig.geometric_only(rotation_deg=0.0, scale=(1, 1), flip_prob=0.0),
    "flip": AugmentConfig.geometric_only(rotation_deg=0.0, scale=(1, 1), translate=0.0, flip_prob=1.0),
    "combined": AugmentConfig.geometric_only(flip_prob=0.0),
    "combined+flip": AugmentConfig.geometric_only(flip_prob=1.0),
    "combined+blur": AugmentConfig.geometric_only(flip_prob=0.0, blur_prob=1.0, blur_sigma=(0.5, 1.5)),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(GEOMETRIC))
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), angle=st.floats(-0.5, 0.5), radius=st.floats(20.0, 56.0))
def test_bright_dots_follow_their_landmarks(device: str, name: str, seed: int, angle: float,
                                            radius: float) -> None:
    cfg = GEOMETRIC[name]
    flips = cfg.flip_prob == 1.0
    pos = three_dots(angle, radius)
    image = torch.from_numpy(dot_image({k: np.array(v) for k, v in pos.items()}))[None].to(device)
    lm = torch.from_numpy(landmarks_with_dots(pos))[None].to(device)
    aug = BatchAugmenter(LAYOUT, S, OUT, VIEW, cfg)
    gen = torch.Generator(device=device).manual_seed(seed)
    out, (m,) = aug(image, [lm], train=True, generator=gen)
    assert out.shape == (1, 3, OUT, OUT) and out.dtype == torch.float32 and out.device.type == device
    out, m = out.cpu(), m.cpu()
    pred = model_to_out_px(m[0].numpy())
    for idx, ch in DOTS.items():
        # Under a flip, the dot drawn at landmark idx is now landmark flip[idx] (same part of the face).
        target = LAYOUT.flip[idx] if flips else idx
        centroid = dot_centroid(out[0, ch].numpy())
        err = np.linalg.norm(centroid - pred[target])
        assert err < 0.25, f"{name}: dot of landmark {idx} at {centroid}, landmark {target} at {pred[target]}"
    # The image-left eye corner stays on the image's left after any augmentation (|rotation| <= 30 deg).
    assert pred[LEFT_EYE, 0] < pred[RIGHT_EYE, 0]
    # The map is a similarity within the configured ranges: one scale for all distances, and a rotation
    # (not a shear or a reflection) by at most rotation_deg.
    src = np.array([pos[LEFT_EYE], pos[NOSE], pos[RIGHT_EYE]]) * OUT / (VIEW * S)
    dst = pred[[LEFT_EYE, NOSE, RIGHT_EYE]] if not flips else pred[[RIGHT_EYE, NOSE, LEFT_EYE]]
    d_src = np.linalg.norm(src[:, None] - src[None], axis=-1)[np.triu_indices(3, 1)]
    d_dst = np.linalg.norm(dst[:, None] - dst[None], axis=-1)[np.triu_indices(3, 1)]
    ratio = d_dst / d_src
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-4)
    assert cfg.scale[0] - 1e-4 <= ratio[0] <= cfg.scale[1] + 1e-4
    if flips:
        dst = dst * np.array([-1.0, 1.0])         # undo the mirror: what is left must be a rotation
    v_src, v_dst = src[2] - src[0], dst[2] - dst[0]
    turn = math.degrees(math.atan2(cross2(v_src, v_dst), np.dot(v_src, v_dst)))
    assert abs(turn) <= cfg.rotation_deg + 1e-3
    # Orientation kept (no reflection besides the flip).
    orient_src = cross2(src[1] - src[0], src[2] - src[0])
    assert np.sign(orient_src) == np.sign(cross2(dst[1] - dst[0], dst[2] - dst[0]))


@settings(max_examples=20, deadline=None)
@given(angle=st.floats(-math.pi, math.pi), radius=st.floats(10.0, 86.0))
def test_eval_dots_are_exact_even_near_the_view_edge(angle: float, radius: float) -> None:
    """At rest, resampling places each dot on its landmark to a few hundredths of a pixel."""
    pos = three_dots(angle, radius)
    image = torch.from_numpy(dot_image({k: np.array(v) for k, v in pos.items()}))[None]
    lm = torch.from_numpy(landmarks_with_dots(pos))[None]
    out, (m,) = BatchAugmenter(LAYOUT, S, OUT, VIEW)(image, [lm], train=False)
    pred = model_to_out_px(m[0].numpy())
    for idx, ch in DOTS.items():
        assert np.linalg.norm(dot_centroid(out[0, ch].numpy()) - pred[idx]) < 0.1


def test_flip_mirrors_and_permutes_like_the_layout() -> None:
    rng = np.random.default_rng(0)
    lm = rng.uniform(30, 220, size=(2, LAYOUT.num_points, 2)).astype(np.float32)
    images = torch.zeros(2, S, S, 3, dtype=torch.uint8)
    flip_only = AugmentConfig.geometric_only(rotation_deg=0.0, scale=(1, 1), translate=0.0, flip_prob=1.0)
    aug = BatchAugmenter(LAYOUT, S, OUT, VIEW, flip_only)
    _, (m,) = aug(images, [torch.from_numpy(lm)], generator=torch.Generator().manual_seed(1))
    expected = aug.stored_to_model(LAYOUT.mirror(lm, S))
    np.testing.assert_allclose(m.numpy(), expected, atol=1e-5)
    # The returned image-right eye corner is where the mirrored image-left corner went, and vice versa.
    np.testing.assert_allclose(m[:, RIGHT_EYE, 0].numpy(),
                               -aug.stored_to_model(lm[:, LEFT_EYE])[:, 0], atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_landmark_sets_move_together_and_flip_only_flipped_samples(device: str) -> None:
    gen = torch.Generator(device=device).manual_seed(3)
    bsz = 16
    hard = torch.rand(bsz, LAYOUT.num_points, 2, device=device) * S
    soft = hard + 0.5
    images = torch.zeros(bsz, S, S, 3, dtype=torch.uint8, device=device)
    cfg = AugmentConfig.geometric_only(flip_prob=0.5)
    aug = BatchAugmenter(LAYOUT, S, OUT, VIEW, cfg)
    _, (mh, ms) = aug(images, [hard, soft], generator=gen)
    assert mh.device.type == device and ms.shape == mh.shape
    # Same affine for both sets: their difference is the (linear part of the) map applied to 0.5 offsets,
    # identical for all points of one sample.
    diff = (ms - mh).cpu().numpy()
    np.testing.assert_allclose(diff, np.broadcast_to(diff[:, :1], diff.shape), atol=1e-4)


def test_eval_matches_direct_crop_of_the_original_image() -> None:
    cv2 = pytest.importorskip("cv2")          # the augmenter itself needs no OpenCV; this reference does
    rng = np.random.default_rng(5)
    h, w = 420, 380
    low = rng.uniform(0, 255, size=(14, 12, 3)).astype(np.float32)
    src = cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC)
    src = np.clip(src, 0, 255).astype(np.uint8)                  # smooth RGB texture
    box = (120.0, 110.0, 250.0, 260.0)
    stored = cv2.warpAffine(src, crop_affine(box, S, CONTEXT), (S, S), flags=cv2.INTER_LINEAR)
    ref = cv2.warpAffine(src, crop_affine(box, OUT, DEFAULT_MARGIN), (OUT, OUT), flags=cv2.INTER_LINEAR)
    aug = BatchAugmenter(LAYOUT, S, OUT, VIEW)
    pts = rng.uniform(100, 280, size=(1, LAYOUT.num_points, 2))
    stored_pts = apply_affine(crop_affine(box, S, CONTEXT), pts).astype(np.float32)
    out1, (m1,) = aug(torch.from_numpy(stored)[None], [torch.from_numpy(stored_pts)], train=False)
    out2, (m2,) = aug(torch.from_numpy(stored)[None], [torch.from_numpy(stored_pts)], train=False)
    assert torch.equal(out1, out2) and torch.equal(m1, m2)           # no randomness in eval mode
    got = out1[0].permute(1, 2, 0).numpy()
    diff = np.abs(got - ref.astype(np.float32) / 255.0)
    assert diff.mean() < 0.01, diff.mean()
    # A misplaced view (e.g. one pixel off) would be much further away than resampling noise.
    shifted = np.abs(got[:, 1:] - ref[:, :-1].astype(np.float32) / 255.0).mean()
    assert shifted > 2 * diff.mean()
    expected = to_model_coords(apply_affine(crop_affine(box, OUT, DEFAULT_MARGIN), pts), OUT)
    np.testing.assert_allclose(m1.numpy(), expected, atol=1e-4)


@settings(max_examples=40, deadline=None)
@given(x0=st.floats(0, 500), y0=st.floats(0, 500), side=st.floats(20, 600), out=st.sampled_from([112, 224]),
       stored=st.sampled_from([192, 256, 320]), context=st.floats(0.15, 0.8))
def test_eval_landmarks_are_the_direct_crop_coordinates(x0: float, y0: float, side: float, out: int,
                                                        stored: int, context: float) -> None:
    box = (x0, y0, x0 + side, y0 + 0.8 * side)
    pts = np.random.default_rng(0).uniform(-50, 700, size=(1, LAYOUT.num_points, 2))
    view = (1 + 2 * DEFAULT_MARGIN) / (1 + 2 * context)
    aug = BatchAugmenter(LAYOUT, stored, out, view)
    stored_pts = apply_affine(crop_affine(box, stored, context), pts).astype(np.float32)
    _, (m,) = aug(torch.zeros(1, stored, stored, 3, dtype=torch.uint8), [torch.from_numpy(stored_pts)],
                  train=False)
    expected = to_model_coords(apply_affine(crop_affine(box, out, DEFAULT_MARGIN), pts), out)
    np.testing.assert_allclose(m.numpy(), expected, atol=2e-4)
    # model_to_stored inverts the eval mapping, for numpy arrays and tensors alike.
    np.testing.assert_allclose(aug.model_to_stored(m.numpy()), stored_pts, rtol=1e-5, atol=1e-2)
    np.testing.assert_allclose(aug.model_to_stored(m).numpy(), stored_pts, rtol=1e-5, atol=1e-2)
    np.testing.assert_allclose(aug.stored_to_model(stored_pts), m.numpy(), atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_same_seed_same_batch_and_different_seed_differs(device: str) -> None:
    gen = torch.Generator(device=device).manual_seed(0)
    images = torch.randint(0, 256, (8, S, S, 3), dtype=torch.uint8, generator=gen, device=device)
    lm = torch.rand(8, LAYOUT.num_points, 2, generator=gen, device=device) * S
    aug = BatchAugmenter(LAYOUT, S, OUT, VIEW)
    a = aug(images, [lm], generator=torch.Generator(device=device).manual_seed(7))
    b = aug(images, [lm], generator=torch.Generator(device=device).manual_seed(7))
    c = aug(images, [lm], generator=torch.Generator(device=device).manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1][0], b[1][0])
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[1][0], c[1][0])
    assert a[0].is_contiguous() and a[0].device.type == device


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fill", ["noise", "grey"])
def test_photometric_ops_keep_values_in_unit_range(device: str, fill: str) -> None:
    gen = torch.Generator(device=device).manual_seed(2)
    images = torch.randint(0, 256, (12, S, S, 3), dtype=torch.uint8, generator=gen, device=device)
    images[:4] = 255
    images[4:8] = 0
    lm = torch.rand(12, LAYOUT.num_points, 2, device=device) * S
    cfg = AugmentConfig(brightness=1.0, contrast=1.0, saturation=1.0, blur_prob=0.5, blur_sigma=(0.5, 3.0),
                        noise_prob=1.0, noise_std=(0.2, 0.5), cutout_prob=1.0, cutout_size=(0.3, 0.9),
                        cutout_fill=fill)
    out, _ = BatchAugmenter(LAYOUT, S, OUT, VIEW, cfg)(images, [lm], generator=gen)
    assert torch.isfinite(out).all()
    assert out.min().item() >= 0.0 and out.max().item() <= 1.0
    assert out.std().item() > 0.05                                     # not collapsed to a constant


def test_colour_jitter_changes_colours_but_not_geometry() -> None:
    rng = np.random.default_rng(4)
    img = rng.integers(40, 200, size=(4, S, S, 3), dtype=np.uint8)
    lm = torch.from_numpy(rng.uniform(20, 230, size=(4, LAYOUT.num_points, 2)).astype(np.float32))
    colour = AugmentConfig.geometric_only(rotation_deg=0.0, scale=(1, 1), translate=0.0, flip_prob=0.0,
                                          brightness=0.3, contrast=0.3, saturation=0.3)
    aug_c = BatchAugmenter(LAYOUT, S, OUT, VIEW, colour)
    out_c, (m_c,) = aug_c(torch.from_numpy(img), [lm], generator=torch.Generator().manual_seed(0))
    out_e, (m_e,) = aug_c(torch.from_numpy(img), [lm], train=False)
    assert torch.equal(m_c, m_e)
    assert (out_c - out_e).abs().mean() > 0.01
    # Colour ops are pointwise affine in intensity within a sample: strong correlation with the input.
    for b in range(4):
        r = np.corrcoef(out_c[b].flatten().numpy(), out_e[b].flatten().numpy())[0, 1]
        assert r > 0.8


@pytest.mark.parametrize("op", ["brightness", "contrast", "saturation"])
def test_each_colour_op_does_what_its_name_says(op: str) -> None:
    rng = np.random.default_rng(6)
    img = torch.from_numpy(rng.integers(90, 160, size=(8, S, S, 3), dtype=np.uint8))  # no clipping
    lm = torch.zeros(8, LAYOUT.num_points, 2)
    still = dict(rotation_deg=0.0, scale=(1, 1), translate=0.0, flip_prob=0.0)
    cfg = AugmentConfig.geometric_only(**still, **{op: 0.3})
    aug = BatchAugmenter(LAYOUT, S, OUT, VIEW, cfg)
    out, _ = aug(img, [lm], generator=torch.Generator().manual_seed(0))
    ref, _ = aug(img, [lm], train=False)
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    grey_out, grey_ref = (out * luma).sum(1), (ref * luma).sum(1)
    if op == "brightness":                    # every value scaled by one factor in [0.7, 1.3]
        k = (out / ref).flatten(1)
        torch.testing.assert_close(k, k[:, :1].expand_as(k), atol=1e-4, rtol=1e-4)
        assert ((k[:, 0] > 0.7 - 1e-4) & (k[:, 0] < 1.3 + 1e-4)).all() and k[:, 0].std() > 0.01
    elif op == "contrast":                    # mean grey kept, spread scaled
        torch.testing.assert_close(grey_out.mean((1, 2)), grey_ref.mean((1, 2)), atol=1e-4, rtol=0)
        ratio = grey_out.std((1, 2)) / grey_ref.std((1, 2))
        assert ((ratio > 0.7 - 1e-3) & (ratio < 1.3 + 1e-3)).all() and ratio.std() > 0.01
    else:                                     # each pixel's grey value kept, colour spread scaled
        torch.testing.assert_close(grey_out, grey_ref, atol=1e-4, rtol=0)
        ratio = (out - grey_out[:, None]).std((1, 2, 3)) / (ref - grey_ref[:, None]).std((1, 2, 3))
        assert ((ratio > 0.7 - 1e-3) & (ratio < 1.3 + 1e-3)).all() and ratio.std() > 0.01


def test_cutout_occludes_a_rectangle() -> None:
    img = torch.full((6, S, S, 3), 128, dtype=torch.uint8)
    lm = torch.zeros(6, LAYOUT.num_points, 2)
    cfg = AugmentConfig.geometric_only(rotation_deg=0.0, scale=(1, 1), translate=0.0, flip_prob=0.0,
                                       cutout_prob=1.0, cutout_size=(0.2, 0.3), cutout_fill="grey")
    out, _ = BatchAugmenter(LAYOUT, S, OUT, VIEW, cfg)(img, [lm], generator=torch.Generator().manual_seed(9))
    changed = (out - 128 / 255).abs().amax(dim=1) > 1e-3            # (B, H, W)
    for b in range(6):
        ys, xs = torch.nonzero(changed[b], as_tuple=True)
        assert len(ys) > 0
        h = int(ys.max() - ys.min() + 1)
        w = int(xs.max() - xs.min() + 1)
        assert len(ys) == h * w                                       # a filled axis-aligned rectangle
        assert h <= 0.3 * OUT + 2 and w <= 0.3 * OUT + 2


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="flip_prob"):
        AugmentConfig(flip_prob=1.5)
    with pytest.raises(ValueError, match="scale"):
        AugmentConfig(scale=(1.2, 0.8))
    with pytest.raises(ValueError, match="cutout_fill"):
        AugmentConfig(cutout_fill="blue")
    aug = BatchAugmenter(LAYOUT, S, OUT, VIEW)
    with pytest.raises(ValueError, match="augmenter built for"):
        aug(torch.zeros(1, 128, 128, 3, dtype=torch.uint8), [torch.zeros(1, 68, 2)])
    with pytest.raises(ValueError, match="landmark set"):
        aug(torch.zeros(2, S, S, 3, dtype=torch.uint8), [torch.zeros(1, 68, 2)])


def test_off_config_equals_eval() -> None:
    img = torch.randint(0, 256, (3, S, S, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    lm = torch.rand(3, LAYOUT.num_points, 2) * S
    aug = BatchAugmenter(LAYOUT, S, OUT, VIEW, AugmentConfig.off())
    a, (ma,) = aug(img, [lm], generator=torch.Generator().manual_seed(1))
    b, (mb,) = aug(img, [lm], train=False)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(ma, mb)
