"""Evaluator end to end on tiny prepared sets written in the on-disk format of ``kdlandmark.data.store``.

The faces are built in original-image pixels first, cropped with the project's own ``crop_affine``
(context margin), and stored like ``prepare`` stores them.  Oracle models then return, for each face,
model coordinates derived independently of the evaluator (from the image-pixel landmarks and the
model's own crop ``crop_affine(box, input_size, margin)``), so the mapping back to image pixels can
be checked exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from kdlandmark.cli import main
from kdlandmark.data.crop import apply_affine, crop_affine, landmark_box, to_model_coords
from kdlandmark.data.store import PreparedSet
from kdlandmark.evaluate.evaluator import (
    evaluate_checkpoint,
    load_predictions,
    predict_prepared,
    rescore,
)
from kdlandmark.evaluate.metrics import nme_per_image
from kdlandmark.layouts import get_layout
from kdlandmark.modelfile import ModelMeta

MARGIN = 0.15
CONTEXT = 0.4
INPUT = 48


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------------------------- fixtures
def face_template(layout, rng: np.random.Generator) -> np.ndarray:
    """A face-like ``(N, 2)`` shape in about [-0.5, 0.5] with the outer eye corners apart horizontally."""
    t = np.linspace(0, 2 * np.pi, layout.num_points, endpoint=False)
    pts = np.stack([0.4 * np.cos(t), 0.45 * np.sin(t)], axis=1) + rng.normal(0, 0.03, (layout.num_points, 2))
    a, b = layout.inter_ocular
    pts[a], pts[b] = (-0.3, -0.1), (0.3, -0.1)
    for k, eye in enumerate(layout.pupils):       # eye-centre points near their outer corner
        for i in eye:
            if i not in layout.inter_ocular:
                pts[i] = (-0.2 if k == 0 else 0.2, -0.1) + rng.normal(0, 0.01, 2)
    return pts


def make_prepared(root: Path, *, dataset: str = "300w", layout: str = "300w",
                  splits: dict[str, int] | None = None, size: int = 64, seed: int = 0,
                  attributes: dict[str, list[dict]] | None = None, blob_sigma: float = 0.0, scale: float = 1.0
                  ) -> tuple[Path, dict[str, np.ndarray]]:
    """Write a prepared set; returns its root and the original image-pixel landmarks per split.

    ``blob_sigma > 0`` draws one Gaussian spot at landmark 0 of each stored crop (black elsewhere);
    ``scale`` multiplies every original coordinate (the same faces in a larger image).
    """
    lay = get_layout(layout)
    rng = np.random.default_rng(seed)
    splits = splits or {"test-common": 6, "test-challenging": 4}
    originals: dict[str, np.ndarray] = {}
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    for name, m in splits.items():
        d = root / name
        d.mkdir(parents=True)
        lms = np.stack([face_template(lay, rng) * rng.uniform(80, 220) + rng.uniform(150, 400, 2)
                        for _ in range(m)]) * scale
        boxes = np.array([landmark_box(lm) for lm in lms], np.float32)
        affines = np.stack([crop_affine(b, size, CONTEXT) for b in boxes])
        stored = apply_affine(affines, lms).astype(np.float32)
        images = np.zeros((m, size, size, 3), np.uint8)
        if blob_sigma > 0:
            for i in range(m):
                x0, y0 = stored[i, 0]
                spot = 255 * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * blob_sigma ** 2))
                images[i] = np.round(spot)[..., None].astype(np.uint8)
        np.save(d / "images.npy", images)
        np.save(d / "landmarks.npy", stored)
        np.save(d / "affines.npy", affines.astype(np.float64))
        np.save(d / "occluded.npy", np.zeros((m, lay.num_points), bool))
        np.save(d / "boxes.npy", boxes)
        attrs = (attributes or {}).get(name) or [{} for _ in range(m)]
        (d / "samples.json").write_text(json.dumps(
            [{"image_path": f"{name}/img_{i:03d}.jpg", "attributes": attrs[i]} for i in range(m)]))
        originals[name] = lms
    meta = {"format_version": 1, "dataset": dataset, "layout": lay.name, "num_points": lay.num_points,
            "size": size, "margin": MARGIN, "context_margin": CONTEXT,
            "splits": {k: {"count": v} for k, v in splits.items()}}
    (root / "meta.json").write_text(json.dumps(meta))
    return root, originals


def exact_model_coords(lms_px: np.ndarray, input_size: int = INPUT) -> np.ndarray:
    """Model coordinates of image-pixel landmarks from the model's own crop (not from the evaluator)."""
    out = []
    for lm in lms_px:
        a = crop_affine(landmark_box(lm), input_size, MARGIN)
        out.append(to_model_coords(apply_affine(a, lm), input_size))
    return np.stack(out).astype(np.float32)


class QueueModel(nn.Module):
    """Returns the next rows of a fixed table of model coordinates (cycling), whatever the image."""

    def __init__(self, coords: np.ndarray, offset: tuple[float, float] = (0.0, 0.0)) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.register_buffer("coords", torch.as_tensor(coords, dtype=torch.float32))
        self.offset = torch.tensor(offset, dtype=torch.float32)
        self.pos = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = len(self.coords)
        idx = (torch.arange(x.shape[0]) + self.pos) % n
        self.pos = (self.pos + x.shape[0]) % n
        return self.coords[idx].to(x.device) * self.scale + self.offset.to(x.device)


class CentroidModel(nn.Module):
    """Puts every point at the intensity centroid of the input image: it reads the pixels it is given."""

    def __init__(self, num_points: int) -> None:
        super().__init__()
        self.num_points = num_points
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = x[:, 0]
        n = x.shape[-1]
        pix = torch.arange(n, dtype=x.dtype, device=x.device)
        total = w.sum(dim=(1, 2))
        cx = (w * pix[None, None, :]).sum(dim=(1, 2)) / total
        cy = (w * pix[None, :, None]).sum(dim=(1, 2)) / total
        c = (torch.stack([cx, cy], dim=-1) - (n - 1) / 2) / n + self.dummy
        return c[:, None, :].expand(-1, self.num_points, 2)


def _meta(**changes) -> ModelMeta:
    """Metadata of a 300W model, input ``INPUT``, crop margin ``MARGIN`` (entries replaced by ``changes``)."""
    data = {"format": "kdlandmark-checkpoint", "role": "test", "layout": "300w", "input_size": INPUT,
            "architecture": {"backbone": "oracle", "num_points": 68},
            "crop": {"margin": MARGIN, "context_margin": CONTEXT}, **changes}
    return ModelMeta.from_json(data, "test")


def _all(originals: dict[str, np.ndarray], order: list[str]) -> np.ndarray:
    return np.concatenate([originals[s] for s in order])


# --------------------------------------------------------------------------------------------- tests
def test_exact_model_coordinates_map_back_to_the_original_landmarks(tmp_path: Path) -> None:
    root, originals = make_prepared(tmp_path / "prep")
    prepared = PreparedSet(root)
    for split, lms in originals.items():
        model = QueueModel(exact_model_coords(lms))
        pred = predict_prepared(model, prepared, split, input_size=INPUT, batch=4, margin=MARGIN)
        assert pred.shape == lms.shape
        np.testing.assert_allclose(pred, lms, atol=2e-3)   # float32 model coordinates, 300-pixel faces


def test_a_model_that_reads_the_pixels_lands_on_the_landmark(tmp_path: Path) -> None:
    # one bright spot at landmark 0 of each stored crop; the model returns the spot's centroid in its
    # own input: right only if the view is cut and mapped back with the right scale and centre
    root, originals = make_prepared(tmp_path / "prep", splits={"test-common": 5}, size=96, blob_sigma=2.5)
    prepared = PreparedSet(root)
    pred = predict_prepared(CentroidModel(68), prepared, "test-common", input_size=INPUT, batch=2)
    lms = originals["test-common"]
    side = np.array([np.ptp(lm, axis=0).max() * (1 + 2 * MARGIN) for lm in lms])   # view side, image px
    err_input_px = np.linalg.norm(pred[:, 0] - lms[:, 0], axis=-1) * INPUT / side
    assert np.all(err_input_px < 0.15), err_input_px
    # and the model's margin matters: coordinates meant for its own view, read as another view, miss
    wrong = predict_prepared(QueueModel(exact_model_coords(lms)), prepared, "test-common", input_size=INPUT,
                             margin=0.3)
    assert np.all(np.linalg.norm(wrong - lms, axis=-1).mean(axis=-1) * INPUT / side > 1.0)


def test_flip_averaging_keeps_a_pixel_reading_model_on_the_landmark_and_cancels_a_bias(tmp_path: Path
                                                                                       ) -> None:
    root, originals = make_prepared(tmp_path / "prep", splits={"test-common": 4}, size=96, blob_sigma=2.5)
    prepared = PreparedSet(root)
    lms = originals["test-common"]
    plain = predict_prepared(CentroidModel(68), prepared, "test-common", input_size=INPUT, batch=2)
    flipped = predict_prepared(CentroidModel(68), prepared, "test-common", input_size=INPUT, batch=2,
                               flip=True)
    side = np.array([np.ptp(lm, axis=0).max() * (1 + 2 * MARGIN) for lm in lms])
    assert np.all(np.linalg.norm(flipped[:, 0] - lms[:, 0], axis=-1) * INPUT / side < 0.15)
    np.testing.assert_allclose(flipped, plain, atol=0.02 * side.max())

    class Biased(CentroidModel):                   # the centroid, 0.05 of the input too far right
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) + torch.tensor([0.05, 0.0])

    biased = predict_prepared(Biased(68), prepared, "test-common", input_size=INPUT, batch=2)
    fixed = predict_prepared(Biased(68), prepared, "test-common", input_size=INPUT, batch=2, flip=True)
    assert np.all(np.linalg.norm(biased[:, 0] - lms[:, 0], axis=-1) * INPUT / side > 2.0)
    np.testing.assert_allclose(fixed, flipped, atol=1e-3 * side.max())


def test_evaluate_writes_metrics_and_predictions_with_zero_error_for_the_oracle(tmp_path: Path) -> None:
    root, originals = make_prepared(tmp_path / "prep")
    order = ["test-common", "test-challenging"]
    model = QueueModel(exact_model_coords(_all(originals, order)))
    res = evaluate_checkpoint("oracle/best", root, dataset="300w", out_dir=tmp_path / "eval", bootstrap=200,
                              latency_runs=2, model=model, meta=_meta(), device="cpu", batch=3, name="oracle")
    on_disk = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert on_disk["subsets"] == res["subsets"]
    assert list(res["subsets"]) == ["common", "challenging", "full"]       # no private split prepared
    assert [res["subsets"][k]["count"] for k in ("common", "challenging", "full")] == [6, 4, 10]
    for s in res["subsets"].values():
        assert s["nme"] < 1e-3 and s["fr"] == 0.0 and s["auc"] > 0.999
        lo, hi = s["nme_ci95"]
        assert lo <= s["nme"] <= hi
    assert len(res["per_landmark"]["full"]) == 68
    assert res["model"] == "oracle" and res["dataset"] == "300w" and res["normalisation"] == "inter-ocular"
    assert res["params"] == 1 and res["latency_ms_cpu"] > 0 and res["threshold"] == 0.10
    preds = load_predictions(tmp_path / "eval")
    assert preds.splits == order
    for sp in order:
        np.testing.assert_allclose(preds.gt[sp], originals[sp], atol=1e-3)
        np.testing.assert_allclose(preds.pred[sp], originals[sp], atol=2e-3)
        assert preds.image_paths[sp][0] == f"{sp}/img_000.jpg"
    ex = np.load(tmp_path / "eval" / "examples.npz")
    assert set(ex["category"]) == {"best", "median", "worst"} and ex["images"].shape[1:] == (64, 64, 3)


def test_a_known_offset_gives_the_hand_computed_nme_and_rescore_agrees(tmp_path: Path) -> None:
    root, originals = make_prepared(tmp_path / "prep", seed=3)
    order = ["test-common", "test-challenging"]
    lms = _all(originals, order)
    d = (0.012, -0.009)   # model units: side of the model view times this many pixels in the image
    model = QueueModel(exact_model_coords(lms), offset=d)
    res = evaluate_checkpoint("x", root, dataset="300w", out_dir=tmp_path / "eval", bootstrap=0,
                              latency_runs=0, model=model, meta=_meta(), device="cpu")
    lay = get_layout("300w")
    side = np.array([np.ptp(lm, axis=0).max() * (1 + 2 * MARGIN) for lm in lms])
    a, b = lay.inter_ocular
    expected = np.hypot(*d) * side / np.linalg.norm(lms[:, a] - lms[:, b], axis=-1)
    assert res["subsets"]["full"]["nme"] == pytest.approx(100 * expected.mean(), rel=1e-4)
    assert res["subsets"]["common"]["nme"] == pytest.approx(100 * expected[:6].mean(), rel=1e-4)
    assert res["subsets"]["full"]["nme_ci95"] is None
    # re-scoring the stored predictions reproduces the numbers; other settings change them as expected
    again = rescore(tmp_path / "eval", "inter-ocular", 0.10, bootstrap=0)
    assert again["subsets"] == res["subsets"]
    pupil = rescore(tmp_path / "eval", "inter-pupil", 0.10, bootstrap=0)
    centres = lay.eye_centres(lms)
    want = np.hypot(*d) * side / np.linalg.norm(centres[:, 0] - centres[:, 1], axis=-1)
    assert pupil["subsets"]["full"]["nme"] == pytest.approx(100 * want.mean(), rel=1e-4)
    thr = float(np.median(expected))
    strict = rescore(tmp_path / "eval", "inter-ocular", thr, bootstrap=0)
    assert strict["subsets"]["full"]["fr"] == pytest.approx(100 * np.mean(expected > thr))


def test_wflw_attribute_subsets_pool_the_flagged_faces(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    flags = ("pose", "expression", "illumination", "makeup", "occlusion", "blur")
    attrs = [{f: bool(rng.random() < 0.4) for f in flags} for _ in range(12)]
    attrs[0]["pose"] = True
    root, originals = make_prepared(tmp_path / "prep", dataset="wflw", layout="wflw", splits={"test": 12},
                                    attributes={"test": attrs})
    lms = originals["test"]
    noisy = exact_model_coords(lms) + rng.normal(0, 0.01, (12, 98, 2)).astype(np.float32)
    wflw = _meta(layout="wflw", architecture={"backbone": "oracle", "num_points": 98})
    res = evaluate_checkpoint("x", root, dataset="wflw", out_dir=tmp_path / "eval", bootstrap=0,
                              latency_runs=0, model=QueueModel(noisy), meta=wflw, device="cpu")
    preds = load_predictions(tmp_path / "eval")
    nme = nme_per_image(preds.pred["test"], preds.gt["test"], get_layout("wflw"))
    assert res["subsets"]["full"]["count"] == 12
    for f in flags:
        keep = np.array([a[f] for a in attrs])
        if keep.any():
            assert res["subsets"][f]["count"] == keep.sum()
            assert res["subsets"][f]["nme"] == pytest.approx(100 * nme[keep].mean())
        else:
            assert f not in res["subsets"]


def test_layout_mismatch_and_missing_splits_are_clear_errors(tmp_path: Path) -> None:
    root, originals = make_prepared(tmp_path / "prep", splits={"test-common": 3})
    model = QueueModel(np.zeros((3, 68, 2), np.float32))
    with pytest.raises(ValueError, match="predicts 29 points"):
        evaluate_checkpoint("x", root, dataset="300w", out_dir=tmp_path / "e", model=model, latency_runs=0,
                            meta=_meta(layout="cofw", architecture={"backbone": "b", "num_points": 29}))
    with pytest.raises(ValueError, match="not prepared"):
        evaluate_checkpoint("x", root, dataset="300w", out_dir=tmp_path / "e", model=model, latency_runs=0,
                            meta=_meta(), splits=["test-private"])


def test_real_checkpoint_and_command_line_rescore(tmp_path: Path, capsys) -> None:
    from kdlandmark.modelfile.checkpoint import save_model_checkpoint
    from kdlandmark.models import LandmarkRegressor

    root, _ = make_prepared(tmp_path / "prep", splits={"test-common": 3, "test-challenging": 2})
    torch.manual_seed(0)
    net = LandmarkRegressor("test_efficientnet", 68, dropout=0.0)
    ckpt = save_model_checkpoint(tmp_path / "run" / "best", net, layout="300w", input_size=32, role="kd",
                                 crop={"margin": MARGIN, "context_margin": CONTEXT, "stored_size": 64})
    assert main(["evaluate", "--model", str(ckpt), "--dataset", "300w", "--root", str(root),
                 "--bootstrap", "50", "--latency-runs", "2", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "challenging" in out and "NME %" in out
    metrics = json.loads((tmp_path / "run" / "eval-300w" / "metrics.json").read_text())
    assert metrics["params"] > 0 and metrics["flops"] > 0 and metrics["backbone"] == "test_efficientnet"
    assert metrics["input_size"] == 32
    assert main(["evaluate", "--rescore", str(tmp_path / "run" / "eval-300w"), "--normalisation", "box",
                 "--threshold", "0.08", "--out", str(tmp_path / "re")]) == 0
    re = json.loads((tmp_path / "re" / "metrics.json").read_text())
    assert re["normalisation"] == "box" and re["threshold"] == 0.08 and re["params"] == metrics["params"]


def test_nme_does_not_change_when_image_and_landmarks_are_scaled_together(tmp_path: Path) -> None:
    # the same faces in a 3.7x larger image, the same model outputs: every figure must be unchanged
    results = []
    for k, scale in enumerate((1.0, 3.7)):
        root, originals = make_prepared(tmp_path / f"p{k}", seed=11, scale=scale)
        lms = _all(originals, ["test-common", "test-challenging"])
        noise = np.random.default_rng(0).normal(0, 0.01, (10, 68, 2)).astype(np.float32)
        model = QueueModel(exact_model_coords(lms) + noise)
        results.append(evaluate_checkpoint("x", root, dataset="300w", out_dir=tmp_path / f"e{k}",
                                           bootstrap=100, latency_runs=0, model=model, meta=_meta(),
                                           device="cpu"))
    for name, s in results[0]["subsets"].items():
        t = results[1]["subsets"][name]
        assert t["nme"] == pytest.approx(s["nme"], rel=1e-4) and t["fr"] == s["fr"]
        assert t["auc"] == pytest.approx(s["auc"], abs=1e-5)
        np.testing.assert_allclose(t["nme_ci95"], s["nme_ci95"], rtol=1e-4)
    np.testing.assert_allclose(results[1]["per_landmark"]["full"], results[0]["per_landmark"]["full"],
                               rtol=1e-3)


def test_a_raw_dataset_root_is_prepared_first(tmp_path: Path) -> None:
    from kdlandmark.data.synth import synthesize

    synthesize("300w", 30, tmp_path / "raw", seed=2, size=96, test_fraction=0.5, workers=1)
    model = QueueModel(np.zeros((7, 68, 2), np.float32))
    res = evaluate_checkpoint("x", tmp_path / "raw", dataset="300w", out_dir=tmp_path / "e", bootstrap=0,
                              latency_runs=0, model=model, meta=_meta(crop={
                                  "margin": MARGIN, "context_margin": CONTEXT, "stored_size": 64}),
                              device="cpu", cache_dir=tmp_path / "cache")
    assert {"common", "challenging", "full"} <= set(res["subsets"]) and res["subsets"]["full"]["count"] == 15
    cache = PreparedSet(tmp_path / "cache")                       # kept where asked, with the model's crop
    assert cache.size == 64 and cache.margin == MARGIN and "train" not in cache.split_names
    preds = load_predictions(tmp_path / "e")
    assert Path(preds.image_paths["test-common"][0]).is_file()    # the original image files are recorded


def test_command_line_reports_bad_input_and_writes_beside_the_checkpoint(tmp_path: Path, capsys) -> None:
    from kdlandmark.evaluate.evaluator import default_eval_dir

    assert default_eval_dir("runs/x/kd/best", "wflw") == Path("runs/x/kd/eval-wflw")
    assert default_eval_dir("runs/x/kd/best/model.json", "300w") == Path("runs/x/kd/eval-300w")
    assert default_eval_dir("ckpts/student", "cofw") == Path("ckpts/student-eval-cofw")
    assert main(["evaluate", "--model", str(tmp_path / "missing"), "--dataset", "300w",
                 "--root", str(tmp_path)]) == 2
    assert "error:" in capsys.readouterr().err
    assert main(["evaluate", "--rescore", str(tmp_path)]) == 2
    assert "predictions.json" in capsys.readouterr().err
