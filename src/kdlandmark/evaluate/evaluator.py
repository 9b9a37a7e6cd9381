"""Evaluate a checkpoint by a benchmark's protocol and keep everything needed to score it again.

``evaluate_checkpoint`` runs the model on the prepared test crops (the at-rest view, no augmentation),
maps each prediction back to the original image through the crop affine, and scores it in image pixels
with :func:`kdlandmark.evaluate.protocols.score_protocol`.  It writes, into ``out_dir``::

    metrics.json       model, checkpoint, dataset, normalisation, threshold, per-subset NME/FR/AUC with a
                       95 % bootstrap interval of the NME, per-landmark error, parameters, FLOPs, CPU latency
    predictions.npz    per split: ``<split>.pred`` and ``<split>.gt`` (M, N, 2) float64 image pixels,
                       ``<split>.affine`` (M, 2, 3) image -> stored crop, ``<split>.occluded`` (M, N)
    predictions.json   dataset, layout, and per split the image paths and attribute records
    examples.npz       stored crops of the best, median and worst faces (for the report's picture grid)

:func:`rescore` reads the two ``predictions`` files alone, so a result can be re-scored with another
normalisation or failure threshold without the model or the images.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kdlandmark.atomic import write_json_atomic
from kdlandmark.data.crop import apply_affine, invert_affine
from kdlandmark.data.store import view_scale
from kdlandmark.evaluate.protocols import (
    SUBSETS,
    ProtocolScore,
    ground_truth_px,
    protocol_splits,
    score_protocol,
)
from kdlandmark.layouts import Layout, get_layout
from kdlandmark.modelfile.meta import ModelMeta
from kdlandmark.timing import time_calls

__all__ = [
    "PREDICTIONS_FORMAT",
    "Predictions",
    "open_prepared",
    "eval_view_scale",
    "predict_prepared",
    "measure_latency",
    "evaluate_checkpoint",
    "save_predictions",
    "load_split",
    "load_predictions",
    "rescore",
    "format_metrics_table",
    "default_eval_dir",
]

PREDICTIONS_FORMAT = "kdlandmark-predictions"
PREDICTIONS_VERSION = 1
METRICS_JSON = "metrics.json"
PREDICTIONS_NPZ = "predictions.npz"
PREDICTIONS_JSON = "predictions.json"
EXAMPLES_NPZ = "examples.npz"


# --------------------------------------------------------------------------------------------- prepared input
def _is_prepared(path: Path) -> bool:
    meta = path / "meta.json"
    if not meta.is_file():
        return False
    try:
        return "format_version" in json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False


def open_prepared(prepared_or_root: Any) -> Any:
    """A ``PreparedSet`` from itself (any object with its interface) or from a prepared-set folder."""
    if isinstance(prepared_or_root, str | os.PathLike):
        from kdlandmark.data.store import PreparedSet

        return PreparedSet(prepared_or_root)
    return prepared_or_root


def eval_view_scale(prepared: Any, margin: float | None = None) -> float:
    """Share of the stored crop the model sees at rest: ``(1 + 2 margin) / (1 + 2 context_margin)``.

    ``margin`` is the model's own margin (from its checkpoint); the prepared set's is used when None,
    so a model is always shown the face framed as it was during training.
    """
    m = float(prepared.margin if margin is None else margin)
    c = float(prepared.context_margin)
    if not 0.0 <= m <= c:
        raise ValueError(f"model margin {m} must lie in [0, context margin {c}] of the prepared set")
    return view_scale(m, c)


def predict_prepared(model: Any, prepared: Any, split: str, *, input_size: int, batch: int = 64,
                     device: str = "cpu", margin: float | None = None, progress: bool = True,
                     heads: dict | None = None, flip: bool = False) -> np.ndarray:
    """``(M, N, 2)`` float64 predictions in original image pixels for every face of ``split``.

    Each stored crop is cut to the model's at-rest view (``BatchAugmenter`` in eval mode, no
    randomness), the model's coordinates are mapped to stored-crop pixels (``model_to_stored``) and from
    there to the image through the inverse of the face's stored affine.

    Args:
        model: maps ``(B, 3, H, W)`` float RGB in [0, 1] to ``(B, N, 2)`` model coordinates.
        prepared: a ``PreparedSet`` (or an object with its interface).
        split: prepared split name.
        input_size: model input side.
        batch: faces per forward pass.
        device: where the model runs (the model is not moved; pass one already on ``device``).
        margin: the model's crop margin (default: the prepared set's).
        progress: show a tqdm bar (hidden when not on a terminal).
        heads: a dict to receive a model's confidence outputs (a model with ``heads``): ``"visibility"``
            (probabilities) and ``"error"`` (original image pixels), each ``(M, N)``.
        flip: flip averaging, as ``Landmarker(flip=True)``: each crop also runs mirrored (in the same
            forward pass) and the two answers are averaged (:meth:`Layout.average_with_mirror`).
    """
    import torch
    from tqdm.auto import tqdm

    from kdlandmark.data.augment import BatchAugmenter

    layout: Layout = prepared.layout
    sp = prepared.split(split)
    aug = BatchAugmenter(layout, int(prepared.size), int(input_size), eval_view_scale(prepared, margin))
    m = len(sp)
    stored = np.empty((m, layout.num_points, 2), np.float64)
    dev = torch.device(device)
    names = tuple(getattr(model, "heads", ())) if heads is not None else ()
    extra = {name: np.empty((m, layout.num_points), np.float64) for name in names}
    was_training = bool(getattr(model, "training", False))
    if hasattr(model, "eval"):
        model.eval()
    try:
        with torch.inference_mode():
            for start in tqdm(range(0, m, batch), desc=f"predict {split}", unit="batch", leave=False,
                              disable=None if progress else True):
                imgs = torch.from_numpy(np.array(sp.images[start:start + batch])).to(dev)  # copy: memmap
                x, _ = aug(imgs, [], train=False)
                if flip:
                    x = torch.cat([x, x.flip(-1)])
                out = model(x, heads=True) if names else model(x)
                if names:
                    out = _keep_heads(out, extra, start, layout if flip else None)
                elif flip:
                    out = layout.average_with_mirror(out)[0]
                if tuple(out.shape[1:]) != (layout.num_points, 2):
                    raise ValueError(f"model returned {tuple(out.shape)}; the {layout.name} layout needs "
                                     f"(B, {layout.num_points}, 2)")
                coords = out.detach().to("cpu", torch.float64)
                stored[start:start + len(imgs)] = aug.model_to_stored(coords).numpy()
    finally:
        if was_training and hasattr(model, "train"):
            model.train()
    affines = np.asarray(sp.affines, dtype=np.float64)
    if names:
        # model units -> stored-crop pixels (x view_scale * S) -> image pixels (/ the affine's scale)
        scale = aug.view_scale * aug.stored_size / np.sqrt(np.abs(np.linalg.det(affines[:, :, :2])))
        if "error" in extra:
            extra["error"] *= scale[:, None]
        heads.update(extra)
    return apply_affine(invert_affine(affines), stored)


def _keep_heads(out: tuple, extra: dict[str, np.ndarray], start: int, flip: Layout | None = None) -> Any:
    """Store a batch's head outputs (probabilities, errors in model units) in ``extra``; the coordinates.
    ``flip``: the batch is crops then their mirrors; average them in this layout."""
    import torch

    from kdlandmark.models import head_outputs

    coords, vis_logit, log_b = out
    values = list(head_outputs(vis_logit, log_b))
    if flip is not None:
        present = [v for v in values if v is not None]
        coords, *averaged = flip.average_with_mirror(coords, *present)
        values = [None if v is None else averaged.pop(0) for v in values]
    for name, value in zip(("visibility", "error"), values, strict=True):
        if value is not None:
            extra[name][start:start + len(value)] = value.detach().to("cpu", torch.float64).numpy()
    return coords


def measure_latency(model: Any, input_size: int, *, runs: int = 20, warmup: int = 3) -> dict:
    """Median CPU forward time at batch 1 (milliseconds) of a copy-free CPU run of ``model``.

    The model must be on the CPU.  ``runs`` timed forwards after ``warmup`` untimed ones
    (:func:`kdlandmark.timing.time_calls`); the median resists the odd slow run.  The thread count is
    recorded: latency depends on it.
    """
    import torch

    x = torch.rand(1, int(getattr(model, "in_chans", 3)), int(input_size), int(input_size))
    model.eval()
    with torch.inference_mode():
        t = time_calls(lambda: model(x), runs=max(1, runs), warmup=warmup)
    return {"ms_median": t.median_ms, "ms_min": t.min_ms, "runs": t.calls,
            "threads": torch.get_num_threads(), "input_size": int(input_size),
            "cpu": platform.processor() or platform.machine()}


# --------------------------------------------------------------------------------------------- stored results
@dataclass
class Predictions:
    """What ``predictions.npz`` + ``predictions.json`` hold: everything :func:`rescore` needs."""

    dataset: str
    layout: Layout
    pred: dict[str, np.ndarray]
    gt: dict[str, np.ndarray]
    affines: dict[str, np.ndarray]
    occluded: dict[str, np.ndarray]
    image_paths: dict[str, list[str]]
    attributes: dict[str, list[dict]]
    info: dict
    visibility: dict[str, np.ndarray] = field(default_factory=dict)
    error: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def splits(self) -> list[str]:
        return list(self.pred)


def save_predictions(out_dir: str | Path, preds: Predictions) -> tuple[Path, Path]:
    """Write ``predictions.npz`` and ``predictions.json`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    for sp in preds.splits:
        arrays[f"{sp}.pred"] = np.asarray(preds.pred[sp], np.float64)
        arrays[f"{sp}.gt"] = np.asarray(preds.gt[sp], np.float64)
        arrays[f"{sp}.affine"] = np.asarray(preds.affines[sp], np.float64)
        arrays[f"{sp}.occluded"] = np.asarray(preds.occluded[sp], bool)
        for name, table in (("visibility", preds.visibility), ("error", preds.error)):
            if sp in table:
                arrays[f"{sp}.{name}"] = np.asarray(table[sp], np.float64)
    npz = out / PREDICTIONS_NPZ
    tmp = out / f".{PREDICTIONS_NPZ}.tmp.npz"
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, npz)
    meta = {
        "format": PREDICTIONS_FORMAT,
        "version": PREDICTIONS_VERSION,
        "dataset": preds.dataset,
        "layout": preds.layout.name,
        "num_points": preds.layout.num_points,
        "coordinates": "original image pixels, 0-based, pixel centres at integers; "
                       "affine: image -> stored crop",
        "splits": {sp: {"count": int(len(preds.pred[sp])), "image_paths": list(preds.image_paths[sp]),
                        "attributes": list(preds.attributes[sp])} for sp in preds.splits},
        **preds.info,
    }
    js = out / PREDICTIONS_JSON
    write_json_atomic(js, meta)
    return npz, js


def load_predictions(predictions_dir: str | Path) -> Predictions:
    """Read what :func:`save_predictions` wrote; ``ValueError`` naming the file if it is incomplete."""
    d = Path(predictions_dir)
    if d.is_file():
        d = d.parent
    js, npz = d / PREDICTIONS_JSON, d / PREDICTIONS_NPZ
    for f in (js, npz):
        if not f.is_file():
            raise ValueError(f"{f}: not found (evaluate writes it; re-run kdlandmark evaluate)")
    try:
        meta = json.loads(js.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{js}: unreadable ({exc})") from exc
    if meta.get("format") != PREDICTIONS_FORMAT:
        raise ValueError(f"{js}: not a kdlandmark predictions file (format {meta.get('format')!r})")
    layout = get_layout(meta["layout"])
    pred, gt, aff, occ, paths, attrs, vis, err = {}, {}, {}, {}, {}, {}, {}, {}
    with np.load(npz, allow_pickle=False) as z:
        for sp, info in meta["splits"].items():
            try:
                pred[sp], gt[sp] = z[f"{sp}.pred"], z[f"{sp}.gt"]
                aff[sp], occ[sp] = z[f"{sp}.affine"], z[f"{sp}.occluded"]
            except KeyError as exc:
                raise ValueError(f"{npz}: missing array {exc} for split {sp!r}") from None
            for name, table in (("visibility", vis), ("error", err)):
                if f"{sp}.{name}" in z.files:
                    table[sp] = z[f"{sp}.{name}"].astype(np.float64)
            if len(pred[sp]) != info["count"] or pred[sp].shape != gt[sp].shape:
                raise ValueError(f"{npz}: split {sp!r} has {len(pred[sp])} predictions, {js.name} says "
                                 f"{info['count']}")
            paths[sp] = list(info.get("image_paths", []))
            attrs[sp] = list(info.get("attributes", []))
    info = {k: v for k, v in meta.items() if k not in ("format", "version", "dataset", "layout", "num_points",
                                                       "coordinates", "splits")}
    return Predictions(meta["dataset"], layout, pred, gt, aff, occ, paths, attrs, info, vis, err)


def load_split(predictions_dir: str | Path, split: str = "all") -> tuple[Layout, np.ndarray, np.ndarray]:
    """The layout, predictions and labels (float64 image pixels) of one split of an evaluation folder;
    ``ValueError`` naming the folder when the split is missing (or, from :func:`load_predictions`, the
    file that is missing or incomplete)."""
    preds = load_predictions(predictions_dir)
    if split not in preds.pred:
        raise ValueError(f"{predictions_dir}: no split {split!r} (splits: {preds.splits})")
    return preds.layout, preds.pred[split].astype(np.float64), preds.gt[split].astype(np.float64)


def _score(preds: Predictions, normalisation: str | None, threshold: float, bootstrap: int,
           seed: int = 0) -> ProtocolScore:
    return score_protocol(preds.dataset, preds.layout, preds.pred, preds.gt, preds.attributes,
                          normalisation=normalisation, threshold=threshold, bootstrap=bootstrap, seed=seed)


def rescore(predictions_dir: str | Path, normalisation: str | None = None, threshold: float = 0.10, *,
            bootstrap: int = 1000, out: str | Path | None = None) -> dict:
    """Score stored predictions again (other normalisation or threshold) without the model.

    Returns a dict with the schema of ``metrics.json``; model facts (name, checkpoint, parameters,
    FLOPs, latency) are copied from the folder's ``metrics.json`` when it exists.  ``out`` also writes it.
    """
    d = Path(predictions_dir)
    d = d.parent if d.is_file() else d
    preds = load_predictions(d)
    score = _score(preds, normalisation, threshold, bootstrap)
    old: dict = {}
    if (d / METRICS_JSON).is_file():
        old = json.loads((d / METRICS_JSON).read_text(encoding="utf-8"))
    keep = ("params", "flops", "flops_convention", "latency_ms_cpu", "latency", "backbone", "input_size",
            "role")
    result = _metrics_dict(score, preds, model=old.get("model", preds.info.get("model", d.name)),
                           checkpoint=old.get("checkpoint", preds.info.get("checkpoint")),
                           bootstrap=bootstrap, extra={k: old[k] for k in keep if k in old})
    result["rescored_from"] = str(d)
    if out is not None:
        write_json_atomic(Path(out), result)
    return result


def _metrics_dict(score: ProtocolScore, preds: Predictions, *, model: str, checkpoint: str | None,
                  bootstrap: int, extra: dict | None = None) -> dict:
    d = score.to_json()
    result = {
        "model": model,
        "checkpoint": checkpoint,
        "dataset": score.dataset,
        "layout": preds.layout.name,
        "normalisation": score.normalisation,
        "threshold": score.threshold,
        "auc_limit": score.threshold,
        "bootstrap": {"resamples": int(bootstrap), "confidence": 0.95, "seed": 0},
        "splits": {sp: int(len(v)) for sp, v in preds.pred.items()},
        "subsets": d["subsets"],
        "per_landmark": d["per_landmark"],
        **({"confidence": conf} if (conf := confidence_metrics(score, preds)) else {}),
        "params": None,
        "flops": None,
        "latency_ms_cpu": None,
        "units": {"nme": "% of the normalising distance", "fr": "% of images with NME > threshold",
                  "auc": "area under the CED on [0, threshold] / threshold (fraction)",
                  "per_landmark": "% of the normalising distance"},
    }
    result.update(extra or {})
    return result


def confidence_metrics(score: ProtocolScore, preds: Predictions) -> dict:
    """Per subset (:mod:`kdlandmark.evaluate.confidence`): ``occlusion`` (where the data flag occluded
    points: NME of visible and occluded points, and, with a visibility head, the classification) and
    ``error_estimate`` (with an error head: Spearman correlations, calibration).  Empty when neither."""
    from kdlandmark.evaluate.confidence import error_ranking, occlusion_scores, visible_occluded_nme

    flagged = any(np.asarray(v, bool).any() for v in preds.occluded.values())
    if not flagged and not preds.error:
        return {}
    out: dict[str, dict] = {}
    for name, sub in score.subsets.items():
        parts = sub.members
        pred = np.concatenate([preds.pred[sp][idx] for sp, idx in parts])
        gt = np.concatenate([preds.gt[sp][idx] for sp, idx in parts])
        norm = preds.layout.normaliser(gt, score.normalisation)
        entry: dict[str, dict] = {}
        if flagged:
            occ = np.concatenate([np.asarray(preds.occluded[sp], bool)[idx] for sp, idx in parts])
            entry["occlusion"] = visible_occluded_nme(pred, gt, occ, norm)
            if all(sp in preds.visibility for sp, _ in parts):
                vis = np.concatenate([preds.visibility[sp][idx] for sp, idx in parts])
                entry["occlusion"].update(occlusion_scores(occ, vis))
        if all(sp in preds.error for sp, _ in parts):
            err = np.concatenate([preds.error[sp][idx] for sp, idx in parts])
            entry["error_estimate"] = error_ranking(err, pred, gt, norm)
        out[name] = entry
    return out


# --------------------------------------------------------------------------------------------- evaluation
def _pick_examples(score: ProtocolScore, k: int) -> list[tuple[str, str, int, float]]:
    """``(category, split, index, nme)`` of the ``k`` best, median and worst faces over all splits."""
    flat = [(sp, i, float(v)) for sp, arr in score.per_image.items() for i, v in enumerate(arr)]
    if not flat:
        return []
    flat.sort(key=lambda t: t[2])
    n = len(flat)
    k = max(1, min(k, n))
    mid = max(0, n // 2 - k // 2)
    picks = [("best", flat[:k]), ("median", flat[mid:mid + k]), ("worst", flat[n - k:][::-1])]
    return [(cat, sp, i, v) for cat, rows in picks for sp, i, v in rows]


def _save_examples(out_dir: Path, prepared: Any, score: ProtocolScore, k: int, view_scale: float) -> None:
    picks = _pick_examples(score, k)
    if not picks:
        return
    images = np.stack([np.asarray(prepared.split(sp).images[i]) for _, sp, i, _ in picks])
    affines = np.stack([np.asarray(prepared.split(sp).affines[i], np.float64) for _, sp, i, _ in picks])
    np.savez_compressed(out_dir / EXAMPLES_NPZ, images=images, affines=affines,
                        category=np.array([c for c, _, _, _ in picks]),
                        split=np.array([s for _, s, _, _ in picks]),
                        index=np.array([i for _, _, i, _ in picks], np.int64),
                        nme=np.array([v for _, _, _, v in picks]), view_scale=np.float64(view_scale))


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _prepare_from_root(dataset: str, root: Path, cache: Path, meta: ModelMeta, splits: Sequence[str] | None
                       ) -> Any:
    """Prepare the protocol's test splits of a raw dataset root into ``cache`` (the checkpoint's margins)."""
    from kdlandmark.data.formats import base_splits
    from kdlandmark.data.prepare import prepare_dataset

    present = base_splits(dataset, root)
    wanted = list(splits) if splits else [s for s in protocol_splits(dataset) if s in present]
    missing = [s for s in wanted if s not in present]
    if missing or not wanted:
        raise ValueError(f"{root}: {dataset} test split(s) {missing or list(protocol_splits(dataset))} "
                         f"not found (present: {', '.join(present) or 'none'})")
    kwargs: dict[str, Any] = {}
    if meta.crop.margin is not None:
        kwargs["margin"] = meta.crop.margin
    if meta.crop.context_margin is not None:
        kwargs["context_margin"] = meta.crop.context_margin
    return prepare_dataset(dataset, root, cache, size=meta.crop.stored_size or 256, splits=wanted, **kwargs)


@contextmanager
def _opened(prepared_or_root: Any, dataset: str | None, meta: ModelMeta, splits: Sequence[str] | None,
            cache_dir: str | Path | None) -> Iterator[Any]:
    """The prepared set to evaluate on; a raw dataset root is prepared first (into a temporary folder
    removed afterwards, unless ``cache_dir`` keeps it)."""
    if not (isinstance(prepared_or_root, str | os.PathLike) and not _is_prepared(Path(prepared_or_root))):
        yield open_prepared(prepared_or_root)
        return
    if dataset is None:
        raise ValueError(f"{prepared_or_root}: a raw dataset root needs dataset=")
    if cache_dir is not None:
        yield _prepare_from_root(dataset, Path(prepared_or_root), Path(cache_dir), meta, splits)
        return
    with tempfile.TemporaryDirectory(prefix="kdlandmark-eval-") as tmp:
        yield _prepare_from_root(dataset, Path(prepared_or_root), Path(tmp), meta, splits)


def _splits_to_score(prepared: Any, dataset: str, splits: Sequence[str] | None, meta: ModelMeta,
                     ckpt: str | Path) -> list[str]:
    """The prepared splits the protocol scores (or those asked for); the layouts must agree."""
    layout: Layout = prepared.layout
    if meta.num_points != layout.num_points:
        raise ValueError(f"{ckpt}: the model predicts {meta.num_points} points, the prepared set's "
                         f"{layout.name} layout has {layout.num_points}")
    available = list(prepared.split_names)
    wanted = list(splits) if splits else [s for s in protocol_splits(dataset) if s in available]
    unknown = [s for s in wanted if s not in available]
    if unknown or not wanted:
        raise ValueError(f"{getattr(prepared, 'root', prepared)}: split(s) {unknown or wanted} not "
                         f"prepared (splits: {', '.join(available)}); the {dataset} protocol "
                         f"reads {', '.join(protocol_splits(dataset))}")
    return wanted


def _predict_all(model: Any, prepared: Any, dataset: str, wanted: Sequence[str], meta: ModelMeta, *,
                 batch: int, device: str, info: dict, flip: bool = False) -> Predictions:
    """Predictions and ground truth in image pixels of every face of the ``wanted`` splits."""
    preds: dict[str, np.ndarray] = {}
    gts: dict[str, np.ndarray] = {}
    vis: dict[str, np.ndarray] = {}
    err: dict[str, np.ndarray] = {}
    for sp in wanted:
        heads: dict = {}
        preds[sp] = predict_prepared(model, prepared, sp, input_size=meta.input_size, batch=batch,
                                     device=device, margin=meta.crop.margin,
                                     heads=heads if meta.heads else None, flip=flip)
        if "visibility" in heads:
            vis[sp] = heads["visibility"]
        if "error" in heads:
            err[sp] = heads["error"]
        s = prepared.split(sp)
        gts[sp] = ground_truth_px(np.asarray(s.landmarks, np.float64), np.asarray(s.affines, np.float64))
    return Predictions(
        dataset, prepared.layout, preds, gts,
        {sp: np.asarray(prepared.split(sp).affines, np.float64) for sp in wanted},
        {sp: np.asarray(prepared.split(sp).occluded, bool) for sp in wanted},
        {sp: list(prepared.split(sp).image_paths) for sp in wanted},
        {sp: list(prepared.split(sp).attributes) for sp in wanted},
        info, vis, err)


def _model_facts(model: Any, meta: ModelMeta, latency_runs: int) -> dict:
    """Parameters, FLOPs (None when the counter cannot trace the model) and CPU latency at batch 1."""
    from kdlandmark.models import count_flops, count_parameters

    model.to("cpu")
    try:
        flops: int | None = count_flops(model, meta.input_size)
    except Exception:  # noqa: BLE001 -- a model the flop counter cannot trace still gets evaluated
        flops = None
    latency = measure_latency(model, meta.input_size, runs=latency_runs) if latency_runs > 0 else None
    return {"params": int(count_parameters(model)), "flops": flops,
            "flops_convention": "2 x multiply-accumulates, batch 1",
            "latency_ms_cpu": latency["ms_median"] if latency else None, "latency": latency}


def evaluate_checkpoint(ckpt: str | Path, prepared_or_root: Any, *, dataset: str | None, out_dir: str | Path,
                        normalisation: str | None = "inter-ocular", threshold: float = 0.10,
                        splits: Sequence[str] | None = None, bootstrap: int = 1000, name: str | None = None,
                        batch: int = 64, device: str | None = None, latency_runs: int = 20,
                        examples: int = 4, cache_dir: str | Path | None = None, model: Any = None,
                        meta: ModelMeta | None = None, flip: bool = False) -> dict:
    """Evaluate a checkpoint on a benchmark's test subsets; writes and returns ``metrics.json``.

    Args:
        ckpt: checkpoint folder (``best/``) or its ``model.json``.
        prepared_or_root: a ``PreparedSet``, a prepared-set folder, or a raw dataset root (its test
            splits are then prepared into ``cache_dir``, or a temporary folder removed afterwards).
        dataset: ``300w``, ``wflw``, ``cofw`` or ``folder`` (None: the prepared set's ``dataset``).
        out_dir: where ``metrics.json``, ``predictions.npz/.json`` and ``examples.npz`` go.
        normalisation: ``inter-ocular`` (None: the benchmark's default), ``inter-pupil`` or ``box``.
        threshold: failure threshold and AUC limit (0.10; 0.08 for some WFLW tables).
        splits: prepared splits to evaluate (default: every split the protocol reads that is present).
        bootstrap: resamples of the 95 % NME interval (0: none).
        name: model label in tables (default: the checkpoint's role and backbone).
        batch, device: inference batch and device (default: CUDA when available).
        latency_runs: timed CPU forwards at batch 1 (0: skip the latency measurement).
        examples: faces kept per category (best / median / worst) for the report's picture grid.
        model, meta: an already loaded model and its :class:`ModelMeta` (``ckpt`` is then only recorded).
        flip: flip averaging (each face also runs mirrored; see :func:`predict_prepared`).
    """
    import torch

    if model is None:
        from kdlandmark.modelfile.checkpoint import load_checkpoint

        model, meta = load_checkpoint(ckpt, device="cpu")
    if meta is None:
        raise ValueError("an already loaded model needs its metadata (meta=ModelMeta)")
    out = Path(out_dir)
    with _opened(prepared_or_root, dataset, meta, splits, cache_dir) as prepared:
        dataset = (dataset or getattr(prepared, "dataset", "") or "").lower()
        if dataset not in SUBSETS:
            raise ValueError(f"no evaluation protocol for dataset {dataset!r}; known: {', '.join(SUBSETS)}")
        wanted = _splits_to_score(prepared, dataset, splits, meta, ckpt)
        view = eval_view_scale(prepared, meta.crop.margin)
        dev = device or _default_device()
        model.to(dev)
        stored = _predict_all(model, prepared, dataset, wanted, meta, batch=batch, device=dev, flip=flip,
                              info={"model": name, "checkpoint": str(ckpt),
                                    "prepared": str(getattr(prepared, "root", "")),
                                    "input_size": meta.input_size, "view_scale": view, "flip": flip})
        score = _score(stored, normalisation, threshold, bootstrap)
        label = name or _default_name(meta, ckpt)
        stored.info["model"] = label
        out.mkdir(parents=True, exist_ok=True)
        save_predictions(out, stored)
        if examples > 0:
            _save_examples(out, prepared, score, examples, view)
    result = _metrics_dict(score, stored, model=label, checkpoint=str(ckpt), bootstrap=bootstrap, extra={
        "role": meta.role, "backbone": meta.backbone, "input_size": meta.input_size,
        **_model_facts(model, meta, latency_runs),
        "device": str(dev), "torch": torch.__version__,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    })
    write_json_atomic(out / METRICS_JSON, result)
    return result


def _default_name(meta: ModelMeta, ckpt: str | Path) -> str:
    if meta.role or meta.backbone:
        return " ".join(str(v) for v in (meta.role, meta.backbone) if v)
    p = Path(ckpt)
    return p.parent.name if p.name in ("best", "last") else p.name


# --------------------------------------------------------------------------------------------- printing
def format_metrics_table(metrics: dict) -> str:
    """Plain-text table of one ``metrics.json``: one row per subset."""
    thr = float(metrics.get("threshold", 0.10))
    head = (f"{'subset':<14}{'images':>7}  {'NME %':>7}  {'95% CI':>15}  {f'FR@{thr:g} %':>10}  "
            f"{f'AUC@{thr:g}':>9}")
    lines = [f"{metrics.get('model')} on {metrics.get('dataset')} ({metrics.get('normalisation')} NME)", head,
             "-" * len(head)]
    for name, s in metrics["subsets"].items():
        ci = s.get("nme_ci95")
        ci_s = f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "-"
        lines.append(f"{name:<14}{s['count']:>7}  {s['nme']:>7.3f}  {ci_s:>15}  {s['fr']:>10.2f}  "
                     f"{s['auc']:>9.4f}")
    for name, entry in (metrics.get("confidence") or {}).items():
        occ, est = entry.get("occlusion"), entry.get("error_estimate")
        if occ is not None:
            line = f"{name}: NME of visible points {_pct(occ['nme_visible'])}, of occluded points " \
                   f"{_pct(occ['nme_occluded'])} ({occ['occluded_points']} of " \
                   f"{occ['occluded_points'] + occ['visible_points']} points occluded)"
            if occ.get("auc") is not None:
                line += (f"; occlusion AUC {occ['auc']:.3f}, recall at 80 % precision "
                         f"{100 * occ['recall_at_80_precision']:.1f} %, precision at 50 % recall "
                         f"{100 * occ['precision_at_50_recall']:.1f} %")
            lines.append(line)
        if est is not None:
            rho = {k: "-" if est[k] is None else f"{est[k]:.3f}"
                   for k in ("spearman_points", "spearman_faces", "spearman_within_face")}
            lines.append(f"{name}: predicted vs true point error, Spearman {rho['spearman_points']} over "
                         f"points, {rho['spearman_faces']} over faces, {rho['spearman_within_face']} "
                         f"within faces; mean predicted / true error {est['calibration']:.2f}")
    facts = []
    if metrics.get("params") is not None:
        facts.append(f"{metrics['params'] / 1e6:.2f} M parameters")
    if metrics.get("flops") is not None:
        facts.append(f"{metrics['flops'] / 1e9:.2f} GFLOPs")
    if metrics.get("latency_ms_cpu") is not None:
        lat = metrics.get("latency") or {}
        facts.append(f"{metrics['latency_ms_cpu']:.1f} ms CPU latency (batch 1, "
                     f"{lat.get('threads', '?')} threads)")
    if facts:
        lines.append(", ".join(facts))
    return "\n".join(lines)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f} %"


# --------------------------------------------------------------------------------------------- output folder
def default_eval_dir(ckpt: str | Path, dataset: str | None) -> Path:
    """``<run>/eval-<dataset>`` for a checkpoint ``<run>/best`` (or its ``model.json``), never inside it.

    A checkpoint folder is replaced as a whole when training saves again, so results must live beside it.
    """
    c = Path(ckpt)
    folder = c.parent if c.suffix in (".json", ".safetensors") else c
    tag = dataset or "prepared"
    if folder.name in ("best", "last"):
        return folder.parent / f"eval-{tag}"
    return folder.parent / f"{folder.name}-eval-{tag}"
