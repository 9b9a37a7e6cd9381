"""Per-landmark confidence heads: the model, their losses, the visibility targets, training, model files."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from _train_helpers import make_fake_prepared, tiny_train_config
from kdlandmark.config import HEAD_NAMES, HeadsConfig
from kdlandmark.data.augment import BatchAugmenter
from kdlandmark.errors import CheckpointError
from kdlandmark.layouts import get_layout
from kdlandmark.losses import error_nll, visibility_loss
from kdlandmark.modelfile.checkpoint import load_checkpoint, read_model_meta, save_model_checkpoint
from kdlandmark.models import InferenceOutputs, LandmarkRegressor, head_outputs
from kdlandmark.train.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")
COFW = get_layout("cofw")


# ------------------------------------------------------------------------------------------------ model
def test_heads_come_after_the_coordinates_and_change_nothing_of_them():
    torch.manual_seed(3)
    plain = LandmarkRegressor("mobilenetv2_035", 29, dropout=0.0).eval()
    torch.manual_seed(3)
    with_heads = LandmarkRegressor("mobilenetv2_035", 29, dropout=0.0, heads=HEAD_NAMES, head_hidden=8).eval()
    ps, hs = plain.state_dict(), with_heads.state_dict()
    assert all(torch.equal(ps[k], hs[k]) for k in ps)
    assert sorted({k.split(".")[0] for k in hs if k not in ps}) == ["error_head", "visibility_head"]
    x = torch.rand(2, 3, 32, 32)
    coords, vis, log_b = with_heads(x, heads=True)
    assert torch.equal(coords, plain(x)) and torch.equal(with_heads(x), coords)
    assert vis.shape == log_b.shape == (2, 29)
    assert "heads" not in plain.architecture()
    assert with_heads.architecture()["heads"] == ["visibility", "error"]
    # one head only: the other output is None; the inference wrapper returns what exists, in order
    only = LandmarkRegressor("mobilenetv2_035", 29, heads=("error",)).eval()
    _, none, lb = only(x, heads=True)
    assert none is None and lb.shape == (2, 29)
    outs = InferenceOutputs(only)(x)
    assert len(outs) == 2 and torch.allclose(outs[1], 2 * torch.exp(lb))
    with pytest.raises(ValueError, match="heads"):
        LandmarkRegressor("mobilenetv2_035", 29, heads=("confidence",))


def test_the_point_heads_look_at_their_own_point():
    torch.manual_seed(0)
    net = LandmarkRegressor("mobilenetv2_035", 29, dropout=0.0, heads=HEAD_NAMES, head_hidden=8).eval()
    spread = torch.linspace(-0.35, 0.35, 29)
    with torch.no_grad():                       # points spread over the crop, whatever the image
        net.head.weight.zero_()
        net.head.bias.copy_(torch.stack([spread, spread.flip(0)], dim=-1).reshape(-1))
        net.visibility_head.mlp[2].weight.normal_(0, 1.0)
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        coords, vis, _ = net(x, heads=True)
        k = 3
        px = ((coords[0, k] * 96) + 47.5).round().long()
        y = x.clone()
        y[..., max(0, px[1] - 6):px[1] + 7, max(0, px[0] - 6):px[0] + 7] = 1.0     # paint over point k
        _, vis2, _ = net(y, heads=True)
    change = (vis2 - vis).abs()[0]
    far = change[(torch.arange(29) - k).abs() > 8]
    assert change[k] > 5 * far.mean()


def test_head_outputs_mean_probability_and_mean_distance():
    vis, err = head_outputs(torch.tensor([0.0, 2.0]), torch.log(torch.tensor([0.5, 1.0])))
    assert torch.allclose(vis, torch.sigmoid(torch.tensor([0.0, 2.0])))
    assert torch.allclose(err, torch.tensor([1.0, 2.0]))        # a radial Laplace of scale b: mean 2 b


# ------------------------------------------------------------------------------------------------ losses
def test_visibility_loss_is_bce_against_not_hidden():
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    hidden = torch.tensor([[False, True, True]])
    want = -(np.log(1 / (1 + np.exp(-2.0))) + np.log(1 - 1 / (1 + np.exp(1.0)))
             + np.log(1 - 1 / (1 + np.exp(-0.5)))) / 3
    assert float(visibility_loss(logits, hidden)) == pytest.approx(want, rel=1e-6)
    with pytest.raises(ValueError, match="shape"):
        visibility_loss(logits, hidden[:, :2])


@settings(max_examples=40, deadline=None)
@given(st.floats(0.01, 2.0), st.floats(-1.0, 1.0), st.floats(-1.0, 1.0))
def test_error_nll_is_smallest_at_half_the_distance_and_leaves_coordinates_alone(scale, dx, dy):
    pred = (torch.tensor([[[dx, dy]]]) * scale).requires_grad_(True)
    gt = torch.zeros(1, 1, 2)
    dist = float(torch.linalg.vector_norm(pred.detach()))
    if dist < 1e-3:
        return
    best = torch.log(torch.tensor([[dist / 2]]))
    log_b = best.clone().requires_grad_(True)
    loss = error_nll(log_b, pred, gt)
    loss.backward()
    assert pred.grad is None or float(pred.grad.abs().max()) == 0.0       # coordinates detached
    assert abs(float(log_b.grad)) < 1e-5                                   # stationary at b = |e| / 2
    for shift in (-0.3, 0.3):
        assert float(error_nll(best + shift, pred, gt).detach()) > float(loss.detach())   # a minimum


# ------------------------------------------------------------------------------------------------ targets
def _batch(n=6, s=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, s, s, 3), generator=g, dtype=torch.uint8)
    c = (s - 1) / 2
    lms = c + (torch.rand(n, 29, 2, generator=g) - 0.5) * s * 0.5
    occ = torch.rand(n, 29, generator=g) < 0.3
    return images, lms, occ


def test_with_visibility_draws_the_same_batch_as_a_plain_call():
    from kdlandmark.config import AugmentConfig

    images, lms, occ = _batch()
    aug = BatchAugmenter(COFW, 48, 32, 0.8, AugmentConfig(cutout_prob=0.5, flip_prob=0.5, noise_prob=0.5))
    x1, l1 = aug(images, [lms], train=True, generator=torch.Generator().manual_seed(5))
    x2, l2, hidden = aug.with_visibility(images, [lms], occ, train=True,
                                         generator=torch.Generator().manual_seed(5))
    assert torch.equal(x1, x2) and torch.equal(l1[0], l2[0]) and hidden.shape == occ.shape


def test_hidden_points_follow_the_flip_and_the_data_flags():
    from kdlandmark.config import AugmentConfig

    images, lms, occ = _batch()
    cfg = AugmentConfig(rotation_deg=0, scale=(1, 1), translate=0, flip_prob=1.0, cutout_prob=0.0)
    aug = BatchAugmenter(COFW, 48, 32, 0.8, cfg)
    _, out, hidden = aug.with_visibility(images, [lms], occ, train=True)
    inside = (out[0].abs() <= 0.5).all(dim=-1)
    flipped = occ[:, torch.as_tensor(COFW.flip_array)]
    assert torch.equal(hidden, flipped | ~inside)
    # no augmentation: exactly the flags, plus what lies outside the view
    _, out, hidden = aug.with_visibility(images, [lms], occ, train=False)
    assert torch.equal(hidden, occ | (out[0].abs() > 0.5).any(dim=-1))


def test_points_under_the_cutout_are_hidden():
    from kdlandmark.config import AugmentConfig

    images = torch.full((8, 48, 48, 3), 128, dtype=torch.uint8)
    _, lms, _ = _batch(8)
    occ = torch.zeros(8, 29, dtype=torch.bool)
    cfg = AugmentConfig(rotation_deg=0, scale=(1, 1), translate=0, flip_prob=0, cutout_prob=1.0,
                        cutout_size=(0.3, 0.5), cutout_fill="noise", brightness=0, contrast=0, saturation=0,
                        blur_prob=0, noise_prob=0)
    aug = BatchAugmenter(COFW, 48, 32, 1.0, cfg)
    x, out, hidden = aug.with_visibility(images, [lms], occ, train=True,
                                         generator=torch.Generator().manual_seed(1))
    # the image is flat grey except inside the cutout: compare with the pixel under each point
    q = (out[0] * 32 + 15.5).round().long().clamp(0, 31)
    grey = torch.stack([x[b, 0, q[b, :, 1], q[b, :, 0]] for b in range(8)])
    changed = (grey - 128 / 255).abs() > 1e-3
    inside = (out[0].abs() <= 0.5).all(dim=-1)
    agree = (changed == hidden)[inside]
    assert hidden[inside].any() and agree.float().mean() > 0.95            # rounding at the edges only


# ------------------------------------------------------------------------------------------------ training
@pytest.fixture(scope="module")
def occluded_data(tmp_path_factory):
    root = make_fake_prepared(tmp_path_factory.mktemp("heads") / "data", n=16, size=48)
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        f = root / split / "occluded.npy"
        np.save(f, rng.random(np.load(f).shape) < 0.2)
    return root


def _train(data, out, heads: HeadsConfig | None, epochs=2):
    cfg = tiny_train_config(data, out, role="l2")
    cfg.optim.epochs = epochs
    if heads is not None:
        cfg.model.heads = heads
    return Trainer(cfg).fit()


def test_training_with_heads_logs_their_terms_and_saves_them(occluded_data, tmp_path):
    res = _train(occluded_data, tmp_path / "run", HeadsConfig(visibility=1.0, error=0.5, hidden=16))
    rows = list(csv.DictReader(open(res["metrics_csv"])))
    assert {"l2", "visibility", "error_nll", "loss"} <= set(rows[0])
    loss, l2 = float(rows[-1]["loss"]), float(rows[-1]["l2"])
    assert loss == pytest.approx(l2 + float(rows[-1]["visibility"]) + 0.5 * float(rows[-1]["error_nll"]),
                                 rel=1e-4)
    meta = read_model_meta(res["best"])
    assert meta.heads == ("visibility", "error") and meta.head_hidden == 16
    model, _ = load_checkpoint(res["best"])
    assert model.heads == ("visibility", "error")
    meta.require_heads("x")


def test_detached_heads_leave_the_coordinates_bit_for_bit(occluded_data, tmp_path):
    plain = _train(occluded_data, tmp_path / "plain", None)
    detached = _train(occluded_data, tmp_path / "detached",
                      HeadsConfig(visibility=1.0, error=1.0, detach=True))
    attached = _train(occluded_data, tmp_path / "attached", HeadsConfig(visibility=1.0, error=1.0))
    a, _ = load_checkpoint(plain["last"])
    b, _ = load_checkpoint(detached["last"])
    c, _ = load_checkpoint(attached["last"])
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)       # attached heads do train the backbone


def test_a_plain_checkpoint_loads_unchanged_and_refuses_confidence(tmp_path):
    net = LandmarkRegressor("mobilenetv2_035", 29, dropout=0.0)
    folder = save_model_checkpoint(tmp_path / "m", net, layout="cofw", input_size=32)
    raw = json.loads((folder / "model.json").read_text())
    assert "heads" not in raw["architecture"]
    meta = read_model_meta(folder)
    assert meta.heads == () and meta.head_hidden == 0
    with pytest.raises(CheckpointError, match="no confidence heads"):
        meta.require_heads(folder)
    raw["architecture"]["heads"] = ["confidence"]
    (folder / "model.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="architecture.heads"):
        read_model_meta(folder)


def test_heads_config_is_checked_and_names_the_heads_that_are_on():
    assert HeadsConfig().names == ()
    assert HeadsConfig(error=0.1).names == ("error",)
    assert HeadsConfig(visibility=1, error=1).names == HEAD_NAMES
    with pytest.raises(ValueError, match="loss weights"):
        HeadsConfig(visibility=-1)
