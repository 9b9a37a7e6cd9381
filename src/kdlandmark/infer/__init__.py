"""Inference: the public :class:`Landmarker`, face detection, ONNX export, the predict command, benchmarks.

Modules: :mod:`.landmarker` (``Landmarker.from_checkpoint(path)(image)``), :mod:`.detect` (Haar cascade,
whole-image and user detectors, the Haar -> landmark box calibration), :mod:`.export` (ONNX export and
checked loading), :mod:`.predict` (``kdlandmark predict``), :mod:`.bench` (``kdlandmark bench infer``).
See docs/INFERENCE.md.  Imports are lazy so that ``import kdlandmark.infer`` stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Landmarker", "FaceLandmarks", "export_onnx", "load_onnx", "HaarDetector", "FullImageDetector"]

_LAZY = {
    "Landmarker": "kdlandmark.infer.landmarker",
    "FaceLandmarks": "kdlandmark.infer.landmarker",
    "export_onnx": "kdlandmark.infer.export",
    "load_onnx": "kdlandmark.infer.export",
    "HaarDetector": "kdlandmark.infer.detect",
    "FullImageDetector": "kdlandmark.infer.detect",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kdlandmark.infer' has no attribute {name!r}")
