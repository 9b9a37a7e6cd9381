"""``kdlandmark predict VIDEO`` with --smooth and --confidence, and its bad input: a video that cannot be
opened, a frame of another size, a face that leaves the frame, a model without confidence heads."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from kdlandmark.cli import main
from kdlandmark.data.synth.video import render_clip, write_clip
from kdlandmark.infer import landmarker as landmarker_mod
from kdlandmark.layouts import get_layout
from kdlandmark.modelfile.checkpoint import save_model_checkpoint
from kdlandmark.models import LandmarkRegressor

pytestmark = pytest.mark.usefixtures("one_torch_thread")
COFW = get_layout("cofw")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    heads = LandmarkRegressor("mobilenetv2_035", 29, dropout=0.0, heads=("visibility", "error")).eval()
    plain = LandmarkRegressor("mobilenetv2_035", 29, dropout=0.0).eval()
    crop = {"margin": 0.15}
    return (save_model_checkpoint(root / "heads", heads, layout="cofw", input_size=32, crop=crop),
            save_model_checkpoint(root / "plain", plain, layout="cofw", input_size=32, crop=crop))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    video, _ = write_clip(render_clip(0, 8, size=64), tmp_path_factory.mktemp("clip") / "c", fps=10)
    return video


def _read(path):
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def _use_runner(monkeypatch, runner) -> None:
    """Every Landmarker built from a checkpoint runs ``runner`` instead of its network."""
    original = landmarker_mod.Landmarker.from_checkpoint

    def patched(*a, **k):
        lmk = original(*a, **k)
        lmk.runner = runner
        return lmk

    monkeypatch.setattr(landmarker_mod.Landmarker, "from_checkpoint", staticmethod(patched))


class CropShapeRunner:
    """A fixed face shape filling the crop, with confidence outputs (a stand-in for a trained model)."""

    def __init__(self):
        self.coords = np.random.default_rng(1).uniform(-0.38, 0.38, (29, 2)).astype(np.float32)

    def __call__(self, x):
        n = len(x)
        return (np.broadcast_to(self.coords, (n, 29, 2)).copy(), np.full((n, 29), 0.8, np.float32),
                np.full((n, 29), 0.02, np.float32))


def test_smooth_tracks_and_writes_confidence(models, clip, tmp_path, capsys, monkeypatch):
    _use_runner(monkeypatch, CropShapeRunner())
    out = tmp_path / "out"
    assert main(["predict", str(clip), "--model", str(models[0]), "--out", str(out), "--detector", "full",
                 "--smooth", "--min-cutoff", "2", "--beta", "5", "--confidence"]) == 0
    doc = json.loads((out / "c.json").read_text())
    assert doc["mode"] == "tracking + One Euro smoothing"
    assert doc["one_euro"] == {"min_cutoff": 2.0, "beta": 5.0}
    assert len(doc["frames"]) == 8 and doc["fps"] == 10
    face = doc["frames"][3]["faces"][0]
    assert len(face["visibility"]) == len(face["error"]) == 29
    assert doc["events"][0] == {"frame": 0, "event": "detect", "why": "start"}
    assert _read(out / "c.mp4") == 8
    assert "1 video(s) with 8 frame(s)" in capsys.readouterr().out


def test_confidence_from_a_model_without_heads_is_one_error_line(models, clip, tmp_path, capsys):
    assert main(["predict", str(clip), "--model", str(models[1]), "--out", str(tmp_path / "o"),
                 "--detector", "full", "--confidence"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "no confidence heads" in err[0]


def test_a_video_that_cannot_be_opened_is_named(models, tmp_path, capsys):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all" * 50)
    assert main(["predict", str(bad), "--model", str(models[1]), "--out", str(tmp_path / "o"),
                 "--detector", "full", "--smooth"]) == 2
    err = capsys.readouterr().err
    assert f"error: {bad}: cannot open video" in err


class _Capture:
    """cv2.VideoCapture stand-in: frames from a list."""

    def __init__(self, frames, fps=25.0):
        self.frames, self.fps = list(frames), fps

    def isOpened(self):  # noqa: N802 -- OpenCV's name
        return True

    def get(self, prop):
        return {cv2.CAP_PROP_FPS: self.fps, cv2.CAP_PROP_FRAME_COUNT: float(len(self.frames))}.get(prop, 0.0)

    def read(self):
        return (True, self.frames.pop(0)) if self.frames else (False, None)

    def release(self):
        pass


@pytest.mark.parametrize("smooth", [False, True])
def test_a_frame_of_another_size_stops_the_video_and_keeps_the_frames_before(models, tmp_path, monkeypatch,
                                                                            capsys, smooth):
    frames = [np.full((64, 64, 3), 90, np.uint8)] * 5 + [np.zeros((48, 64, 3), np.uint8)] * 3
    monkeypatch.setattr(cv2, "VideoCapture", lambda path: _Capture(frames))
    video = tmp_path / "v.mp4"
    video.write_bytes(b"")
    out = tmp_path / "o"
    args = ["predict", str(video), "--model", str(models[0]), "--out", str(out), "--detector", "full",
            "--batch", "2"] + (["--smooth"] if smooth else [])
    assert main(args) == 1
    doc = json.loads((out / "v.json").read_text())
    assert len(doc["frames"]) == 5
    assert doc["error"].startswith("frame 5 is 64x48 pixels, but the video started at 64x64")
    err = capsys.readouterr().err
    assert "frame 5 is 64x48 pixels" in err and "the 5 frame(s) before it were written" in err


# ------------------------------------------------------------------------------------------------ leaving
SQUARE, STEP, N = 40, 6, 30


def _square_frames():
    frames = []
    for t in range(N):
        f = np.full((120, 120, 3), 30, np.uint8)
        x0 = 20 + STEP * t
        f[40:40 + SQUARE, max(0, x0):max(0, min(120, x0 + SQUARE))] = 230
        frames.append(f)
    return frames


class SquareRunner:
    """A 'model' that sees the bright square in its crop and puts 29 points on it (corners and edges),
    completing the square from its left edge and height when the crop shows only part of it."""

    def __init__(self):
        rng = np.random.default_rng(0)
        self.template = rng.uniform(-0.5, 0.5, (29, 2)).astype(np.float32)

    def __call__(self, x):
        s = x.shape[-1]
        out = np.zeros((len(x), 29, 2), np.float32)
        for b in range(len(x)):
            ys, xs = np.nonzero(x[b].mean(axis=0) > 0.7)
            if len(xs) == 0:
                continue
            h = ys.max() - ys.min() + 1
            centre = np.array([xs.min() + h / 2 - 0.5, (ys.min() + ys.max()) / 2])
            out[b] = (centre + self.template * h - (s - 1) / 2) / s
        return out


def _square_detector(image):
    ys, xs = np.nonzero(image[..., 0] > 180)
    if len(xs) < SQUARE * SQUARE // 2:                        # like a real detector: no half faces
        return []
    return [((float(xs.min()), float(ys.min()), float(xs.min() + SQUARE - 1), float(ys.max())), 0.9)]


def test_a_face_that_leaves_the_frame_is_reported_with_the_frames_without_it(models, tmp_path, monkeypatch,
                                                                          capsys):
    frames = _square_frames()
    monkeypatch.setattr(cv2, "VideoCapture", lambda path: _Capture(frames))
    monkeypatch.setattr(landmarker_mod, "make_detector", lambda *a, **k: _square_detector)
    _use_runner(monkeypatch, SquareRunner())
    video = tmp_path / "leaving.mp4"
    video.write_bytes(b"")
    out = tmp_path / "o"
    assert main(["predict", str(video), "--model", str(models[1]), "--out", str(out), "--smooth",
                 "--json-only"]) == 0
    doc = json.loads((out / "leaving.json").read_text())
    counts = [len(f["faces"]) for f in doc["frames"]]
    lost = [e for e in doc["events"] if e["event"] == "lost"]
    assert "inside the frame" in lost[0]["why"]
    k = lost[0]["frame"]
    assert all(e["why"].startswith("at detection") for e in lost[1:])     # re-detections of a half face
    assert 10 < k < N and counts[:k] == [1] * k and counts[k:] == [0] * (N - k)
    printed = capsys.readouterr().out
    assert f"no face in frame(s) {k}-{N - 1} (tracked face lost: only" in printed
    # the detector ran at the start and then only once nothing was tracked
    assert doc["detector_runs"] == 1 + (N - k)
