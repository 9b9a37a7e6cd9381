"""The training engine and its config: roles, run folder, exact resume after SIGKILL, DDP equivalence."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from _train_helpers import PYTHON, make_fake_prepared, python_env, tiny_train_config
from kdlandmark.config import (
    ConfigError,
    ExperimentConfig,
    OptimConfig,
    TrainConfig,
    config_from_dict,
    config_to_dict,
    load_config,
    load_train_config,
    save_config,
    train_config,
)
from kdlandmark.modelfile.checkpoint import load_checkpoint
from kdlandmark.train import trainer as trainer_mod
from kdlandmark.train.trainer import Trainer, lr_factor_fn, train_main


@pytest.fixture(autouse=True, scope="module")
def _quiet_single_thread():
    """One thread (tiny nets on a shared 2-core machine); restore global torch switches afterwards."""
    threads, determ = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(determ)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_fake_prepared(tmp_path_factory.mktemp("prepared") / "set", n=24, size=48, num_points=29)


def _csv(path: Path) -> list[dict]:
    import csv

    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# --------------------------------------------------------------------------------------------- config
def test_unknown_key_names_the_key_and_the_file(tmp_path) -> None:
    p = tmp_path / "exp.yaml"
    p.write_text("dataset: 300w\nstudent:\n  optim:\n    lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"exp\.yaml.*'student\.optim\.lrr'"):
        load_config(p)
    p.write_text("teacher:\n  model:\n    input_size: big\n")
    with pytest.raises(ConfigError, match=r"exp\.yaml.*teacher\.model\.input_size"):
        load_config(p)
    with pytest.raises(ConfigError, match=r"'optim\.lrr'"):
        config_from_dict(TrainConfig, {}, "x", ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="role"):
        config_from_dict(TrainConfig, {"role": "teacher"}, "run.yaml")


def test_overrides_are_parsed_and_typed(tmp_path) -> None:
    p = tmp_path / "exp.yaml"
    p.write_text("student:\n  optim:\n    lr: 1e-3\n")  # YAML 1.1 reads 1e-3 as a string; accepted as float
    cfg = load_config(p, ["student.optim.lr=3e-4", "student.model.pretrained=/w/m.safetensors",
                          "teacher.model.pretrained=true", "augment.scale=[0.9, 1.1]",
                          "prepare.splits=[train]", "student.optim.grad_clip=null", "student.optim.epochs=5",
                          "kd.beta_ratio=0.15"])
    assert cfg.student.optim.lr == pytest.approx(3e-4) and isinstance(cfg.student.optim.lr, float)
    assert cfg.student.model.pretrained == "/w/m.safetensors" and cfg.teacher.model.pretrained is True
    assert cfg.augment.scale == (0.9, 1.1) and cfg.prepare.splits == ["train"]
    assert cfg.student.optim.epochs == 5 and cfg.kd.beta_ratio == 0.15
    assert cfg.teacher.model.backbone == "efficientnet_b3" and cfg.student.model.backbone == "mobilenetv2_100"
    with pytest.raises(ConfigError, match="epochs"):
        load_config(None, ["student.optim.epochs=many"])


def test_save_config_round_trips_and_records_provenance(tmp_path) -> None:
    cfg = tiny_train_config("data", "out", role="kd")
    cfg.optim.betas = (0.5, 0.75)
    path = save_config(cfg, tmp_path / "config.yaml", extra={"world_size": 2})
    raw = yaml.safe_load(path.read_text())
    prov = raw["provenance"]
    for key in ("python", "torch", "timm", "numpy", "kdlandmark", "git"):
        assert key in prov
    assert prov["world_size"] == 2 and prov["torch"] == str(torch.__version__)
    assert load_train_config(path) == cfg
    exp = ExperimentConfig(dataset="wflw")
    save_config(exp, tmp_path / "exp.yaml")
    assert load_config(tmp_path / "exp.yaml") == exp


def test_train_config_of_each_role() -> None:
    exp = load_config(None, ["out=/runs/e", "seed=7", "runtime.amp=off"])
    tough = train_config(exp, "tough")
    kd = train_config(exp, "kd")
    assert tough.model.backbone == "efficientnet_b3" and kd.model.backbone == "mobilenetv2_100"
    assert tough.data == "/runs/e/prepared" and kd.out == "/runs/e/kd"
    assert kd.teachers.tough == "/runs/e/tough/best" and kd.teachers.tolerant == "/runs/e/tolerant/best"
    assert kd.seed == 7 and kd.amp == "off"
    kd.optim.lr = 5.0
    assert exp.student.optim.lr == 1e-3  # derived configs are copies


def test_lr_schedules() -> None:
    o = OptimConfig(lr=1.0, epochs=10, warmup_epochs=1, schedule="cosine", min_lr=0.1)
    f = lr_factor_fn(o, steps_per_epoch=10)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(99) == pytest.approx(0.1, abs=1e-3)
    assert all(f(s) >= f(s + 1) for s in range(10, 99))
    f = lr_factor_fn(OptimConfig(lr=1.0, epochs=10, schedule="step", step_epochs=3, step_gamma=0.5), 10)
    assert [f(s) for s in (0, 29, 30, 60, 99)] == [1.0, 1.0, 0.5, 0.25, 0.125]
    f = lr_factor_fn(OptimConfig(lr=1.0, schedule="inverse-time", lr_decay=1e-4), 10)
    assert f(10000) == pytest.approx(0.5)
    assert lr_factor_fn(OptimConfig(schedule="constant"), 10)(1234) == 1.0
    # a restart (the KD student's switch from its L2 warm-up at epoch 3) warms up again, then rejoins
    plain, again = lr_factor_fn(o, 10), lr_factor_fn(o, 10, restart_epoch=3)
    assert [again(s) for s in range(30)] == [plain(s) for s in range(30)]
    assert again(30) == pytest.approx(0.1 * plain(30)) and again(39) == pytest.approx(plain(39))
    assert all(again(s) < again(s + 1) for s in range(30, 39))
    assert [again(s) for s in range(40, 100)] == [plain(s) for s in range(40, 100)]


@settings(max_examples=40, deadline=None)
@given(schedule=st.sampled_from(["cosine", "step", "constant", "inverse-time"]),
       epochs=st.integers(1, 40), steps=st.integers(1, 30), warmup=st.floats(0, 5),
       min_ratio=st.floats(0, 0.5), gamma=st.floats(0.05, 1.0))
def test_lr_factor_stays_in_range(schedule, epochs, steps, warmup, min_ratio, gamma) -> None:
    assume(warmup <= epochs)  # longer warm-ups are refused (test below)
    o = OptimConfig(lr=0.1, min_lr=0.1 * min_ratio, epochs=epochs, warmup_epochs=warmup, schedule=schedule,
                    step_gamma=gamma, step_epochs=3, lr_decay=1e-3)
    f = lr_factor_fn(o, steps)
    values = [f(s) for s in range(epochs * steps)]
    assert all(0.0 <= v <= 1.0 + 1e-12 for v in values)
    assert values[-1] >= min_ratio - 1e-9 or schedule in ("step", "inverse-time")  # cosine ends at min_lr
    warm = int(round(warmup * steps))
    assert all(values[i] < values[i + 1] for i in range(min(warm, len(values)) - 1))  # warm-up rises
    if schedule != "constant" and len(values) > warm + 1:  # after warm-up it never rises
        assert all(values[i] >= values[i + 1] - 1e-12 for i in range(warm, len(values) - 1))


@settings(max_examples=40, deadline=None)
@given(cycles=st.lists(st.integers(1, 12), min_size=1, max_size=4), steps=st.integers(1, 8),
       warmup=st.floats(0, 1), min_ratio=st.floats(0, 0.3), decay=st.floats(0.1, 1.0))
def test_cosine_restarts(cycles, steps, warmup, min_ratio, decay) -> None:
    """Warm restarts: each cycle warms up, peaks at lr x decay^k, falls to min_lr; the first cycle is the
    plain cosine of its own length, so a finished run can be extended by a restart."""
    edges = list(itertools.accumulate([0, *cycles]))
    o = OptimConfig(lr=0.1, min_lr=0.1 * min_ratio, epochs=edges[-1], warmup_epochs=warmup,
                    restarts=edges[1:-1], restart_decay=decay)
    f = lr_factor_fn(o, steps)
    alone = lr_factor_fn(OptimConfig(lr=0.1, min_lr=0.1 * min_ratio, epochs=cycles[0], warmup_epochs=warmup),
                         steps)
    assert [f(s) for s in range(cycles[0] * steps)] == [alone(s) for s in range(cycles[0] * steps)]
    warm = int(round(warmup * steps))
    for k, (a, b) in enumerate(itertools.pairwise(edges)):
        values = [f(s) for s in range(a * steps, b * steps)]
        peak = max(min_ratio, decay ** k)
        assert max(values) == pytest.approx(peak, abs=1e-9)
        assert all(0.0 < v <= peak + 1e-9 for v in values)
        assert all(v >= min_ratio - 1e-9 for v in values[warm:])            # cosine ends at min_lr
        assert all(values[i] < values[i + 1] for i in range(min(warm, len(values)) - 1))  # warm-up
        assert all(values[i] >= values[i + 1] - 1e-12 for i in range(warm, len(values) - 1))


def test_cosine_restarts_refuse_bad_settings() -> None:
    with pytest.raises(ValueError, match="restarts needs schedule 'cosine'"):
        OptimConfig(epochs=10, schedule="step", restarts=[5])
    for bad in ([0], [10], [6, 4], [5, 5]):
        with pytest.raises(ValueError, match="must rise strictly inside"):
            OptimConfig(epochs=10, restarts=bad)
    with pytest.raises(ValueError, match="longer than a cycle"):
        OptimConfig(epochs=10, restarts=[8], warmup_epochs=3)
    with pytest.raises(ValueError, match="restart_decay"):
        OptimConfig(epochs=10, restarts=[5], restart_decay=0)


def test_warmup_longer_than_the_run_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="warmup_epochs .* longer than the run"):
        OptimConfig(epochs=2, warmup_epochs=3)


# --------------------------------------------------------------------------------------------- training
def test_tough_run_learns_and_writes_its_folder(data, tmp_path) -> None:
    out = tmp_path / "tough"
    cfg = tiny_train_config(data, out, role="tough")
    cfg.optim.epochs = 5
    cfg.random_augment = False
    tr = Trainer(cfg)
    res = tr.fit()
    rows = _csv(out / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5]
    for col in ("lr", "loss", "l2", "val_nme", "images_per_s", "train_seconds", "epoch_seconds"):
        assert col in rows[0]
    losses = [float(r["loss"]) for r in rows]
    assert losses[-1] < 0.5 * losses[0], losses  # it learns
    nmes = [float(r["val_nme"]) for r in rows]
    assert res["best_metric"] == pytest.approx(min(nmes), rel=1e-5)
    assert res["best_epoch"] == 1 + int(np.argmin(nmes))
    assert float(rows[-1]["lr"]) == pytest.approx(0.0, abs=1e-12)  # cosine to min_lr 0
    # the saved best model reproduces the best validation NME
    best, meta = load_checkpoint(out / "best", layout="cofw")
    assert meta.raw["epoch"] == res["best_epoch"] and meta.role == "tough" and meta.input_size == 32
    assert meta.crop.margin == pytest.approx(0.15)
    tr.model.load_state_dict(best.state_dict())
    assert tr.validate()["val_nme"] == pytest.approx(res["best_metric"], rel=1e-5)
    last, last_meta = load_checkpoint(out / "last")
    assert last_meta.raw["epoch"] == 5
    assert sorted(p.name for p in (out / "last").iterdir()) == ["model.json", "model.safetensors",
                                                                 "state.json", "state.safetensors"]
    assert load_train_config(out / "config.yaml") == cfg
    # a second run into the same folder must not silently overwrite it
    with pytest.raises(FileExistsError, match="resume"):
        Trainer(cfg).fit()


def test_training_starts_from_a_checkpoint_folder(data, tmp_path) -> None:
    """``model.pretrained`` set to a checkpoint folder: fine-tuning starts from all of its weights."""
    cfg = tiny_train_config(data, tmp_path / "first", role="tough")
    cfg.optim.epochs = 1
    Trainer(cfg).fit()
    start, _ = load_checkpoint(tmp_path / "first" / "best")
    cfg2 = tiny_train_config(data, tmp_path / "second", role="tough")
    cfg2.model.pretrained = str(tmp_path / "first" / "best")
    tr = Trainer(cfg2)
    for k, v in start.state_dict().items():
        assert torch.equal(tr.model.state_dict()[k], v), k
    cfg3 = tiny_train_config(data, tmp_path / "third", role="tough")
    assert not torch.equal(Trainer(cfg3).model.head.weight, start.head.weight)  # the default starts afresh


def test_tensorboard_and_validation_split(data, tmp_path) -> None:
    cfg = tiny_train_config(data, tmp_path / "run", tensorboard=True, val_split="test", num_val=3)
    cfg.optim.epochs = 1
    tr = Trainer(cfg)
    assert tr.n_val == 3 and tr.n_train == 24
    tr.fit()
    assert list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))


def test_tolerant_needs_soft_landmarks(tmp_path) -> None:
    data = make_fake_prepared(tmp_path / "nosoft", n=12, size=48, soft=False)
    with pytest.raises(ValueError, match="soft landmarks"):
        Trainer(tiny_train_config(data, tmp_path / "run", role="tolerant"))


def test_tolerant_trains_on_soft_landmarks(data, tmp_path, monkeypatch) -> None:
    seen = []
    real = trainer_mod.l2_loss
    monkeypatch.setattr(trainer_mod, "l2_loss", lambda p, t: seen.append(t.detach().clone()) or real(p, t))
    cfg = tiny_train_config(data, tmp_path / "tol", role="tolerant", random_augment=False)
    cfg.optim.epochs = 1
    tr = Trainer(cfg)
    res = tr.fit()
    soft = tr.augmenter.stored_to_model(tr.data.train_soft)
    hard = tr.augmenter.stored_to_model(tr.data.train_hard)
    for target in seen:
        for row in target:  # every target row is some face's soft shape, none its hard shape
            assert torch.isclose(soft, row).all(-1).all(-1).any()
            assert not torch.isclose(hard, row, atol=1e-4).all(-1).all(-1).any()
    assert "val_nme_soft" in res["history"][0]
    assert res["best_metric"] == pytest.approx(res["history"][0]["val_nme_soft"])


@pytest.fixture(scope="module")
def teachers(data, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("teachers")
    paths = {}
    for role in ("tough", "tolerant"):
        cfg = tiny_train_config(data, root / role, role=role)
        cfg.optim.epochs = 1
        cfg.model.backbone = "resnet10t" if role == "tough" else "mobilenetv2_050"
        cfg.model.input_size = 40 if role == "tough" else 32  # a teacher may use another input size
        Trainer(cfg).fit()
        paths[role] = root / role / "best"
    return paths


def test_kd_student_uses_frozen_teachers_on_the_same_batch(data, teachers, tmp_path, monkeypatch) -> None:
    calls = []
    real = trainer_mod.kd_loss

    def spy(pred, gt, tough, tolerant, config):
        calls.append({"gt": gt.detach().clone(), "tough": tough.clone(), "tolerant": tolerant.clone()})
        return real(pred, gt, tough, tolerant, config)

    monkeypatch.setattr(trainer_mod, "kd_loss", spy)
    cfg = tiny_train_config(data, tmp_path / "kd", role="kd")
    cfg.teachers.tough, cfg.teachers.tolerant = str(teachers["tough"]), str(teachers["tolerant"])
    cfg.optim.epochs = 1
    tr = Trainer(cfg)
    inputs = []
    tr.model.register_forward_pre_hook(lambda m, args: inputs.append(args[0].detach().clone()) if m.training
                                       else None)
    res = tr.fit()
    assert len(calls) == len(inputs) == tr.steps_per_epoch
    ref = {k: load_checkpoint(p)[0] for k, p in teachers.items()}
    for name, teacher in tr.teachers.items():
        assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
        for a, b in zip(teacher.state_dict().values(), ref[name].state_dict().values(), strict=True):
            assert torch.equal(a, b)  # frozen: unchanged by the student's training
    for batch, x in zip(calls, inputs, strict=True):
        with torch.no_grad():
            x40 = torch.nn.functional.interpolate(x, size=(40, 40), mode="bilinear", align_corners=False)
            torch.testing.assert_close(batch["tough"], ref["tough"](x40), atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(batch["tolerant"], ref["tolerant"](x), atol=1e-5, rtol=1e-4)
    row = res["history"][0]
    for term in ("loss", "main", "tough", "tolerant", "val_nme"):
        assert math.isfinite(row[term])


def test_kd_l2_warmup_is_the_baseline_then_kd_loss(data, teachers, tmp_path, monkeypatch) -> None:
    """With ``kd.l2_warmup_epochs = 1`` the KD student's first epoch is the L2 baseline's first epoch
    exactly (same loss, same validation NME, teachers not run); KD-Loss takes over in the second."""
    runs = {}
    for role in ("l2", "kd"):
        cfg = tiny_train_config(data, tmp_path / role, role=role)
        cfg.teachers.tough, cfg.teachers.tolerant = str(teachers["tough"]), str(teachers["tolerant"])
        cfg.optim.epochs, cfg.kd.l2_warmup_epochs, cfg.deterministic = 2, 1, True
        tr = Trainer(cfg)
        calls: list[int] = []
        real = tr.teacher_predict
        monkeypatch.setattr(tr, "teacher_predict",
                            lambda x, real=real, tr=tr, calls=calls: calls.append(tr.epoch) or real(x))
        hist = tr.fit()["history"]
        adam_steps = {int(st["step"]) for st in tr.optimizer.state.values()}
        runs[role] = (hist, calls, tr.steps_per_epoch, adam_steps)
    (l2_hist, l2_calls, _, l2_adam), (kd_hist, kd_calls, steps, kd_adam) = runs["l2"], runs["kd"]
    assert l2_calls == [] and kd_calls == [1] * steps  # teachers run in the KD epoch only
    assert l2_adam == {2 * steps} and kd_adam == {steps}  # fresh optimiser moments when KD-Loss starts
    assert kd_hist[0]["l2"] == l2_hist[0]["l2"] and kd_hist[0]["val_nme"] == l2_hist[0]["val_nme"]
    assert "main" not in kd_hist[0] and math.isfinite(kd_hist[1]["main"]) and "l2" not in kd_hist[1]
    assert kd_hist[1]["val_nme"] != l2_hist[1]["val_nme"]
    assert "l2" in (tmp_path / "kd" / "metrics.csv").read_text().splitlines()[0].split(",")


def test_kd_teacher_cache_is_the_at_rest_prediction_moved_with_each_sample(data, teachers, tmp_path,
                                                                         monkeypatch) -> None:
    """``kd.teacher_cache``: each teacher runs once per training image at rest; a batch carries those
    predictions through its own augmentation exactly as the landmarks (flip permutation included), and
    training runs no teacher forward."""
    cfg = tiny_train_config(data, tmp_path / "kd", role="kd")
    cfg.teachers.tough, cfg.teachers.tolerant = str(teachers["tough"]), str(teachers["tolerant"])
    cfg.optim.epochs, cfg.kd.teacher_cache = 1, True
    cfg.augment.flip_prob = 1.0                   # every sample mirrored: the permutation must apply
    tr = Trainer(cfg)
    assert set(tr.teacher_cache) == {"tough", "tolerant"}
    # the cache is the teachers' prediction on the unaugmented view, in stored-crop pixels
    idx = torch.arange(tr.n_train)
    images = tr.data.train_images.index_select(0, idx)
    x_rest, (hard_rest,) = tr.augmenter(images, [tr.data.train_hard], train=False)
    live = tr.teacher_predict(x_rest)
    for name, pred in live.items():
        torch.testing.assert_close(tr.augmenter.stored_to_model(tr.teacher_cache[name]), pred,
                                   atol=1e-5, rtol=1e-4)
    assert not torch.allclose(live["tough"], hard_rest, atol=1e-3)   # a real prediction, not the labels
    # moved with the sample: a cache equal to the labels comes out of the batch equal to the targets
    tr.teacher_cache = {"tough": tr.data.train_hard.clone(), "tolerant": tr.data.train_hard + 1.0}
    x, targets, moved = tr.batch(idx[:8])
    assert moved is not None and len(targets) == 1
    torch.testing.assert_close(moved["tough"], targets[0], atol=1e-6, rtol=0)
    assert not torch.allclose(moved["tolerant"], targets[0], atol=1e-3)
    assert not torch.allclose(targets[0], hard_rest[:8], atol=1e-3)    # the batch was augmented
    # training: KD-Loss gets the moved cache (here the labels again: its Tough input is the batch's
    # ground truth at every step); the teachers never run
    tr = Trainer(cfg)
    tr.teacher_cache = {"tough": tr.data.train_hard.clone(), "tolerant": tr.data.train_hard + 1.0}
    cache = {k: v.clone() for k, v in tr.teacher_cache.items()}
    calls, seen = [], []
    monkeypatch.setattr(tr, "teacher_predict", lambda x: calls.append(1) or {})
    real = trainer_mod.kd_loss

    def spy(pred, gt, tough, tolerant, config):
        seen.append((tough.clone(), tolerant.clone()))
        torch.testing.assert_close(tough, gt, atol=1e-6, rtol=0)
        return real(pred, gt, tough, tolerant, config)

    monkeypatch.setattr(trainer_mod, "kd_loss", spy)
    row = tr.fit()["history"][0]
    assert calls == [] and len(seen) == tr.steps_per_epoch
    assert all(torch.equal(cache[k], v) for k, v in tr.teacher_cache.items())
    assert math.isfinite(row["main"]) and math.isfinite(row["tough"])
    assert not torch.allclose(seen[0][0], seen[0][1])


def test_a_kd_warmup_as_long_as_the_run_is_refused() -> None:
    cfg = tiny_train_config("data", "out", role="kd")
    cfg.kd.l2_warmup_epochs = cfg.optim.epochs
    with pytest.raises(ValueError, match="KD-Loss never starts"):
        dataclasses.replace(cfg)  # __post_init__ validates
    cfg.role = "l2"
    dataclasses.replace(cfg)  # the baseline ignores the KD settings


def test_kd_needs_both_teachers(data, teachers, tmp_path) -> None:
    cfg = tiny_train_config(data, tmp_path / "kd", role="kd")
    cfg.teachers.tough = str(teachers["tough"])
    with pytest.raises(ValueError, match="teachers.tolerant"):
        Trainer(cfg)


def test_l2_student_and_grad_clip(data, tmp_path, monkeypatch) -> None:
    """Role l2 with AdamW and grad_clip: the optimiser is AdamW and every step's gradient is clipped."""
    clip = 0.05
    cfg = tiny_train_config(data, tmp_path / "l2", role="l2")
    cfg.optim.epochs, cfg.optim.grad_clip, cfg.optim.name, cfg.optim.weight_decay = 2, clip, "adamw", 0.01
    tr = Trainer(cfg)
    assert type(tr.optimizer) is torch.optim.AdamW
    assert all(g["weight_decay"] == 0.01 for g in tr.optimizer.param_groups)
    before, at_step = [], []                      # gradient norm before clipping, and when the step uses it
    real_clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_",
                        lambda params, max_norm, **kw: before.append(float(real_clip(params, max_norm, **kw)))
                        )

    def grad_norm(opt, _args, _kwargs) -> None:
        grads = [p.grad.norm() for g in opt.param_groups for p in g["params"] if p.grad is not None]
        at_step.append(float(torch.linalg.vector_norm(torch.stack(grads))))

    tr.optimizer.register_step_pre_hook(grad_norm)
    res = tr.fit()
    assert len(at_step) == len(before) == 2 * tr.steps_per_epoch
    assert min(before) > 2 * clip                 # clipping had work to do on every step ...
    assert max(at_step) <= clip * (1 + 1e-4)      # ... and every step used the clipped gradient
    assert "l2" in res["history"][0] and math.isfinite(res["history"][0]["val_nme"])


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if atol == 0.0:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)


class _Stop(Exception):
    pass


def test_resume_in_process_with_ema_matches_uninterrupted(data, tmp_path, monkeypatch) -> None:
    def cfg_for(out, resume=False):
        cfg = tiny_train_config(data, tmp_path / out, resume=resume)
        cfg.optim.epochs, cfg.optim.ema_decay, cfg.model.dropout = 3, 0.7, 0.2
        return cfg

    full = Trainer(cfg_for("full")).fit()
    real_save = Trainer.save

    def save_then_stop(self, *args, **kwargs):
        real_save(self, *args, **kwargs)
        if self.epoch == 2:
            raise _Stop  # the run dies right after its epoch-2 checkpoint

    monkeypatch.setattr(Trainer, "save", save_then_stop)
    with pytest.raises(_Stop):
        Trainer(cfg_for("part")).fit()
    monkeypatch.setattr(Trainer, "save", real_save)
    torch.manual_seed(1234)  # resuming must not depend on the state the process happens to be in
    part = Trainer(cfg_for("part", resume=True)).fit()
    _assert_same_weights(_weights(tmp_path / "full" / "last"), _weights(tmp_path / "part" / "last"))
    raw_full = load_file(str(tmp_path / "full" / "last" / "state.safetensors"))
    raw_part = load_file(str(tmp_path / "part" / "last" / "state.safetensors"))
    _assert_same_weights(raw_full, raw_part)  # raw weights, EMA and optimiser state
    assert [r["loss"] for r in full["history"]] == [r["loss"] for r in part["history"]]
    # validation and the saved model use the EMA weights, not the raw ones
    ema = {k[len("ema.module."):]: v for k, v in raw_full.items() if k.startswith("ema.module.")}
    _assert_same_weights(ema, _weights(tmp_path / "full" / "last"))
    raw = {k[len("model."):]: v for k, v in raw_full.items() if k.startswith("model.")}
    assert not torch.equal(raw["head.weight"], ema["head.weight"])


# --------------------------------------------------------------------------------------------- subprocesses
_CHILD = r'''
import json, sys, time
from kdlandmark.config import TrainConfig, config_from_dict
from kdlandmark.data import augment
from kdlandmark.train import trainer

cfg = config_from_dict(TrainConfig, json.loads(sys.argv[1]), "argv")
slow_from = int(sys.argv[2]) if len(sys.argv) > 2 else -1
if slow_from >= 0:
    # Test-only slowdown from epoch `slow_from` on, so that the parent can kill the run mid-epoch.
    # It only sleeps: the arithmetic of the run is untouched.
    state = {"slow": False}
    real_epoch, real_aug = trainer.Trainer._train_epoch, augment.BatchAugmenter.__call__
    def epoch(self, e):
        state["slow"] = e >= slow_from
        return real_epoch(self, e)
    def aug(self, *a, **k):
        if state["slow"]:
            time.sleep(0.5)
        return real_aug(self, *a, **k)
    trainer.Trainer._train_epoch, augment.BatchAugmenter.__call__ = epoch, aug
trainer.Trainer(cfg).fit()
'''


def _child_cmd(tmp_path: Path, cfg: TrainConfig, *extra: str) -> list[str]:
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    return [str(script), json.dumps(config_to_dict(cfg)), *extra]


def _state_epoch(out: Path) -> int:
    try:
        return int(json.loads((out / "last" / "state.json").read_text())["epoch"])
    except (OSError, ValueError, KeyError):
        return 0


@pytest.mark.slow
def test_finished_run_extended_by_a_warm_restart_matches_a_run_started_with_it(data, tmp_path) -> None:
    """A finished 2-epoch run resumed with ``epochs: 3, restarts: [2]`` = a fresh run with those settings."""

    def cfg_for(out: str, epochs: int, resume: bool = False) -> TrainConfig:
        cfg = tiny_train_config(data, tmp_path / out, resume=resume)
        cfg.optim.epochs, cfg.optim.warmup_epochs = epochs, 0.5
        if epochs == 3:
            cfg.optim.restarts, cfg.optim.restart_decay = [2], 0.5
        cfg.model.dropout, cfg.random_augment = 0.2, True
        return cfg

    fresh = Trainer(cfg_for("fresh", 3)).fit()
    Trainer(cfg_for("extended", 2)).fit()
    short = _weights(tmp_path / "extended" / "last")
    extended = Trainer(cfg_for("extended", 3, resume=True)).fit()
    _assert_same_weights(_weights(tmp_path / "fresh" / "last"), _weights(tmp_path / "extended" / "last"))
    assert [r["loss"] for r in fresh["history"]] == [r["loss"] for r in extended["history"]]
    assert not torch.equal(short["head.weight"], _weights(tmp_path / "extended" / "last")["head.weight"])


def test_resume_after_sigkill_matches_uninterrupted(data, tmp_path) -> None:
    """Kill a run in the middle of epoch 3 (SIGKILL), resume it: the weights of an uninterrupted run."""

    def cfg_for(out: str, resume: bool = False) -> TrainConfig:
        cfg = tiny_train_config(data, tmp_path / out, resume=resume)
        cfg.optim.epochs = 4
        cfg.model.dropout = 0.2          # exercises the restored torch RNG
        cfg.random_augment = True        # exercises the restored augmentation generator
        return cfg

    env = python_env()
    full = subprocess.Popen([PYTHON, *_child_cmd(tmp_path, cfg_for("full"))], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    victim = subprocess.Popen([PYTHON, *_child_cmd(tmp_path, cfg_for("killed"), "2")], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while _state_epoch(tmp_path / "killed") < 2:
        assert victim.poll() is None, victim.stderr.read().decode()
        assert time.monotonic() < deadline, "epoch-2 checkpoint never appeared"
        time.sleep(0.05)
    time.sleep(1.2)  # a few (slowed) steps into epoch 3: weights, optimiser and RNGs have moved on
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    assert _state_epoch(tmp_path / "killed") == 2  # killed before epoch 3 was saved
    resumed = subprocess.run([PYTHON, *_child_cmd(tmp_path, cfg_for("killed", resume=True))], env=env,
                             capture_output=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr.decode()[-3000:]
    assert full.wait(timeout=300) == 0, full.stderr.read().decode()[-3000:]
    assert _state_epoch(tmp_path / "killed") == 4
    _assert_same_weights(_weights(tmp_path / "full" / "last"), _weights(tmp_path / "killed" / "last"))
    _assert_same_weights(load_file(str(tmp_path / "full" / "last" / "state.safetensors")),
                         load_file(str(tmp_path / "killed" / "last" / "state.safetensors")))
    a, b = _csv(tmp_path / "full" / "metrics.csv"), _csv(tmp_path / "killed" / "metrics.csv")
    drop = ("images_per_s", "train_seconds", "epoch_seconds")
    assert [{k: v for k, v in r.items() if k not in drop} for r in a] == \
        [{k: v for k, v in r.items() if k not in drop} for r in b]


@pytest.mark.slow
def test_ddp_two_processes_match_one_process(data, tmp_path) -> None:
    """2 gloo processes x batch 4 == 1 process x batch 8, to float tolerance.

    Random augmentation is off (each process draws its own transforms, so the global batch would see
    other transforms than a single process), dropout is 0 and BatchNorm is frozen (per-process batch
    statistics differ from those of the global batch, and SyncBatchNorm does not run on CPU).
    """

    def cfg_for(out: str, batch: int) -> TrainConfig:
        cfg = tiny_train_config(data, tmp_path / out, random_augment=False, batchnorm="frozen")
        cfg.optim.epochs, cfg.optim.batch_size = 2, batch
        cfg.model.backbone = "resnet10t"
        return cfg

    env = python_env()
    single = subprocess.Popen([PYTHON, *_child_cmd(tmp_path, cfg_for("single", 8))], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ddp = subprocess.run([PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          *_child_cmd(tmp_path, cfg_for("ddp", 4))], env=env, capture_output=True,
                         timeout=300)
    assert ddp.returncode == 0, ddp.stderr.decode()[-3000:]
    assert single.wait(timeout=300) == 0, single.stderr.read().decode()[-3000:]
    one, two = _weights(tmp_path / "single" / "last"), _weights(tmp_path / "ddp" / "last")
    _assert_same_weights(one, two, atol=2e-5)
    init = _initial_weights()
    moved = max(float((one[k].float() - init[k].float()).abs().max()) for k in init)
    gap = max(float((one[k].float() - two[k].float()).abs().max()) for k in init)
    assert moved > 1e-3 and gap < moved / 50  # the comparison is not vacuous: training changed the weights
    rows1, rows2 = _csv(tmp_path / "single" / "metrics.csv"), _csv(tmp_path / "ddp" / "metrics.csv")
    assert len(rows1) == len(rows2) == 2  # one writer: rank 0
    for r1, r2 in zip(rows1, rows2, strict=True):
        # 18 training images (a quarter of 24 held out) // global batch 8 = 2 steps per epoch
        assert int(r1["step"]) == int(r2["step"]) == 2 * int(r1["epoch"])
        assert float(r1["loss"]) == pytest.approx(float(r2["loss"]), rel=1e-4)
        assert float(r1["val_nme"]) == pytest.approx(float(r2["val_nme"]), rel=1e-4)


def _initial_weights() -> dict[str, torch.Tensor]:
    from kdlandmark.models import LandmarkRegressor

    torch.manual_seed(0)
    return LandmarkRegressor("resnet10t", 29, dropout=0.0).state_dict()


def test_train_main_with_an_experiment_file(data, tmp_path) -> None:
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump({
        "dataset": "cofw", "out": str(tmp_path / "exp"),
        "student": {"model": {"backbone": "mobilenetv2_050", "input_size": 32, "dropout": 0.0},
                    "optim": {"epochs": 3, "batch_size": 4}},
        "runtime": {"device": "cpu", "amp": "off", "deterministic": True, "tensorboard": False,
                    "channels_last": False},
    }))
    res = train_main(exp, ["student.optim.epochs=1", "optim.lr=2e-3"], "l2", data=data)
    assert res["epochs"] == 1 and res["role"] == "l2"
    saved = load_train_config(tmp_path / "exp" / "l2" / "config.yaml")
    assert saved.role == "l2" and saved.optim.lr == 2e-3 and saved.model.backbone == "mobilenetv2_050"
    assert saved.data == str(data)
    with pytest.raises(ValueError, match="role"):
        train_main(exp, [], None, data=data)
    # a run folder's config.yaml is a TrainConfig: resume it for one more epoch
    res = train_main(tmp_path / "exp" / "l2" / "config.yaml", ["optim.epochs=2"], resume=True)
    assert res["epochs"] == 2
    assert dataclasses.asdict(load_train_config(tmp_path / "exp" / "l2" / "config.yaml"))["resume"] is True

