"""Procedural synthetic faces with exact landmarks in the 300W, WFLW and COFW layouts.

No real face data can be downloaded here, so the demo and the tests make their own: stylised faces
rendered from a 3D face model (identity, expression, head pose, skin, hair, light, background,
occluders, blur, noise, JPEG) whose landmarks are known exactly for all three layouts and agree
with each other.  Datasets are written in the benchmarks' native formats through
:func:`kdlandmark.data.formats.open_writer`, so they exercise the same readers as real data.
See docs/SYNTH.md.

Modules: :mod:`.face` (3D model and layout sampling), :mod:`.render` (drawing),
:mod:`.dataset` (datasets, contact sheets, figures).
"""

from kdlandmark.data.synth.dataset import (
    contact_sheet,
    format_summary,
    frontal_shape,
    mean_shape_baseline_nme,
    render_face,
    synthesize,
)
from kdlandmark.data.synth.face import FaceShape, build_geometry, landmarks_3d
from kdlandmark.data.synth.render import RenderedFace, render_scene, sample_scene

__all__ = [
    "synthesize",
    "format_summary",
    "contact_sheet",
    "render_face",
    "frontal_shape",
    "mean_shape_baseline_nme",
    "FaceShape",
    "build_geometry",
    "landmarks_3d",
    "RenderedFace",
    "render_scene",
    "sample_scene",
]
