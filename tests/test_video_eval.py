"""Video scores (per-frame NME, jitter) and ``kdlandmark evaluate --video`` on synthetic clips."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kdlandmark.cli import main
from kdlandmark.data.crop import landmark_box
from kdlandmark.data.synth.video import read_clip_truth, render_clip, write_clip
from kdlandmark.evaluate.video import frame_jitter, frame_nme, pooled_scores, video_scores
from kdlandmark.infer.landmarker import FaceLandmarks
from kdlandmark.infer.video import (
    MODES,
    jittered_truth_boxes,
    read_frames,
    run_clip,
    time_tracking,
    tune_one_euro,
)
from kdlandmark.layouts import get_layout
from kdlandmark.modelfile.checkpoint import save_model_checkpoint
from kdlandmark.models import LandmarkRegressor

pytestmark = pytest.mark.usefixtures("one_torch_thread")
COFW = get_layout("cofw")


def _truth(t=12, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.uniform(40, 90, (29, 2))
    base[8], base[9] = (45, 60), (85, 60)
    return np.stack([base + [1.5 * k, 0.5 * k] for k in range(t)])


@settings(max_examples=50, deadline=None)
@given(st.floats(-20, 20), st.floats(-20, 20), st.floats(0.2, 5.0), st.integers(0, 1000))
def test_a_constant_offset_has_no_jitter_and_the_scores_do_not_depend_on_the_frame(dx, dy, k, seed):
    g = _truth(seed=seed)
    p = g + [dx, dy]
    assert np.allclose(frame_jitter(p, g, COFW), 0.0, atol=1e-12)
    noisy = g + np.random.default_rng(seed).normal(0, 1.0, g.shape)
    a = video_scores(noisy, g, COFW)
    b = video_scores(noisy * k + 7.0, g * k + 7.0, COFW)               # the same video, scaled and moved
    assert a["nme"] == pytest.approx(b["nme"]) and a["jitter"] == pytest.approx(b["jitter"])


def test_jitter_by_hand_and_missing_frames():
    g = _truth(4)
    p = g.copy()
    p[1] += [3.0, 4.0]                                   # one frame 5 px off: two jumps of 5 px
    iod = np.linalg.norm(g[:, 8] - g[:, 9], axis=-1)     # 40 px, constant
    np.testing.assert_allclose(frame_jitter(p, g, COFW), [5 / iod[1], 5 / iod[2], 0.0])
    np.testing.assert_allclose(frame_nme(p, g, COFW), [0, 5 / iod[1], 0, 0])
    p[2] = np.nan                                        # no face in frame 2
    s = video_scores(p, g, COFW)
    assert s["coverage"] == 0.75 and s["series"]["jitter"][1:] == [None, None]
    assert s["jitter"] == pytest.approx(100 * 5 / 40) and s["nme"] == pytest.approx(100 * 5 / 40 / 3)
    pooled = pooled_scores([s, video_scores(g, g, COFW)])
    assert pooled["frames"] == 8 and pooled["coverage"] == 7 / 8
    assert pooled["jitter"] == pytest.approx(100 * (5 / 40) / 4)      # 4 defined pairs in all


def test_the_simulated_detector_jitters_around_the_truth_box():
    g = _truth(200)
    boxes = jittered_truth_boxes(g, seed=3)
    true = np.array([landmark_box(lm) for lm in g])
    w, h = true[:, 2] - true[:, 0], true[:, 3] - true[:, 1]
    rel = (boxes - true) / np.stack([w, h, w, h], axis=1)       # x edges in widths, y edges in heights
    assert 0.025 < rel.std() < 0.035 and np.abs(rel).max() <= 0.075 + 1e-12
    assert np.array_equal(boxes, jittered_truth_boxes(g, seed=3))


class ClipLandmarker:
    """Truth plus a crop-dependent bias and noise, for the frames of one clip (found by identity)."""

    def __init__(self, frames, truth, noise):
        self.index = {id(f): t for t, f in enumerate(frames)}
        self.truth, self.noise = truth, noise
        self.rng = np.random.default_rng(0)
        self.layout, self.max_faces, self.input_size, self.source = COFW, None, 16, "fake"
        self.runner = lambda x: np.zeros((len(x), 29, 2), np.float32)
        self.snapped = []                       # the snap flag of each landmarks_in_boxes call

    def detect(self, frame):
        raise AssertionError("the simulated detector must be used")

    def frame_index(self, frame):
        return self.index[id(frame)]

    def faces_in_boxes(self, frame, boxes, scores=None, snap=False, flip=False):
        lm = self.truth[self.frame_index(frame)]
        out = []
        for b in np.asarray(boxes, float).reshape(-1, 4):
            tb = np.asarray(landmark_box(lm))
            shift = (b[:2] + b[2:]) / 2 - (tb[:2] + tb[2:]) / 2
            pred = lm + 0.3 * shift + self.rng.normal(0, self.noise, lm.shape)
            out.append(FaceLandmarks(pred.astype(np.float32), tuple(b), 1.0, COFW))
        return out

    def landmarks_in_boxes(self, frame, boxes, snap=False):
        self.snapped.append(snap)
        return np.stack([f.landmarks for f in self.faces_in_boxes(frame, boxes, snap=snap)])


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    video, truth = write_clip(render_clip(2, 30, size=96, key_every=25), tmp_path_factory.mktemp("c") / "c",
                              fps=25)
    return video, read_clip_truth(truth)


def test_modes_detect_as_they_should_and_tracking_steadies_the_landmarks(clip):
    video, truth = clip
    frames = read_frames(video)
    # a model that follows its crop a little: the jittering detector box shakes its landmarks, a crop
    # from the previous landmarks does not
    lmk = ClipLandmarker(frames, truth.landmarks["cofw"], noise=0.05)
    runs = {m: run_clip(lmk, frames, truth, m, min_cutoff=1.0, beta=20.0) for m in MODES}
    assert runs["frame"].detector_runs == runs["frame+smooth"].detector_runs == 30
    assert runs["track"].detector_runs == runs["track+smooth"].detector_runs == 1
    jit = {m: r.scores["jitter"] for m, r in runs.items()}
    assert jit["track"] * 3 < jit["frame"] and jit["track+smooth"] * 2 < jit["frame"]
    assert jit["frame+smooth"] < jit["frame"]
    assert all(r.scores["coverage"] == 1.0 for r in runs.values())
    timing = time_tracking(lmk, frames, truth, rounds=1)
    assert timing["calls"] == 29 and timing["tracking_ms"] > 0 and timing["face_ms"] > 0
    assert timing["ratio"] == pytest.approx(timing["tracking_ms"] / timing["model_ms"])
    assert timing["ratio_face"] == pytest.approx(timing["tracking_ms"] / timing["face_ms"])
    # the floor is the per-face path with the tracker's snapped crop, timed as often as the others
    assert lmk.snapped.count(True) == lmk.snapped.count(False) == 29
    assert timing["floor_ms"] > 0
    assert timing["ratio_floor"] == pytest.approx(timing["floor_ms"] / timing["model_ms"])


def test_evaluate_video_command_writes_scores_and_a_plot(clip, tmp_path, capsys):
    torch.manual_seed(0)
    net = LandmarkRegressor("mobilenetv2_035", 29, dropout=0.0).eval()
    ckpt = save_model_checkpoint(tmp_path / "m" / "best", net, layout="cofw", input_size=32,
                                 crop={"margin": 0.15})
    out, plot = tmp_path / "ev", tmp_path / "v.png"
    assert main(["evaluate", "--model", str(ckpt), "--video", str(clip[0].parent), "--out", str(out),
                 "--plot", str(plot), "--no-timing"]) == 0
    printed = capsys.readouterr().out
    assert "track+smooth" in printed and "jitter" in printed
    doc = json.loads((out / "video_metrics.json").read_text())
    assert set(doc["modes"]) == set(MODES) and doc["detector"] == "truth-jitter"
    assert doc["modes"]["frame"]["detector_runs_per_frame"] == 1.0
    assert plot.read_bytes()[:4] == b"\x89PNG"
    # bad input: a folder without clips, a missing clip, --video without a model
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["evaluate", "--model", str(ckpt), "--video", str(empty)]) == 2
    assert "no clip" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(ckpt), "--video", str(tmp_path / "nope.mp4")]) == 2
    assert "no such clip" in capsys.readouterr().err
    assert main(["evaluate", "--rescore", str(out), "--video", str(clip[0])]) == 2
    assert "--video needs --model" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(ckpt), "--video", str(clip[0]), "--flip"]) == 2
    assert "--flip is for photos" in capsys.readouterr().err


class DecodedClipLandmarker(ClipLandmarker):
    """The same fake, finding a frame by its pixels (for code that decodes the clip itself)."""

    def __init__(self, frames, truth, noise):
        super().__init__(frames, truth, noise)
        self.by_pixels = {f.tobytes(): t for t, f in enumerate(frames)}

    def frame_index(self, frame):
        return self.by_pixels[frame.tobytes()]


def test_the_one_euro_search_keeps_the_steadiest_setting_within_the_nme_margin(clip):
    video, truth = clip
    frames = read_frames(video)
    lmk = DecodedClipLandmarker(frames, truth.landmarks["cofw"], noise=0.05)
    res = tune_one_euro(lmk, [video], min_cutoffs=[0.2, 1.0, 4.0], betas=[0.0, 20.0], crop_froms=["raw"],
                        nme_margin=1.05, progress=False)
    assert len(res["grid"]) == 6 and res["clips"] == 1
    ref = res["reference_frame_by_frame"]
    assert ref["nme"] == pytest.approx(run_clip(lmk, frames, truth, "frame").scores["nme"], rel=0.05)
    ok = [g for g in res["grid"] if g["nme"] <= 2.05 * ref["nme"]]
    assert len(ok) >= 2 and res["best"] == min(ok, key=lambda g: g["jitter"])
    # a fixed low cutoff lags this fast clip far behind: never chosen
    lagging = next(g for g in res["grid"] if g["min_cutoff"] == 0.2 and g["beta"] == 0.0)
    assert lagging not in ok and lagging["nme"] > 5 * ref["nme"]
    # no setting within a zero margin here (every filter lags this fast clip a little): no choice
    none = tune_one_euro(lmk, [video], min_cutoffs=[4.0], betas=[20.0], crop_froms=["raw"], nme_margin=0.0,
                         progress=False)
    assert none["best"] is None and none["grid"][0]["nme"] > none["reference_frame_by_frame"]["nme"]
