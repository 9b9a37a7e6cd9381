"""The benchmark commands run on the CPU and print sane figures (no timing assertions)."""

import re

import pytest

from kdlandmark.bench import bench_data, bench_train
from kdlandmark.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = ("prepare.size=48", "teacher.model.backbone=mobilenetv2_050", "teacher.model.input_size=32",
        "student.model.backbone=mobilenetv2_035", "student.model.input_size=32",
        "teacher.optim.batch_size=8", "student.optim.batch_size=8")


def test_bench_train_reports_ceiling_pipeline_and_breakdown(capsys) -> None:
    # one process: a pool forked from this process, which has already run torch and OpenCV threads in
    # other tests, can deadlock (fork after threads)
    res = bench_train("demo", TINY, count=40, steps=2, warmup=1, workers=1)
    assert set(res) == {"teacher", "kd-student"}
    for row in res.values():
        assert row["ceiling_img_s"] > 0 and row["pipeline_img_s"] > 0
        assert abs(row["ratio"] - row["pipeline_img_s"] / row["ceiling_img_s"]) < 1e-9
        assert all(row[f"{k}_ms"] >= 0 for k in ("data_wait", "augmentation", "teacher_forwards",
                                                 "student_step"))
    # only the KD step runs teachers
    assert res["teacher"]["teacher_forwards_ms"] < res["kd-student"]["teacher_forwards_ms"]
    out = capsys.readouterr().out
    assert "ceiling" in out and "kd-student" in out


def test_bench_data_prints_the_three_rates(capsys) -> None:
    figures = bench_data(count=24, size=64, input_size=48, batch=8, workers=1)
    lines = capsys.readouterr().out.splitlines()
    rates = {}
    for line in lines:
        name, _, rest = line.partition(":")
        rates[name.strip()] = [float(v.replace(",", "")) for v in re.findall(r"[-+]?\d[\d,]*\.?\d*", rest)]
    assert set(rates) == {"synthesis", "prepare", "augmentation"}
    # what is printed is what is returned, and every rate is a positive number
    assert rates["synthesis"][0] == pytest.approx(figures["synth_faces_per_s_one_core"], abs=0.05)
    assert rates["prepare"][0] == pytest.approx(figures["prepare_faces_per_s"], abs=0.05)
    assert rates["augmentation"][0] == pytest.approx(figures["augment_batches_per_s"], abs=0.005)
    assert min(rates["synthesis"][0], rates["prepare"][0], rates["augmentation"][0]) > 0
    assert rates["augmentation"][1] == pytest.approx(figures["augment_images_per_s"], abs=0.5)
    # the three are consistent with each other: images = batches x batch, time = faces / rate
    assert figures["augment_images_per_s"] == pytest.approx(8 * figures["augment_batches_per_s"])
    assert figures["augment_ms_per_batch"] == pytest.approx(1000 / figures["augment_batches_per_s"])
    assert figures["prepare_seconds_per_3000"] == pytest.approx(3000 / figures["prepare_faces_per_s"])


def test_bench_data_command_line(capsys) -> None:
    assert main(["bench", "data", "--count", "24", "--size", "64", "--input-size", "48", "--batch", "8",
                 "--workers", "1"]) == 0
    out = capsys.readouterr().out
    names = [line.split(":")[0].strip() for line in out.splitlines()]
    assert names == ["synthesis", "prepare", "augmentation"]
