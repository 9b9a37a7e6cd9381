"""Clips of labelled photos: the labels through each frame's affine, the pixels with them, smooth motion,
files that the video evaluation reads, and clear errors."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kdlandmark.cli import main
from kdlandmark.data.formats._common import write_pts
from kdlandmark.data.samples import DatasetError
from kdlandmark.data.synth.photo_video import (
    PHOTO_FACE_FRACTION,
    PHOTO_ROLL,
    photo_affines,
    photo_clip,
    photo_videos,
)
from kdlandmark.data.synth.video import read_clip_truth
from kdlandmark.infer.video import read_frames

SIZE = 96


def _dotted_photo(side: int, points: np.ndarray, radius: int) -> np.ndarray:
    """A black photo with a white disc at each point (0-based pixel centres)."""
    img = np.zeros((side, side, 3), np.uint8)
    for x, y in points:
        cv2.circle(img, (round(x * 16), round(y * 16)), radius * 16, (255, 255, 255), -1, cv2.LINE_AA,
                   shift=4)
    return img


@pytest.mark.parametrize("side, radius", [(120, 3), (1200, 24)])      # the second is reduced first
def test_each_frame_shows_the_photo_where_its_affine_puts_the_labels(side, radius):
    rng = np.random.default_rng(side)
    pts = rng.uniform(0.3 * side, 0.7 * side, (68, 2))
    dots = pts[:3]                                                      # three labels marked in the picture
    clip = photo_clip(_dotted_photo(side, dots, radius), pts, 12, seed=3, size=SIZE, key_every=5, noise=0.0)
    affines, rolls = photo_affines(pts, 12, seed=3, size=SIZE, key_every=5)
    truth = clip.landmarks["300w"]
    assert truth.shape == (12, 68, 2) and clip.pose[:, 2].tolist() == pytest.approx(rolls.tolist())
    for t, (frame, a) in enumerate(zip(clip.frames, affines, strict=True)):
        np.testing.assert_allclose(truth[t], pts @ a[:, :2].T + a[:, 2], atol=1e-3)
        grey = frame.mean(axis=2)
        for x, y in truth[t, :3]:                                      # the marked labels land on the dots
            assert grey[round(y), round(x)] > 150, (t, x, y)
        lit = np.argwhere(grey > 150)                                   # and nothing else is lit
        near = np.min(np.linalg.norm(lit[:, None, ::-1] - truth[t, None, :3], axis=-1), axis=1)
        assert near.max() < radius * np.sqrt(abs(np.linalg.det(a[:, :2]))) + 2


def test_a_large_photo_reduced_first_gives_the_frames_of_the_direct_warp():
    # a smooth pattern (periods of 300 and 360 photo pixels, 16-25 frame pixels) has nothing to alias: the
    # reduced photo must give the frames a direct warp of the full one gives (3 grey levels apart at
    # most, measured); a slip of the reduction's pixel-centre bookkeeping, half a reduced pixel, shifts
    # every frame by 0.4 pixels: 9-10 grey levels apart
    side = 1200
    y, x = np.mgrid[0:side, 0:side]
    wave = 127.5 + 127.5 * np.sin(2 * np.pi * x / 300.0) * np.cos(2 * np.pi * y / 360.0)
    photo = np.repeat(wave[..., None], 3, axis=2).astype(np.uint8)
    pts = np.random.default_rng(4).uniform(300, 900, (68, 2))
    clip = photo_clip(photo, pts, 6, seed=1, size=SIZE, key_every=3, noise=0.0)
    affines, _ = photo_affines(pts, 6, seed=1, size=SIZE, key_every=3)
    assert np.sqrt(abs(np.linalg.det(affines[0, :, :2]))) < 0.5                    # it was reduced
    for frame, a in zip(clip.frames, affines, strict=True):
        direct = cv2.warpAffine(photo, a, (SIZE, SIZE), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REPLICATE)
        assert np.abs(frame.astype(float) - direct).mean() < 5.0


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10**6), st.floats(0.0, 1.0))
def test_the_face_moves_smoothly_within_its_ranges(seed, motion):
    pts = np.random.default_rng(seed).uniform(100, 300, (68, 2))
    affines, rolls = photo_affines(pts, 60, seed=seed, size=SIZE, key_every=20, motion=motion)
    boxes = np.stack([pts @ a[:, :2].T + a[:, 2] for a in affines])
    side = np.ptp(boxes, axis=1).max(axis=1)
    lo, hi = PHOTO_FACE_FRACTION
    # the roll turns the box, so its side may grow by up to sqrt(2); the size itself stays within range
    scale = np.sqrt(np.abs(np.linalg.det(affines[:, :, :2])))
    assert np.all(scale * np.ptp(pts, axis=0).max() >= lo * SIZE - 1e-6)
    assert np.all(scale * np.ptp(pts, axis=0).max() <= hi * SIZE + 1e-6)
    assert np.all(side <= hi * SIZE * np.sqrt(2) + 1e-6) and np.all(np.abs(rolls) <= PHOTO_ROLL)
    step = np.linalg.norm(np.diff(boxes, axis=0), axis=-1).max()       # keys 10-30 frames apart
    assert step < 0.2 * SIZE
    if motion == 0:
        np.testing.assert_allclose(affines, affines[:1].repeat(60, axis=0), atol=1e-9)


def test_a_clip_is_a_function_of_its_seed():
    photo = np.random.default_rng(0).integers(0, 256, (150, 150, 3), dtype=np.uint8)
    pts = np.random.default_rng(1).uniform(40, 110, (68, 2))
    a, b = (photo_clip(photo, pts, 5, seed=(7, 2), size=SIZE) for _ in range(2))
    c = photo_clip(photo, pts, 5, seed=(7, 3), size=SIZE)
    assert all(np.array_equal(x, y) for x, y in zip(a.frames, b.frames, strict=True))
    assert not np.array_equal(a.landmarks["300w"], c.landmarks["300w"])
    assert not np.array_equal(a.frames[1], a.frames[2])              # fresh noise even where still


def test_the_command_writes_clips_the_video_evaluation_reads(tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        cv2.imwrite(str(photos / f"p{i}.png"), rng.integers(0, 256, (140, 120, 3), dtype=np.uint8))
        write_pts(photos / f"p{i}.pts", rng.uniform(30, 90, (29, 2)))          # 29 points: COFW
    out = tmp_path / "clips"
    assert main(["synth", "--video", "--from-photos", str(photos), "--frames", "8", "--size", "64",
                 "--out", str(out)]) == 0
    assert "wrote 2 clip(s), 16 frames" in capsys.readouterr().out
    truth = read_clip_truth(out / "clip_001.json")
    assert list(truth.landmarks) == ["cofw"] and truth.landmarks["cofw"].shape == (8, 29, 2)
    assert len(read_frames(out / "clip_001.mp4")) == 8
    assert main(["synth", "--from-photos", str(photos), "--out", str(out)]) == 2
    assert "add --video" in capsys.readouterr().err
    assert main(["synth", "--video", "--cuts", "--from-photos", str(photos), "--out", str(out)]) == 2
    assert "--cuts and --exits" in capsys.readouterr().err


def test_a_folder_without_labelled_photos_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty"):
        photo_videos(tmp_path / "empty", tmp_path / "out")
