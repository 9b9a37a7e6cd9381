"""Ship a finished recipe's KD-Loss student inside the package, with the figures of its model card.

    kdlandmark pipeline --config pretrained-68          # trains everything into runs/pretrained-68
    python scripts/ship_pretrained.py runs/pretrained-68 [--model runs/pretrained-68-fresh1/best]

(``scripts/remake_pretrained.sh`` runs the whole recipe of the shipped model, the fresh-data fine-tune
included.)  Exports the KD student (``kd/best``, or the ``--model`` checkpoint: a ``kdlandmark train``
fine-tune of it, whose config and per-epoch metrics then go into the card) to ONNX (dynamic batch,
parity-checked against PyTorch), copies ``model.json``, ``model.safetensors``, ``model.onnx`` and
``model.onnx.json`` to ``src/kdlandmark/pretrained/kdlandmark-68/`` (what
:meth:`kdlandmark.Landmarker.from_pretrained` loads) and writes ``card.json`` beside them: the recipe,
the synthetic test figures and the figures on every extra evaluation folder (real faces) of every
model, with the KD-vs-L2 comparison, and the stage times.  docs/MODEL_CARD.md quotes these numbers;
tests/test_realfaces.py holds the shipped model to them.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

_SRC = Path(__file__).resolve().parents[1] / "src"
if _SRC.is_dir():
    sys.path.insert(0, str(_SRC))

from kdlandmark.infer.export import export_onnx  # noqa: E402
from kdlandmark.infer.landmarker import PRETRAINED  # noqa: E402

FILES = ("model.json", "model.safetensors", "model.onnx", "model.onnx.json")


def card(run: Path) -> dict:
    """The figures of ``run`` (a finished pipeline folder) that the model card quotes."""
    results = json.loads((run / "results.json").read_text())
    times = json.loads((run / "stage_times.json").read_text()) if (run / "stage_times.json").is_file() else {}
    config = (run / "config.yaml").read_text()
    import os

    import torch

    machine = {"platform": platform.platform(), "python": platform.python_version(),
               "processor": platform.processor(), "cpus": os.cpu_count(), "torch": torch.__version__,
               "cuda": torch.cuda.is_available()}
    return {"recipe": results["name"], "run": str(run), "results": results, "stage_seconds": times,
            "config_yaml": config, "machine": machine}


def real_face_figures(dest: Path, faces: Path, photos: Path) -> dict:
    """The shipped files measured as tests/test_realfaces.py measures them: NME and failure rate on the
    development faces from their true boxes (PyTorch checkpoint, ``evaluate --dataset folder``), and
    the whole photographs end to end with the default detector (ONNX Runtime, one thread); once in
    one pass (``flip=False``) and once with flip averaging (``"flip"``: ``Landmarker(flip=True)``,
    the shipped model's default since 2026-12-01)."""
    import tempfile

    from kdlandmark.evaluate.evaluator import evaluate_checkpoint
    from kdlandmark.evaluate.photos import photo_benchmark
    from kdlandmark.infer.landmarker import Landmarker

    figures: dict = {"faces": str(faces), "photos": str(photos)}
    for flip in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            m = evaluate_checkpoint(dest, faces, dataset="folder", out_dir=tmp, latency_runs=0, examples=0,
                                    flip=flip)
        given = {k: m["subsets"]["all"][k] for k in ("nme", "fr", "auc", "count", "nme_ci95")}
        lmk = Landmarker.from_checkpoint(dest / "model.onnx", backend="onnx", threads=1, flip=flip)
        e2e = photo_benchmark(lmk, photos)
        e2e.pop("per_face")
        part = {"given_boxes_percent": given, "end_to_end": e2e}
        if flip:
            figures["flip"] = part
        else:
            figures.update(part)
    return figures


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def finetune_record(model: Path) -> dict:
    """What the card keeps of a ``kdlandmark train`` fine-tune whose best checkpoint is ``model``: its
    config, its last epoch's metrics and the best validation NME (``metrics.csv``)."""
    import csv

    folder = model.parent
    for need in ("config.yaml", "metrics.csv"):
        if not (folder / need).is_file():
            raise SystemExit(f"error: {folder / need}: missing (--model must be the best/ of a kdlandmark "
                             "train output folder)")
    rows = list(csv.DictReader((folder / "metrics.csv").open(encoding="utf-8")))
    if not rows:
        raise SystemExit(f"error: {folder / 'metrics.csv'}: no epoch recorded")
    start = _read_json(model / "model.json")["train_config"]["model"]["pretrained"]
    start_meta = Path(str(start)) / "model.json"         # the weights it started from, by their hash
    started_from = {"path": start,
                    "sha256": _read_json(start_meta)["weights"]["sha256"] if start_meta.is_file() else None}
    return {"run": str(folder), "started_from": started_from,
            "config_yaml": (folder / "config.yaml").read_text(encoding="utf-8"),
            "epochs": len(rows), "best_val_nme_percent": 100 * min(float(r["val_nme"]) for r in rows),
            "epoch_seconds_total": sum(float(r["epoch_seconds"]) for r in rows), "last_epoch": rows[-1]}


def ship(run: Path, name: str = "68", role: str = "kd", realfaces: Path | None = None,
         model: Path | None = None, dest: Path | None = None) -> Path:
    best = model if model is not None else run / role / "best"
    if not (best / "model.json").is_file():
        raise SystemExit(f"error: {best}: no finished {role} model (run the pipeline first)")
    tuned = finetune_record(model) if model is not None else None     # before the copy: it may start
    export_onnx(best, dynamic_batch=True)                             # from the files it replaces
    dest = dest if dest is not None else _SRC / "kdlandmark" / "pretrained" / PRETRAINED[name]
    dest.mkdir(parents=True, exist_ok=True)
    for f in FILES:
        shutil.copy2(best / f, dest / f)
    figures = card(run)
    figures["shipped_role"] = role
    if tuned is not None:
        figures["finetune"] = tuned
    if realfaces is not None:
        figures["real_faces"] = real_face_figures(dest, realfaces / "faces", realfaces)
    (dest / "card.json").write_text(json.dumps(figures, indent=1) + "\n", encoding="utf-8")
    return dest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="finished pipeline folder (e.g. runs/pretrained-68)")
    parser.add_argument("--name", default="68", choices=sorted(PRETRAINED), help="which shipped model")
    parser.add_argument("--role", default="kd", choices=["kd", "l2"], help="which student to ship")
    parser.add_argument("--model", type=Path, default=None,
                        help="ship this checkpoint folder instead of RUN/ROLE/best: the best/ of a "
                             "kdlandmark train fine-tune of that student (recorded in the card)")
    parser.add_argument("--dest", type=Path, default=None,
                        help="write the files and card here instead of into the package (a trial run)")
    parser.add_argument("--realfaces", type=Path, default=Path("../shared/realfaces"),
                        help="the real development faces (measured into card.json; skipped if absent)")
    parser.add_argument("--figures-only", action="store_true",
                        help="measure the shipped files on the real faces again into their card.json "
                             "(no export, no copy: the model files stay as they are)")
    args = parser.parse_args(argv)
    realfaces = args.realfaces if (args.realfaces / "photos.json").is_file() else None
    if args.figures_only:
        if realfaces is None:
            raise SystemExit(f"error: {args.realfaces}: no photos.json (the real development faces)")
        dest = _SRC / "kdlandmark" / "pretrained" / PRETRAINED[args.name]
        card_path = dest / "card.json"
        figures = json.loads(card_path.read_text(encoding="utf-8"))
        figures["real_faces"] = real_face_figures(dest, realfaces / "faces", realfaces)
        card_path.write_text(json.dumps(figures, indent=1) + "\n", encoding="utf-8")
        print(f"measured {dest} again -> {card_path}")
        return 0
    dest = ship(args.run, args.name, args.role, realfaces, args.model, args.dest)
    print(f"shipped {args.model or args.run / args.role / 'best'} -> {dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
