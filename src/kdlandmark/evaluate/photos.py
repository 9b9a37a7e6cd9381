"""Whole photographs, end to end: are the faces found, and how good are their landmarks?

The development set of real faces (``../shared/realfaces``, its README) ships ``photos.json``: for each
photograph, its faces' 68 landmarks (labels made by dlib's predictor), and the crop each face was cut
into (``faces/`` for measurement, ``pool/`` for training).  :func:`photo_benchmark` runs a landmarker
on whole photos, as a user would (its own detector, no box given), matches its faces to the labelled
ones (IoU of the landmark boxes at least 0.3, each face used once) and reports

* how many labelled faces were found, and how many faces were found that are not labelled (false
  positives; an unlabelled real face counts as one, so this is an upper bound);
* the NME (inter-ocular, as the 300W protocol) of the found faces' landmarks, and of the same faces
  when the landmarker is given their true landmark boxes instead: the gap is what detection costs.

A *landmarker* is anything with ``predict(images, boxes=None)`` returning per image a list of faces
with ``landmarks`` (:class:`kdlandmark.infer.landmarker.Landmarker`), so this module needs no
inference code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from kdlandmark.data.crop import landmark_box
from kdlandmark.errors import DatasetError
from kdlandmark.evaluate.metrics import nme_per_image
from kdlandmark.layouts import get_layout

__all__ = ["read_photos", "photo_benchmark", "format_photo_benchmark"]


def read_photos(root: str | Path, folder: str = "faces") -> list[tuple[Path, np.ndarray]]:
    """``(photo path, (F, 68, 2) landmarks)`` of the photos of ``root/photos.json`` whose faces were cut
    into ``folder`` (``faces``: the development photos; ``pool``: the training pool's)."""
    root = Path(root)
    index_path = root / "photos.json"
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetError(index_path, f"cannot read the photo index ({exc})") from None
    out = []
    for name, faces in sorted(index.items()):
        if not faces or not all(str(f.get("crop", "")).startswith(folder + "/") for f in faces):
            continue
        try:
            lms = np.asarray([f["landmarks"] for f in faces], np.float64)
        except (KeyError, TypeError, ValueError):
            raise DatasetError(index_path, f"{name}: faces need 'landmarks' lists of (x, y)") from None
        if lms.ndim != 3 or lms.shape[2] != 2:
            raise DatasetError(index_path, f"{name}: landmarks of shape {lms.shape}, expected (F, N, 2)")
        out.append((root / "photos" / name, lms))
    if not out:
        raise DatasetError(index_path, f"no photo whose faces are all in {folder}/")
    return out


def _iou(a: tuple, b: tuple) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def photo_benchmark(landmarker: Any, root: str | Path, folder: str = "faces", min_iou: float = 0.3) -> dict:
    """End-to-end and given-box figures of ``landmarker`` on the photos of ``folder`` (see the module).

    Returns ``photos``, ``faces``, ``found``, ``recall``, ``false_positives``, ``false_positives_per_photo``,
    ``nme_found`` (end to end, mean over the found faces, fraction), ``nme_given`` (the same faces from
    their true landmark boxes), ``nme_given_all`` (every face from its true box), ``failure_rate_found``
    (NME > 0.1 among found faces) and per-face lists ``per_face`` (photo, index, found, NMEs).
    """
    layout = get_layout("300w")
    photos = read_photos(root, folder)
    images = [str(p) for p, _ in photos]
    detected = landmarker.predict(images)
    given = landmarker.predict(images, boxes=[[landmark_box(lm) for lm in lms] for _, lms in photos])
    rows, false = [], 0
    for (path, lms), found, boxed in zip(photos, detected, given, strict=True):
        boxes = [landmark_box(f.landmarks) for f in found]
        used: set[int] = set()
        for k, lm in enumerate(lms):
            truth = landmark_box(lm)
            best, best_iou = None, min_iou
            for j, b in enumerate(boxes):
                iou = _iou(b, truth)
                if j not in used and iou >= best_iou:
                    best, best_iou = j, iou
            nme_given = float(nme_per_image(boxed[k].landmarks[None], lm[None], layout)[0])
            nme_found = None
            if best is not None:
                used.add(best)
                nme_found = float(nme_per_image(found[best].landmarks[None], lm[None], layout)[0])
            rows.append({"photo": path.name, "face": k, "found": best is not None, "nme_found": nme_found,
                         "nme_given": nme_given})
        false += len(boxes) - len(used)
    hit = [r for r in rows if r["found"]]
    return {
        "photos": len(photos), "faces": len(rows), "found": len(hit), "recall": len(hit) / len(rows),
        "false_positives": false, "false_positives_per_photo": false / len(photos),
        "nme_found": float(np.mean([r["nme_found"] for r in hit])) if hit else float("nan"),
        "nme_given": float(np.mean([r["nme_given"] for r in hit])) if hit else float("nan"),
        "nme_given_all": float(np.mean([r["nme_given"] for r in rows])),
        "failure_rate_found": float(np.mean([r["nme_found"] > 0.1 for r in hit])) if hit else float("nan"),
        "per_face": rows,
    }


def format_photo_benchmark(result: dict, *, model: str = "") -> str:
    """Human-readable lines for a :func:`photo_benchmark` result (NME in percent)."""
    head = f"whole photographs: {result['photos']} photos, {result['faces']} labelled faces"
    return "\n".join([
        head + (f" ({model})" if model else ""),
        f"  found          {result['found']}/{result['faces']} (recall {100 * result['recall']:.1f} %), "
        f"{result['false_positives']} false positive(s), {result['false_positives_per_photo']:.2f} per photo",
        f"  NME found      {100 * result['nme_found']:.2f} %  (end to end, the model's own detector; "
        f"failure rate {100 * result['failure_rate_found']:.1f} % at 0.1)",
        f"  NME given box  {100 * result['nme_given']:.2f} %  (the same faces from their true boxes; "
        f"every face: {100 * result['nme_given_all']:.2f} %)",
    ])
