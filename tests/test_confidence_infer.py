"""Confidence outputs at inference: ONNX head outputs (parity), the Landmarker's results and JSON."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from kdlandmark.data.crop import landmark_box, square_box
from kdlandmark.data.synth.sample_faces import synthetic_faces
from kdlandmark.errors import CheckpointError
from kdlandmark.infer.export import export_onnx, load_onnx, onnx_model_bytes
from kdlandmark.infer.landmarker import Landmarker
from kdlandmark.layouts import get_layout
from kdlandmark.modelfile.checkpoint import load_checkpoint, save_model_checkpoint
from kdlandmark.models import InferenceOutputs, LandmarkRegressor

LAYOUT = get_layout("cofw")
SIZE = 48
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(2)
    net = LandmarkRegressor("mobilenetv2_050", LAYOUT.num_points, dropout=0.0, heads=("visibility", "error"),
                            head_hidden=16).eval()
    with torch.no_grad():                      # outputs that vary from point to point and image to image
        net.head.weight.normal_(0, 0.05)
        net.visibility_head.mlp[2].weight.normal_(0, 0.5)
        net.error_head.mlp[2].weight.normal_(0, 0.2)
    crop = {"margin": 0.15, "context_margin": 0.4, "stored_size": 72}
    return save_model_checkpoint(tmp_path_factory.mktemp("ckpt") / "best", net, layout=LAYOUT,
                                 input_size=SIZE, crop=crop)


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    return export_onnx(checkpoint, tmp_path_factory.mktemp("onnx") / "model.onnx", dynamic_batch=True)


@pytest.fixture(scope="module")
def faces():
    return synthetic_faces(LAYOUT, 3, seed=4, size=128)


def test_the_onnx_graph_has_the_head_outputs_and_matches_pytorch(checkpoint, exported):
    parity = exported["parity"]
    assert set(parity) == {"random", "synthetic_faces", "visibility:random", "visibility:synthetic_faces",
                           "error:random", "error:synthetic_faces"}
    assert max(parity.values()) < 1e-4
    session, meta = load_onnx(exported["onnx"])
    assert [o.name for o in session.get_outputs()] == ["landmarks", "visibility", "error"]
    assert meta.heads == ("visibility", "error")
    written = json.loads(exported["json"].read_text())
    assert set(written["head_outputs"]) == {"visibility", "error"}
    model, _ = load_checkpoint(checkpoint)
    x = np.random.default_rng(1).random((4, 3, SIZE, SIZE), dtype=np.float32)
    with torch.inference_mode():
        ref = InferenceOutputs(model)(torch.from_numpy(x))
    got = session.run(None, {"image": x})
    for r, g in zip(ref, got, strict=True):
        np.testing.assert_allclose(g, r.numpy(), atol=1e-4)
    vis = got[1]
    assert ((vis > 0) & (vis < 1)).all() and vis.std() > 0.01          # probabilities that vary


def test_a_graph_that_lost_a_head_output_is_refused(checkpoint, exported, tmp_path):
    model, meta = load_checkpoint(checkpoint)
    plain = onnx.load_model_from_string(onnx_model_bytes(LandmarkRegressor("mobilenetv2_050", 29), SIZE))
    bad = tmp_path / "bad.onnx"
    plain.metadata_props.add(key="kdlandmark", value=json.dumps(json.loads(exported["json"].read_text())))
    bad.write_bytes(plain.SerializeToString())
    with pytest.raises(CheckpointError, match=r"expected one input and 3 output\(s\)"):
        load_onnx(bad)


def test_landmarker_reports_visibility_and_error_in_pixels_for_both_backends(checkpoint, exported, faces):
    torch_lmk = Landmarker.from_checkpoint(checkpoint, detector=None, upright=None)
    onnx_lmk = Landmarker.from_checkpoint(exported["onnx"], backend="onnx", detector=None, upright=None)
    assert torch_lmk.heads == ("visibility", "error")
    for img, lm in faces:
        box = landmark_box(lm)
        a, b = torch_lmk(img, boxes=[box])[0], onnx_lmk(img, boxes=[box])[0]
        np.testing.assert_allclose(a.landmarks, b.landmarks, atol=0.01)
        np.testing.assert_allclose(a.visibility, b.visibility, atol=1e-4)
        np.testing.assert_allclose(a.error, b.error, rtol=1e-3)
        # the error in pixels is the model's error (a fraction of the crop side) times that side
        model, meta = load_checkpoint(checkpoint)
        side = square_box(box, meta.margin)[2]
        crop = torch_lmk.landmarks_in_boxes(img, [box], heads=(heads := {}))
        assert crop.shape == (1, 29, 2)
        np.testing.assert_allclose(heads["error"][0], a.error, rtol=1e-6)
        assert a.error.min() > 0 and a.error.max() < side
        doc = a.to_json()
        assert len(doc["visibility"]) == len(doc["error"]) == 29
        np.testing.assert_array_equal(a.hidden(), a.visibility < 0.5)


def test_a_plain_model_gives_no_confidence_and_says_so_when_asked(tmp_path, faces):
    net = LandmarkRegressor("mobilenetv2_050", 29, dropout=0.0)
    folder = save_model_checkpoint(tmp_path / "plain", net, layout=LAYOUT, input_size=SIZE)
    lmk = Landmarker.from_checkpoint(folder, detector=None)
    img, lm = faces[0]
    face = lmk(img, boxes=[landmark_box(lm)])[0]
    assert face.visibility is None and face.error is None and face.hidden() is None
    assert "visibility" not in face.to_json() and "error" not in face.to_json()
    with pytest.raises(CheckpointError, match="no confidence heads"):
        lmk.require_heads()


def test_refine_passes_report_the_confidence_of_the_last_pass(checkpoint, faces):
    lmk = Landmarker.from_checkpoint(checkpoint, detector=None, refine=1, upright=None)
    img, lm = faces[0]
    face = lmk(img, boxes=[landmark_box(lm)])[0]
    # the second pass crops around the first pass's landmarks: its box, landmarks and heads are reported
    first = lmk.landmarks_in_boxes(img, [landmark_box(lm)])
    box = np.concatenate([first.min(axis=1), first.max(axis=1)], axis=1)
    again = lmk.landmarks_in_boxes(img, box, heads=(heads := {}))
    np.testing.assert_allclose(face.box, box[0], atol=1e-4)
    np.testing.assert_allclose(face.landmarks, again[0], atol=1e-4)
    np.testing.assert_allclose(face.visibility, heads["visibility"][0], atol=1e-6)
    np.testing.assert_allclose(face.error, heads["error"][0], rtol=1e-6)


def test_upright_passes_report_the_confidence_of_the_last_pass(checkpoint, faces):
    """Each upright pass crops the face turned level about the last landmarks; the last pass's landmarks
    and confidence outputs (error in image pixels of the rotated crop) are reported."""
    from kdlandmark.data.crop import upright_crop_affine
    from kdlandmark.infer.landmarker import UPRIGHT_PASSES

    lmk = Landmarker.from_checkpoint(checkpoint, detector=None, upright=0.0)   # any tilt: every pass runs
    img, lm = faces[0]
    face = lmk(img, boxes=[landmark_box(lm)])[0]
    pts = lmk.landmarks_in_boxes(img, [landmark_box(lm)])
    for _ in range(UPRIGHT_PASSES):
        crop = upright_crop_affine(pts[0], float(LAYOUT.roll(pts[0])), lmk.input_size, lmk.margin)
        pts = lmk.landmarks_in_crops(img, [crop], heads=(heads := {}))
    np.testing.assert_allclose(face.landmarks, pts[0], atol=1e-4)
    np.testing.assert_allclose(face.visibility, heads["visibility"][0], atol=1e-6)
    np.testing.assert_allclose(face.error, heads["error"][0], rtol=1e-5)


def test_flip_averaging_averages_the_confidence_outputs_point_by_point(checkpoint, faces):
    """``flip=True`` with heads: each point's visibility and error are the mean of its own value on the
    crop and its mirror partner's value on the mirrored crop, the same in the ONNX and PyTorch paths."""
    img, lm = faces[0]
    box = [landmark_box(lm)]
    one = Landmarker.from_checkpoint(checkpoint, detector=None)
    heads: dict = {}
    one.landmarks_in_boxes(img, box, heads=heads)
    mirrored_heads: dict = {}
    w = img.shape[1]
    one.landmarks_in_boxes(np.ascontiguousarray(img[:, ::-1]), [(w - 1 - box[0][2], box[0][1],
                                                                 w - 1 - box[0][0], box[0][3])],
                           heads=mirrored_heads)
    perm = LAYOUT.flip_array
    for backend in ("torch", "onnx"):
        flip = Landmarker.from_checkpoint(checkpoint, detector=None, backend=backend, flip=True)
        got: dict = {}
        flip.landmarks_in_boxes(img, box, heads=got)
        for name in ("visibility", "error"):
            expected = (heads[name][0] + mirrored_heads[name][0][perm]) / 2
            np.testing.assert_allclose(got[name][0], expected, rtol=0.02, atol=0.01)
            assert np.abs(got[name][0] - heads[name][0]).max() > 1e-3      # the mirror did change it
