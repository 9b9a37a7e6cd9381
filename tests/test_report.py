"""Comparison and report on a tiny fake experiment: four evaluated models, training logs and an ASM curve."""

from __future__ import annotations

import base64
import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from kdlandmark.cli import main
from kdlandmark.evaluate.compare import compare, default_compare_dir, find_eval_runs
from kdlandmark.evaluate.evaluator import evaluate_checkpoint
from kdlandmark.evaluate.report import write_report
from test_evaluator import QueueModel, _meta, exact_model_coords, make_prepared

LABELS = {"tough": "Tough-Teacher", "tolerant": "Tolerant-Teacher", "l2": "Student (L2)",
          "kd": "Student (KD-Loss)"}
NOISE = {"tough": 0.004, "tolerant": 0.006, "l2": 0.010, "kd": 0.007}   # model units, per coordinate


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("exp")
    prep, originals = make_prepared(root / "prepared", splits={"test-common": 24, "test-challenging": 12},
                                    size=64, seed=5)
    rng = np.random.default_rng(0)
    lms = np.concatenate([originals["test-common"], originals["test-challenging"]])
    exact = exact_model_coords(lms)
    shared = rng.normal(0, 1, exact.shape).astype(np.float32)
    imgs = np.load(prep / "test-common" / "images.npy")
    imgs[:] = rng.integers(0, 255, imgs.shape, dtype=np.uint8)          # something to look at
    np.save(prep / "test-common" / "images.npy", imgs)
    for k, (role, label) in enumerate(LABELS.items()):
        noise = shared * NOISE[role] + rng.normal(0, 0.001, exact.shape).astype(np.float32)
        evaluate_checkpoint(f"{role}/best", prep, dataset="300w", out_dir=root / "eval" / role, bootstrap=200,
                            latency_runs=2 if k == 0 else 0, model=QueueModel(exact + noise),
                            meta=_meta(role=role), device="cpu", name=label)
        d = root / role
        d.mkdir()
        cols = ["epoch", "step", "lr", "loss", "val_nme", "best", "images_per_s"]
        cols += ["main", "tough", "tolerant"] if role == "kd" else ["l2"]
        with open(d / "metrics.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=cols)
            w.writeheader()
            for e in range(1, 6):
                row = {"epoch": e, "step": 10 * e, "lr": 1e-3 * (0.8 ** e), "loss": 1.0 / e,
                       "val_nme": 0.1 / e, "best": 0.1 / e, "images_per_s": 100.0, "main": 0.5 / e,
                       "tough": -0.1 / e, "tolerant": -0.05 / e, "l2": 1.0 / e}
                w.writerow({c: row[c] for c in cols})
    (root / "asm").mkdir()
    (root / "asm" / "asm_variance.json").write_text(json.dumps({
        "variance": 0.9, "procrustes": True, "components": 7, "nme_percent": 2.1,
        "curve": [{"variance": v, "components": c, "nme_percent": n}
                  for v, c, n in ((1.0, 136, 0.0), (0.95, 12, 1.2), (0.9, 7, 2.1), (0.8, 3, 3.9))]}))
    return root


def test_compare_writes_tables_plots_and_tests_differences(experiment: Path, tmp_path) -> None:
    evals = experiment / "eval"
    # an identical copy of the KD student's evaluation: same predictions, so never "significant"
    shutil.copytree(evals / "kd", tmp_path / "kd-copy")
    res = compare([evals / "l2", evals / "kd", tmp_path / "kd-copy"], tmp_path / "cmp", bootstrap=500)
    for f in ("compare.md", "compare.json", "ced.png", "subsets.png"):
        assert (tmp_path / "cmp" / f).is_file()
    assert (tmp_path / "cmp" / "ced.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    labels = [m["label"] for m in res["models"]]
    assert labels == ["Student (L2)", "Student (KD-Loss) (kd)", "Student (KD-Loss) (kd-copy)"]
    sig = {(r["subset"], r["a"], r["b"]): r for r in res["significance"]}
    kd_vs_l2 = sig[("full", "Student (L2)", "Student (KD-Loss) (kd)")]
    assert kd_vs_l2["significant"] and kd_vs_l2["mean_diff"] < 0
    assert kd_vs_l2["better"] == "Student (KD-Loss) (kd)"
    same = sig[("full", "Student (KD-Loss) (kd)", "Student (KD-Loss) (kd-copy)")]
    assert not same["significant"] and same["mean_diff"] == 0.0
    assert "| common |" in res["markdown"] and "Is the difference real?" in res["markdown"]
    # a folder above several evaluations expands to all of them
    assert len(find_eval_runs([evals])) == 4


def test_compare_command_line(experiment: Path, tmp_path, capsys) -> None:
    assert main(["compare", str(experiment / "eval" / "tough" / "metrics.json"),
                 str(experiment / "eval" / "kd"), "--out", str(tmp_path / "c"), "--bootstrap", "100"]) == 0
    out = capsys.readouterr().out
    assert "Tough-Teacher" in out and "Student (KD-Loss)" in out and "ced:" in out


def test_compare_writes_beside_its_inputs_not_into_the_working_folder(experiment: Path, tmp_path,
                                                                     monkeypatch) -> None:
    evals = tmp_path / "exp" / "eval"
    for role in ("tough", "kd"):
        shutil.copytree(experiment / "eval" / role, evals / role)
    here = tmp_path / "elsewhere"
    here.mkdir()
    monkeypatch.chdir(here)
    assert default_compare_dir([evals / "tough" / "metrics.json", evals / "kd"]) == evals / "compare"
    assert default_compare_dir([evals]) == tmp_path / "exp" / "compare"
    assert main(["compare", str(evals / "tough"), str(evals / "kd"), "--bootstrap", "20"]) == 0
    assert (evals / "compare" / "compare.md").is_file()
    assert list(here.iterdir()) == []


def test_compare_refuses_evaluations_of_different_images(experiment: Path, tmp_path) -> None:
    other = tmp_path / "other"
    shutil.copytree(experiment / "eval" / "kd", other)
    meta = json.loads((other / "predictions.json").read_text())
    meta["splits"]["test-common"]["image_paths"][0] = "somewhere/else.jpg"
    (other / "predictions.json").write_text(json.dumps(meta))
    res = compare([experiment / "eval" / "kd", other], tmp_path / "c", bootstrap=100)
    common = [r for r in res["significance"] if r["subset"] == "common"]
    assert common and "skipped" in common[0] and "image paths" in common[0]["skipped"]


def _img_sources(page: str) -> list[str]:
    return re.findall(r"""src\s*=\s*["']([^"']*)["']""", page)


def test_report_is_self_contained_and_has_every_section(experiment: Path) -> None:
    html_path, md_path = write_report(
        experiment, title="kdlandmark: test experiment",
        models={LABELS[r]: experiment / "eval" / r for r in LABELS},
        train_dirs={LABELS[r]: experiment / r for r in LABELS}, asm_dir=experiment / "asm", dataset="300w",
        bootstrap=200)
    page = html_path.read_text()
    md = md_path.read_text()
    # self-contained: every src= is an embedded PNG, nothing is fetched
    sources = _img_sources(page)
    assert len(sources) >= 6
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert not re.search(r"(href|src)\s*=\s*[\"']?(https?:|//|file:)", page)
    assert "<script" not in page and "<link" not in page
    for section in ("## Results", "### Published numbers", "### Are the differences real?",
                    "## Cumulative error distribution", "## Training curves",
                    "## Soft landmarks: ASM variance curve",
                    "## Test faces: best, median and worst (Student (KD-Loss))",
                    "## Per-landmark error on the mean face", "## Model size, FLOPs and CPU latency"):
        assert section in md, section
        assert section.lstrip("# ") in page
    # the Markdown links figures that exist
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(links) == len(sources)
    for link in links:
        assert (experiment / link).is_file()
    # the four models per subset next to the paper's numbers, with the source kept in the package
    results = md.split("## Results")[1].split("###")[0]
    for label in LABELS.values():
        assert label in results
    for line, paper in (("| common |", "3.56"), ("| challenging |", "6.13"), ("| full |", "4.06")):
        row = next(r for r in results.splitlines() if r.startswith(line))
        assert row.rstrip(" |").endswith(paper)
    assert "paperswithcode" in md
    assert "not significant" in md or "better" in md
    assert "**Student (KD-Loss) better**" in md.split("### Are the differences real?")[1]


def test_report_names_missing_inputs_instead_of_failing(experiment: Path, tmp_path) -> None:
    html_path, md_path = write_report(
        tmp_path, title="partial", models={"KD": experiment / "eval" / "kd", "gone": tmp_path / "nowhere"},
        train_dirs={"KD": tmp_path / "no-training"}, asm_dir=None, dataset="cofw", bootstrap=50)
    md = md_path.read_text()
    assert "Missing evaluations: gone" in md
    assert "No metrics.csv for: KD" in md and "No ASM variance curve" in md
    assert "4.11" in md                                   # COFW's published number is listed
    assert html_path.read_text().count("data:image/png;base64,") >= 3
