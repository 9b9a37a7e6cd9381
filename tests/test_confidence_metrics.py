"""Scores of per-landmark confidence: occlusion classification, visible/occluded NME, error ranking, and
their place in ``kdlandmark evaluate``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torch import nn

from kdlandmark.evaluate.confidence import (
    error_ranking,
    occlusion_scores,
    precision_recall,
    recall_at_precision,
    roc_auc,
    visible_occluded_nme,
)
from kdlandmark.evaluate.evaluator import evaluate_checkpoint, format_metrics_table, load_predictions, rescore
from kdlandmark.modelfile import ModelMeta
from test_evaluator import CONTEXT, INPUT, MARGIN, exact_model_coords, make_prepared

pytestmark = pytest.mark.usefixtures("one_torch_thread")

labelled = st.integers(2, 40).flatmap(lambda n: st.tuples(
    hnp.arrays(bool, n), hnp.arrays(np.float64, n, elements=st.sampled_from([0.0, 0.2, 0.5, 0.7, 1.0]))))


@settings(max_examples=80, deadline=None)
@given(labelled)
def test_auc_is_the_share_of_correctly_ordered_pairs(data):
    y, s = data
    pos, neg = s[y], s[~y]
    if not len(pos) or not len(neg):
        assert np.isnan(roc_auc(y, s))          # (occlusion_scores reports it as None)
        return
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert roc_auc(y, s) == pytest.approx(pairs)


@settings(max_examples=80, deadline=None)
@given(labelled)
def test_precision_and_recall_at_every_threshold_match_counting(data):
    y, s = data
    p, r = precision_recall(y, s)
    for k, thr in enumerate(np.unique(s)[::-1]):
        called = s >= thr
        assert p[k] == pytest.approx((y & called).sum() / called.sum())
        assert r[k] == pytest.approx((y & called).sum() / max(y.sum(), 1))


def test_recall_at_precision_by_hand():
    y = np.array([1, 1, 0, 1, 0, 0, 1, 0], bool)
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    # thresholds: top 2 -> p 1, r .5; top 3 -> .67; top 4 -> p .75, r .75; ... top 7 -> p 4/7, r 1
    assert recall_at_precision(y, s, 0.8) == pytest.approx(0.5)
    assert recall_at_precision(y, s, 0.75) == pytest.approx(0.75)
    assert recall_at_precision(y, s, 1.01) == 0.0
    sc = occlusion_scores(y[None], 1 - s[None])
    assert sc["occluded"] == 4 and sc["points"] == 8 and sc["recall_at_80_precision"] == pytest.approx(0.5)
    assert sc["precision_at_50_recall"] == pytest.approx(1.0)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_visible_and_occluded_nme_pool_to_the_overall_point_mean(seed):
    rng = np.random.default_rng(seed)
    gt = rng.uniform(0, 100, (5, 7, 2))
    pred = gt + rng.normal(0, 2, gt.shape)
    occ = rng.random((5, 7)) < 0.3
    norm = rng.uniform(20, 40, 5)
    r = visible_occluded_nme(pred, gt, occ, norm)
    err = np.linalg.norm(pred - gt, axis=-1) / norm[:, None] * 100
    parts = ((r["nme_visible"], r["visible_points"]), (r["nme_occluded"], r["occluded_points"]))
    total = sum(v * n for v, n in parts if v is not None)
    assert total / err.size == pytest.approx(err.mean())


def test_error_ranking_is_perfect_for_the_true_error_and_blind_to_monotone_changes():
    rng = np.random.default_rng(0)
    gt = rng.uniform(0, 100, (20, 9, 2))
    pred = gt + rng.normal(0, 3, gt.shape)
    norm = rng.uniform(30, 50, 20)
    true_px = np.linalg.norm(pred - gt, axis=-1)
    r = error_ranking(true_px, pred, gt, norm)
    assert r["spearman_points"] == pytest.approx(1.0) and r["spearman_faces"] == pytest.approx(1.0)
    assert r["spearman_within_face"] == pytest.approx(1.0) and r["calibration"] == pytest.approx(1.0)
    r2 = error_ranking(2 * true_px, pred, gt, norm)
    assert r2["spearman_points"] == pytest.approx(1.0) and r2["calibration"] == pytest.approx(2.0)
    noise = error_ranking(rng.uniform(0, 1, true_px.shape), pred, gt, norm)
    assert abs(noise["spearman_points"]) < 0.2


# ------------------------------------------------------------------------------------------------ evaluate
class HeadsOracle(nn.Module):
    """Exact coordinates plus a fixed offset, a visibility that knows the occlusion flags, and an error
    head that predicts the true point error (model units): every confidence score is perfect."""

    heads = ("visibility", "error")

    def __init__(self, coords: np.ndarray, hidden: np.ndarray, offset: float) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.zeros(()))
        self.register_buffer("coords", torch.as_tensor(coords, dtype=torch.float32))
        self.register_buffer("hidden", torch.as_tensor(hidden))
        self.offset = offset
        self.pos = 0

    def forward(self, x: torch.Tensor, heads: bool = False):
        idx = (torch.arange(x.shape[0]) + self.pos) % len(self.coords)
        self.pos = (self.pos + x.shape[0]) % len(self.coords)
        c = self.coords[idx] + self.offset * torch.as_tensor([1.0, 0.0]) + self.p
        if not heads:
            return c
        vis = torch.where(self.hidden[idx], -6.0, 6.0)
        err = torch.full(vis.shape, self.offset * np.sqrt(1.0))           # |offset| in model units
        return c, vis, torch.log(err / 2)


def test_evaluate_reports_occlusion_and_error_scores(tmp_path: Path, capsys) -> None:
    root, originals = make_prepared(tmp_path / "prep", dataset="cofw", layout="cofw", splits={"test": 12})
    rng = np.random.default_rng(1)
    occ = rng.random((12, 29)) < 0.2
    np.save(root / "test" / "occluded.npy", occ)
    model = HeadsOracle(exact_model_coords(originals["test"]), occ, offset=0.02)
    meta = ModelMeta.from_json({"format": "kdlandmark-checkpoint", "layout": "cofw", "input_size": INPUT,
                                "architecture": {"backbone": "oracle", "num_points": 29,
                                                 "heads": ["visibility", "error"]},
                                "crop": {"margin": MARGIN, "context_margin": CONTEXT}}, "test")
    res = evaluate_checkpoint("o/best", root, dataset="cofw", out_dir=tmp_path / "eval", bootstrap=0,
                              latency_runs=0, model=model, meta=meta, device="cpu", batch=5)
    conf = res["confidence"]["test"]
    o = conf["occlusion"]
    assert o["occluded"] == occ.sum() and o["auc"] == pytest.approx(1.0)
    assert o["recall_at_80_precision"] == pytest.approx(1.0)
    assert o["nme_visible"] == pytest.approx(o["nme_occluded"], rel=0.02)   # one offset (model units)
    e = conf["error_estimate"]
    assert e["calibration"] == pytest.approx(1.0, rel=1e-3)                  # pixels right on average
    preds = load_predictions(tmp_path / "eval")
    assert preds.visibility["test"].shape == preds.error["test"].shape == (12, 29)
    # the predicted error in image pixels is the true one (the model's crop side times 0.02)
    true_px = np.linalg.norm(preds.pred["test"] - preds.gt["test"], axis=-1)
    np.testing.assert_allclose(preds.error["test"], true_px, rtol=2e-3)
    again = rescore(tmp_path / "eval", bootstrap=0)
    assert again["confidence"] == json.loads(json.dumps(res["confidence"]))
    table = format_metrics_table(res)
    assert "occlusion AUC 1.000, recall at 80 % precision 100.0 %" in table
    assert "predicted vs true point error" in table


def test_evaluate_of_a_plain_model_on_flagged_data_reports_visible_and_occluded_nme(tmp_path: Path) -> None:
    from test_evaluator import QueueModel

    root, originals = make_prepared(tmp_path / "prep", dataset="cofw", layout="cofw", splits={"test": 6})
    occ = np.zeros((6, 29), bool)
    occ[:, :5] = True
    np.save(root / "test" / "occluded.npy", occ)
    meta = ModelMeta.from_json({"format": "kdlandmark-checkpoint", "layout": "cofw", "input_size": INPUT,
                                "architecture": {"backbone": "q", "num_points": 29},
                                "crop": {"margin": MARGIN, "context_margin": CONTEXT}}, "test")
    res = evaluate_checkpoint("q/best", root, dataset="cofw", out_dir=tmp_path / "eval", bootstrap=0,
                              latency_runs=0, model=QueueModel(exact_model_coords(originals["test"])),
                              meta=meta, device="cpu")
    o = res["confidence"]["test"]["occlusion"]
    assert o["occluded_points"] == 30 and o["visible_points"] == 144 and "auc" not in o
    assert "error_estimate" not in res["confidence"]["test"]
    # data without any flag and a plain model: no confidence section at all
    np.save(root / "test" / "occluded.npy", np.zeros((6, 29), bool))
    res = evaluate_checkpoint("q/best", root, dataset="cofw", out_dir=tmp_path / "eval2", bootstrap=0,
                              latency_runs=0, model=QueueModel(exact_model_coords(originals["test"])),
                              meta=meta, device="cpu")
    assert "confidence" not in res
