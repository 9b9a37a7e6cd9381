"""A wheel built from the repository carries everything the package reads at run time, and works.

``pip wheel .`` (no build isolation, no network), then the wheel is unpacked into a folder of its own
that shadows the source tree: the presets, the shipped model and the detectors' constants must come
from there, and ``kdlandmark predict`` (no ``--model``) and a small ``kdlandmark demo`` must run from it.
"""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from _train_helpers import REPO

pytestmark = pytest.mark.slow

#: Package data the code reads at run time (paths inside the wheel).
NEEDED = [
    "kdlandmark/configs/demo.yaml",
    "kdlandmark/configs/paper-300w.yaml",
    "kdlandmark/configs/pretrained-68.yaml",
    "kdlandmark/reference/published.json",
    "kdlandmark/py.typed",
    "kdlandmark/pretrained/kdlandmark-68/model.json",
    "kdlandmark/pretrained/kdlandmark-68/model.safetensors",
    "kdlandmark/pretrained/kdlandmark-68/model.onnx",
    "kdlandmark/pretrained/kdlandmark-68/model.onnx.json",
    "kdlandmark/pretrained/kdlandmark-68/card.json",
    "kdlandmark/infer/mtcnn_calibration.py",
    "kdlandmark/infer/haar_calibration.py",
]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps",
                            "--no-build-isolation", "--no-index", "-q", "-w", str(out)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr
    wheels = list(out.glob("kdlandmark-*.whl"))
    assert len(wheels) == 1
    with zipfile.ZipFile(wheels[0]) as zf:
        names = set(zf.namelist())
        missing = [n for n in NEEDED if n not in names]
        assert not missing, f"the wheel lacks {missing}"
        assert not any(n.startswith(("tests/", "docs/", "runs/")) for n in names)
        site = tmp_path_factory.mktemp("site")
        zf.extractall(site)
    return site


def _run(site: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(site), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, cwd=cwd,
                          env=env)


def test_the_installed_wheel_reads_its_own_data(installed: Path, tmp_path: Path) -> None:
    probe = ("import kdlandmark, json; from kdlandmark.pipeline import resolve_preset; "
             "from kdlandmark.infer.landmarker import Landmarker, pretrained_dir; "
             "lm = Landmarker.from_pretrained(detector=None); "
             "print(json.dumps([kdlandmark.__file__, str(resolve_preset('demo')), str(pretrained_dir()), "
             "lm.source]))")
    res = _run(installed, "-c", probe, cwd=tmp_path)   # not the repository: the source tree is not found
    assert res.returncode == 0, res.stderr
    paths = json.loads(res.stdout)
    assert all(str(installed) in p for p in paths), paths


def test_predict_without_a_model_runs_from_the_wheel(installed: Path, tmp_path: Path) -> None:
    from kdlandmark.data.synth import render_face
    from kdlandmark.layouts import get_layout

    image, _, _ = render_face(np.random.default_rng([5, 0]), get_layout("300w"), 256)
    cv2.imwrite(str(tmp_path / "face.jpg"), image)
    res = _run(installed, "-m", "kdlandmark", "predict", "face.jpg", "--out", "out", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    result = json.loads((tmp_path / "out" / "face.json").read_text())
    faces = result["faces"] if isinstance(result, dict) else result
    assert len(faces) == 1 and len(faces[0]["landmarks"]) == 68


def test_a_small_demo_runs_from_the_wheel(installed: Path, tmp_path: Path) -> None:
    """The demo's preset comes from the wheel, and the whole recipe runs (tiny: 40 faces, 1-2 epochs)."""
    res = _run(installed, "-m", "kdlandmark", "demo", "--count", "40", "--out", "demo",
               "teacher.optim.epochs=1", "student.optim.epochs=2", "kd.l2_warmup_epochs=1",
               "teacher.optim.batch_size=8", "student.optim.batch_size=8", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    results = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert set(results["models"]) == {"tough", "tolerant", "kd", "l2"}
    assert (tmp_path / "demo" / "report.html").is_file()
