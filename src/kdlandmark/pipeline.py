"""The paper's recipe as resumable stages.

prepare -> asm -> tough -> tolerant -> kd -> l2 -> evaluate -> results (table) -> report

Each stage looks at its own output first and skips itself when that output is complete, so a killed
pipeline started again with the same command resumes where it stopped (a half-finished training run
is resumed from its last checkpoint, not restarted).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kdlandmark.atomic import write_json_atomic
from kdlandmark.config import ExperimentConfig, load_config, save_config, train_config

__all__ = ["STAGES", "ROLE_LABELS", "Pipeline", "run_pipeline", "resolve_preset"]

#: Training roles in pipeline order and how reports name them.
ROLE_LABELS = {
    "tough": "Tough-Teacher",
    "tolerant": "Tolerant-Teacher",
    "l2": "Student (L2)",
    "kd": "Student (KD-Loss)",
}
STAGES = ("prepare", "asm", "tough", "tolerant", "kd", "l2", "evaluate", "results", "report")

_CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def resolve_preset(name_or_path: str | Path) -> Path:
    """A config file path, or the bundled preset of that name (``paper-300w``, ``demo``, ...)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    for cand in (_CONFIG_DIR / f"{name_or_path}.yaml", _CONFIG_DIR / str(name_or_path)):
        if cand.is_file():
            return cand
    known = sorted(q.stem for q in _CONFIG_DIR.glob("*.yaml")) if _CONFIG_DIR.is_dir() else []
    raise FileNotFoundError(f"{name_or_path}: no such config file or preset (presets: {', '.join(known)})")


@dataclass
class Pipeline:
    """One experiment folder (``exp.out``) and the stages that fill it."""

    exp: ExperimentConfig
    log: Callable[[str], None] = print

    @property
    def root(self) -> Path:
        return Path(self.exp.out)

    @property
    def prepared_dir(self) -> Path:
        return self.root / "prepared"

    def eval_dir(self, role: str) -> Path:
        return self.root / "eval" / role

    def _timed(self, name: str, done: bool, fn: Callable[[], object]) -> float:
        if done:
            self.log(f"[{name}] complete, skipped")
            return 0.0
        self.log(f"[{name}] running")
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        self.log(f"[{name}] done in {dt:.1f} s")
        return dt

    # -- stages ---------------------------------------------------------------------------------
    def prepare(self) -> None:
        from kdlandmark.data.prepare import format_summary, prepare_dataset

        p = self.exp.prepare
        margins = {"margin": p.margin, "context_margin": p.context_margin}
        prepared = prepare_dataset(self.exp.dataset, self.exp.data_root, self.prepared_dir, size=p.size,
                                   splits=p.splits, skip_bad=p.skip_bad, workers=p.workers,
                                   **{k: v for k, v in margins.items() if v is not None})
        self.log(format_summary(prepared))

    def asm_done(self) -> bool:
        return (self.prepared_dir / "train" / "soft_landmarks.npy").is_file() and \
            (self.root / "asm" / "asm_variance.json").is_file()

    def asm(self) -> None:
        from kdlandmark.shape.soften import soften_prepared

        a = self.exp.asm
        soften_prepared(self.prepared_dir, a.variance, procrustes=a.procrustes, out=self.root / "asm")

    def train_done(self, role: str) -> bool:
        return (self.root / role / "result.json").is_file()

    def train(self, role: str) -> None:
        from kdlandmark.train.checkpoint import STATE_META, resolve_checkpoint_dir
        from kdlandmark.train.trainer import train

        run = self.root / role
        resume = resolve_checkpoint_dir(run / "last", STATE_META) is not None
        result = train(train_config(self.exp, role, resume=resume))
        result = {k: v for k, v in result.items() if k != "history"}
        write_json_atomic(run / "result.json", result)

    def evaluate_done(self) -> bool:
        return all((self.eval_dir(r) / "metrics.json").is_file() for r in ROLE_LABELS)

    def evaluate(self) -> None:
        from kdlandmark.evaluate.evaluator import evaluate_checkpoint

        ev = self.exp.eval
        for role in ROLE_LABELS:
            if (self.eval_dir(role) / "metrics.json").is_file():
                continue
            evaluate_checkpoint(self.root / role / "best", self.prepared_dir, dataset=self.exp.dataset,
                                out_dir=self.eval_dir(role), normalisation=ev.normalisation,
                                threshold=ev.failure_threshold, splits=ev.splits, name=ROLE_LABELS[role])

    def results(self) -> dict:
        """``results.json`` and ``results.md``: every model on every subset."""
        rows = {}
        for role, label in ROLE_LABELS.items():
            m = json.loads((self.eval_dir(role) / "metrics.json").read_text())
            rows[role] = {"label": label, "subsets": m["subsets"], "params": m.get("params"),
                          "flops": m.get("flops")}
        table = results_table(rows, self.exp.eval.failure_threshold)
        ev = self.exp.eval
        out = {"name": self.exp.name, "dataset": self.exp.dataset, "normalisation": ev.normalisation,
               "threshold": ev.failure_threshold, "models": rows}
        write_json_atomic(self.root / "results.json", out)
        (self.root / "results.md").write_text(f"# {self.exp.name}: results\n\n{table}\n", encoding="utf-8")
        self.log(table)
        return out

    def report(self) -> None:
        from kdlandmark.evaluate.report import write_report

        html, md = write_report(
            self.root, title=f"kdlandmark: {self.exp.name}",
            models={ROLE_LABELS[r]: self.eval_dir(r) for r in ROLE_LABELS},
            train_dirs={ROLE_LABELS[r]: self.root / r for r in ROLE_LABELS},
            asm_dir=self.root / "asm", dataset=self.exp.dataset)
        self.log(f"report: {html}\n        {md}")

    # -- driver ---------------------------------------------------------------------------------
    def run(self, stages: Sequence[str] = STAGES) -> dict[str, float]:
        from kdlandmark.data.store import PreparedSet

        unknown = [s for s in stages if s not in STAGES]
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; stages: {', '.join(STAGES)}")
        self.root.mkdir(parents=True, exist_ok=True)
        save_config(self.exp, self.root / "config.yaml")
        times: dict[str, float] = {}
        plan: dict[str, tuple[Callable[[], bool], Callable[[], object]]] = {
            "prepare": (lambda: PreparedSet.is_complete(self.prepared_dir), self.prepare),
            "asm": (self.asm_done, self.asm),
            **{r: ((lambda r=r: self.train_done(r)), (lambda r=r: self.train(r))) for r in ROLE_LABELS},
            "evaluate": (self.evaluate_done, self.evaluate),
            "results": (lambda: False, self.results),
            "report": (lambda: False, self.report),
        }
        for name in STAGES:
            if name in stages:
                done, fn = plan[name]
                times[name] = self._timed(name, done(), fn)
        write_json_atomic(self.root / "stage_times.json", times)
        return times


def results_table(rows: dict[str, dict], threshold: float) -> str:
    """Markdown table: one row per model, NME / FR / AUC per subset."""
    subsets = list(next(iter(rows.values()))["subsets"])
    head = "| model | " + " | ".join(f"{s} NME % | {s} FR@{threshold:g} % | {s} AUC" for s in subsets) + " |"
    sep = "|---|" + "---:|" * (3 * len(subsets))
    lines = [head, sep]
    for row in rows.values():
        cells = []
        for s in subsets:
            m = row["subsets"][s]
            cells += [f"{m['nme']:.2f}", f"{m['fr']:.2f}", f"{m['auc']:.3f}"]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_pipeline(config: str | Path | ExperimentConfig, overrides: Sequence[str] = (), *,
                 data_root: str | Path | None = None, out: str | Path | None = None,
                 stages: Sequence[str] = STAGES) -> dict[str, float]:
    """Run (or resume) the whole recipe of ``config`` (a preset name, YAML path or config object)."""
    exp = config if isinstance(config, ExperimentConfig) else load_config(resolve_preset(config), overrides)
    if data_root is not None:
        exp.data_root = str(data_root)
    if out is not None:
        exp.out = str(out)
    if not exp.data_root:
        raise ValueError("no dataset folder: pass --data-root DIR or set data_root in the config")
    return Pipeline(exp).run(stages)


NEXT_STEPS = """\
Next steps:
  - real data: kdlandmark pipeline --config configs/paper-300w.yaml --data-root /path/to/300W --out runs/300w
    (also paper-cofw, paper-wflw; docs/DATASETS.md says which folders each expects)
  - on a GPU the same command trains with bf16 and channels-last automatically; several GPUs:
    torchrun --nproc_per_node 8 -m kdlandmark train --config ... --role kd   (docs/TRAINING.md)
  - change anything from the command line: kdlandmark pipeline --config ... student.optim.epochs=300
"""


def run_demo(out: str | Path = "runs/demo", *, count: int = 1500, seed: int = 0,
             overrides: Sequence[str] = (), config: str | Path = "demo") -> dict[str, float]:
    """Synthesise a small 300W-format dataset and run the whole recipe on it with the CPU preset."""
    from kdlandmark.data import synth

    exp = load_config(resolve_preset(config), overrides)
    out = Path(out)
    exp.out, exp.seed = str(out), seed
    data = out / "data"
    exp.data_root = str(data)
    t0 = time.perf_counter()
    if not (data / "synth.json").is_file():  # written by synthesize once the dataset is complete
        summary = synth.synthesize(exp.dataset, count, data, seed=seed, size=192)
        print(synth.format_summary(summary))
    synth_s = time.perf_counter() - t0
    times = {"synth": synth_s, **Pipeline(exp).run()}
    total = sum(times.values())
    print("stage times: " + ", ".join(f"{k} {v:.0f}s" for k, v in times.items()) + f"; total {total:.0f}s")
    print(NEXT_STEPS)
    return times
