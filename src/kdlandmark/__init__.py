"""kdlandmark: facial landmark detectors trained by knowledge distillation.

Public API (everything else may change):

- :func:`read_dataset` -- read 300W, WFLW, COFW or a folder of ``.pts`` files into :class:`FaceSample`.
- :func:`fit_asm` -- point-distribution model and soft landmarks.
- :func:`kd_loss` -- the KD-Loss of Fard & Mahoor (2022).
- :class:`Landmarker` -- inference on images.

Everything but the error classes is imported on first use, so ``import kdlandmark`` (and
``kdlandmark --help``) loads neither torch nor NumPy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kdlandmark.errors import CheckpointError, ConfigError, DatasetError, UserError

__version__ = "0.1.0"

__all__ = [
    "UserError",
    "DatasetError",
    "CheckpointError",
    "ConfigError",
    "FaceSample",
    "LAYOUTS",
    "Layout",
    "get_layout",
    "layout_for_points",
    "read_dataset",
    "fit_asm",
    "kd_loss",
    "Landmarker",
]

_LAZY = {
    "FaceSample": "kdlandmark.data.samples",
    "LAYOUTS": "kdlandmark.layouts",
    "Layout": "kdlandmark.layouts",
    "get_layout": "kdlandmark.layouts",
    "layout_for_points": "kdlandmark.layouts",
    "read_dataset": "kdlandmark.data.formats",
    "fit_asm": "kdlandmark.shape.asm",
    "kd_loss": "kdlandmark.losses",
    "Landmarker": "kdlandmark.infer.landmarker",
}

if TYPE_CHECKING:  # pragma: no cover
    from kdlandmark.data.formats import read_dataset
    from kdlandmark.data.samples import FaceSample
    from kdlandmark.infer.landmarker import Landmarker
    from kdlandmark.layouts import LAYOUTS, Layout, get_layout, layout_for_points
    from kdlandmark.losses import kd_loss
    from kdlandmark.shape.asm import fit_asm


def __getattr__(name: str) -> Any:
    """Import heavy parts (NumPy, torch, h5py) only when they are used."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kdlandmark' has no attribute {name!r}")
