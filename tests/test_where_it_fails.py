"""scripts/where_it_fails.py: NME and failures by pose, face size and region, from an evaluation folder."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _train_helpers import load_script
from kdlandmark.data.synth.face import FaceShape, build_geometry, landmarks_3d
from kdlandmark.evaluate.evaluator import Predictions, save_predictions
from kdlandmark.layouts import get_layout

LAYOUT = get_layout("300w")
A, B = LAYOUT.inter_ocular
TIP = LAYOUT.groups["nose_bridge"][-1]


def _tool():
    return load_script("where_it_fails")


def _face(width: float, nose_shift: float) -> np.ndarray:
    """The face model's mean face, ``width`` pixels wide, its nose tip moved along the eye line by
    ``nose_shift`` of the eye span (the yaw proxy)."""
    base = landmarks_3d(build_geometry(FaceShape()), LAYOUT)[:, :2].astype(np.float64)
    base = (base - base.min(0)) / np.ptp(base[:, 0]) * width + 20.0
    base[TIP, 0] += nose_shift * (base[B, 0] - base[A, 0])
    return base


def _write(folder, pred, gt):
    n = len(gt)
    save_predictions(folder, Predictions(
        "folder", LAYOUT, {"all": pred}, {"all": gt}, {"all": np.tile(np.eye(2, 3), (n, 1, 1))},
        {"all": np.zeros(gt.shape[:2], bool)}, {"all": [f"f{i}.jpg" for i in range(n)]},
        {"all": [{} for _ in range(n)]}, {}))
    return folder


@settings(max_examples=8, deadline=None)
@given(err_turned=st.floats(0.02, 0.3).filter(lambda v: min(abs(v - 0.1), abs(v - 0.2)) > 1e-3),
       err_jaw=st.floats(0.0, 0.2))
def test_errors_land_in_their_pose_size_and_region_rows(tmp_path_factory, err_turned, err_jaw) -> None:
    """Four faces: turned-small, turned-large, frontal-small, frontal-large. The turned ones are off on
    every point by ``err_turned`` of their eye span on average (the small one, rising along the points)
    and half of it (the large one), the frontal-small one only on the jaw by ``err_jaw``, the
    frontal-large one not at all (the filter keeps the turned faces' NME off the 10 % failure
    threshold): each row reports exactly the mean of its faces, a failure is counted above 10 %, and
    the regions split the error between the jaw and the rest."""
    tool = _tool()
    gt = np.stack([_face(40, 0.2), _face(90, -0.2), _face(40, 0.0), _face(90, 0.05)])
    iod = np.linalg.norm(gt[:, B] - gt[:, A], axis=1)
    pred = gt.copy()
    ramp = 2 * np.arange(1, LAYOUT.num_points + 1) / (LAYOUT.num_points + 1)       # mean 1, per point
    pred[0, :, 0] += err_turned * iod[0] * ramp
    pred[1, :, 0] += err_turned / 2 * iod[1]
    jaw = list(LAYOUT.groups["jaw"])
    pred[2, jaw, 1] += err_jaw * iod[2]
    rows = tool.breakdown(_write(tmp_path_factory.mktemp("e") / "eval", pred, gt))
    jaw_share = len(jaw) / LAYOUT.num_points
    e = np.array([err_turned, err_turned / 2, err_jaw * jaw_share, 0.0]) * 100     # each face's NME %
    assert rows["turned (|yaw proxy| > 0.1)"][:2] == (2, pytest.approx(e[:2].mean()))
    assert rows["near-frontal"][:2] == (2, pytest.approx(e[2:].mean(), abs=1e-9))
    assert rows["small (landmark box < 45 px wide)"][:2] == (2, pytest.approx(e[[0, 2]].mean()))
    assert rows["larger"][:2] == (2, pytest.approx(e[[1, 3]].mean()))
    assert rows["all"][2] == pytest.approx(25.0 * (e > 10).sum())
    eyes = list(LAYOUT.groups["eye_left"]) + list(LAYOUT.groups["eye_right"])
    assert rows["region jaw"][1] == pytest.approx((e[0] * ramp[jaw].mean() + e[1] + 100 * err_jaw) / 4)
    assert rows["region eyes"][1] == pytest.approx((e[0] * ramp[eyes].mean() + e[1]) / 4)
    assert tool.format_breakdown(rows)[0].startswith("all")


def test_an_evaluation_folder_without_predictions_names_itself(tmp_path) -> None:
    with pytest.raises(SystemExit, match=str(tmp_path / "nothing")):
        _tool().breakdown(tmp_path / "nothing")
