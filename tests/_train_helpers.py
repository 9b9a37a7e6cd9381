"""Test utilities for the models, checkpoint and trainer tests: tiny prepared sets and tiny configs.

``make_fake_prepared`` writes a prepared set in the on-disk layout of :mod:`kdlandmark.data.store`
(``meta.json`` + ``<split>/images.npy, landmarks.npy, affines.npy, occluded.npy, boxes.npy,
samples.json`` and optionally ``soft_landmarks.npy``), readable by the real ``PreparedSet``.  The
images are learnable: each shows the landmarks as bright dots on a dark, noisy background, with the
face shifted and scaled at random, so a tiny network can lower its error within a few epochs.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np

from kdlandmark.data.crop import crop_affine
from kdlandmark.data.store import FORMAT_VERSION, PreparedSet
from kdlandmark.layouts import layout_for_points

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` imported as a module (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None, name
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MARGIN = 0.15
CONTEXT_MARGIN = 0.3


def _template(num_points: int, rng: np.random.Generator) -> np.ndarray:
    """A fixed point cloud in about [-0.45, 0.45], the layout's outer eye corners 0.5 apart."""
    t = np.linspace(0, 2 * np.pi, num_points, endpoint=False)
    base = np.stack([0.35 * np.cos(t), 0.45 * np.sin(t)], axis=1)
    base += rng.normal(0, 0.03, base.shape)
    a, b = layout_for_points(num_points).inter_ocular
    base[a], base[b] = (-0.25, -0.1), (0.25, -0.1)   # a sensible normalising distance for the NME
    return base.astype(np.float32)


def make_fake_prepared(root: str | Path, n: int = 24, size: int = 48, num_points: int = 29, *,
                       splits: dict[str, int] | None = None, soft: bool = True, seed: int = 0,
                       draw: bool = True) -> Path:
    """Write a small prepared set under ``root`` and return ``root``.

    Args:
        root: folder to create.
        n: faces in the ``train`` split (ignored when ``splits`` is given).
        size: stored crop side ``S``.
        num_points: landmarks per face (must be a known layout's count: 29, 68 or 98).
        splits: split name -> number of faces (default ``{"train": n, "test": max(4, n // 4)}``).
        soft: also write ``soft_landmarks.npy`` (a smoothed copy of the landmarks).
        seed: randomness of shapes, positions and noise.
        draw: draw the landmarks into the images (learnable); ``False`` writes noise (fast, for
            throughput measurements with large sets).
    """
    layout = layout_for_points(num_points)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    template = _template(num_points, rng)
    splits = splits or {"train": n, "test": max(4, n // 4)}
    view = size * (1 + 2 * MARGIN) / (1 + 2 * CONTEXT_MARGIN)   # side of the at-rest model view in px
    c = (size - 1) / 2.0
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for name, m in splits.items():
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        lms = np.empty((m, num_points, 2), np.float32)
        images = np.empty((m, size, size, 3), np.uint8)
        for i in range(m):
            scale = rng.uniform(0.8, 1.1) * view
            shift = rng.uniform(-0.12, 0.12, 2) * view
            shape = template + rng.normal(0, 0.015, template.shape).astype(np.float32)
            lm = shape * scale + c + shift
            lms[i] = lm
            if not draw:
                images[i] = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                continue
            img = rng.normal(30, 8, (size, size)).astype(np.float32)
            for x, y in lm:
                img += 200 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 2.0)
            img = np.clip(img, 0, 255)
            images[i] = np.stack([img, img * 0.8, img * 0.6], axis=-1).astype(np.uint8)
        boxes = np.array([[*lm.min(0), *lm.max(0)] for lm in lms], np.float32)
        affines = np.stack([crop_affine(b, size, CONTEXT_MARGIN) for b in boxes]).astype(np.float64)
        np.save(d / "images.npy", images)
        np.save(d / "landmarks.npy", lms)
        np.save(d / "affines.npy", affines)
        np.save(d / "occluded.npy", np.zeros((m, num_points), bool))
        np.save(d / "boxes.npy", boxes)
        if soft:
            mean = lms.mean(axis=0, keepdims=True)
            np.save(d / "soft_landmarks.npy", (0.7 * lms + 0.3 * mean).astype(np.float32))
        (d / "samples.json").write_text(json.dumps([{"image_path": f"fake/{name}/{i}.png", "attributes": {}}
                                                      for i in range(m)]))
    meta = {
        "format_version": FORMAT_VERSION, "dataset": "fake", "layout": layout.name,
        "num_points": num_points, "size": size, "margin": MARGIN, "context_margin": CONTEXT_MARGIN,
        "splits": {k: {"count": v} for k, v in splits.items()},
    }
    (root / "meta.json").write_text(json.dumps(meta, indent=1))
    return root


def open_prepared(root: str | Path) -> PreparedSet:
    """The prepared set at ``root`` (the real :class:`PreparedSet`)."""
    return PreparedSet(root)


def tiny_train_config(data: str | Path, out: str | Path, **changes):  # noqa: ANN201
    """A fast deterministic CPU :class:`TrainConfig` (tiny backbone, 32 px, no dropout)."""
    from kdlandmark.config import ModelConfig, OptimConfig, TrainConfig

    model = ModelConfig(backbone="mobilenetv2_050", input_size=32, dropout=0.0)
    optim = OptimConfig(name="adam", lr=1e-3, epochs=4, batch_size=4, schedule="cosine")
    cfg = TrainConfig(role="tough", data=str(data), out=str(out), model=model, optim=optim, seed=0,
                      deterministic=True, device="cpu", amp="off", channels_last=False, tensorboard=False,
                      val_fraction=0.25)
    for key, value in changes.items():
        setattr(cfg, key, value)
    return cfg


def python_env() -> dict[str, str]:
    """Environment for child Python processes: the source tree importable, few threads, no GPU."""
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(TESTS), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    env["MKL_NUM_THREADS"] = "1"
    env["CUDA_VISIBLE_DEVICES"] = ""
    env["PYTHONHASHSEED"] = "0"
    return env


PYTHON = sys.executable
