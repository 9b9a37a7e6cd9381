"""Video mode: the One Euro filter (properties), the tracker's decisions, Landmarker.track."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from kdlandmark.data.crop import landmark_box
from kdlandmark.infer.landmarker import FaceLandmarks, Landmarker
from kdlandmark.infer.track import FaceTracker, OneEuroFilter, box_iou
from kdlandmark.layouts import get_layout
from kdlandmark.modelfile.checkpoint import model_meta
from kdlandmark.models import LandmarkRegressor

pytestmark = pytest.mark.usefixtures("one_torch_thread")
COFW = get_layout("cofw")
SIZE = 200


# ------------------------------------------------------------------------------------------------ filter
points = hnp.arrays(np.float64, st.tuples(st.integers(1, 5), st.just(2)),
                    elements=st.floats(-100, 100, allow_nan=False))
params = st.tuples(st.floats(0.05, 20.0), st.floats(0.0, 5.0))


def _run(values, times, min_cutoff, beta, scale=1.0):
    f = OneEuroFilter(min_cutoff, beta)
    return np.stack([f(v, t, scale) for v, t in zip(values, times, strict=True)])


def _times(n, rng_gaps):
    return np.cumsum([0.0, *rng_gaps[: n - 1]])


sequences = st.integers(2, 12).flatmap(lambda n: st.tuples(
    hnp.arrays(np.float64, (n, 3, 2), elements=st.floats(-50, 50, allow_nan=False)),
    hnp.arrays(np.float64, (n,), elements=st.floats(0.005, 0.2))))


@settings(max_examples=60, deadline=None)
@given(points, params, st.integers(2, 10))
def test_a_constant_input_comes_out_unchanged(x, p, n):
    out = _run([x] * n, np.arange(n) / 25.0, *p)
    np.testing.assert_allclose(out, np.broadcast_to(x, out.shape), rtol=0, atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(sequences, params)
def test_each_output_lies_between_the_inputs_seen_so_far(seq, p):
    values, gaps = seq
    out = _run(values, _times(len(values), gaps), *p)
    for k in range(len(values)):
        lo, hi = values[: k + 1].min(axis=0), values[: k + 1].max(axis=0)
        assert np.all(out[k] >= lo - 1e-9) and np.all(out[k] <= hi + 1e-9)


@settings(max_examples=60, deadline=None)
@given(sequences, params, st.floats(-1e3, 1e3), st.floats(0.1, 10.0), st.floats(0, 2 * np.pi))
def test_the_filter_commutes_with_moving_scaling_and_turning_the_points(seq, p, shift, k, angle):
    values, gaps = seq
    times = _times(len(values), gaps)
    base = _run(values, times, *p, scale=2.0)
    np.testing.assert_allclose(_run(values + shift, times, *p, scale=2.0), base + shift, atol=1e-6)
    # the speed is measured in units of `scale`: scaling points and scale together scales the output
    np.testing.assert_allclose(_run(values * k, times, *p, scale=2.0 * k), base * k, rtol=1e-7, atol=1e-7)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    np.testing.assert_allclose(_run(values @ rot.T, times, *p, scale=2.0), base @ rot.T, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(sequences, sequences, st.floats(0.05, 20.0))
def test_without_beta_it_is_a_linear_filter(a, b, min_cutoff):
    n = min(len(a[0]), len(b[0]))
    x, y, times = a[0][:n], b[0][:n], _times(n, a[1])
    fx, fy = _run(x, times, min_cutoff, 0.0), _run(y, times, min_cutoff, 0.0)
    np.testing.assert_allclose(_run(x + y, times, min_cutoff, 0.0), fx + fy, atol=1e-7)


@settings(max_examples=40, deadline=None)
@given(st.floats(0.1, 5.0), st.floats(0.0, 3.0), st.floats(0.5, 5.0))
def test_it_smooths_a_still_point_and_follows_a_moving_one_faster_with_beta(min_cutoff, beta, more):
    t = np.arange(30) / 25.0
    ramp = np.stack([np.column_stack([10 * t, 0 * t])], axis=1)          # 10 units/s along x
    lag_slow = ramp[-1, 0, 0] - _run(ramp, t, min_cutoff, beta)[-1, 0, 0]
    lag_fast = ramp[-1, 0, 0] - _run(ramp, t, min_cutoff, beta + more)[-1, 0, 0]
    assert 0 < lag_fast < lag_slow                                        # speed opens the filter
    noise = np.random.default_rng(0).normal(0, 1, (30, 1, 2))
    smoothed = _run(noise, t, min_cutoff, beta)
    assert np.abs(np.diff(smoothed, axis=0)).mean() < np.abs(np.diff(noise, axis=0)).mean()


@settings(max_examples=30, deadline=None)
@given(sequences, params)
def test_the_output_keeps_a_float32_input_in_float32_and_filters_it_as_float64(seq, p):
    values, gaps = seq
    times = _times(len(values), gaps)
    v32 = values.astype(np.float32)
    f32, f64 = OneEuroFilter(*p), OneEuroFilter(*p)
    for v, t in zip(v32, times, strict=True):
        a, b = f32(v, t), f64(v.astype(np.float64), t)
        assert a.dtype == np.float32 and b.dtype == np.float64
        np.testing.assert_array_equal(a, b.astype(np.float32))      # the state itself is float64
    assert OneEuroFilter()(np.arange(4).reshape(2, 2), 0.0).dtype == np.float64   # integers: float64


def test_bad_filter_settings_and_times_are_refused():
    with pytest.raises(ValueError, match="min_cutoff"):
        OneEuroFilter(0.0, 1.0)
    f = OneEuroFilter()
    f(np.zeros((2, 2)), 0.0)
    with pytest.raises(ValueError, match="time must increase"):
        f(np.zeros((2, 2)), 0.0)
    with pytest.raises(ValueError, match="shape"):
        f(np.zeros((3, 2)), 1.0)


# ------------------------------------------------------------------------------------------------ tracker
def _truth(frames: int, speed: float = 0.6, seed: int = 0) -> np.ndarray:
    """A COFW-shaped face drifting right, ``speed`` pixels per frame, in a SIZE x SIZE frame."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(60, 140, (COFW.num_points, 2))
    base[8], base[9] = (70, 90), (130, 90)                   # the outer eye corners: 60 px apart
    return np.stack([base + [speed * t, 0.0] for t in range(frames)])


class FakeLandmarker:
    """A 'model' whose landmarks depend on the crop box (a bias towards the box centre) plus noise, and a
    detector whose box jitters: frame-by-frame inference jitters as a real one does."""

    def __init__(self, truth, *, noise=0.4, jitter=0.04, bias=0.3, seed=0, error=None):
        self.truth, self.noise, self.jitter, self.bias = truth, noise, jitter, bias
        self.rng = np.random.default_rng(seed)
        self.t = 0
        self.max_faces = None
        self.detect_calls = 0
        self.error = error
        self.layout = COFW

    def detect(self, frame):
        self.detect_calls += 1
        lm = self.truth[self.t]
        if ((lm < 0) | (lm > SIZE)).any(axis=1).mean() > 0.5:
            return []
        box = np.asarray(landmark_box(lm), float)
        side = box[2] - box[0]
        return [(tuple(box + self.rng.normal(0, self.jitter, 4) * side), 0.9)]

    def faces_in_boxes(self, frame, boxes, scores=None, snap=False, flip=False):
        out = []
        for k, b in enumerate(np.asarray(boxes, float).reshape(-1, 4)):
            lm = self.truth[self.t]
            tb = np.asarray(landmark_box(lm), float)
            offset = (b[:2] + b[2:]) / 2 - (tb[:2] + tb[2:]) / 2
            pred = lm + self.bias * offset + self.rng.normal(0, self.noise, lm.shape)
            err = None if self.error is None else np.full(len(lm), self.error, np.float32)
            out.append(FaceLandmarks(pred.astype(np.float32), tuple(b), 1.0 if scores is None else scores[k],
                                     COFW, error=err))
        return out


def _frames(n, colour=40):
    return [np.full((SIZE, SIZE, 3), colour, np.uint8) for _ in range(n)]


def _jitter(pred, truth):
    e = np.asarray(pred) - truth
    iod = np.linalg.norm(truth[:, 8] - truth[:, 9], axis=-1)
    return float((np.linalg.norm(np.diff(e, axis=0), axis=-1).mean(axis=-1) / iod[1:]).mean())


def test_tracking_and_smoothing_cut_the_jitter_of_frame_by_frame_inference():
    truth = _truth(60)
    fake = FakeLandmarker(truth)
    per_frame = []
    for t in range(60):
        fake.t = t
        boxes = [b for b, _ in fake.detect(None)]
        per_frame.append(fake.faces_in_boxes(None, boxes)[0].landmarks)
    fake = FakeLandmarker(truth)
    tracker = FaceTracker(fake, fps=25)
    tracked = []
    for t, frame in enumerate(_frames(60)):
        fake.t = t
        tracked.append(tracker.update(frame)[0].landmarks)
    assert fake.detect_calls == 1                            # the detector left the per-frame path
    assert _jitter(tracked, truth) * 3 < _jitter(per_frame, truth)
    # and the landmarks still follow the face: mean error within the per-frame error's range
    err = lambda p: np.linalg.norm(np.asarray(p) - truth, axis=-1).mean()   # noqa: E731
    assert err(tracked) < 1.5 * err(per_frame)


def test_the_detector_runs_on_a_schedule_and_new_faces_join():
    truth = _truth(25)
    fake = FakeLandmarker(truth, noise=0.0, jitter=0.0)
    tracker = FaceTracker(fake, redetect_every=10)
    for t, frame in enumerate(_frames(25)):
        fake.t = t
        faces = tracker.update(frame)
        assert len(faces) == 1                               # the same face is not tracked twice
    assert fake.detect_calls == 3                            # frames 0, 10, 20
    assert [e.why for e in tracker.events if e.event == "detect"] == ["start", "schedule", "schedule"]


def test_a_scene_cut_restarts_the_tracks():
    truth = _truth(10)
    fake = FakeLandmarker(truth, noise=0.0, jitter=0.0)
    tracker = FaceTracker(fake)
    frames = _frames(5, 30) + _frames(5, 200)
    for t, frame in enumerate(frames):
        fake.t = t
        tracker.update(frame)
    assert [(e.frame, e.event) for e in tracker.events] == [(0, "detect"), (5, "cut"), (5, "detect")]


def test_a_face_that_leaves_is_lost_and_frames_without_it_have_no_face():
    truth = _truth(40, speed=6.0)                            # gone past the right edge after ~25 frames
    fake = FakeLandmarker(truth, noise=0.1, jitter=0.0)
    tracker = FaceTracker(fake)
    counts = []
    for t, frame in enumerate(_frames(40)):
        fake.t = t
        counts.append(len(tracker.update(frame)))
    lost = [e for e in tracker.events if e.event == "lost"]
    assert len(lost) == 1 and "inside the frame" in lost[0].why
    first_gone = lost[0].frame
    assert counts[:first_gone] == [1] * first_gone and counts[first_gone:] == [0] * (40 - first_gone)
    # once nothing is tracked, the detector is asked on every frame
    assert fake.detect_calls == 1 + (40 - first_gone)


def test_a_large_predicted_error_counts_as_lost():
    truth = _truth(3)
    fake = FakeLandmarker(truth, noise=0.0, jitter=0.0, error=50.0)   # 50 px on a ~100 px face
    tracker = FaceTracker(fake, max_error=0.15)
    fake.t = 0
    assert tracker.update(_frames(1)[0]) == []
    assert "predicted error" in tracker.events[-1].why


def test_a_frame_of_another_size_is_refused_with_its_number():
    fake = FakeLandmarker(_truth(3))
    tracker = FaceTracker(fake)
    tracker.update(_frames(1)[0])
    fake.t = 1
    with pytest.raises(ValueError, match=r"frame 1 is 100x200 pixels, but the video started at 200x200"):
        tracker.update(np.zeros((200, 100, 3), np.uint8))


def test_boxes_replace_the_detector_and_bad_settings_are_refused():
    fake = FakeLandmarker(_truth(2))
    tracker = FaceTracker(fake)
    box = landmark_box(_truth(1)[0])
    faces = tracker.update(_frames(1)[0], boxes=[box])
    assert fake.detect_calls == 0 and len(faces) == 1 and box_iou(faces[0].box, box) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="crop_from"):
        FaceTracker(fake, crop_from="detector")
    with pytest.raises(ValueError, match="One Euro"):
        FaceTracker(fake, beta=-1)


# ------------------------------------------------------------------------------------------------ API
class ShapeRunner:
    """A model that always predicts one face shape (model coordinates), with confidence outputs."""

    def __init__(self, coords):
        self.coords = np.asarray(coords, np.float32)

    def __call__(self, x):
        n = len(x)
        c = np.broadcast_to(self.coords, (n, *self.coords.shape)).copy()
        k = len(self.coords)
        return c, np.full((n, k), 0.9, np.float32), np.full((n, k), 0.01, np.float32)


@pytest.fixture(scope="module")
def landmarker():
    from kdlandmark.data.crop import apply_affine, crop_affine

    net = LandmarkRegressor("mobilenetv2_035", COFW.num_points, dropout=0.0, heads=("visibility", "error"))
    meta = model_meta(net, layout="cofw", input_size=32, crop={"margin": 0.15})
    truth = _truth(1)[0]
    box = landmark_box(truth)
    coords = (apply_affine(crop_affine(box, 32, 0.15), truth) - 15.5) / 32     # the truth, as the model says

    def detector(image):
        return [(box, 0.99)]

    return Landmarker(ShapeRunner(coords), meta, detector=detector)


def test_landmarker_track_yields_faces_per_frame_then_names_a_bad_frame(landmarker):
    frames = [np.random.default_rng(i).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8) for i in range(4)]
    frames[2] = frames[1].copy()
    got = []
    with pytest.raises(ValueError, match="frame 4 is 100x100"):
        for faces in landmarker.track(frames + [np.zeros((100, 100, 3), np.uint8)], scene_cut=0, snap=False):
            got.append(faces)
    assert len(got) == 4 and all(len(f) == 1 for f in got)   # the frames before the problem were given
    face = got[-1][0]
    assert face.visibility.shape == face.error.shape == (COFW.num_points,)
    assert face.landmarks.dtype == np.float32
    np.testing.assert_allclose(face.landmarks, _truth(1)[0], atol=1e-3)
    np.testing.assert_allclose(face.visibility, 0.9, atol=1e-6)
    from kdlandmark.data.crop import square_box

    side = square_box(landmark_box(_truth(1)[0]), 0.15)[2]     # the crop's side in image pixels
    np.testing.assert_allclose(face.error, 0.01 * side, rtol=1e-5)   # model units -> image pixels


class CountingShapeRunner(ShapeRunner):
    """:class:`ShapeRunner` that records how many crops each model call was given."""

    def __init__(self, coords):
        super().__init__(coords)
        self.batches: list[int] = []

    def __call__(self, x):
        self.batches.append(len(x))
        return super().__call__(x)


def test_tracking_runs_one_pass_per_frame_unless_told_to_flip(landmarker):
    """A landmarker that flip-averages (the shipped model's default) still costs one model pass per tracked
    frame; ``FaceTracker(flip=True)`` asks for the two."""
    frames = [np.random.default_rng(i).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8) for i in range(3)]
    for flip, per_face in ((False, 1), (True, 2)):
        runner = CountingShapeRunner(landmarker.runner.coords)
        lmk = Landmarker(runner, landmarker.meta, detector=landmarker._detector_spec, flip=True)
        tracker = FaceTracker(lmk, scene_cut=0, flip=flip)
        faces = [tracker.update(f) for f in frames]
        assert all(len(f) == 1 for f in faces)
        assert runner.batches == [per_face] * len(frames), (flip, runner.batches)
    assert lmk.landmarks_in_boxes(frames[0], [(10, 10, 50, 50)]).shape == (1, COFW.num_points, 2)
    assert runner.batches[-1] == 2                             # the landmarker's own calls still flip
