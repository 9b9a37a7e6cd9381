"""Synthetic video clips: smooth motion, exact per-frame truth, scene cuts, faces that leave, files."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kdlandmark.cli import main
from kdlandmark.data.samples import DatasetError
from kdlandmark.data.synth.render import render_scene
from kdlandmark.data.synth.video import (
    EXIT_FRAMES,
    VIDEO_LAYOUTS,
    clip_scenes,
    read_clip_truth,
    render_clip,
    smoothstep,
    write_clip,
)
from kdlandmark.layouts import get_layout

SIZE = 96


@pytest.fixture(scope="module")
def clip():
    return render_clip(5, 24, size=SIZE, key_every=16)


@given(st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_smoothstep_runs_from_0_to_1_monotonically_and_symmetrically(s, t):
    assert smoothstep(0.0) == 0.0 and smoothstep(1.0) == 1.0
    assert 0.0 <= smoothstep(s) <= 1.0
    assert smoothstep(1.0 - s) == pytest.approx(1.0 - smoothstep(s), abs=1e-12)
    if s <= t:
        assert smoothstep(s) <= smoothstep(t) + 1e-15


def test_a_clip_is_a_function_of_its_seed_and_index(clip):
    again = render_clip(5, 24, size=SIZE, key_every=16)
    other = render_clip(5, 24, size=SIZE, key_every=16, index=1)
    assert all(np.array_equal(a, b) for a, b in zip(clip.frames, again.frames, strict=True))
    assert np.array_equal(clip.landmarks["300w"], again.landmarks["300w"])
    assert not np.allclose(clip.landmarks["300w"], other.landmarks["300w"])


def test_the_face_moves_smoothly_and_keeps_its_appearance(clip):
    lm = clip.landmarks["300w"].astype(np.float64)
    step = np.linalg.norm(np.diff(lm, axis=0), axis=-1).mean(axis=-1)       # mean point motion per frame
    assert step.max() < 0.05 * SIZE
    assert lm[-1].mean(axis=0) != pytest.approx(lm[0].mean(axis=0), abs=0.5)   # it did move
    # acceleration is small next to the motion: no jumps
    accel = np.linalg.norm(np.diff(lm, n=2, axis=0), axis=-1).mean(axis=-1)
    assert accel.max() < 0.5 * max(step.max(), 1e-3)
    # one appearance: the first and last frames share their background corner (only noise differs)
    a, b = clip.frames[0][:6, :6].astype(float), clip.frames[-1][:6, :6].astype(float)
    assert np.abs(a.mean() - b.mean()) < 20


def test_each_frame_is_the_scene_rendered_with_exact_landmarks(clip):
    scenes = clip_scenes(5, 24, size=SIZE, key_every=16)
    face = render_scene(scenes[10])
    assert np.array_equal(face.image, clip.frames[10])
    for name in VIDEO_LAYOUTS:
        assert np.array_equal(face.landmarks(get_layout(name)), clip.landmarks[name][10])
        assert np.array_equal(face.occluded(get_layout(name)), clip.occluded[name][10])
    # layouts agree on shared points: 300W outer eye corners are COFW's 8 and 9
    np.testing.assert_allclose(clip.landmarks["300w"][:, [36, 45]], clip.landmarks["cofw"][:, [8, 9]],
                               atol=1e-4)


def test_sensor_noise_changes_from_frame_to_frame():
    scenes = clip_scenes(2, 3, size=SIZE, motion=0.0)
    assert len({s.seeds[1] for s in scenes}) == 3 and len({s.seeds[0] for s in scenes}) == 1
    assert scenes[0].yaw == scenes[2].yaw                       # motion 0: a still face


def test_a_scene_cut_changes_face_and_place_at_once():
    c = render_clip(1, 16, size=SIZE, cut_at=8)
    lm = c.landmarks["cofw"].astype(np.float64)
    step = np.linalg.norm(np.diff(lm, axis=0), axis=-1).mean(axis=-1)
    assert list(c.segment) == [0] * 8 + [1] * 8
    assert step[7] > 5 * np.delete(step, 7).max()               # the jump is at the cut, nowhere else


def test_a_face_that_exits_ends_with_every_landmark_outside_the_frame():
    frames, at = EXIT_FRAMES + 6, 4
    c = render_clip(3, frames, size=SIZE, exit_at=at)
    inside = c.inside["300w"].mean(axis=1)
    assert inside[:at].min() == 1.0
    assert inside[at + EXIT_FRAMES:].max() == 0.0
    assert (c.landmarks["300w"][-1, :, 0] > SIZE - 0.5).all()   # it left through the right edge
    assert np.all(np.diff(inside[at:]) <= 1e-9)                  # and never came back


def test_bad_clip_settings_are_refused():
    with pytest.raises(ValueError, match="cut_at"):
        clip_scenes(0, 10, cut_at=10)
    with pytest.raises(ValueError, match="motion"):
        clip_scenes(0, 10, motion=2.0)


def test_written_clip_decodes_to_its_frames_and_truth_reads_back(clip, tmp_path):
    video, truth_path = write_clip(clip, tmp_path / "c", fps=12.5)
    cap = cv2.VideoCapture(str(video))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    cap.release()
    assert len(frames) == len(clip) and frames[0].shape == (SIZE, SIZE, 3)
    diff = np.mean([np.abs(a.astype(float) - b.astype(float)).mean() for a, b in zip(frames, clip.frames,
                                                                                        strict=True)])
    assert diff < 12                                           # lossy MPEG-4, but the same pictures
    truth = read_clip_truth(video)                             # the video's path finds its JSON
    assert truth.frames == len(clip) and truth.fps == 12.5 and truth.video == video
    for name in VIDEO_LAYOUTS:
        np.testing.assert_allclose(truth.landmarks[name], clip.landmarks[name], atol=6e-4)
        assert np.array_equal(truth.occluded[name], clip.occluded[name])
        assert np.array_equal(truth.inside[name], clip.inside[name])


def test_malformed_truth_is_a_dataset_error_naming_the_file(tmp_path):
    p = tmp_path / "c.json"
    with pytest.raises(DatasetError, match="not found"):
        read_clip_truth(p)
    p.write_text("{not json")
    with pytest.raises(DatasetError, match="unreadable"):
        read_clip_truth(p)
    p.write_text(json.dumps({"format": "kdlandmark-video-truth", "frames": 2, "layouts": {"cofw": {}}}))
    with pytest.raises(DatasetError, match=r"c\.json: malformed"):
        read_clip_truth(p)


def test_synth_video_command_writes_clips(tmp_path, capsys):
    out = tmp_path / "clips"
    assert main(["synth", "--video", "--count", "2", "--frames", "6", "--size", "64", "--out", str(out),
                 "--workers", "1", "--cuts"]) == 0
    assert "wrote 2 clip(s), 12 frames" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["clip_000.json", "clip_000.mp4", "clip_001.json",
                                                    "clip_001.mp4"]
    truth = read_clip_truth(out / "clip_001.json")
    assert list(truth.segment) == [0, 0, 0, 1, 1, 1]
    assert main(["synth", "--video", "--count", "1", "--frames", "10", "--exits", "--out",
                 str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.startswith("error: a clip whose face leaves")
