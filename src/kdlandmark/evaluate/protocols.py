"""The benchmarks' test protocols: which prepared splits and attribute filters make each subset.

Predictions are made on the test crop (from the dataset's face box, REFERENCE.md section 5), mapped
back through the crop affine and scored in original image pixels.

Subsets (REFERENCE.md sections 4 and 5):

* 300W: ``common`` (helen + lfpw test sets, 554), ``challenging`` (ibug, 135), ``full`` (both, 689)
  and ``private`` (300W private test set, 600) when it was prepared;
* WFLW: ``full`` (2500) and the six attribute subsets ``pose``, ``expression``, ``illumination``,
  ``makeup``, ``occlusion``, ``blur`` (faces whose flag is set);
* COFW: ``test`` (507);
* a folder: ``all``.

Normalisation is inter-ocular (outer eye corners) by default for every benchmark; inter-pupil and
box size (``sqrt(w * h)`` of the ground-truth landmarks' box) are options.  The layouts hold the indices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kdlandmark.data.crop import apply_affine, invert_affine
from kdlandmark.evaluate.metrics import Summary, summarise
from kdlandmark.layouts import Layout

WFLW_ATTRIBUTES = ("pose", "expression", "illumination", "makeup", "occlusion", "blur")

#: Normalising distances :meth:`kdlandmark.layouts.Layout.normaliser` knows.
NORMALISATIONS = ("inter-ocular", "inter-pupil", "box")

#: The benchmark's own default normalisation (REFERENCE.md section 5: outer eye corners everywhere).
DEFAULT_NORMALISATION = {"300w": "inter-ocular", "wflw": "inter-ocular", "cofw": "inter-ocular",
                         "folder": "inter-ocular"}

#: Failure thresholds used in the literature: 0.10 everywhere, 0.08 in some WFLW tables.
FAILURE_THRESHOLDS = (0.10, 0.08)

__all__ = [
    "Subset",
    "SUBSETS",
    "NORMALISATIONS",
    "DEFAULT_NORMALISATION",
    "FAILURE_THRESHOLDS",
    "subsets_for",
    "protocol_splits",
    "default_normalisation",
    "ground_truth_px",
    "subset_indices",
    "SubsetScore",
    "ProtocolScore",
    "score_protocol",
]


@dataclass(frozen=True)
class Subset:
    """One reported subset: the prepared splits it pools and an optional per-face attribute flag."""

    name: str
    splits: tuple[str, ...]
    attribute: str | None = None


SUBSETS: dict[str, tuple[Subset, ...]] = {
    "300w": (
        Subset("common", ("test-common",)),
        Subset("challenging", ("test-challenging",)),
        Subset("full", ("test-common", "test-challenging")),
        Subset("private", ("test-private",)),
    ),
    "wflw": (
        Subset("full", ("test",)),
        *(Subset(a, ("test",), a) for a in WFLW_ATTRIBUTES),
    ),
    "cofw": (Subset("test", ("test",)),),
    "folder": (Subset("all", ("all",)),),
}


def subsets_for(dataset: str, available_splits: list[str]) -> list[Subset]:
    """The dataset's subsets whose splits are all present (e.g. 300W private only when prepared)."""
    if dataset not in SUBSETS:
        raise ValueError(f"no evaluation protocol for dataset {dataset!r}; known: {', '.join(SUBSETS)}")
    return [s for s in SUBSETS[dataset] if all(sp in available_splits for sp in s.splits)]


def ground_truth_px(landmarks_stored: np.ndarray, affines: np.ndarray) -> np.ndarray:
    """Original-image landmarks from stored-crop landmarks and their image->crop affines."""
    return apply_affine(invert_affine(affines), landmarks_stored)


# --------------------------------------------------------------------------------------------- full scoring
def protocol_splits(dataset: str) -> tuple[str, ...]:
    """Every prepared split some subset of ``dataset`` reads, in protocol order (what to prepare)."""
    if dataset not in SUBSETS:
        raise ValueError(f"no evaluation protocol for dataset {dataset!r}; known: {', '.join(SUBSETS)}")
    out: list[str] = []
    for s in SUBSETS[dataset]:
        out += [sp for sp in s.splits if sp not in out]
    return tuple(out)


def default_normalisation(dataset: str) -> str:
    """The benchmark's default NME normalisation (inter-ocular for all three)."""
    return DEFAULT_NORMALISATION.get(dataset, "inter-ocular")


def _check_normalisation(normalisation: str) -> None:
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"unknown normalisation {normalisation!r}; use one of {', '.join(NORMALISATIONS)}")


def subset_indices(dataset: str, counts: dict[str, int], attributes: dict[str, list[dict]] | None = None
                   ) -> dict[str, list[tuple[str, np.ndarray]]]:
    """For each subset with all its splits present: ``[(split, face indices), ...]``.

    ``counts`` maps split -> number of faces; attribute subsets keep the faces whose flag is true in
    ``attributes[split][i]``.  Subsets that select no face are left out.
    """
    out: dict[str, list[tuple[str, np.ndarray]]] = {}
    for subset in subsets_for(dataset, list(counts)):
        parts: list[tuple[str, np.ndarray]] = []
        for sp in subset.splits:
            idx = np.arange(int(counts[sp]))
            if subset.attribute is not None:
                attrs = (attributes or {}).get(sp)
                if attrs is None or len(attrs) != counts[sp]:
                    raise ValueError(f"subset {subset.name!r} needs the {counts[sp]} attribute records of "
                                     f"split {sp!r}")
                idx = np.array([i for i, a in enumerate(attrs) if bool(a.get(subset.attribute, False))],
                               dtype=np.int64)
            parts.append((sp, idx))
        if sum(len(i) for _, i in parts):
            out[subset.name] = parts
    return out


@dataclass
class SubsetScore:
    """Everything measured on one subset: its summary, per-image NME and per-landmark error (fractions)."""

    name: str
    summary: Summary
    nme: np.ndarray
    per_landmark: np.ndarray
    members: list[tuple[str, np.ndarray]]

    def to_json(self) -> dict:
        """The ``metrics.json`` entry: NME/FR in %, AUC as a fraction, CI in %."""
        d = self.summary.as_percent()
        d.setdefault("nme_ci95", None)
        return d


@dataclass
class ProtocolScore:
    """All subsets of one evaluation plus the per-split per-image NMEs they were pooled from."""

    dataset: str
    normalisation: str
    threshold: float
    subsets: dict[str, SubsetScore]
    per_image: dict[str, np.ndarray]

    def to_json(self) -> dict:
        return {
            "dataset": self.dataset,
            "normalisation": self.normalisation,
            "threshold": self.threshold,
            "subsets": {k: v.to_json() for k, v in self.subsets.items()},
            "per_landmark": {k: [100.0 * float(x) for x in v.per_landmark] for k, v in self.subsets.items()},
        }


def score_protocol(dataset: str, layout: Layout, predictions: dict[str, np.ndarray],
                   truths: dict[str, np.ndarray], attributes: dict[str, list[dict]] | None = None, *,
                   normalisation: str | None = None, threshold: float = 0.10, bootstrap: int = 1000,
                   seed: int = 0) -> ProtocolScore:
    """Score per-split predictions by the protocol of ``dataset``.

    Args:
        dataset: ``300w``, ``wflw``, ``cofw`` or ``folder`` (see :data:`SUBSETS`).
        layout: the landmark layout (normalising points).
        predictions, truths: split -> ``(M, N, 2)`` landmarks in original image pixels.
        attributes: split -> per-face attribute dicts (needed for WFLW attribute subsets).
        normalisation: ``inter-ocular`` (default of the benchmark), ``inter-pupil`` or ``box``.
        threshold: failure threshold (fraction of the normaliser), also the CED/AUC upper limit.
        bootstrap: resamples for the 95 % interval of each subset's NME (0: none).
        seed: bootstrap seed (fixed, so a rescore reproduces the interval).
    """
    normalisation = normalisation or default_normalisation(dataset)
    _check_normalisation(normalisation)
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"failure threshold must be in (0, 1), got {threshold}")
    if set(predictions) != set(truths):
        raise ValueError(f"predictions for splits {sorted(predictions)} but ground truth for "
                         f"{sorted(truths)}")
    per_image: dict[str, np.ndarray] = {}
    point_err: dict[str, np.ndarray] = {}
    for sp in predictions:
        p = np.asarray(predictions[sp], dtype=np.float64)
        g = np.asarray(truths[sp], dtype=np.float64)
        if p.shape != g.shape or p.ndim != 3 or p.shape[1:] != (layout.num_points, 2):
            raise ValueError(f"split {sp!r}: predictions {p.shape} and ground truth {g.shape} must both be "
                             f"(M, {layout.num_points}, 2)")
        if len(p) == 0:
            per_image[sp] = np.zeros(0)
            point_err[sp] = np.zeros((0, layout.num_points))
            continue
        if not np.all(np.isfinite(p)):
            raise ValueError(f"split {sp!r}: predictions contain NaN or infinity")
        norm = layout.normaliser(g, normalisation)
        if np.any(norm <= 0):
            bad = int(np.flatnonzero(norm <= 0)[0])
            raise ValueError(f"split {sp!r}: face {bad} has a zero {normalisation} distance in its "
                             "ground truth")
        point_err[sp] = np.linalg.norm(p - g, axis=-1) / norm[:, None]
        per_image[sp] = point_err[sp].mean(axis=1)
    counts = {sp: len(v) for sp, v in per_image.items()}
    out: dict[str, SubsetScore] = {}
    for name, parts in subset_indices(dataset, counts, attributes).items():
        nme = np.concatenate([per_image[sp][idx] for sp, idx in parts])
        pts = np.concatenate([point_err[sp][idx] for sp, idx in parts])
        out[name] = SubsetScore(name, summarise(nme, threshold, bootstrap=bootstrap, seed=seed), nme,
                                pts.mean(axis=0), parts)
    return ProtocolScore(dataset, normalisation, float(threshold), out, per_image)
