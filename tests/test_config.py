"""Every config field is read by the code it configures ("no silent defaults": a key that nothing reads
would be accepted from YAML and silently do nothing).

Reads are recorded by patching each config dataclass's ``__getattribute__`` while the consumers run:
the trainer (every role, so the KD and Tolerant paths count), the augmenter and KD-Loss (every
operation switched on), the optimiser and schedule factories (every kind), and the pipeline stages
(their heavy work replaced by recorders).  Reads that do not use a value do not count: the config
module's own copying, conversion and validation, ``dataclasses`` helpers, and the tests.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from _train_helpers import make_fake_prepared, tiny_train_config
from kdlandmark import config as C
from kdlandmark.data.augment import BatchAugmenter
from kdlandmark.layouts import get_layout
from kdlandmark.losses import kd_loss
from kdlandmark.modelfile.checkpoint import save_model_checkpoint
from kdlandmark.models import LandmarkRegressor
from kdlandmark.pipeline import ROLE_LABELS, Pipeline
from kdlandmark.train import trainer as trainer_mod

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASSES = (C.ExperimentConfig, C.PrepareConfig, C.AsmConfig, C.StageConfig, C.RuntimeConfig, C.EvalConfig,
           C.TrainConfig, C.ModelConfig, C.OptimConfig, C.TeachersConfig, C.AugmentConfig, C.KDLossConfig,
           C.SynthConfig, C.PoolStyle, C.HeadsConfig)
#: Functions whose reads only copy, convert, compare or validate a config.
NOT_USE = {"__post_init__", "__eq__", "__repr__", "_plain", "config_to_dict", "_from_dict",
           "_coerce", "apply_overrides", "_field_type", "to_dict", "save_config", "_check_same_config",
           "_differences"}


@contextmanager
def recorded_reads() -> Iterator[set[tuple[str, str]]]:
    """``{(class name, field)}`` of the config fields read by non-test code inside the block."""
    reads: set[tuple[str, str]] = set()
    saved = {}
    for cls in CLASSES:
        names = frozenset(f.name for f in dataclasses.fields(cls))

        def getattribute(self, name, _names=names, _cls=cls):
            if name in _names:
                frame = sys._getframe(1)
                while frame.f_code.co_name in ("<dictcomp>", "<listcomp>", "<setcomp>", "<genexpr>"):
                    frame = frame.f_back          # a comprehension reads for the function around it
                module = frame.f_globals.get("__name__", "")
                if (frame.f_code.co_name not in NOT_USE and module not in ("dataclasses", "copy")
                        and not module.startswith(("test_", "_train_helpers"))):
                    reads.add((_cls.__name__, name))
            return object.__getattribute__(self, name)

        saved[cls] = cls.__dict__.get("__getattribute__")
        cls.__getattribute__ = getattribute
    try:
        yield reads
    finally:
        for cls, old in saved.items():
            if old is None:
                del cls.__getattribute__
            else:
                cls.__getattribute__ = old


def _unread(reads: set[tuple[str, str]], classes) -> list[str]:
    return [f"{cls.__name__}.{f.name}" for cls in classes for f in dataclasses.fields(cls)
            if (cls.__name__, f.name) not in reads]


# ------------------------------------------------------------------------------------------------ training
def _run_training_consumers(tmp: Path) -> None:
    data = make_fake_prepared(tmp / "data", n=16, size=48, num_points=29)
    net = LandmarkRegressor("mobilenetv2_035", 29, dropout=0.0)
    for name in ("tough", "tolerant"):
        save_model_checkpoint(tmp / name, net, layout="cofw", input_size=32)
    for role in C.ROLES:
        cfg = tiny_train_config(data, tmp / f"run-{role}", role=role)
        cfg.optim.epochs, cfg.optim.grad_clip, cfg.optim.ema_decay = 2 if role == "l2" else 1, 1.0, 0.9
        cfg.teachers = C.TeachersConfig(tough=str(tmp / "tough"), tolerant=str(tmp / "tolerant"))
        if role == "l2":                                # the confidence heads and their loss weights
            cfg.model.heads = C.HeadsConfig(visibility=1.0, error=0.5, hidden=4, detach=True)
        trainer_mod.Trainer(cfg).fit()
    # every optimiser and schedule kind
    params = [torch.nn.Parameter(torch.zeros(2))]
    for name in ("adam", "adamw", "sgd"):
        for schedule in ("cosine", "step", "constant", "inverse-time"):
            o = C.OptimConfig(name=name, schedule=schedule, epochs=3, warmup_epochs=1)
            trainer_mod._make_optimizer(params, o)
            factor = trainer_mod.lr_factor_fn(o, 4)
            [factor(s) for s in range(12)]
    # every augmentation operation on, and KD-Loss
    aug = C.AugmentConfig(blur_prob=1.0, noise_prob=1.0, cutout_prob=1.0, flip_prob=1.0)
    layout = get_layout("cofw")
    images = torch.randint(0, 255, (2, 48, 48, 3), dtype=torch.uint8)
    BatchAugmenter(layout, 48, 32, 0.7, aug)(images, [torch.rand(2, 29, 2) * 48], train=True)
    p, g, t1, t2 = (torch.rand(2, 29, 2) for _ in range(4))
    kd_loss(p, g, t1, t2, C.KDLossConfig())


def test_every_training_config_field_is_read(tmp_path) -> None:
    with recorded_reads() as reads:
        _run_training_consumers(tmp_path)
    assert _unread(reads, (C.TrainConfig, C.ModelConfig, C.OptimConfig, C.TeachersConfig, C.AugmentConfig,
                           C.KDLossConfig, C.HeadsConfig)) == []


# ------------------------------------------------------------------------------------------------ pipeline
def _run_pipeline_consumers(tmp: Path, monkeypatch) -> list[tuple[str, dict]]:
    """Every pipeline stage's own code, with the work it hands on replaced by a recorder."""
    from kdlandmark.data import prepare, synth
    from kdlandmark.evaluate import evaluator, report
    from kdlandmark.shape import soften

    calls: list[tuple[str, dict]] = []
    monkeypatch.setattr(synth, "synthesize", lambda *a, **k: calls.append(("synth", k)) or {})
    monkeypatch.setattr(synth, "format_summary", lambda *a: "")
    monkeypatch.setattr(prepare, "prepare_dataset", lambda *a, **k: calls.append(("prepare", k)))
    monkeypatch.setattr(prepare, "format_summary", lambda *a: "")
    monkeypatch.setattr(soften, "soften_prepared", lambda *a, **k: calls.append(("asm", k)))
    monkeypatch.setattr(evaluator, "evaluate_checkpoint", lambda *a, **k: calls.append(("evaluate", k)))
    monkeypatch.setattr(report, "write_report", lambda *a, **k: calls.append(("report", k)) or ("h", "m"))
    synth_cfg = C.SynthConfig(count=5, pool="pool", hybrid_fraction=0.2, pool_fraction=0.3)
    exp = C.ExperimentConfig(out=str(tmp / "exp"), data_root=str(tmp / "raw"), jobs=1, synth=synth_cfg)
    pipe = Pipeline(exp, log=lambda _text: None)
    pipe.synth()
    pipe.prepare()
    pipe.asm()
    for role in ROLE_LABELS:                           # every model trained (what evaluate looks for)
        (pipe.root / role).mkdir(parents=True)
        (pipe.root / role / "result.json").write_text("{}")
    pipe.evaluate()
    for role in ROLE_LABELS:
        C.train_config(exp, role)
        d = pipe.eval_dir(role)
        d.mkdir(parents=True)
        subsets = {"full": {"nme": 5.0, "fr": 1.0, "auc": 0.5}}
        (d / "metrics.json").write_text(json.dumps({"subsets": subsets}))
    pipe.run(["results", "report"])
    return calls


def test_every_experiment_config_field_is_read(tmp_path, monkeypatch) -> None:
    with recorded_reads() as reads:
        calls = _run_pipeline_consumers(tmp_path, monkeypatch)
    assert _unread(reads, (C.ExperimentConfig, C.PrepareConfig, C.AsmConfig, C.StageConfig,
                           C.EvalConfig, C.SynthConfig)) == []
    # the runtime section is copied whole into each run's TrainConfig, whose fields the trainer reads
    runtime = {f.name for f in dataclasses.fields(C.RuntimeConfig)}
    assert runtime <= {f.name for f in dataclasses.fields(C.TrainConfig)}
    # and what was read is what the stages were given
    by_stage = dict(calls)
    assert by_stage["asm"]["clip"] == 3.0 and by_stage["asm"]["max_iter"] == 20
    assert by_stage["evaluate"]["batch"] == 64 and by_stage["prepare"]["size"] == 256
    assert by_stage["synth"]["hybrid_fraction"] == 0.2 and by_stage["synth"]["pool"] == "pool"


def test_every_pool_style_field_is_read(tmp_path) -> None:
    """Rendering pool faces with every appearance step on reads every field of the style."""
    import cv2

    from kdlandmark.data.synth import render_face
    from kdlandmark.data.synth.pool import load_pool, render_pool_face

    layout = get_layout("300w")
    for i in range(2):
        image, lm, _ = render_face(np.random.default_rng([7, i]), layout, 160)
        cv2.imwrite(str(tmp_path / f"f{i}.png"), image)
        rows = "".join(f"{x + 1} {y + 1}\n" for x, y in lm)
        (tmp_path / f"f{i}.pts").write_text(f"version: 1\nn_points: 68\n{{\n{rows}}}\n")
    pool = load_pool(tmp_path)
    style = C.PoolStyle(renormalise=0.5, mix=1.0, background=1.0, glasses=1.0, colour=1.0, light=1.0,
                        low_res=1.0, blur=1.0, noise=1.0, jpeg=1.0)
    with recorded_reads() as reads:
        for seed in range(3):
            render_pool_face(np.random.default_rng(seed), pool, 128, style)
    assert _unread(reads, (C.PoolStyle,)) == []


def test_the_recorder_notices_a_field_nothing_reads(tmp_path, monkeypatch) -> None:
    """The check is not vacuous: a stage that ignores its batch size leaves eval.batch_size unread."""
    import types

    from kdlandmark import pipeline

    def evaluate_without_batch(self) -> None:  # the evaluate stage as it was before batch_size was wired
        from kdlandmark.evaluate.evaluator import evaluate_checkpoint

        ev = self.exp.eval
        for role in ROLE_LABELS:
            evaluate_checkpoint(self.root / role / "best", self.prepared_dir, dataset=self.exp.dataset,
                                out_dir=self.eval_dir(role), normalisation=ev.normalisation,
                                threshold=ev.failure_threshold, splits=ev.splits)

    # run with the pipeline module's globals, so that its reads count as the pipeline's (not a test's)
    monkeypatch.setattr(pipeline.Pipeline, "evaluate",
                        types.FunctionType(evaluate_without_batch.__code__, vars(pipeline)))
    with recorded_reads() as reads:
        _run_pipeline_consumers(tmp_path, monkeypatch)
    assert _unread(reads, (C.EvalConfig,)) == ["EvalConfig.batch_size"]


def test_the_asm_stage_fits_with_the_configured_clip_and_iterations(tmp_path, monkeypatch) -> None:
    from kdlandmark.shape import soften

    data = make_fake_prepared(tmp_path / "data", n=12, size=48, num_points=29)
    seen: list[dict] = []
    real = soften.fit_asm
    monkeypatch.setattr(soften, "fit_asm", lambda *a, **k: seen.append(k) or real(*a, **k))
    soften.soften_prepared(data, 0.9, clip=1.5, max_iter=2, out=tmp_path / "asm", report=False)
    assert len(seen) > 1 and all(k["clip"] == 1.5 and k["max_iter"] == 2 for k in seen)
