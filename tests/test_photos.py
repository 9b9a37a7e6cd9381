"""Whole photographs end to end (``evaluate.photos``, ``kdlandmark evaluate --photos``), on photos the
tests make themselves: rendered faces pasted into larger pictures, with a ``photos.json`` index."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from kdlandmark.cli import main
from kdlandmark.data.synth import render_face
from kdlandmark.errors import DatasetError
from kdlandmark.evaluate.photos import photo_benchmark, read_photos
from kdlandmark.layouts import get_layout
from kdlandmark.modelfile.checkpoint import save_model_checkpoint
from kdlandmark.models import LandmarkRegressor

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _make_photos(root: Path, faces_per_photo: tuple[int, ...] = (2, 1)) -> dict[str, np.ndarray]:
    """Photos of rendered faces side by side; ``photos.json`` as ``../shared/realfaces`` has it."""
    (root / "photos").mkdir(parents=True)
    index, truth = {}, {}
    rng = np.random.default_rng(3)
    for p, count in enumerate(faces_per_photo):
        tiles, faces = [], []
        for k in range(count):
            image, lm, _ = render_face(rng, get_layout("300w"), 128)
            tiles.append(image)
            lm = lm + np.array([128.0 * k, 0.0])
            faces.append({"landmarks": lm.tolist(), "crop": f"faces/face_{p}{k}.jpg"})
        name = f"photo_{p}.png"
        cv2.imwrite(str(root / "photos" / name), np.concatenate(tiles, axis=1))
        index[name] = faces
        truth[name] = np.asarray([f["landmarks"] for f in faces])
    index["training.png"] = [{"landmarks": faces[0]["landmarks"], "crop": "pool/face_x.jpg"}]
    (root / "photos.json").write_text(json.dumps(index))
    return truth


class _Face:
    def __init__(self, landmarks: np.ndarray) -> None:
        self.landmarks = landmarks


class _Oracle:
    """Finds every labelled face but the last one of each photo, shifted by ``shift`` pixels, plus one
    face that is not labelled; given boxes, returns the truth shifted by ``given_shift``."""

    def __init__(self, truth: dict[str, np.ndarray], shift: float, given_shift: float) -> None:
        self.truth, self.shift, self.given_shift = truth, shift, given_shift

    def predict(self, images, boxes=None):
        out = []
        for path in images:
            lms = self.truth[Path(path).name]
            if boxes is not None:
                out.append([_Face(lm + self.given_shift) for lm in lms])
            else:
                stray = lms[0] + 1000.0
                out.append([_Face(lm + self.shift) for lm in lms[:-1]] + [_Face(stray)])
        return out


def test_the_photo_benchmark_counts_found_missed_and_stray_faces(tmp_path: Path) -> None:
    truth = _make_photos(tmp_path, (2, 3))
    layout = get_layout("300w")
    iod = {n: np.linalg.norm(t[:, layout.inter_ocular[0]] - t[:, layout.inter_ocular[1]], axis=-1)
           for n, t in truth.items()}
    result = photo_benchmark(_Oracle(truth, shift=2.0, given_shift=1.0), tmp_path)
    assert result["photos"] == 2 and result["faces"] == 5
    assert result["found"] == 3 and result["recall"] == pytest.approx(3 / 5)
    assert result["false_positives"] == 2 and result["false_positives_per_photo"] == pytest.approx(1.0)
    found_iod = np.concatenate([iod["photo_0.png"][:1], iod["photo_1.png"][:2]])
    assert result["nme_found"] == pytest.approx(np.mean(2.0 * np.sqrt(2) / found_iod), rel=1e-6)
    assert result["nme_given"] == pytest.approx(np.mean(np.sqrt(2) / found_iod), rel=1e-6)
    every = np.concatenate(list(iod.values()))
    assert result["nme_given_all"] == pytest.approx(np.mean(np.sqrt(2) / every), rel=1e-6)
    assert sum(r["found"] for r in result["per_face"]) == 3


def test_read_photos_keeps_the_folder_asked_for_and_names_a_bad_index(tmp_path: Path) -> None:
    _make_photos(tmp_path)
    assert [p.name for p, _ in read_photos(tmp_path)] == ["photo_0.png", "photo_1.png"]
    assert [p.name for p, _ in read_photos(tmp_path, "pool")] == ["training.png"]
    (tmp_path / "photos.json").write_text('{"a.png": [{"crop": "faces/x.jpg"}]}')
    with pytest.raises(DatasetError, match="photos.json.*landmarks"):
        read_photos(tmp_path)


def test_evaluate_photos_from_the_command_line(tmp_path: Path, capsys) -> None:
    _make_photos(tmp_path / "real", (1, 1))
    torch.manual_seed(0)
    ckpt = save_model_checkpoint(tmp_path / "ckpt", LandmarkRegressor("mobilenetv2_035", 68, dropout=0.0),
                                 layout=get_layout("300w"), input_size=32)
    rc = main(["evaluate", "--photos", str(tmp_path / "real"), "--model", str(ckpt),
               "--detector", "full", "--out", str(tmp_path / "out")])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "2 labelled faces" in printed and "NME given box" in printed
    saved = json.loads((tmp_path / "out" / "photos.json").read_text())
    assert saved["faces"] == 2 and saved["detector"] == "full" and len(saved["per_face"]) == 2
    assert saved["found"] + saved["false_positives"] == 2     # "full": each photo is one face
    assert np.isfinite([r["nme_given"] for r in saved["per_face"]]).all()
