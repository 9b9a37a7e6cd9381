"""Several evaluated models side by side: table, CED curves on one plot, per-subset bars, significance.

Inputs are evaluation folders (``metrics.json`` + ``predictions.npz``/``.json`` as written by
:func:`kdlandmark.evaluate.evaluator.evaluate_checkpoint`), ``metrics.json`` files, or any folder above
them (every evaluation found below it is taken, e.g. a pipeline's ``eval/``).  Where the per-image
predictions exist every model is re-scored with the same normalisation and threshold (the first
model's), so the numbers are comparable by construction; a difference between two models on a subset
is tested with a paired bootstrap on the per-image NME difference over the images both were
evaluated on (:func:`kdlandmark.evaluate.metrics.paired_bootstrap`).
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kdlandmark.evaluate.evaluator import METRICS_JSON, PREDICTIONS_JSON, Predictions, load_predictions
from kdlandmark.evaluate.metrics import paired_bootstrap
from kdlandmark.evaluate.protocols import ProtocolScore, score_protocol

__all__ = [
    "EvalRun",
    "find_eval_runs",
    "score_runs",
    "pairwise_tests",
    "compare",
    "format_results_markdown",
    "format_significance_markdown",
    "format_p",
    "default_compare_dir",
]


@dataclass
class EvalRun:
    """One evaluated model: its label, folder, ``metrics.json`` and (lazily) its stored predictions."""

    label: str
    path: Path
    metrics: dict
    _predictions: Predictions | None = field(default=None, repr=False)
    _loaded: bool = field(default=False, repr=False)

    @property
    def has_predictions(self) -> bool:
        return (self.path / PREDICTIONS_JSON).is_file()

    @property
    def predictions(self) -> Predictions | None:
        if not self._loaded:
            self._predictions = load_predictions(self.path) if self.has_predictions else None
            self._loaded = True
        return self._predictions


def _read_metrics(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read metrics ({exc})") from exc
    if not isinstance(data, dict) or "subsets" not in data:
        raise ValueError(f"{path}: not an evaluation metrics.json (no 'subsets')")
    return data


def find_eval_runs(paths: Sequence[str | Path], labels: Sequence[str] | None = None) -> list[EvalRun]:
    """Evaluation runs named by ``paths`` (folders or ``metrics.json`` files), in order, labels unique."""
    found: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_file():
            found.append(p)
        elif (p / METRICS_JSON).is_file():
            found.append(p / METRICS_JSON)
        elif p.is_dir():
            below = sorted(q for q in p.rglob(METRICS_JSON) if _looks_like_eval(q))
            if not below:
                raise ValueError(f"{p}: no evaluation metrics.json found in or below this folder")
            found += below
        else:
            raise ValueError(f"{p}: no such file or folder")
    runs = [EvalRun(str(m.get("model") or f.parent.name), f.parent, m)
            for f in found for m in [_read_metrics(f)]]
    if labels:
        if len(labels) != len(runs):
            raise ValueError(f"{len(labels)} labels for {len(runs)} evaluations")
        for r, lab in zip(runs, labels, strict=True):
            r.label = lab
    counts: dict[str, int] = {}
    for r in runs:
        counts[r.label] = counts.get(r.label, 0) + 1
    for r in runs:
        if counts[r.label] > 1:
            r.label = f"{r.label} ({r.path.name})"
    return runs


def _looks_like_eval(path: Path) -> bool:
    try:
        return "subsets" in json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError):
        return False


def score_runs(runs: Sequence[EvalRun], normalisation: str, threshold: float, *, bootstrap: int = 1000
               ) -> dict[str, ProtocolScore | None]:
    """Each run re-scored from its predictions at the common settings (None where it has none)."""
    out: dict[str, ProtocolScore | None] = {}
    for r in runs:
        p = r.predictions
        out[r.label] = None if p is None else score_protocol(
            p.dataset, p.layout, p.pred, p.gt, p.attributes, normalisation=normalisation, threshold=threshold,
            bootstrap=bootstrap)
    return out


def _same_images(a: Predictions, b: Predictions, members_a, members_b) -> str | None:
    """None when two subsets hold the same faces in the same order, else why not."""
    if [(s, len(i)) for s, i in members_a] != [(s, len(i)) for s, i in members_b]:
        return "different splits or image counts"
    for (sp, ia), (_, ib) in zip(members_a, members_b, strict=True):
        if not np.array_equal(ia, ib):
            return f"different faces selected in split {sp}"
        pa, pb = a.image_paths.get(sp) or [], b.image_paths.get(sp) or []
        if pa and pb and [pa[i] for i in ia] != [pb[i] for i in ib]:
            return f"different image paths in split {sp}"
        if not np.allclose(a.gt[sp][ia], b.gt[sp][ib], atol=1e-3):
            return f"different ground truth in split {sp}"
    return None


def pairwise_tests(runs: Sequence[EvalRun], scores: dict[str, ProtocolScore | None], *,
                   pairs: Sequence[tuple[str, str]] | None = None, bootstrap: int = 1000, seed: int = 0
                   ) -> list[dict]:
    """Paired bootstrap of every pair (or the given ``(a, b)`` label pairs) on every common subset.

    Each row: subset, a, b, ``mean_diff`` (B - A, NME %), ``ci95`` (%), ``p_value``, ``significant``,
    ``better`` (the label with the lower NME when significant, else None), ``count``; or ``skipped``
    with the reason when the two were not evaluated on the same images.
    """
    by_label = {r.label: r for r in runs}
    todo = list(pairs) if pairs is not None else list(itertools.combinations([r.label for r in runs], 2))
    rows: list[dict] = []
    for la, lb in todo:
        sa, sb = scores.get(la), scores.get(lb)
        if sa is None or sb is None:
            rows.append({"subset": None, "a": la, "b": lb, "skipped": "per-image predictions missing"})
            continue
        pa, pb = by_label[la].predictions, by_label[lb].predictions
        assert pa is not None and pb is not None
        for subset in [s for s in sa.subsets if s in sb.subsets]:
            why = _same_images(pa, pb, sa.subsets[subset].members, sb.subsets[subset].members)
            if why:
                rows.append({"subset": subset, "a": la, "b": lb, "skipped": why})
                continue
            t = paired_bootstrap(sa.subsets[subset].nme, sb.subsets[subset].nme, bootstrap, seed=seed)
            rows.append({"subset": subset, "a": la, "b": lb, "mean_diff": 100 * t.mean_diff,
                         "ci95": [100 * t.ci95[0], 100 * t.ci95[1]], "p_value": t.p_value,
                         "significant": t.significant, "count": t.count, "resamples": t.resamples,
                         "better": (lb if t.mean_diff < 0 else la) if t.significant else None})
    return rows


def _subset_values(run: EvalRun, score: ProtocolScore | None) -> dict[str, dict]:
    return {k: v.to_json() for k, v in score.subsets.items()} if score is not None else run.metrics["subsets"]


def format_results_markdown(table: dict[str, dict[str, dict]], threshold: float) -> str:
    """Two Markdown tables (rows: subsets; columns: models): NME % [95 % CI], then FR % / AUC."""
    labels = list(table)
    subsets = list(dict.fromkeys(s for v in table.values() for s in v))
    head = "| subset | images | " + " | ".join(labels) + " |"
    sep = "|---|---:|" + "---:|" * len(labels)

    def count(s: str) -> str:
        cs = {str(table[lab][s]["count"]) for lab in labels if s in table[lab]}
        return "/".join(sorted(cs))

    def nme_cell(d: dict | None) -> str:
        if d is None:
            return "-"
        ci = d.get("nme_ci95")
        return f"{d['nme']:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else f"{d['nme']:.2f}"

    lines = ["**NME (%) [95 % bootstrap interval]**", "", head, sep]
    for s in subsets:
        cells = [nme_cell(table[lab].get(s)) for lab in labels]
        lines.append(f"| {s} | {count(s)} | " + " | ".join(cells) + " |")
    lines += ["", f"**Failure rate (%) at {threshold:g} / AUC at {threshold:g}**", "", head, sep]
    for s in subsets:
        cells = [f"{table[lab][s]['fr']:.2f} / {table[lab][s]['auc']:.4f}" if s in table[lab] else "-"
                 for lab in labels]
        lines.append(f"| {s} | {count(s)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_p(p: float, resamples: int) -> str:
    """A bootstrap p-value for a table: ``< 1/resamples`` when no resample crossed zero."""
    return f"< {1.0 / max(1, resamples):.2g}" if p <= 0 else f"{p:.3g}"


def format_significance_markdown(rows: Sequence[dict]) -> str:
    """Markdown table of :func:`pairwise_tests` rows."""
    lines = ["| subset | A | B | mean NME B - A (%) | 95 % interval | p | verdict |",
             "|---|---|---|---:|---:|---:|---|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['subset'] or '-'} | {r['a']} | {r['b']} | - | - | - | "
                         f"not tested: {r['skipped']} |")
            continue
        verdict = f"**{r['better']} better**" if r["significant"] else "no significant difference"
        p = format_p(r["p_value"], r["resamples"])
        lines.append(f"| {r['subset']} | {r['a']} | {r['b']} | {r['mean_diff']:+.3f} | "
                     f"[{r['ci95'][0]:+.3f}, {r['ci95'][1]:+.3f}] | {p} | {verdict} |")
    return "\n".join(lines)


def compare(paths: Sequence[str | Path], out_dir: str | Path, *, bootstrap: int = 1000,
            labels: Sequence[str] | None = None) -> dict:
    """Compare evaluated models; writes ``compare.md``, ``compare.json``, ``ced.png``, ``subsets.png``.

    Returns the content of ``compare.json`` (settings, per-model subset results, significance rows and
    the written files) plus ``markdown`` (the text of ``compare.md``).
    """
    from kdlandmark.evaluate.plots import ced_figure, model_colours, save_png, subset_bars_figure

    runs = find_eval_runs(paths, labels)
    if not runs:
        raise ValueError("nothing to compare")
    first = runs[0].metrics
    norm = str(first.get("normalisation") or "inter-ocular")
    thr = float(first.get("threshold") or 0.10)
    datasets = {str(r.metrics.get("dataset")) for r in runs}
    scores = score_runs(runs, norm, thr, bootstrap=bootstrap)
    table = {r.label: _subset_values(r, scores[r.label]) for r in runs}
    notes = []
    for r in runs:
        if scores[r.label] is None and (r.metrics.get("normalisation") != norm or
                                        float(r.metrics.get("threshold", thr)) != thr):
            notes.append(f"{r.label}: no per-image predictions, shown as evaluated "
                         f"({r.metrics.get('normalisation')}, threshold {r.metrics.get('threshold')})")
    sig = pairwise_tests(runs, scores, bootstrap=bootstrap)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    colours = model_colours([r.label for r in runs])
    files = {"markdown": str(out / "compare.md"), "json": str(out / "compare.json")}
    curves: dict[str, dict[str, np.ndarray]] = {}
    for r in runs:
        s = scores[r.label]
        if s is None:
            continue
        for name, sub in s.subsets.items():
            curves.setdefault(name, {})[r.label] = sub.nme
    if curves:
        save_png(ced_figure(curves, thr, colours=colours), out / "ced.png")
        files["ced"] = str(out / "ced.png")
    bars = {lab: {s: (d["nme"], *(d.get("nme_ci95") or (None, None))) for s, d in t.items()}
            for lab, t in table.items()}
    save_png(subset_bars_figure(bars, colours=colours, title=f"NME by subset ({norm})"), out / "subsets.png")
    files["bars"] = str(out / "subsets.png")

    md = [f"# Model comparison ({', '.join(sorted(datasets))})", "",
          f"NME normalised by the {norm} distance, in % of it; failure threshold and AUC limit {thr:g}. "
          f"Intervals: {bootstrap} bootstrap resamples of the images.", ""]
    md += ["| model | evaluation |", "|---|---|"] + [f"| {r.label} | `{r.path}` |" for r in runs] + [""]
    md += [format_results_markdown(table, thr), ""]
    if notes:
        md += ["Notes:", *[f"- {n}" for n in notes], ""]
    md += ["## Is the difference real? (paired bootstrap on per-image NME)", "",
           "Negative: B has the lower NME. *Significant* when the 95 % interval of the mean per-image "
           "difference excludes zero and p < 0.05.", "",
           format_significance_markdown(sig) if sig else "(one model only)", ""]
    if "ced" in files:
        md += ["## Cumulative error distribution", "", "![CED](ced.png)", ""]
    md += ["## NME by subset", "", "![subsets](subsets.png)", ""]
    text = "\n".join(md)
    (out / "compare.md").write_text(text, encoding="utf-8")
    result = {"datasets": sorted(datasets), "normalisation": norm, "threshold": thr, "bootstrap": bootstrap,
              "models": [{"label": r.label, "path": str(r.path), "rescored": scores[r.label] is not None,
                          "subsets": table[r.label], "params": r.metrics.get("params"),
                          "flops": r.metrics.get("flops"), "latency_ms_cpu": r.metrics.get("latency_ms_cpu")}
                         for r in runs],
              "significance": sig, "notes": notes, "files": files}
    (out / "compare.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    return {**result, "markdown": text}


def default_compare_dir(paths: Sequence[str | Path]) -> Path:
    """``compare/`` beside the inputs: in the folder that holds them all (never the working folder).

    An input file (``metrics.json``) stands for its folder; ``compare runs/a/eval runs/b/eval`` writes
    ``runs/compare``, ``compare runs/demo/eval`` writes ``runs/demo/compare``.
    """
    folders = [Path(p).resolve() for p in paths]
    folders = [f.parent if f.is_file() else f for f in folders]
    common = Path(os.path.commonpath([f.parent for f in folders]))
    return common / "compare"
