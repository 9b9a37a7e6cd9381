"""The whole recipe end to end on a few synthetic faces, and its stage-by-stage resumption."""

import json
from pathlib import Path

import pytest

from kdlandmark.config import ConfigError, load_config
from kdlandmark.pipeline import ROLE_LABELS, STAGES, Pipeline, resolve_preset, results_table

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = [
    "prepare.size=48",
    "teacher.model.backbone=mobilenetv2_050", "teacher.model.input_size=32",
    "student.model.backbone=mobilenetv2_035", "student.model.input_size=32",
    "teacher.optim.epochs=2", "student.optim.epochs=2", "kd.l2_warmup_epochs=1",
    "teacher.optim.batch_size=16", "student.optim.batch_size=16",
    "runtime.tensorboard=false",
]


@pytest.fixture(scope="module")
def synthetic_300w(tmp_path_factory) -> Path:
    from kdlandmark.data import synth

    root = tmp_path_factory.mktemp("synth300w")
    synth.synthesize("300w", 60, root, seed=3, size=96, workers=1)
    return root


@pytest.mark.slow
def test_pipeline_runs_every_stage_then_skips_them_all(synthetic_300w: Path, tmp_path: Path, capsys) -> None:
    folders = [str(synthetic_300w / "lfpw" / "testset"), str(tmp_path / "not-there")]
    exp = load_config(resolve_preset("demo"), [*TINY, f"eval.folders={json.dumps(folders)}"])
    exp.data_root, exp.out = str(synthetic_300w), str(tmp_path / "run")
    times = Pipeline(exp).run(tuple(s for s in STAGES if s != "report"))
    root = Path(exp.out)
    results = json.loads((root / "results.json").read_text())
    assert set(results["models"]) == set(ROLE_LABELS)
    # the extra folder: every model scored on it, the KD student compared with the L2 student
    extra = results["folders"][folders[0]]
    assert set(extra["models"]) == set(ROLE_LABELS) and extra["kd_vs_l2"]["a"] == "Student (L2)"
    assert list(results["folders"]) == [folders[0]]              # the missing folder was skipped
    assert (root / "compare" / "folder-testset" / "compare.md").is_file()
    assert "KD-Loss student minus L2 student" in (root / "results.md").read_text()
    for row in results["models"].values():
        assert {"common", "challenging", "full"} <= set(row["subsets"])
        assert 0 < row["subsets"]["full"]["nme"] < 100
    assert "Student (KD-Loss)" in (root / "results.md").read_text()
    # every training stage left a finished run whose config is saved beside it
    for role in ROLE_LABELS:
        assert (root / role / "result.json").is_file() and (root / role / "config.yaml").is_file()
    assert (root / "prepared" / "train" / "soft_landmarks.npy").is_file()
    assert all(times[s] > 0 for s in ("prepare", "asm", "tough", "kd"))
    # a second run finds every expensive stage complete and skips it
    times2 = Pipeline(exp).run(tuple(s for s in STAGES if s != "report"))
    assert all(times2[s] == 0.0 for s in ("prepare", "asm", *ROLE_LABELS, "evaluate"))
    printed = capsys.readouterr().out
    assert "complete, skipped" in printed and "not-there: not found, not evaluated" in printed


@pytest.mark.slow
def test_training_stages_side_by_side(synthetic_300w: Path, tmp_path: Path) -> None:
    """``jobs: 2``: every training stage runs in its own process with its own log, and the KD student
    starts only after both teachers have finished."""
    exp = load_config(resolve_preset("demo"), TINY)
    exp.data_root, exp.out = str(synthetic_300w), str(tmp_path / "run")
    stages = ("prepare", "asm", *ROLE_LABELS)
    exp.jobs = 2
    times = Pipeline(exp).run(stages)
    root = Path(exp.out)
    for role in ROLE_LABELS:
        assert (root / role / "result.json").is_file() and times[role] > 0
        log = (root / "logs" / f"{role}.log").read_text()
        assert f"[{role}] running" in log and f"epoch {exp.teacher.optim.epochs}/" in log
    kd_start = (root / "kd" / "config.yaml").stat().st_mtime
    assert kd_start >= max((root / t / "result.json").stat().st_mtime for t in ("tough", "tolerant"))
    # done stages are not started again
    assert Pipeline(exp).run(stages) == {s: 0.0 for s in stages}


@pytest.mark.slow
def test_a_failed_side_by_side_stage_names_itself_and_its_log(synthetic_300w: Path, tmp_path: Path) -> None:
    exp = load_config(resolve_preset("demo"), [*TINY, "teacher.model.backbone=no_such_net", "jobs=2"])
    exp.data_root, exp.out = str(synthetic_300w), str(tmp_path / "run")
    with pytest.raises(RuntimeError, match=r"\[(tough|tolerant|l2)\] failed .*logs/(tough|tolerant|l2)\.log"):
        Pipeline(exp).run(("prepare", "asm", *ROLE_LABELS))


def test_side_by_side_jobs_share_the_threads_and_get_a_gpu_each(monkeypatch, tmp_path: Path) -> None:
    import os

    import torch

    exp = load_config(resolve_preset("demo"))
    exp.out = str(tmp_path)
    pipe = Pipeline(exp)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    env = pipe._job_env(1, 2)
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "4" and env["CUDA_VISIBLE_DEVICES"] == "1"
    assert pipe._job_env(0, 3)["OMP_NUM_THREADS"] == "2"
    assert "CUDA_VISIBLE_DEVICES" not in pipe._job_env(0, 3)  # fewer GPUs than jobs: they share
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,6")
    assert pipe._job_env(1, 2)["CUDA_VISIBLE_DEVICES"] == "5,6"  # the user's choice stands
    with pytest.raises(ValueError, match="jobs"):
        load_config(resolve_preset("demo"), ["jobs=0"])


def test_a_folder_made_with_another_config_is_refused_by_name(tmp_path: Path) -> None:
    exp = load_config(resolve_preset("demo"))
    exp.out = str(tmp_path)
    Pipeline(exp).run(())  # records the configuration only
    exp.jobs = 3
    Pipeline(exp).run(())  # how stages run is not what they make
    changed = load_config(resolve_preset("demo"), ["prepare.size=96", "kd.l2_warmup_epochs=0"])
    changed.out = str(tmp_path)
    want = r"config\.yaml: .*another configuration .*prepare\.size: 128 -> 96; kd\.l2_warmup_epochs: 15 -> 0"
    with pytest.raises(ConfigError, match=want):
        Pipeline(changed).run(())


def test_unknown_stage_and_missing_preset_are_clear_errors(tmp_path: Path) -> None:
    exp = load_config(resolve_preset("demo"))
    exp.out = str(tmp_path)
    with pytest.raises(ValueError, match="unknown stage"):
        Pipeline(exp).run(("prepare", "train-everything"))
    with pytest.raises(FileNotFoundError, match="presets: .*paper-300w"):
        resolve_preset("paper-400w")


def test_results_table_has_a_row_per_model_and_three_columns_per_subset() -> None:
    m = {"nme": 4.0, "fr": 1.0, "auc": 0.6}
    rows = {r: {"label": lab, "subsets": {"common": m, "full": m}} for r, lab in ROLE_LABELS.items()}
    table = results_table(rows, 0.1).splitlines()
    assert len(table) == 2 + len(ROLE_LABELS)
    assert table[0].count("|") == 2 + 3 * 2
    assert "| Student (KD-Loss) | 4.00 | 1.00 | 0.600 |" in table[-1]


@pytest.mark.parametrize("preset", ["paper-300w", "paper-300w-112", "paper-cofw", "paper-wflw", "demo"])
def test_every_preset_loads_and_names_its_dataset(preset: str) -> None:
    exp = load_config(resolve_preset(preset))
    assert exp.dataset in ("300w", "cofw", "wflw")
    # the point of the method: the student is lighter than its teachers, in weights and in FLOPs
    from kdlandmark.layouts import get_layout
    from kdlandmark.models import LandmarkRegressor, count_flops, count_parameters

    n = get_layout(exp.dataset).num_points
    nets = {k: (LandmarkRegressor(m.backbone, n), m.input_size)
            for k, m in (("teacher", exp.teacher.model), ("student", exp.student.model))}
    (t, t_size), (s, s_size) = nets["teacher"], nets["student"]
    assert count_parameters(s) < count_parameters(t)
    assert count_flops(s, s_size) < count_flops(t, t_size)


def test_the_synth_stage_makes_the_data_the_config_asks_for(tmp_path: Path) -> None:
    """``synth.count > 0`` without a data_root: the first stage writes the dataset to <out>/data, with
    real-appearance faces from a pool; a second run finds it complete."""
    import cv2
    import numpy as np

    from kdlandmark.data.synth import render_face
    from kdlandmark.layouts import get_layout

    pool = tmp_path / "pool"
    pool.mkdir()
    for i in range(3):
        image, lm, _ = render_face(np.random.default_rng([11, i]), get_layout("300w"), 160)
        cv2.imwrite(str(pool / f"p{i}.jpg"), image)
        rows = "".join(f"{x + 1} {y + 1}\n" for x, y in lm)
        (pool / f"p{i}.pts").write_text(f"version: 1\nn_points: 68\n{{\n{rows}}}\n")
    exp = load_config(resolve_preset("demo"), [*TINY, "synth.count=10", "synth.size=96", f"synth.pool={pool}",
                                               "synth.pool_fraction=0.5", "synth.hybrid_fraction=0.3",
                                               "synth.workers=1"])
    exp.out = str(tmp_path / "run")
    times = Pipeline(exp).run(("synth", "prepare"))
    marker = json.loads((tmp_path / "run" / "data" / "synth.json").read_text())
    assert marker["count"] == 10 and marker["pool"] == str(pool) and marker["hybrid_fraction"] == 0.3
    assert exp.data_root == str(tmp_path / "run" / "data") and times["synth"] > 0
    assert (tmp_path / "run" / "prepared" / "train").is_dir()
    assert Pipeline(exp).run(("synth",)) == {"synth": 0.0}


def test_a_preset_without_data_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    exp = load_config(resolve_preset("paper-300w"))
    exp.out = str(tmp_path / "run")
    with pytest.raises(ValueError, match="no dataset folder"):
        Pipeline(exp).run()


@pytest.mark.slow
def test_a_run_without_the_l2_student_is_evaluated_reported_and_timed_across_invocations(
        synthetic_300w: Path, tmp_path: Path, capsys) -> None:
    """Teachers in one invocation, then the KD-Loss student and the evaluation in another (the cached
    recipe's way on a CPU): the models that were trained are scored and reported, the L2 student is
    named as left out, no KD-vs-L2 comparison is made up, and the stage times of both invocations are
    kept."""
    folders = [str(synthetic_300w / "lfpw" / "testset")]
    exp = load_config(resolve_preset("demo"), [*TINY, f"eval.folders={json.dumps(folders)}"])
    exp.data_root, exp.out = str(synthetic_300w), str(tmp_path / "run")
    Pipeline(exp).run(("prepare", "asm", "tough", "tolerant"))
    Pipeline(exp).run(("kd", "evaluate", "results", "report"))
    root = Path(exp.out)
    results = json.loads((root / "results.json").read_text())
    assert set(results["models"]) == {"tough", "tolerant", "kd"}
    assert set(results["folders"][folders[0]]["models"]) == {"tough", "tolerant", "kd"}
    assert results["folders"][folders[0]]["kd_vs_l2"] == {}
    assert not (root / "l2").exists() and not (root / "compare").exists()
    assert "Student (KD-Loss)" in (root / "report.md").read_text()
    assert "[evaluate] not trained, left out: l2" in capsys.readouterr().out
    times = json.loads((root / "stage_times.json").read_text())
    assert all(times[s] > 0 for s in ("prepare", "asm", "tough", "tolerant", "kd", "evaluate"))
