"""The paper's recipe as resumable stages.

[synth] -> prepare -> asm -> tough -> tolerant -> kd -> l2 -> evaluate -> results (table) -> report

``synth`` runs when the config asks for synthetic data (``synth.count > 0``): it writes the dataset
to ``data_root`` (default ``<out>/data``), from rendered faces and, with ``synth.pool``, real faces.

Each stage looks at its own output first and skips itself when that output is complete, so a killed
pipeline started again with the same command resumes where it stopped (a half-finished training run
is resumed from its last checkpoint, not restarted).  A folder that another configuration made is
refused with the differing keys named, so stale results are never reported as new ones.

With ``jobs: N`` (N > 1) the training stages run side by side, each in its own
``kdlandmark pipeline --stages ROLE`` process with a share of the CPU threads (or its own GPU when
there are N of them): the two teachers and the L2 student are independent, the KD student waits for
both teachers.  Each process logs to ``logs/ROLE.log`` under the experiment folder.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kdlandmark.atomic import write_json_atomic
from kdlandmark.config import (
    ConfigError,
    ExperimentConfig,
    config_to_dict,
    load_config,
    save_config,
    train_config,
)

__all__ = ["STAGES", "ROLE_LABELS", "Pipeline", "run_pipeline", "resolve_preset"]

#: Training roles in pipeline order and how reports name them.
ROLE_LABELS = {
    "tough": "Tough-Teacher",
    "tolerant": "Tolerant-Teacher",
    "l2": "Student (L2)",
    "kd": "Student (KD-Loss)",
}
STAGES = ("synth", "prepare", "asm", "tough", "tolerant", "kd", "l2", "evaluate", "results", "report")
#: Training stages and the training stages they need (prepare and ASM always run before them).
TRAIN_DEPS = {"tough": (), "tolerant": (), "kd": ("tough", "tolerant"), "l2": ()}

#: The bundled presets: package data, so that an installed wheel has them too.
_CONFIG_DIR = Path(__file__).resolve().parent / "configs"


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

    def eval_dir(self, role: str, tag: str | None = None) -> Path:
        """Where ``role``'s evaluation goes: ``eval/<role>`` (the test set), ``eval/<tag>/<role>``."""
        return self.root / "eval" / role if tag is None else self.root / "eval" / tag / role

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
    def synth_done(self) -> bool:
        from kdlandmark.data.synth.dataset import MARKER

        return self.exp.synth.count == 0 or (Path(self.exp.data_root) / MARKER).is_file()

    def synth(self) -> None:
        from kdlandmark.data.synth import format_summary, synthesize

        sy = self.exp.synth
        summary = synthesize(self.exp.dataset, sy.count, Path(self.exp.data_root), seed=self.exp.seed,
                             size=sy.size, test_fraction=sy.test_fraction, workers=sy.workers, pool=sy.pool,
                             pool_fraction=sy.pool_fraction, hybrid_fraction=sy.hybrid_fraction,
                             pool_style=sy.style)
        self.log(format_summary(summary))

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
        soften_prepared(self.prepared_dir, a.variance, procrustes=a.procrustes, clip=a.clip,
                        max_iter=a.max_iter, out=self.root / "asm")

    def train_done(self, role: str) -> bool:
        return (self.root / role / "result.json").is_file()

    def train(self, role: str) -> None:
        from kdlandmark.train.checkpoint import has_training_state
        from kdlandmark.train.trainer import train

        run = self.root / role
        result = train(train_config(self.exp, role, resume=has_training_state(run)))
        result = {k: v for k, v in result.items() if k != "history"}
        write_json_atomic(run / "result.json", result)

    def evaluate_done(self) -> bool:
        tags = [None] + [tag for _, tag in self.extra_folders()]
        roles = [r for r in ROLE_LABELS if self.train_done(r)]
        return bool(roles) and all((self.eval_dir(r, t) / "metrics.json").is_file()
                                   for r in roles for t in tags)

    def evaluate(self) -> None:
        from kdlandmark.evaluate.evaluator import evaluate_checkpoint

        ev = self.exp.eval
        for role in _trained_roles(self, "evaluate"):
            if not (self.eval_dir(role) / "metrics.json").is_file():
                evaluate_checkpoint(self.root / role / "best", self.prepared_dir, dataset=self.exp.dataset,
                                    out_dir=self.eval_dir(role), normalisation=ev.normalisation,
                                    threshold=ev.failure_threshold, splits=ev.splits, batch=ev.batch_size,
                                    name=ROLE_LABELS[role])
            for folder, tag in self.extra_folders():
                out = self.eval_dir(role, tag)
                if not (out / "metrics.json").is_file():
                    evaluate_checkpoint(self.root / role / "best", folder, dataset="folder", out_dir=out,
                                        normalisation=ev.normalisation, threshold=ev.failure_threshold,
                                        batch=ev.batch_size, name=ROLE_LABELS[role], latency_runs=0)

    def extra_folders(self) -> list[tuple[Path, str]]:
        """``(folder, tag)`` of the ``eval.folders`` that are there (the others are named in the log)."""
        found = []
        for folder in self.exp.eval.folders:
            path = Path(folder)
            if path.is_dir():
                found.append((path, f"folder-{path.name}"))
            else:
                self.log(f"[evaluate] {folder}: not found, not evaluated")
        return found

    def results(self) -> dict:
        """``results.json`` and ``results.md``: every model on every subset, then on every extra folder
        with the KD-Loss student compared to the L2 student (paired bootstrap) when both were trained."""
        from kdlandmark.evaluate.compare import compare

        ev = self.exp.eval
        roles = _trained_roles(self, "results")
        rows = self._rows(None, roles)
        table = results_table(rows, ev.failure_threshold)
        out = {"name": self.exp.name, "dataset": self.exp.dataset, "normalisation": ev.normalisation,
               "threshold": ev.failure_threshold, "models": rows, "folders": {}}
        text = f"# {self.exp.name}: results\n\n{table}\n"
        for folder, tag in self.extra_folders():
            extra = self._rows(tag, roles)
            sig: dict = {}
            if {"l2", "kd"} <= set(roles):
                cmp = compare([self.eval_dir("l2", tag), self.eval_dir("kd", tag)],
                              self.root / "compare" / tag, labels=[ROLE_LABELS["l2"], ROLE_LABELS["kd"]])
                sig = cmp["significance"][0] if cmp["significance"] else {}
            out["folders"][str(folder)] = {"models": extra, "kd_vs_l2": sig}
            text += f"\n## {folder}\n\n{results_table(extra, ev.failure_threshold)}\n\n"
            if sig:
                lo, hi = sig["ci95"]
                text += (f"KD-Loss student minus L2 student, mean per-face NME: {sig['mean_diff']:+.2f} "
                         f"points [{lo:+.2f}, {hi:+.2f}], p = {sig['p_value']:.3g} (paired bootstrap; "
                         f"{self.root / 'compare' / tag / 'compare.md'})\n")
        write_json_atomic(self.root / "results.json", out)
        (self.root / "results.md").write_text(text, encoding="utf-8")
        self.log(text)
        return out

    def _rows(self, tag: str | None, roles: Sequence[str]) -> dict[str, dict]:
        rows = {}
        for role in roles:
            m = json.loads((self.eval_dir(role, tag) / "metrics.json").read_text())
            rows[role] = {"label": ROLE_LABELS[role], "subsets": m["subsets"], "params": m.get("params"),
                          "flops": m.get("flops")}
        return rows

    def report(self) -> None:
        from kdlandmark.evaluate.report import write_report

        roles = _trained_roles(self, "report")
        html, md = write_report(
            self.root, title=f"kdlandmark: {self.exp.name}",
            models={ROLE_LABELS[r]: self.eval_dir(r) for r in roles},
            train_dirs={ROLE_LABELS[r]: self.root / r for r in roles},
            asm_dir=self.root / "asm", dataset=self.exp.dataset)
        self.log(f"report: {html}\n        {md}")

    # -- driver ---------------------------------------------------------------------------------
    def run(self, stages: Sequence[str] = STAGES) -> dict[str, float]:
        from kdlandmark.data.store import PreparedSet

        unknown = [s for s in stages if s not in STAGES]
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; stages: {', '.join(STAGES)}")
        if not self.exp.data_root and self.exp.synth.count:
            self.exp.data_root = str(self.root / "data")
        if not self.exp.data_root:
            raise ValueError("no dataset folder: pass --data-root DIR, set data_root in the config, or ask "
                             "for synthetic data (synth.count)")
        self._check_same_config()
        self.root.mkdir(parents=True, exist_ok=True)
        save_config(self.exp, self.root / "config.yaml")
        times: dict[str, float] = {}
        plan: dict[str, tuple[Callable[[], bool], Callable[[], object]]] = {
            "synth": (self.synth_done, self.synth),
            "prepare": (lambda: PreparedSet.is_complete(self.prepared_dir), self.prepare),
            "asm": (self.asm_done, self.asm),
            **{r: ((lambda r=r: self.train_done(r)), (lambda r=r: self.train(r))) for r in ROLE_LABELS},
            "evaluate": (self.evaluate_done, self.evaluate),
            "results": (lambda: False, self.results),
            "report": (lambda: False, self.report),
        }
        parallel = [r for r in STAGES if r in TRAIN_DEPS and r in stages and not self.train_done(r)]
        for name in STAGES:
            if name not in stages:
                continue
            if self.exp.jobs > 1 and len(parallel) > 1 and name in parallel:
                if name == parallel[0]:
                    times.update(self._train_parallel(parallel, self.exp.jobs))
                continue
            if name == "synth" and not self.exp.synth.count:
                continue  # the data are on disk already
            done, fn = plan[name]
            times[name] = self._timed(name, done(), fn)
        _add_stage_times(self.root / "stage_times.json", times)
        return times

    def _check_same_config(self) -> None:
        """Refuse to continue a folder that another configuration made: its finished stages would be
        skipped and their stale results reported as this configuration's."""
        saved = self.root / "config.yaml"
        if not saved.is_file():
            return
        ignore = {"jobs", "out"}  # how the stages are run and where the folder is, not what they make
        old = {k: v for k, v in config_to_dict(load_config(saved)).items() if k not in ignore}
        new = {k: v for k, v in config_to_dict(self.exp).items() if k not in ignore}
        diff = _differences(old, new)
        if diff:
            shown = "; ".join(diff[:6]) + ("; ..." if len(diff) > 6 else "")
            raise ConfigError(f"{saved}: this experiment folder was made with another configuration "
                              f"({shown}).  Pass another --out, or delete the folder to start again.")

    # -- side-by-side training ------------------------------------------------------------------
    def _job_env(self, slot: int, jobs: int) -> dict[str, str]:
        """Environment of the job in ``slot``: its share of the CPU threads, its own GPU if there are
        enough of them (and the user has not pinned devices)."""
        import torch

        env = dict(os.environ)
        threads = str(max(1, (os.cpu_count() or 1) // jobs))
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = threads
        if torch.cuda.is_available() and torch.cuda.device_count() >= jobs and \
                "CUDA_VISIBLE_DEVICES" not in os.environ and self.exp.runtime.device == "auto":
            env["CUDA_VISIBLE_DEVICES"] = str(slot)
        return env

    def _epochs_done(self, role: str) -> int:
        csv_path = self.root / role / "metrics.csv"
        try:
            return max(0, len(csv_path.read_text(encoding="utf-8").splitlines()) - 1)
        except OSError:
            return 0

    def _train_parallel(self, roles: Sequence[str], jobs: int) -> dict[str, float]:
        """Train ``roles`` in up to ``jobs`` processes at once, each started when its inputs are done.

        A failed job stops the others (each can resume later from its last checkpoint) and raises a
        :class:`RuntimeError` that names the stage and ends with its log.
        """
        from tqdm.auto import tqdm

        cfg_path = self.root / "config.yaml"
        logs = self.root / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        waiting = list(roles)
        running: dict[str, tuple[subprocess.Popen, int, float, Path]] = {}
        times: dict[str, float] = {}
        epochs = {r: (self.exp.teacher if r in ("tough", "tolerant") else self.exp.student).optim.epochs
                  for r in roles}
        self.log(f"[{', '.join(roles)}] running, up to {jobs} at once (logs: {logs})")
        bar = tqdm(total=sum(epochs.values()), desc="training", unit="epoch", dynamic_ncols=True,
                   disable=None)
        try:
            while waiting or running:
                free = [i for i in range(jobs) if i not in {v[1] for v in running.values()}]
                for role in list(waiting):
                    if not free:
                        break
                    if any(d in waiting or d in running for d in TRAIN_DEPS[role]):
                        continue  # its teachers are still training
                    slot = free.pop(0)
                    log = logs / f"{role}.log"
                    cmd = [sys.executable, "-m", "kdlandmark", "pipeline", "--config", str(cfg_path),
                           "--stages", role, "--jobs", "1"]
                    with open(log, "ab") as fh:
                        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT,
                                                env=self._job_env(slot, jobs))
                    running[role] = (proc, slot, time.perf_counter(), log)
                    waiting.remove(role)
                    tqdm.write(f"[{role}] started (log: {log})")
                time.sleep(0.5)
                for role, (proc, _slot, t0, log) in list(running.items()):
                    rc = proc.poll()
                    if rc is None:
                        continue
                    del running[role]
                    if rc != 0 or not self.train_done(role):
                        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
                        raise RuntimeError(f"[{role}] failed (exit status {rc}); the last lines of {log}:\n"
                                           f"{tail}")
                    times[role] = time.perf_counter() - t0
                    tqdm.write(f"[{role}] done in {times[role]:.1f} s")
                bar.n = sum(min(epochs[r], self._epochs_done(r)) for r in roles)
                bar.set_postfix_str(", ".join(sorted(running)))
                bar.refresh()
        finally:
            for proc, *_ in running.values():
                proc.terminate()
            for proc, *_ in running.values():
                proc.wait()
            bar.close()
        return times


def _trained_roles(pipe: Pipeline, stage: str) -> list[str]:
    """The roles of ``pipe`` whose training finished (``--stages`` may leave some out: e.g. teachers and
    KD-Loss student without the L2 one); the others are named in ``stage``'s log line.  ``ValueError``
    if none did."""
    roles = [r for r in ROLE_LABELS if pipe.train_done(r)]
    missing = [r for r in ROLE_LABELS if r not in roles]
    if not roles:
        raise ValueError(f"{pipe.root}: no model is trained yet (run the training stages first)")
    if missing:
        pipe.log(f"[{stage}] not trained, left out: {', '.join(missing)}")
    return roles


def _add_stage_times(path: Path, times: dict[str, float]) -> None:
    """Write ``times`` into ``path`` over the times of earlier invocations of the same run (a stage
    skipped as complete, time 0, keeps its recorded time)."""
    recorded = json.loads(path.read_text()) if path.is_file() else {}
    write_json_atomic(path, {**recorded, **{k: v for k, v in times.items() if v > 0 or k not in recorded}})


def _differences(old: object, new: object, key: str = "") -> list[str]:
    """``key: old -> new`` for every leaf where two nested config dicts differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in list(old) + [k for k in new if k not in old]:
            out += _differences(old.get(k), new.get(k), f"{key}.{k}" if key else str(k))
        return out
    return [] if old == new else [f"{key}: {old!r} -> {new!r}"]


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
                 stages: Sequence[str] = STAGES, jobs: int | None = None) -> dict[str, float]:
    """Run (or resume) the whole recipe of ``config`` (a preset name, YAML path or config object);
    ``jobs`` overrides the config's number of side-by-side training stages."""
    exp = config if isinstance(config, ExperimentConfig) else load_config(resolve_preset(config), overrides)
    if jobs is not None:
        exp = dataclasses.replace(exp, jobs=jobs)  # validated like a config value
    if data_root is not None:
        exp.data_root = str(data_root)
    if out is not None:
        exp.out = str(out)
    return Pipeline(exp).run(stages)


NEXT_STEPS = """\
Next steps:
  - real data: kdlandmark pipeline --config paper-300w --data-root /path/to/300W --out runs/300w
    (also paper-cofw, paper-wflw; docs/DATASETS.md says which folders each expects)
  - on a GPU the same command trains with bf16 and channels-last automatically; several GPUs:
    torchrun --nproc_per_node 8 -m kdlandmark train --config ... --role kd   (docs/TRAINING.md)
  - change anything from the command line: kdlandmark pipeline --config ... student.optim.epochs=300
"""


def run_demo(out: str | Path = "runs/demo", *, count: int | None = None, seed: int = 0,
             overrides: Sequence[str] = (), config: str | Path = "demo", jobs: int | None = None
             ) -> dict[str, float]:
    """The whole recipe of a preset that makes its own synthetic data (default: the CPU demo), in ``out``
    (its data in ``out/data``); ``count`` overrides the preset's number of synthetic faces."""
    exp = load_config(resolve_preset(config), overrides)
    if jobs is not None:
        exp = dataclasses.replace(exp, jobs=jobs)
    if count is not None:
        exp.synth = dataclasses.replace(exp.synth, count=count)
    if not exp.synth.count:
        raise ConfigError(f"{config}: the preset makes no synthetic data (synth.count is 0); "
                          "use kdlandmark pipeline with --data-root")
    out = Path(out)
    exp.out, exp.seed, exp.data_root = str(out), seed, str(out / "data")
    times = Pipeline(exp).run()
    total = sum(times.values())
    print("stage times: " + ", ".join(f"{k} {v:.0f}s" for k, v in times.items()) + f"; total {total:.0f}s")
    print(NEXT_STEPS)
    return times
