"""Checkpoints: round trip, errors naming the file, crash safety, optimiser and RNG state without pickle."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from kdlandmark.errors import CheckpointError
from kdlandmark.layouts import get_layout
from kdlandmark.modelfile import ModelMeta
from kdlandmark.modelfile.checkpoint import (
    init_from_checkpoint,
    is_checkpoint_path,
    load_checkpoint,
    read_model_meta,
    resolve_checkpoint_dir,
    save_model_checkpoint,
    write_checkpoint_dir,
)
from kdlandmark.models import LandmarkRegressor
from kdlandmark.train.checkpoint import (
    flatten_optimizer_state,
    generator_state,
    rng_state,
    set_generator_state,
    set_rng_state,
    unflatten_optimizer_state,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(seed: int = 0, points: int = 29) -> LandmarkRegressor:
    torch.manual_seed(seed)
    model = LandmarkRegressor("mobilenetv2_050", points, dropout=0.3)
    with torch.no_grad():
        model.head.weight.normal_()  # weights unlike any fresh initialisation
    return model


def _save(tmp_path, model=None, **kw):
    model = model if model is not None else _model()
    d = save_model_checkpoint(tmp_path / "ckpt", model, layout="cofw", input_size=64,
                              crop={"margin": 0.15}, role="tough", metrics={"val_nme": 0.05}, **kw)
    return model, d


def test_round_trip(tmp_path) -> None:
    model, d = _save(tmp_path, epoch=3)
    assert sorted(p.name for p in d.iterdir()) == ["model.json", "model.safetensors"]
    loaded, meta = load_checkpoint(d)
    assert not loaded.training
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b), k
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(loaded(x), model.eval()(x))
    assert isinstance(meta, ModelMeta) and meta.layout is get_layout("cofw") and meta.role == "tough"
    assert meta.input_size == 64 and meta.raw["epoch"] == 3 and meta.crop.margin == 0.15
    assert meta.dropout == pytest.approx(0.3) and meta.metrics == {"val_nme": 0.05}
    assert json.loads((d / "model.json").read_text())["layout"] == {"name": "cofw", "num_points": 29}
    # either file names the checkpoint too
    load_checkpoint(d / "model.json", layout="cofw")
    load_checkpoint(d / "model.safetensors", layout=get_layout("cofw"))
    assert read_model_meta(d).weights_sha256 == meta.weights_sha256 and len(meta.weights_sha256) == 64


def test_wrong_layout_is_an_error_naming_the_file(tmp_path) -> None:
    _, d = _save(tmp_path)
    with pytest.raises(CheckpointError, match=r"model\.json.*cofw.*29.*300w.*68"):
        load_checkpoint(d, layout="300w")


def test_missing_tensor_is_an_error_naming_the_file(tmp_path) -> None:
    _, d = _save(tmp_path)
    sd = load_file(str(d / "model.safetensors"))
    del sd["head.weight"]
    save_file(sd, str(d / "model.safetensors"))
    meta = json.loads((d / "model.json").read_text())
    del meta["weights"]  # as if written by hand: no size or checksum to trip over first
    (d / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*missing \['head\.weight'\]"):
        load_checkpoint(d)


def test_wrong_shape_is_an_error(tmp_path) -> None:
    _, d = _save(tmp_path)
    meta = json.loads((d / "model.json").read_text())
    meta["architecture"]["num_points"] = 68
    meta["layout"] = {"name": "300w", "num_points": 68}
    (d / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*shape"):
        load_checkpoint(d)


def test_truncated_file_is_an_error_naming_the_file(tmp_path) -> None:
    _, d = _save(tmp_path)
    w = d / "model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*truncated"):
        load_checkpoint(d)
    # without the recorded size the safetensors reader itself must notice
    meta = json.loads((d / "model.json").read_text())
    del meta["weights"]
    (d / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        load_checkpoint(d)


def test_modified_weights_fail_the_checksum(tmp_path) -> None:
    _, d = _save(tmp_path)
    sd = load_file(str(d / "model.safetensors"))
    sd["head.bias"] = sd["head.bias"] + 1
    save_file(sd, str(d / "model.safetensors"))
    meta = json.loads((d / "model.json").read_text())
    meta["weights"]["bytes"] = (d / "model.safetensors").stat().st_size
    (d / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(d)
    load_checkpoint(d, verify_checksum=False)


def test_missing_or_corrupt_meta(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nothing")
    _, d = _save(tmp_path)
    (d / "model.json").write_text('{"format": "kdlandmark-checkpoint", "archit')
    with pytest.raises(CheckpointError, match=r"model\.json"):
        load_checkpoint(d / "model.json")
    (d / "model.json").write_text(json.dumps({"format": "kdlandmark-checkpoint", "layout": "cofw",
                                              "input_size": 64, "architecture": {"backbone": "x"}}))
    with pytest.raises(CheckpointError, match="architecture.num_points"):
        load_checkpoint(d / "model.json")


def test_rewrite_replaces_and_crash_leftovers_are_found(tmp_path) -> None:
    d = tmp_path / "last"
    write_checkpoint_dir(d, {"model.safetensors": {"w": torch.zeros(2)}}, {"model.json": {"v": 1}})
    write_checkpoint_dir(d, {"model.safetensors": {"w": torch.ones(2)}}, {"model.json": {"v": 2}})
    assert json.loads((d / "model.json").read_text())["v"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]  # no temporary folders left
    # killed between the two renames: the old folder moved aside, the new one complete in .tmp
    shutil.move(d, tmp_path / ".last.old")
    write_checkpoint_dir(tmp_path / "other", {"model.safetensors": {"w": torch.ones(2)}},
                         {"model.json": {"v": 3}})
    shutil.move(tmp_path / "other", tmp_path / ".last.tmp")
    assert resolve_checkpoint_dir(d) == tmp_path / ".last.tmp"
    # killed while writing the new folder (no JSON yet): the old checkpoint is used
    (tmp_path / ".last.tmp" / "model.json").unlink()
    assert resolve_checkpoint_dir(d) == tmp_path / ".last.old"
    shutil.rmtree(tmp_path / ".last.old")
    assert resolve_checkpoint_dir(d) is None


def test_optimizer_state_round_trip_continues_identically() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2, betas=(0.8, 0.9), weight_decay=1e-4)
    xs = [torch.randn(5, 4) for _ in range(6)]

    def step(n, o, x):
        o.zero_grad()
        n(x).square().mean().backward()
        o.step()

    for x in xs[:3]:
        step(net, opt, x)
    tensors, meta = flatten_optimizer_state(opt.state_dict())
    json.dumps(meta)  # the non-tensor part is plain JSON
    assert all(isinstance(v, torch.Tensor) for v in tensors.values())
    clone = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    clone.load_state_dict(net.state_dict())
    opt2 = torch.optim.Adam(clone.parameters(), lr=1.0)
    from safetensors.torch import load, save

    stored = load(save(tensors))  # through the file format, as a resumed run reads it
    opt2.load_state_dict(unflatten_optimizer_state(stored, json.loads(json.dumps(meta))))
    assert opt2.param_groups[0]["betas"] == (0.8, 0.9) and opt2.param_groups[0]["lr"] == 1e-2
    for x in xs[3:]:
        step(net, opt, x)
        step(clone, opt2, x)
    for a, b in zip(net.parameters(), clone.parameters(), strict=True):
        assert torch.equal(a, b)


def test_rng_states_round_trip() -> None:
    state = json.loads(json.dumps(rng_state()))
    legacy = np.random  # the legacy global numpy RNG is what rng_state() saves
    first = (torch.rand(3), legacy.rand(3), random.random())
    torch.rand(5), legacy.rand(5), random.random()
    set_rng_state(state)
    again = (torch.rand(3), legacy.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]

    g = torch.Generator().manual_seed(5)
    saved = json.loads(json.dumps(generator_state(g)))
    a = torch.randperm(10, generator=g)
    set_generator_state(g, saved)
    assert torch.equal(a, torch.randperm(10, generator=g))


def test_save_model_checkpoint_checks_layout() -> None:
    with pytest.raises(ValueError, match="29 points"):
        save_model_checkpoint("/nonexistent/x", _model(points=29), layout="300w", input_size=64)


def test_model_meta_is_validated_once_and_reads_old_forms() -> None:
    from kdlandmark.data.crop import DEFAULT_MARGIN

    base = {"format": "kdlandmark-checkpoint", "layout": "cofw", "input_size": 64,
            "architecture": {"backbone": "mobilenetv2_050", "num_points": 29}}
    old = ModelMeta.from_json(base, "old/model.json")               # layout as a name, no crop: early files
    assert old.layout is get_layout("cofw") and old.crop.margin is None and old.margin == DEFAULT_MARGIN
    assert old.to_json()["layout"] == {"name": "cofw", "num_points": 29}
    bad = [
        ({"format": "something-else"}, "not a kdlandmark checkpoint"),
        ({"input_size": 0}, "input_size must be positive"),
        ({"input_size": "big"}, "'input_size' must be a number"),
        ({"crop": {"margin": 20}}, "crop margin 20.0 outside"),
        ({"layout": {"name": "300w", "num_points": 68}}, "architecture has 29 points"),
        ({"layout": "wflw68"}, "unknown layout"),
    ]
    for change, message in bad:
        with pytest.raises(CheckpointError, match=rf"x/model\.json: .*{message}"):
            ModelMeta.from_json({**base, **change}, "x/model.json", formats=("kdlandmark-checkpoint",))


def test_init_from_checkpoint_copies_every_weight_and_keeps_new_heads(tmp_path) -> None:
    trained, d = _save(tmp_path)
    assert is_checkpoint_path(d) and is_checkpoint_path(str(d / "model.json"))
    assert not is_checkpoint_path(tmp_path) and not is_checkpoint_path(True) and not is_checkpoint_path("")
    fresh = _model(seed=1)
    assert not torch.equal(fresh.head.weight, trained.head.weight)
    meta = init_from_checkpoint(fresh, d)
    assert meta.backbone == "mobilenetv2_050"
    for k, v in trained.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    # a network with confidence heads: the shared part comes from the checkpoint, the heads stay as built
    torch.manual_seed(2)
    with_heads = LandmarkRegressor("mobilenetv2_050", 29, heads=("visibility", "error"), head_hidden=8)
    built = {k: v.clone() for k, v in with_heads.state_dict().items()
             if k.startswith(("visibility_head.", "error_head."))}
    init_from_checkpoint(with_heads, d)
    assert torch.equal(with_heads.head.weight, trained.head.weight)
    assert built and all(torch.equal(with_heads.state_dict()[k], v) for k, v in built.items())
    # and the other way: a checkpoint with heads starts a network without them
    _, d2 = _save(tmp_path / "h", with_heads)
    plain = _model(seed=3)
    init_from_checkpoint(plain, d2)
    assert torch.equal(plain.head.weight, trained.head.weight)


def test_init_from_checkpoint_of_another_architecture_names_the_file(tmp_path) -> None:
    _, d = _save(tmp_path)
    with pytest.raises(CheckpointError, match=r"model\.json.*29 points.*68"):
        init_from_checkpoint(LandmarkRegressor("mobilenetv2_050", 68), d)
    with pytest.raises(CheckpointError, match="resnet18"):
        init_from_checkpoint(LandmarkRegressor("resnet18", 29), d)
