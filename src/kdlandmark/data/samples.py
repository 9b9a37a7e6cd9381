"""The record every reader returns: one annotated face in one image."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kdlandmark.errors import DatasetError

__all__ = ["FaceSample", "DatasetError"]


@dataclass
class FaceSample:
    """One face.

    Attributes:
        image_path: the image file.  For formats that embed images (COFW ``.mat``) this is
            ``"<file.mat>#<index>"`` and ``image`` holds the pixels.
        landmarks: ``(N, 2)`` float32, x then y, 0-based pixel coordinates.
        box: face box ``(x0, y0, x1, y1)`` in pixels: the dataset's own box where it has one,
            otherwise the landmarks' bounding box.
        attributes: per-face flags and facts (WFLW: pose, expression, ...; 300W: subset).
        occluded: ``(N,)`` bool per point, or None where the format has no occlusion labels.
        image: decoded BGR uint8 image for formats that embed pixels, else None.
    """

    image_path: str
    landmarks: np.ndarray
    box: tuple[float, float, float, float]
    attributes: dict = field(default_factory=dict)
    occluded: np.ndarray | None = None
    image: np.ndarray | None = field(default=None, repr=False)

    @property
    def num_points(self) -> int:
        return int(self.landmarks.shape[0])
