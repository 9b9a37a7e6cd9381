"""The experiment report: ``report.html`` (self-contained) and ``report.md`` from evaluation folders.

:func:`write_report` reads what the earlier stages left behind -- each model's evaluation folder
(``metrics.json``, ``predictions.npz/.json``, ``examples.npz``), each training folder's ``metrics.csv``
and the ASM stage's ``asm_variance.json`` -- and writes:

* ``report.html``: every figure embedded as a base64 ``data:`` URI and the style inline, so the file
  opens from disk, offline, and can be mailed as one file;
* ``report.md`` with the same tables, linking the figures written to ``report_files/``.

Sections: results per subset next to the paper's published numbers (package reference data, with
their sources), significance of the differences (paired bootstrap), CED curves, NME by subset,
training curves (loss terms, learning rate, validation NME), the ASM variance curve, a grid of test
faces (best, median, worst) with ground truth and prediction, per-landmark error on the mean face,
and model size, FLOPs and measured CPU latency.  A missing input leaves its section saying what is
missing instead of failing the whole report.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kdlandmark.data.crop import apply_affine
from kdlandmark.evaluate.compare import EvalRun, format_p, pairwise_tests, score_runs
from kdlandmark.evaluate.evaluator import EXAMPLES_NPZ, METRICS_JSON
from kdlandmark.evaluate.protocols import ProtocolScore

__all__ = ["write_report", "main_subset", "render_examples"]

FILES_DIR = "report_files"
_NUMERIC = re.compile(r"^\s*([-+<]?\s*[\d.]|\[|-$)")

_CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1250px; color: #222; line-height: 1.45; padding: 0 1em; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { margin-top: 1.8em; border-bottom: 1px solid #ccc; padding-bottom: .15em; }
table { border-collapse: collapse; margin: .8em 0; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 9px; text-align: right; }
th { background: #f0f0f0; }
td.text, th.text { text-align: left; }
td.ref, th.ref { background: #fff8e0; }
.note { background: #eef5ff; border-left: 4px solid #5b8def; padding: .5em 1em; margin: 1em 0; }
.missing { color: #a33; font-style: italic; }
img { max-width: 100%; border: 1px solid #ddd; margin: .5em 0; }
.small { font-size: 12px; color: #555; }
code { background: #f4f4f4; padding: 0 3px; }
"""


# ------------------------------------------------------------------------------------------ building blocks
@dataclass
class _Doc:
    """The report built twice in parallel: HTML fragments and Markdown lines."""

    files: Path
    html: list[str] = field(default_factory=list)
    md: list[str] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")
        self.md += ["#" * level + " " + text, ""]

    def para(self, text: str, cls: str | None = None) -> None:
        c = f' class="{cls}"' if cls else ""
        self.html.append(f"<p{c}>{_inline_html(text)}</p>")
        self.md += [f"*{text}*" if cls == "missing" else text, ""]

    def note(self, text: str) -> None:
        self.html.append(f'<div class="note">{_inline_html(text)}</div>')
        self.md += [f"> {text}", ""]

    def table(self, header: Sequence[str], rows: Sequence[Sequence[str]], ref_cols: Sequence[int] = ()
              ) -> None:
        """A table in both forms; a column is right-aligned when every cell in it is a number."""
        numeric = [i > 0 and all(bool(_NUMERIC.match(r[i])) for r in rows) for i in range(len(header))]

        def cell(tag: str, i: int, v: str) -> str:
            classes = (["ref"] if i in ref_cols else []) + ([] if numeric[i] else ["text"])
            c = f' class="{" ".join(classes)}"' if classes else ""
            return f"<{tag}{c}>{_inline_html(v)}</{tag}>"

        h = "".join(cell("th", i, v) for i, v in enumerate(header))
        body = "".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(r)) + "</tr>" for r in rows)
        self.html.append(f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>")
        self.md += ["| " + " | ".join(header) + " |",
                    "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
        self.md += ["| " + " | ".join(r) + " |" for r in rows] + [""]

    def image(self, name: str, png: bytes, alt: str) -> None:
        self.files.mkdir(parents=True, exist_ok=True)
        (self.files / name).write_bytes(png)
        b64 = base64.b64encode(png).decode("ascii")
        self.html.append(f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">')
        self.md += [f"![{alt}]({FILES_DIR}/{name})", ""]

    def figure(self, name: str, fig, alt: str, dpi: int = 90) -> None:
        from kdlandmark.evaluate.plots import png_bytes

        self.image(name, png_bytes(fig, dpi), alt)


def _inline_html(text: str) -> str:
    """Escape, then turn ``**bold**`` and ```code``` into tags (the only Markdown the report uses)."""
    out = html.escape(text)
    parts = out.split("**")
    out = "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))
    parts = out.split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def main_subset(subsets: Sequence[str]) -> str | None:
    """The subset a single number stands for: ``full`` (300W, WFLW), else the first (COFW ``test``)."""
    if not subsets:
        return None
    return "full" if "full" in subsets else subsets[0]


def _primary_label(labels: Sequence[str]) -> str:
    """The model the pictures show: the KD-Loss student if a label names it, else the last model."""
    for lab in labels:
        if "kd" in lab.lower():
            return lab
    return labels[-1]


def _fmt_num(v: float | None, spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, spec)


# --------------------------------------------------------------------------------------------- pictures
def render_examples(run: EvalRun, *, tile: int = 176, per_row: int | None = None) -> np.ndarray | None:
    """RGB grid of the stored best / median / worst faces with ground truth (green) and prediction (red).

    Each tile is the model's view of the face (a little wider), cut from the stored crop kept in
    ``examples.npz``; landmarks come from the evaluation's image-pixel predictions mapped through the
    stored affine.  None when the evaluation kept no examples.
    """
    import cv2

    from kdlandmark.draw import draw_landmarks, image_grid

    path = run.path / EXAMPLES_NPZ
    preds = run.predictions
    if not path.is_file() or preds is None:
        return None
    with np.load(path, allow_pickle=False) as z:
        images, affines = z["images"], z["affines"]
        cats, splits, index, nme = z["category"], z["split"], z["index"], z["nme"]
        view = float(z["view_scale"]) if "view_scale" in z else 1.0
    size = images.shape[1]
    k = tile / (view * size * 1.1)
    c = (size - 1) / 2.0
    t = (tile - 1) / 2.0
    to_tile = np.array([[k, 0.0, t - k * c], [0.0, k, t - k * c]])
    tiles = []
    for img, aff, cat, sp, i, e in zip(images, affines, cats, splits, index, nme, strict=True):
        sp, i = str(sp), int(i)
        im = cv2.warpAffine(np.ascontiguousarray(img), to_tile, (tile, tile), flags=cv2.INTER_LINEAR)
        gt = apply_affine(to_tile, apply_affine(aff, preds.gt[sp][i]))
        pr = apply_affine(to_tile, apply_affine(aff, preds.pred[sp][i]))
        occ = preds.occluded[sp][i] if sp in preds.occluded else None
        im = draw_landmarks(im, pr, preds.layout, color=(235, 40, 40), radius=2)
        im = draw_landmarks(im, gt, preds.layout, color=(40, 220, 40), radius=1, lines=False, occluded=occ)
        cv2.rectangle(im, (0, 0), (tile - 1, 17), (255, 255, 255), -1)
        cv2.putText(im, f"{cat}  NME {100 * float(e):.2f}%", (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.42,
                    (0, 0, 0), 1, cv2.LINE_AA)
        tiles.append(im)
    if not tiles:
        return None
    per_row = per_row or max(1, int(np.sum(cats == cats[0])))
    return image_grid(tiles, cols=per_row, pad=3)


def _png_rgb(rgb: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def _mean_face(run: EvalRun, score: ProtocolScore, subset: str) -> np.ndarray | None:
    """Mean ground-truth shape of ``subset`` in stored-crop pixels (faces are aligned by their crops)."""
    preds = run.predictions
    if preds is None or subset not in score.subsets:
        return None
    shapes = [apply_affine(preds.affines[sp][idx], preds.gt[sp][idx])
              for sp, idx in score.subsets[subset].members if len(idx)]
    return np.concatenate(shapes).mean(axis=0) if shapes else None


# --------------------------------------------------------------------------------------------- latency
def _latency(run: EvalRun) -> tuple[float | None, str]:
    """CPU latency (ms, batch 1) as the evaluation measured it (the report renders, it does not time)."""
    m = run.metrics
    if m.get("latency_ms_cpu") is None:
        return None, "not measured (evaluated with --latency-runs 0)"
    lat = m.get("latency") or {}
    return float(m["latency_ms_cpu"]), f"{lat.get('threads', '?')} threads, at evaluation"


def _synthetic_note(runs: Sequence[EvalRun]) -> str | None:
    """A warning when the evaluated faces come from ``kdlandmark synth`` (its ``synth.json`` marker)."""
    for r in runs:
        preds = r.predictions
        prepared = (preds.info.get("prepared") if preds is not None else None) or ""
        meta = Path(prepared) / "meta.json" if prepared else None
        if meta is None or not meta.is_file():
            continue
        try:
            src = json.loads(meta.read_text(encoding="utf-8")).get("source_root")
        except (OSError, json.JSONDecodeError):
            continue
        if src and (Path(src) / "synth.json").is_file():
            return ("These models were trained and tested on **synthetic faces** (`kdlandmark synth`). The "
                    "published numbers are for the real benchmark and are shown for orientation only: they "
                    "are not comparable with the numbers measured here.")
    return None


# --------------------------------------------------------------------------------------------- the report
@dataclass
class _Report:
    """What every section of the report reads: the document, the evaluations and their common scores."""

    doc: _Doc
    runs: list[EvalRun]
    labels: list[str]
    subsets: list[str]
    table: dict[str, dict]
    scores: dict[str, ProtocolScore | None]
    colours: dict[str, str]
    bootstrap: int
    thr: float
    norm: str
    main: str | None
    dataset: str
    train_dirs: Mapping[str, str | Path] | None
    asm_dir: str | Path | None
    examples_per_row: int | None


def _section_results(c: _Report) -> None:
    """Our models' NME next to the paper's, failure rate and AUC, the published numbers kept."""
    from kdlandmark.reference import load_published, published_results

    doc, runs, labels, subsets, table, thr = c.doc, c.runs, c.labels, c.subsets, c.table, c.thr
    dataset = c.dataset
    doc.heading("Results")
    paper = {r.subset: r for r in published_results(dataset, roles=("paper",))}
    info = load_published()
    if runs:
        header = ["subset", "images", *labels, f"paper: {info['paper']['model']}"]
        rows = []
        for s in subsets:
            counts = sorted({str(table[lab][s]["count"]) for lab in labels if s in table[lab]})
            cells = []
            for lab in labels:
                d = table[lab].get(s)
                ci = (d or {}).get("nme_ci95")
                cells.append("-" if d is None else (f"{d['nme']:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci
                                                    else f"{d['nme']:.2f}"))
            ref = paper.get(s)
            rows.append([s, "/".join(counts), *cells, f"{ref.nme:.2f}" if ref else "-"])
        doc.para(f"**NME (%)** [95 % bootstrap interval]; the last column is the paper's published number "
                 f"for the same subset ({info['units']}).")
        doc.table(header, rows, ref_cols=[len(header) - 1])
        rows = [[s, *[(f"{table[lab][s]['fr']:.2f} / {table[lab][s]['auc']:.4f}" if s in table[lab] else "-")
                      for lab in labels]] for s in subsets]
        doc.para(f"**Failure rate (%) at {thr:g} / AUC at {thr:g}** (the paper publishes neither).")
        doc.table(["subset", *labels], rows)
    else:
        doc.para("No evaluation results found.", "missing")

    doc.heading("Published numbers", 3)
    pub_rows = [[r.subset, r.model, f"{r.nme:.2f}", r.source] for r in published_results(dataset)]
    if pub_rows:
        doc.table(["subset", "model", "NME %", "source"], pub_rows)
    else:
        doc.para(f"No published numbers are kept for dataset {dataset!r}.", "missing")
    doc.para(f"Paper: {info['paper']['citation']} {info['paper']['arxiv']}; code {info['paper']['code']}. "
             f"{info['not_published']}", "small")


def _section_significance(c: _Report) -> None:
    """Paired bootstrap tests of the pictured model against each other model."""
    doc, runs, labels, scores, bootstrap = c.doc, c.runs, c.labels, c.scores, c.bootstrap
    if len(runs) > 1:
        primary = _primary_label(labels)
        pairs = [(lab, primary) for lab in labels if lab != primary]
        sig = pairwise_tests(runs, scores, pairs=pairs, bootstrap=bootstrap)
        doc.heading("Are the differences real?", 3)
        doc.para(f"Paired bootstrap over the test images of the per-image NME difference, {primary} minus "
                 "the other model (negative: " + primary + " is better). Significant when the 95 % interval "
                 "excludes zero and p < 0.05.")
        rows = []
        for r in sig:
            if "skipped" in r:
                rows.append([r["subset"] or "-", r["a"], "-", "-", "-", f"not tested: {r['skipped']}"])
            else:
                verdict = f"**{r['better']} better**" if r["significant"] else "not significant"
                rows.append([r["subset"], r["a"], f"{r['mean_diff']:+.3f}",
                             f"[{r['ci95'][0]:+.3f}, {r['ci95'][1]:+.3f}]",
                             format_p(r["p_value"], r["resamples"]), verdict])
        doc.table(["subset", "other model", f"NME difference (%), {primary} - other", "95 % interval", "p",
                   "verdict"], rows)


def _section_ced(c: _Report) -> None:
    """CED curves of every subset and the NME-by-subset bars."""
    from kdlandmark.evaluate.plots import ced_figure, subset_bars_figure

    doc, runs, table, scores, colours, thr = c.doc, c.runs, c.table, c.scores, c.colours, c.thr
    doc.heading("Cumulative error distribution")
    curves: dict[str, dict[str, np.ndarray]] = {}
    for r in runs:
        s = scores.get(r.label)
        if s is not None:
            for name, sub in s.subsets.items():
                curves.setdefault(name, {})[r.label] = sub.nme
    if curves:
        doc.figure("ced.png", ced_figure(curves, thr, colours=colours), "CED curves")
    else:
        doc.para("No per-image predictions found (predictions.npz), so no CED.", "missing")
    if runs:
        bars = {lab: {s: (d["nme"], *(d.get("nme_ci95") or (None, None))) for s, d in t.items()}
                for lab, t in table.items()}
        doc.heading("NME by subset", 3)
        doc.figure("subsets.png", subset_bars_figure(bars, colours=colours), "NME by subset")


def _section_training(c: _Report) -> None:
    """Every run's logged loss terms, learning rate and validation NME."""
    from kdlandmark.evaluate.plots import read_metrics_csv, training_curves_figure

    doc, colours, train_dirs = c.doc, c.colours, c.train_dirs
    doc.heading("Training curves")
    histories, absent = {}, []
    for label, d in (train_dirs or {}).items():
        csv_path = Path(d) / "metrics.csv"
        if csv_path.is_file():
            h = read_metrics_csv(csv_path)
            if h:
                histories[label] = h
                continue
        absent.append(f"{label} ({csv_path})")
    if histories:
        doc.para("Per model: every loss term the run logged (log scale; a negative term such as an assistive "
                 "loss is drawn as its magnitude, marked |term|), the learning rate, and the validation NME "
                 "(% of the inter-ocular distance, on the validation crops).")
        doc.figure("training.png", training_curves_figure(histories, colours=colours), "training curves")
    if absent:
        doc.para("No metrics.csv for: " + "; ".join(absent), "missing")


def _section_asm(c: _Report) -> None:
    """The ASM stage's hard-vs-soft NME curve and its picture."""
    from kdlandmark.evaluate.plots import asm_variance_figure

    doc, asm_dir = c.doc, c.asm_dir
    doc.heading("Soft landmarks: ASM variance curve")
    asm_json = Path(asm_dir) / "asm_variance.json" if asm_dir is not None else None
    if asm_json is not None and asm_json.is_file():
        asm = json.loads(asm_json.read_text(encoding="utf-8"))
        curve = asm.get("curve") or []
        if curve:
            doc.para(f"NME between the hard (ground-truth) and soft (ASM-reconstructed) training landmarks "
                     f"as a function of the shape variance kept; the Tolerant-Teacher learns the soft ones. "
                     f"Chosen: {100 * float(asm.get('variance', 0)):g} % of the variance, "
                     f"{asm.get('components', '?')} components, "
                     f"NME {_fmt_num(asm.get('nme_percent'), '.2f')} %.")
            doc.figure("asm_variance.png", asm_variance_figure(curve, asm.get("variance")),
                       "ASM variance curve")
            ordered = sorted(curve, key=lambda r: -float(r["variance"]))
            doc.table(["variance kept", "components", "NME soft vs hard (%)"],
                      [[f"{100 * float(r['variance']):g} %", str(r["components"]),
                        f"{float(r['nme_percent']):.3f}"] for r in ordered])
        pic = asm_json.parent / "asm_hard_vs_soft.png"
        if pic.is_file():
            doc.para("Training crops with hard (green) and soft (red) landmarks:")
            doc.image("asm_hard_vs_soft.png", pic.read_bytes(), "hard vs soft landmarks")
    else:
        doc.para(f"No ASM variance curve ({asm_json or 'no ASM folder given'}).", "missing")


def _section_pictures(c: _Report) -> None:
    """Best, median and worst test faces of the pictured model, and its per-landmark error."""
    from kdlandmark.evaluate.plots import landmark_heatmap_figure

    doc, runs, labels, scores, norm, main = c.doc, c.runs, c.labels, c.scores, c.norm, c.main
    examples_per_row = c.examples_per_row
    if runs:
        primary = _primary_label(labels)
        prun = next(r for r in runs if r.label == primary)
        doc.heading(f"Test faces: best, median and worst ({primary})")
        grid = render_examples(prun, per_row=examples_per_row)
        if grid is not None:
            doc.para("Rows: the faces with the lowest, the median and the highest NME of this model over "
                     "all evaluated test images. Red: prediction (points joined by part), green dots: ground "
                     "truth (hollow: occluded).")
            doc.image("examples.png", _png_rgb(grid), "best, median and worst test faces")
        else:
            doc.para(f"No examples.npz / predictions in {prun.path}.", "missing")

        doc.heading("Per-landmark error on the mean face")
        pscore = scores.get(primary)
        mean = _mean_face(prun, pscore, main) if pscore is not None and main else None
        errs = {lab: 100 * s.subsets[main].per_landmark for lab in labels
                if (s := scores.get(lab)) is not None and main in s.subsets}
        if mean is not None and errs and prun.predictions is not None:
            doc.para(f"Mean error of each landmark on the **{main}** subset (% of the {norm} distance), "
                     "drawn on the mean ground-truth face; one colour scale for all panels.")
            doc.figure("landmark_error.png", landmark_heatmap_figure(mean, errs, prun.predictions.layout),
                       "per-landmark error")
        else:
            doc.para("Per-landmark error needs the per-image predictions.", "missing")


def _section_size(c: _Report) -> None:
    """Parameters, FLOPs and the CPU latency the evaluation measured."""
    doc, runs = c.doc, c.runs
    doc.heading("Model size, FLOPs and CPU latency")
    rows = []
    for r in runs:
        m = r.metrics
        ms, how = _latency(r)
        rows.append([r.label, str(m.get("backbone") or "-"), str(m.get("input_size") or "-"),
                     _fmt_num(m["params"] / 1e6 if m.get("params") is not None else None, ".2f"),
                     _fmt_num(m["flops"] / 1e9 if m.get("flops") is not None else None, ".3f"),
                     _fmt_num(ms, ".1f"), how])
    if rows:
        doc.para("FLOPs count a multiply-add as two operations (PyTorch's counter), batch 1. Latency: median "
                 "of timed forwards at batch 1 on this machine's CPU (float32, PyTorch eager).")
        doc.table(["model", "backbone", "input", "parameters (M)", "GFLOPs", "CPU latency (ms)", "measured"],
                  rows)
    doc.para("Evaluation folders: " + "; ".join(f"{r.label}: `{r.path}`" for r in runs), "small")


def write_report(run_dir: str | Path, *, title: str, models: Mapping[str, str | Path],
                 train_dirs: Mapping[str, str | Path] | None = None, asm_dir: str | Path | None = None,
                 dataset: str, notes: Sequence[str] = (), bootstrap: int = 1000,
                 examples_per_row: int | None = None) -> tuple[Path, Path]:
    """Write ``run_dir/report.html`` (self-contained) and ``run_dir/report.md``; returns both paths.

    Args:
        run_dir: experiment folder; the report and ``report_files/`` (figures for the Markdown) go here.
        title: report title.
        models: label -> evaluation folder, in table order (the pipeline: Tough-Teacher,
            Tolerant-Teacher, L2 student, KD student).  Pictures show the KD student (a label with "KD"),
            else the last model.
        train_dirs: label -> training folder with ``metrics.csv`` (curves of every logged loss term, the
            learning rate and the validation NME).
        asm_dir: folder of ``asm_variance.json`` (and ``asm_hard_vs_soft.png`` if present).
        dataset: ``300w``, ``wflw``, ``cofw`` or ``folder`` (selects the published numbers).
        notes: extra remarks printed at the top.
        bootstrap: resamples for intervals and the paired tests.
    """
    from kdlandmark.evaluate.plots import model_colours

    out = Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = _Doc(out / FILES_DIR)
    runs: list[EvalRun] = []
    missing: list[str] = []
    for label, d in models.items():
        p = Path(d)
        mfile = p / METRICS_JSON if p.is_dir() or not p.suffix else p
        if mfile.is_file():
            runs.append(EvalRun(label, mfile.parent, json.loads(mfile.read_text(encoding="utf-8"))))
        else:
            missing.append(f"{label} (no {mfile})")
    labels = [r.label for r in runs]
    colours = model_colours(list(models))

    doc.html.append(f"<h1>{html.escape(title)}</h1>")
    doc.md += [f"# {title}", ""]
    created = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    norm = str(runs[0].metrics.get("normalisation", "inter-ocular")) if runs else "inter-ocular"
    thr = float(runs[0].metrics.get("threshold", 0.10)) if runs else 0.10
    doc.para(f"Dataset **{dataset}**; NME normalised by the {norm} distance (in %); failure rate and AUC of "
             f"the cumulative error distribution up to {thr:g}; 95 % intervals from {bootstrap} bootstrap "
             f"resamples of the test images. Written {created}.", "small")
    synth = _synthetic_note(runs)
    for n in [*notes, *([synth] if synth else [])]:
        doc.note(n)
    if missing:
        doc.para("Missing evaluations: " + "; ".join(missing), "missing")
    scores = score_runs(runs, norm, thr, bootstrap=bootstrap) if runs else {}
    table = {r.label: ({k: v.to_json() for k, v in s.subsets.items()} if (s := scores[r.label]) is not None
                       else r.metrics["subsets"]) for r in runs}
    subsets = list(dict.fromkeys(s for t in table.values() for s in t))
    main = main_subset(subsets)

    c = _Report(doc, runs, labels, subsets, table, scores, colours, bootstrap, thr, norm, main, dataset,
                train_dirs, asm_dir, examples_per_row)
    for section in (_section_results, _section_significance, _section_ced, _section_training, _section_asm,
                    _section_pictures, _section_size):
        section(c)

    html_path, md_path = out / "report.html", out / "report.md"
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(doc.html) + "\n</body></html>\n")
    html_path.write_text(page, encoding="utf-8")
    md_path.write_text("\n".join(doc.md).rstrip() + "\n", encoding="utf-8")
    return html_path, md_path
