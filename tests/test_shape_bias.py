"""scripts/shape_bias.py: the shared (systematic) part of a model's error, in each face's eye frame."""

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


def _tool():
    return load_script("shape_bias")


def _faces(n: int, seed: int) -> np.ndarray:
    """``n`` mean faces at random scales, rotations and places, with a little per-point noise."""
    rng = np.random.default_rng(seed)
    base = landmarks_3d(build_geometry(FaceShape()), LAYOUT)[:, :2]
    out = []
    for _ in range(n):
        t = rng.uniform(-0.5, 0.5)
        rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
        out.append(base @ rot.T * rng.uniform(40, 120) + rng.uniform(50, 150, 2)
                   + rng.normal(0, 0.5, base.shape))
    return np.stack(out)


def _write(folder, pred, gt, split: str = "all"):
    """An evaluation folder as ``kdlandmark evaluate`` writes it, with one split."""
    n = len(gt)
    save_predictions(folder, Predictions(
        "folder", LAYOUT, {split: pred}, {split: gt}, {split: np.tile(np.eye(2, 3), (n, 1, 1))},
        {split: np.zeros(gt.shape[:2], bool)}, {split: [f"f{i}.jpg" for i in range(n)]},
        {split: [{} for _ in range(n)]}, {}))
    return folder


@settings(max_examples=10, deadline=None)
@given(dx=st.floats(-0.1, 0.1), dy=st.floats(-0.1, 0.1), squeeze=st.floats(0.3, 0.9))
def test_a_shared_offset_and_a_squeezed_mouth_are_found(tmp_path_factory, dx, dy, squeeze) -> None:
    """Predictions = labels moved by the same offset in every face's eye frame, and the inner mouth
    squeezed vertically: the offset is reported as the shared error, removing it leaves only the
    squeeze, and the inner mouth's vertical spread is the squeeze factor."""
    tool = _tool()
    gt = _faces(12, 0)
    a, b = LAYOUT.inter_ocular
    axis = gt[:, b] - gt[:, a]
    iod = np.linalg.norm(axis, axis=1)[:, None]
    ux = axis / iod
    uy = np.stack([-ux[:, 1], ux[:, 0]], axis=1)
    pred = gt + ((dx * ux + dy * uy) * iod)[:, None, :]
    inner = list(LAYOUT.groups["mouth_inner"])
    centre = gt[:, inner].mean(1, keepdims=True)
    along = np.einsum("fpk,fk->fp", gt[:, inner] - centre, uy)
    pred[:, inner] -= ((1 - squeeze) * along)[..., None] * uy[:, None, :]
    lines = tool.shape_bias(_write(tmp_path_factory.mktemp("e") / "eval", pred, gt))
    row = {ln.split()[0]: ln.split()[1:] for ln in lines[2:-1]}
    assert float(row["jaw"][2]) == pytest.approx(100 * dx, abs=0.02)      # mean dx of the jaw
    assert float(row["jaw"][3]) == pytest.approx(100 * dy, abs=0.02)
    assert float(row["mouth_inner"][5]) == pytest.approx(squeeze, abs=0.02)   # spread y
    assert float(row["jaw"][5]) == pytest.approx(1.0, abs=1e-3)
    # the squeeze is the same in every face: removing the shared error removes it too
    assert float(lines[-1].split(";")[1].split()[5]) <= 0.05       # % of the iod, from the noise only


def test_label_statistics_follow_the_face_models_mouth_and_brows(tmp_path) -> None:
    """Label folders of the face model's mean face, closed and with the mouth opened and the brows
    raised: the statistics read the layout's groups, so they see the neutral mouth closed, the opened
    one open by the model's own gap, and the raised brows higher."""
    import dataclasses

    tool = _tool()
    sizes = {}
    for name, shape in (("neutral", FaceShape()), ("open", dataclasses.replace(FaceShape(), open=0.6,
                                                                                   brow_raise=1.0))):
        folder = tmp_path / name
        folder.mkdir()
        lm = landmarks_3d(build_geometry(shape), LAYOUT)[:, :2] * 50 + 100
        for i in range(3):
            lines = "".join(f"{x + 1:.4f} {y + 1:.4f}\n" for x, y in lm + i)
            (folder / f"f{i}.pts").write_text(f"version: 1\nn_points: 68\n{{\n{lines}}}\n")
        out = tool.label_stats(folder, LAYOUT)
        sizes[name] = {ln[:28].strip(): float(ln[28:].split()[0]) for ln in out[1:]}
        a, b = LAYOUT.inter_ocular
        iod = np.linalg.norm(lm[b] - lm[a])
        gap = 100 * (lm[66, 1] - lm[62, 1]) / iod                # this layout's inner-lip middle points
        assert sizes[name]["inner-lip gap"] == pytest.approx(gap, abs=0.01)
    assert sizes["neutral"]["inner-lip gap"] == pytest.approx(0.0, abs=0.01)
    assert sizes["open"]["inner-lip gap"] > 10.0
    assert sizes["open"]["brow height over the eyes"] > sizes["neutral"]["brow height over the eyes"] + 5
    assert sizes["open"]["jaw width"] == pytest.approx(sizes["neutral"]["jaw width"], abs=0.01)


def test_bad_input_names_the_file(tmp_path) -> None:
    tool = _tool()
    with pytest.raises(SystemExit, match="predictions.json: not found"):
        tool.shape_bias(tmp_path)
    gt = _faces(1, 1)
    with pytest.raises(SystemExit, match="1 face"):
        tool.shape_bias(_write(tmp_path / "one", gt, gt))
    gt = _faces(3, 1)
    with pytest.raises(SystemExit, match="no split 'all'"):
        tool.shape_bias(_write(tmp_path / "test", gt, gt, split="test"))
    with pytest.raises(SystemExit, match="no .pts files"):
        tool.label_stats(tmp_path, LAYOUT)
