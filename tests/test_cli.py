"""The command line: a light parser, and bad input of every command as one ``error:`` line, status 2."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from _train_helpers import python_env
from kdlandmark import config, pipeline
from kdlandmark.cli import DATASETS, FORMATS, NORMALISATIONS, ROLES, build_parser, main
from kdlandmark.data.synth.dataset import FORMATS as SYNTH_FORMATS
from kdlandmark.evaluate import protocols
from kdlandmark.layouts import get_layout
from kdlandmark.modelfile.checkpoint import save_model_checkpoint
from kdlandmark.models import LandmarkRegressor

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------------------------------------ the parser
_HELP_PROBE = r"""
import sys, time
t0 = time.perf_counter()
from kdlandmark.cli import build_parser
parser = build_parser()
sub = next(a for a in parser._actions if a.choices and "synth" in a.choices)
texts = [parser.format_help()] + [p.format_help() for p in sub.choices.values()]
print(repr({"heavy": [m for m in ("torch", "numpy", "cv2", "onnxruntime") if m in sys.modules],
            "commands": sorted(sub.choices), "seconds": time.perf_counter() - t0}))
"""


def test_building_the_parser_imports_neither_torch_nor_numpy() -> None:
    res = subprocess.run([sys.executable, "-c", _HELP_PROBE], capture_output=True, text=True,
                         env=python_env(), timeout=60)
    assert res.returncode == 0, res.stderr
    probe = ast.literal_eval(res.stdout.strip().splitlines()[-1])
    assert probe["heavy"] == []
    assert probe["commands"] == sorted(["synth", "prepare", "asm", "train", "pipeline", "demo", "evaluate",
                                        "compare", "predict", "export", "bench"])


def test_the_parser_choices_are_the_library_names() -> None:
    from kdlandmark.cli import UPRIGHT_DEG
    from kdlandmark.infer.landmarker import DEFAULT_UPRIGHT_DEG

    assert UPRIGHT_DEG == DEFAULT_UPRIGHT_DEG
    assert build_parser().parse_args(["predict", "x.jpg", "--out", "o"]).upright == DEFAULT_UPRIGHT_DEG
    assert build_parser().parse_args(["predict", "x.jpg", "--out", "o", "--no-upright"]).upright is None
    assert build_parser().parse_args(["predict", "x.jpg", "--out", "o", "--upright", "25"]).upright == 25.0
    assert DATASETS == tuple(protocols.SUBSETS)
    assert NORMALISATIONS == protocols.NORMALISATIONS
    assert ROLES == config.ROLES and FORMATS == SYNTH_FORMATS
    stages = build_parser().parse_args(["pipeline", "--config", "x"]).stages
    assert tuple(stages) == pipeline.STAGES


# ------------------------------------------------------------------------------------------------ bad input
@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    """A truncated checkpoint, an unreadable image, a config with a typo and a plain file."""
    root = tmp_path_factory.mktemp("bad")
    torch.manual_seed(0)
    net = LandmarkRegressor("mobilenetv2_035", 68, dropout=0.0)
    ckpt = save_model_checkpoint(root / "ckpt", net, layout=get_layout("300w"), input_size=32)
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:2000])
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    (root / "typo.yaml").write_text("dataset: 300w\nstudent:\n  optim:\n    lrr: 0.1\n")
    (root / "plain").write_text("a file, not a folder\n")
    return root


def _cases(b):
    """(command line, text the error line must contain) for every command."""
    return {
        "synth": (["synth", "--out", str(b / "plain"), "--count", "3"], "plain"),
        "prepare": (["prepare", "--dataset", "300w", "--root", str(b / "nowhere"), "--out", str(b / "p")],
                    "nowhere"),
        "asm": (["asm", "--data", str(b / "nowhere")], "nowhere"),
        "train": (["train", "--config", str(b / "typo.yaml"), "--role", "tough", "--data", str(b)],
                  "student.optim.lrr"),
        "pipeline": (["pipeline", "--config", "demo", "--data-root", str(b), "--out", str(b / "exp"),
                      "studnet.optim.epochs=3"], "studnet"),
        "demo": (["demo", "--out", str(b / "demo"), "student.optim.epochs=many"], "student.optim.epochs"),
        "evaluate": (["evaluate", "--model", str(b / "ckpt"), "--dataset", "300w", "--root", str(b),
                      "--latency-runs", "0"], "model.safetensors"),
        "compare": (["compare", str(b / "nowhere")], "nowhere"),
        "predict": (["predict", str(b / "broken.jpg"), "--model", str(b / "ckpt"), "--out", str(b / "o")],
                    "model.safetensors"),
        "predict-image": (["predict", str(b / "broken.jpg"), "--model", str(b / "ckpt-ok"), "--out",
                           str(b / "o"), "--detector", "full"], "no input could be processed"),
        "export": (["export", "--model", str(b / "nowhere")], "nowhere"),
        "bench-data": (["bench", "data", "--workers", "1", "--count", "2", "--size", "-5"], "--size"),
        "bench-train": (["bench", "train", "--config", str(b / "missing.yaml")], "missing.yaml"),
        "bench-infer": (["bench", "infer", "--model", str(b / "ckpt"), "--no-compile"], "model.safetensors"),
    }


@pytest.mark.parametrize("case", ["synth", "prepare", "asm", "train", "pipeline", "demo", "evaluate",
                                  "compare", "predict", "predict-image", "export", "bench-data",
                                  "bench-train", "bench-infer"])
def test_every_command_ends_bad_input_with_one_error_line(case, bad_files, capsys) -> None:
    argv, named = _cases(bad_files)[case]
    if case == "predict-image":           # a good model, so that the image is what fails
        ok = bad_files / "ckpt-ok"
        if not ok.exists():
            save_model_checkpoint(ok, LandmarkRegressor("mobilenetv2_035", 68, dropout=0.0),
                                  layout=get_layout("300w"), input_size=32)
    try:
        rc = main(argv)
    except SystemExit as exc:             # argparse rejects a bad option itself
        rc = exc.code
    out, err = capsys.readouterr()
    assert rc == 2, (out, err)
    last = err.strip().splitlines()[-1]
    assert "error:" in last and named in last, err
    assert "Traceback" not in out + err


def test_a_real_process_prints_no_traceback(bad_files) -> None:
    for argv, named in (_cases(bad_files)["export"], _cases(bad_files)["predict"]):
        res = subprocess.run([sys.executable, "-m", "kdlandmark", *argv], capture_output=True, text=True,
                             env=python_env(), timeout=120)
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        assert res.stderr.strip().splitlines()[-1].startswith("error: ") and named in res.stderr


def test_predict_reports_some_bad_images_with_status_1(bad_files, tmp_path, capsys) -> None:
    ok = bad_files / "ckpt-ok"
    if not ok.exists():
        save_model_checkpoint(ok, LandmarkRegressor("mobilenetv2_035", 68, dropout=0.0),
                              layout=get_layout("300w"), input_size=32)
    cv2.imwrite(str(tmp_path / "good.png"), np.full((40, 40, 3), 128, np.uint8))
    rc = main(["predict", str(tmp_path / "good.png"), str(bad_files / "broken.jpg"), "--model", str(ok),
               "--out", str(tmp_path / "o"), "--detector", "full", "--json-only"])
    assert rc == 1                                       # one image done, one refused
    assert "broken.jpg" in capsys.readouterr().err
    assert json.loads((tmp_path / "o" / "good.json").read_text())["faces"]


def test_predict_takes_16_bit_grey_tiny_and_faceless_images(bad_files, tmp_path, capsys) -> None:
    """16-bit and greyscale photos are read; a tiny or a faceless image gives an empty result that is
    named, never a traceback (the default detector, MTCNN)."""
    from kdlandmark.data.synth import render_face

    ok = bad_files / "ckpt-ok"
    if not ok.exists():
        save_model_checkpoint(ok, LandmarkRegressor("mobilenetv2_035", 68, dropout=0.0),
                              layout=get_layout("300w"), input_size=32)
    image, _, _ = render_face(np.random.default_rng([5, 0]), get_layout("300w"), 256)
    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "face16.png"), image.astype(np.uint16) * 257)
    cv2.imwrite(str(folder / "grey.png"), cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(folder / "tiny.png"), np.full((4, 4, 3), 128, np.uint8))
    cv2.imwrite(str(folder / "blank.png"), np.full((200, 200, 3), 90, np.uint8))
    rc = main(["predict", str(folder), "--model", str(ok), "--out", str(tmp_path / "o"), "--json-only"])
    out, err = capsys.readouterr()
    assert rc == 0 and "Traceback" not in out + err
    faces = {n: json.loads((tmp_path / "o" / f"{n}.json").read_text())["faces"]
             for n in ("face16", "grey", "tiny", "blank")}
    assert len(faces["face16"]) == 1 and len(faces["grey"]) == 1
    assert faces["tiny"] == [] and faces["blank"] == []
    assert "blank.png" in out and "tiny.png" in out
