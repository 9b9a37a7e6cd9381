"""The benchmark commands run on the CPU and print sane figures (no timing assertions)."""

from kdlandmark.bench import bench_train
from kdlandmark.cli import main

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
    assert main(["bench", "data", "--count", "24", "--size", "64", "--input-size", "48", "--batch", "8",
                 "--workers", "1"]) == 0
    out = capsys.readouterr().out
    for word in ("synthesis", "prepare", "augmentation"):
        assert word in out
