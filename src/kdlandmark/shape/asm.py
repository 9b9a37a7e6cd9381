"""Point distribution model (the "active shape model" of the paper) and soft landmarks.

The Tolerant-Teacher of Fard & Mahoor (2022) is trained on *soft landmarks*: every training shape is
projected onto the leading principal components of the training shapes and reconstructed, which keeps
the plausible, smooth part of the shape and drops the rest (REFERENCE.md section 2, "Soft landmarks")::

    b      = V^T (x - x_mean)                 shape parameters, one per kept component
    b      = clip(b, -3 sqrt(lambda), +3 sqrt(lambda))   classic ASM plausibility limit
    x_soft = x_mean + V b

``V`` holds the fewest eigenvectors of the shape covariance that explain at least ``variance`` of the
total variance (the authors' default is 90 %).

Two ways to build the model:

* ``procrustes=True`` (default, classic ASM; Cootes et al. 1995): shapes are first aligned to a common
  mean by generalised Procrustes analysis (similarity transforms: scale, rotation, translation, no
  reflection), the PCA models only the residual *shape* variation, and each soft shape is mapped back
  into its own frame with the inverse of its alignment.  Soft landmarks therefore keep the pose of the
  hard ones exactly, and softening commutes with similarity transforms.
* ``procrustes=False`` reproduces the authors' code (``pca_utility.py``): PCA directly on the given
  (crop-normalised) shapes.  Pose variation (in-plane rotation, scale, shift inside the crop) then
  takes part in the PCA and can itself be partly smoothed away.

At ``variance=1.0`` the model keeps the complete orthonormal basis (all ``2N`` eigenvectors, including
those of zero variance) and does not clip, so that ``soften`` returns its input to float precision for
*any* shape: 100 % means the hard landmarks, as in the authors' training script.  (Clipping at
``3 sqrt(lambda)`` would bite even then: an outlying training shape can reach ``sqrt(M - 1)``
standard deviations along a component, and unseen shapes have components of zero variance.)

Arrays: shapes are ``(M, N, 2)`` (x then y); internally a shape is flattened to ``x0, y0, x1, y1, ...``
(length ``2N``), which is the layout of the rows of :attr:`ShapeModel.components`.  Similarity
transforms are ``(M, 2, 3)`` float64 affines that map a shape's own frame into the aligned frame, so
:func:`kdlandmark.data.crop.apply_affine` and :func:`~kdlandmark.data.crop.invert_affine` apply.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kdlandmark.data.crop import apply_affine, invert_affine

__all__ = ["ShapeModel", "fit_asm", "similarity_fit"]

#: File format name written into the JSON sidecar of a saved model.
FORMAT = "kdlandmark-asm"
FORMAT_VERSION = 1

#: Classic ASM plausibility limit: shape parameters are clipped to +- CLIP_SIGMAS * sqrt(lambda).
CLIP_SIGMAS = 3.0

_EPS = 1e-12


# --------------------------------------------------------------------------- validation helpers


def _as_shapes(shapes: np.ndarray, what: str = "shapes", num_points: int | None = None) -> np.ndarray:
    """``(M, N, 2)`` float64 copy of ``shapes``; ValueError naming the problem if it is not one."""
    arr = np.asarray(shapes)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ValueError(f"{what}: expected a numeric array of shape (M, N, 2), got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if arr.ndim != 3 or arr.shape[-1] != 2:
        raise ValueError(f"{what}: expected shape (M, N, 2), got {arr.shape}")
    if arr.shape[1] < 2:
        raise ValueError(f"{what}: a shape needs at least 2 points, got {arr.shape[1]}")
    if num_points is not None and arr.shape[1] != num_points:
        raise ValueError(f"{what}: the model has {num_points} points, got shapes with {arr.shape[1]}")
    bad = ~np.isfinite(arr).all(axis=(1, 2))
    if bad.any():
        idx = np.flatnonzero(bad)
        raise ValueError(f"{what}: {idx.size} shape(s) contain NaN or inf (first at index {int(idx[0])})")
    return arr


def _as_transforms(transforms: np.ndarray, m: int) -> np.ndarray:
    t = np.asarray(transforms, dtype=np.float64)
    if t.shape != (m, 2, 3):
        raise ValueError(f"transforms: expected shape ({m}, 2, 3), got {t.shape}")
    if not np.isfinite(t).all():
        raise ValueError("transforms: contain NaN or inf")
    return t


# --------------------------------------------------------------------------- similarity geometry


def similarity_fit(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least-squares similarity transforms (scale, rotation, translation; no reflection).

    ``source`` is ``(M, N, 2)``, ``target`` is ``(N, 2)`` or ``(M, N, 2)``.  Returns ``(M, 2, 3)``
    affines ``A`` minimising ``|| A(source_i) - target_i ||^2``.  In complex notation
    (``z = x + iy``) the optimum is ``a = sum conj(zs) zt / sum |zs|^2`` on centred points, which is a
    scaled rotation and can never be a reflection.
    """
    src = np.asarray(source, dtype=np.float64)
    tgt = np.broadcast_to(np.asarray(target, dtype=np.float64), src.shape)
    cs = src.mean(axis=1, keepdims=True)
    ct = tgt.mean(axis=1, keepdims=True)
    zs = (src[..., 0] - cs[..., 0]) + 1j * (src[..., 1] - cs[..., 1])
    zt = (tgt[..., 0] - ct[..., 0]) + 1j * (tgt[..., 1] - ct[..., 1])
    norm = (np.abs(zs) ** 2).sum(axis=1)
    degenerate = norm <= _EPS * max(1.0, float(np.abs(src).max(initial=0.0)) ** 2)
    if degenerate.any():
        idx = int(np.flatnonzero(degenerate)[0])
        raise ValueError(f"shapes: shape {idx} is degenerate (all points coincide); cannot align it")
    a = (np.conj(zs) * zt).sum(axis=1) / norm
    out = np.empty((src.shape[0], 2, 3), dtype=np.float64)
    out[:, 0, 0] = a.real
    out[:, 0, 1] = -a.imag
    out[:, 1, 0] = a.imag
    out[:, 1, 1] = a.real
    # translation: t = c_t - a c_s
    out[:, :, 2] = ct[:, 0, :] - np.einsum("mij,mj->mi", out[:, :, :2], cs[:, 0, :])
    return out


def _normalise(shape: np.ndarray) -> np.ndarray:
    """Centre ``(N, 2)`` at the origin and scale to unit Frobenius norm."""
    c = shape - shape.mean(axis=0, keepdims=True)
    n = float(np.linalg.norm(c))
    if n <= _EPS:
        raise ValueError("shapes: the mean shape is degenerate (all points coincide)")
    return c / n


def _generalised_procrustes(shapes: np.ndarray, max_iter: int, tol: float = 1e-10
                            ) -> tuple[np.ndarray, int]:
    """Generalised Procrustes analysis: the mean shape (centred, unit norm) and the number of iterations.

    Start from the mean of the centred, unit-norm shapes (no rotation removed yet, so the reference
    keeps the data's average orientation); then repeat: align every shape to the current mean by a
    similarity transform, average, fix the mean's rotation by aligning it to the starting reference,
    normalise (centre, unit norm); stop when the mean moves by less than ``tol``.
    """
    centred = shapes - shapes.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centred, axis=(1, 2))
    ref_raw = (centred / np.maximum(norms, _EPS)[:, None, None]).mean(axis=0)
    if np.linalg.norm(ref_raw) < 1e-3:  # orientations cancel out: fall back to the first shape
        ref_raw = centred[0]
    reference = _normalise(ref_raw)
    mean = reference
    iterations = 0
    for _ in range(max_iter):
        iterations += 1
        transforms = similarity_fit(shapes, mean)
        aligned = apply_affine(transforms, shapes)
        new_mean = aligned.mean(axis=0)
        new_mean = apply_affine(similarity_fit(new_mean[None], reference)[0], new_mean)
        new_mean = _normalise(new_mean)
        delta = float(np.linalg.norm(new_mean - mean))
        mean = new_mean
        if delta < tol:
            break
    return mean, iterations


# --------------------------------------------------------------------------- the model


@dataclass
class ShapeModel:
    """A fitted point distribution model.

    Attributes:
        mean: ``(N, 2)`` mean of the aligned training shapes, in the aligned frame (the plain mean of
            the given shapes without Procrustes).
        reference: ``(N, 2)`` the Procrustes mean every shape is aligned to (centred, unit Frobenius
            norm).  ``mean`` is close to a scaled copy of it (scale < 1: aligned shapes average out);
            keeping the alignment target separate makes :meth:`align` map a training shape exactly
            where the fit put it.  Equal to ``mean`` (and unused) without Procrustes.
        components: ``(K, 2N)`` orthonormal eigenvectors (rows), flattened ``x0, y0, x1, y1, ...``.
        eigenvalues: ``(K,)`` their variances (sample covariance, ``ddof=1``, as scikit-learn's
            ``explained_variance_`` used by the authors).
        variance: the requested share of the total variance.
        explained: ``(2N,)`` cumulative explained-variance ratio of the *full* spectrum; entry ``k - 1``
            is the share explained by the first ``k`` components.
        procrustes: whether shapes are aligned by generalised Procrustes analysis first.
        clip: shape parameters are clipped to ``+- clip * sqrt(lambda)``; ``None`` disables clipping
            (the case at ``variance = 1.0``).
        num_shapes: how many shapes the model was fitted on.
        iterations: Procrustes iterations used (0 without Procrustes).
    """

    mean: np.ndarray
    components: np.ndarray
    eigenvalues: np.ndarray
    variance: float
    explained: np.ndarray
    reference: np.ndarray | None = None
    procrustes: bool = True
    clip: float | None = CLIP_SIGMAS
    num_shapes: int = 0
    iterations: int = 0
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.mean = np.asarray(self.mean, dtype=np.float64)
        self.components = np.asarray(self.components, dtype=np.float64)
        self.eigenvalues = np.asarray(self.eigenvalues, dtype=np.float64)
        self.explained = np.asarray(self.explained, dtype=np.float64)
        self.reference = self.mean.copy() if self.reference is None else np.asarray(self.reference,
                                                                                      dtype=np.float64)

    # -- basic properties -------------------------------------------------------------------------

    @property
    def num_components(self) -> int:
        """``K``, the number of kept components."""
        return int(self.components.shape[0])

    @property
    def num_points(self) -> int:
        return int(self.mean.shape[0])

    # -- alignment --------------------------------------------------------------------------------

    def align(self, shapes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Map ``(M, N, 2)`` shapes into the model's aligned frame.

        Returns ``(aligned, transforms)``: the aligned shapes (float64) and the ``(M, 2, 3)``
        similarity transforms that produced them (own frame -> aligned frame).  Without Procrustes the
        transforms are identities and the shapes come back unchanged.
        """
        arr = _as_shapes(shapes, num_points=self.num_points)
        if not self.procrustes:
            eye = np.zeros((arr.shape[0], 2, 3))
            eye[:, 0, 0] = eye[:, 1, 1] = 1.0
            return arr, eye
        transforms = similarity_fit(arr, self.reference)
        return apply_affine(transforms, arr), transforms

    def unalign(self, aligned: np.ndarray, transforms: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`align`: map aligned shapes back into each shape's own frame."""
        arr = _as_shapes(aligned, "aligned", num_points=self.num_points)
        t = _as_transforms(transforms, arr.shape[0])
        return apply_affine(invert_affine(t), arr)

    # -- projection -------------------------------------------------------------------------------

    def _params(self, aligned: np.ndarray) -> np.ndarray:
        b = (aligned.reshape(aligned.shape[0], -1) - self.mean.reshape(1, -1)) @ self.components.T
        if self.clip is not None:
            limit = self.clip * np.sqrt(np.maximum(self.eigenvalues, 0.0))
            b = np.clip(b, -limit, limit)
        return b

    def project(self, shapes: np.ndarray) -> np.ndarray:
        """Shape parameters ``b`` ``(M, K)`` of ``(M, N, 2)`` shapes (aligned first), clipped to
        ``+- clip * sqrt(lambda)``."""
        aligned, _ = self.align(shapes)
        return self._params(aligned)

    def reconstruct(self, b: np.ndarray, transforms: np.ndarray | None = None) -> np.ndarray:
        """Shapes ``(M, N, 2)`` from parameters ``b`` ``(M, K)``: ``mean + V b``, mapped back into each
        shape's own frame with the inverse of ``transforms`` (from :meth:`align`); ``None`` leaves them
        in the aligned frame.  ``b`` is used as given (no clipping)."""
        b = np.asarray(b, dtype=np.float64)
        if b.ndim != 2 or b.shape[1] != self.num_components:
            raise ValueError(f"b: expected shape (M, {self.num_components}), got {b.shape}")
        if not np.isfinite(b).all():
            raise ValueError("b: contains NaN or inf")
        flat = self.mean.reshape(1, -1) + b @ self.components
        aligned = flat.reshape(b.shape[0], self.num_points, 2)
        if transforms is None:
            return aligned
        return self.unalign(aligned, transforms)

    def soften(self, shapes: np.ndarray) -> np.ndarray:
        """Soft landmarks: project shapes on the model and reconstruct them in their own frames.

        Accepts ``(M, N, 2)`` or a single ``(N, 2)`` shape and returns the same shape, in the input's
        floating dtype (float32 for integer input).
        """
        arr = np.asarray(shapes)
        single = arr.ndim == 2
        batch = arr[None] if single else arr
        aligned, transforms = self.align(batch)
        soft = self.reconstruct(self._params(aligned), transforms)
        dtype = arr.dtype if np.issubdtype(arr.dtype, np.floating) else np.float32
        soft = soft.astype(dtype)
        return soft[0] if single else soft

    # -- persistence ------------------------------------------------------------------------------

    @staticmethod
    def _paths(path: str | Path) -> tuple[Path, Path]:
        p = Path(path)
        if p.suffix in (".safetensors", ".json"):
            p = p.with_suffix("")
        return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")

    def save(self, path: str | Path) -> tuple[Path, Path]:
        """Write ``<path>.safetensors`` (arrays) and ``<path>.json`` (metadata); never pickle.

        ``path`` may be given with or without either suffix.  Returns the two paths written.
        """
        from safetensors.numpy import save_file

        tensor_path, json_path = self._paths(path)
        tensor_path.parent.mkdir(parents=True, exist_ok=True)
        # explained is derived from the full spectrum; store the spectrum itself
        save_file({
            "mean": np.ascontiguousarray(self.mean, dtype=np.float64),
            "reference": np.ascontiguousarray(self.reference, dtype=np.float64),
            "components": np.ascontiguousarray(self.components, dtype=np.float64),
            "eigenvalues": np.ascontiguousarray(self.eigenvalues, dtype=np.float64),
            "explained": np.ascontiguousarray(self.explained, dtype=np.float64),
        }, str(tensor_path))
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "num_points": self.num_points,
            "num_components": self.num_components,
            "variance": self.variance,
            "procrustes": self.procrustes,
            "clip": self.clip,
            "num_shapes": self.num_shapes,
            "iterations": self.iterations,
            "coordinate_order": "x0,y0,x1,y1,...",
            "arrays": tensor_path.name,
            "metadata": self.metadata,
        }
        json_path.write_text(json.dumps(meta, indent=2) + "\n")
        return tensor_path, json_path

    @classmethod
    def load(cls, path: str | Path) -> ShapeModel:
        """Read a model written by :meth:`save` (``path`` with or without suffix)."""
        from safetensors.numpy import load_file

        tensor_path, json_path = cls._paths(path)
        for p in (tensor_path, json_path):
            if not p.is_file():
                raise FileNotFoundError(f"{p}: shape model file missing")
        try:
            meta = json.loads(json_path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{json_path}: not valid JSON ({exc})") from None
        if meta.get("format") != FORMAT:
            raise ValueError(f"{json_path}: not a kdlandmark shape model (format {meta.get('format')!r})")
        if meta.get("format_version", 0) > FORMAT_VERSION:
            raise ValueError(f"{json_path}: format version {meta['format_version']} is newer than this "
                             f"kdlandmark understands ({FORMAT_VERSION})")
        arrays = load_file(str(tensor_path))
        missing = {"mean", "reference", "components", "eigenvalues", "explained"} - set(arrays)
        if missing:
            raise ValueError(f"{tensor_path}: missing arrays {sorted(missing)}")
        model = cls(
            mean=arrays["mean"], components=arrays["components"], eigenvalues=arrays["eigenvalues"],
            variance=float(meta["variance"]), explained=arrays["explained"],
            reference=arrays["reference"],
            procrustes=bool(meta["procrustes"]), clip=meta["clip"],
            num_shapes=int(meta.get("num_shapes", 0)), iterations=int(meta.get("iterations", 0)),
            metadata=dict(meta.get("metadata", {})),
        )
        n = model.mean.shape[0]
        consistent = (model.mean.shape == (n, 2) and model.reference.shape == (n, 2)
                      and model.components.shape[1:] == (2 * n,)
                      and model.eigenvalues.shape == (model.num_components,)
                      and n == meta.get("num_points", n))
        if not consistent:
            raise ValueError(f"{tensor_path}: inconsistent array shapes (mean {model.mean.shape}, "
                             f"components {model.components.shape}, eigenvalues {model.eigenvalues.shape})")
        return model


# --------------------------------------------------------------------------- fitting


def fit_asm(shapes: np.ndarray, variance: float = 0.9, *, procrustes: bool = True, max_iter: int = 20,
            clip: float | None = CLIP_SIGMAS) -> ShapeModel:
    """Fit a point distribution model to ``(M, N, 2)`` training shapes.

    Args:
        shapes: the training landmarks, any consistent coordinate frame (pixels or crop-normalised).
        variance: share of the total variance the kept components must explain, in ``(0, 1]``
            (``0.9`` means 90 %, the authors' setting; REFERENCE.md section 2).  The model keeps the
            fewest components whose cumulative share is ``>= variance`` (up to 1e-9).  ``1.0`` keeps the
            complete basis and disables clipping, so soft landmarks equal the hard ones.
        procrustes: align shapes by generalised Procrustes analysis first (classic ASM); ``False``
            reproduces the authors' code (PCA directly on the given shapes).
        max_iter: cap on Procrustes iterations (it usually converges in 2-5).
        clip: shape parameters are clipped to ``+- clip * sqrt(lambda)`` (classic ASM and the authors'
            ``calculate_b_vector``: 3); ``None`` disables it.  Ignored (disabled) at ``variance = 1.0``.

    Raises:
        ValueError: fewer than 2 shapes, a wrong array shape, NaN/inf, degenerate shapes, or a
            ``variance`` outside ``(0, 1]``.
    """
    arr = _as_shapes(shapes)
    m, n, _ = arr.shape
    if m < 2:
        raise ValueError(f"shapes: need at least 2 shapes to fit a shape model, got {m}")
    variance = float(variance)
    if not (0.0 < variance <= 1.0):
        hint = f" (did you mean {variance / 100:g}?)" if 1.0 < variance <= 100.0 else ""
        raise ValueError(f"variance must be a share in (0, 1], got {variance}{hint}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    if clip is not None and not clip > 0:
        raise ValueError(f"clip must be positive or None, got {clip}")

    if procrustes:
        reference, iterations = _generalised_procrustes(arr, max_iter)
        aligned = apply_affine(similarity_fit(arr, reference), arr)
    else:
        reference, aligned, iterations = None, arr, 0

    flat = aligned.reshape(m, 2 * n)
    mean = flat.mean(axis=0)
    centred = flat - mean
    cov = centred.T @ centred / (m - 1)
    evals, evecs = np.linalg.eigh(cov)  # ascending; complete orthonormal basis of R^{2N}
    order = np.argsort(evals)[::-1]
    evals = np.maximum(evals[order], 0.0)
    evecs = evecs[:, order].T  # rows are components
    # deterministic sign: largest-magnitude entry of each component positive
    signs = np.sign(evecs[np.arange(evecs.shape[0]), np.abs(evecs).argmax(axis=1)])
    evecs = evecs * np.where(signs == 0, 1.0, signs)[:, None]
    total = float(evals.sum())
    if total <= 0.0:
        explained = np.ones_like(evals)
    else:
        explained = np.minimum(np.cumsum(evals) / total, 1.0)

    if variance >= 1.0:
        k = 2 * n
        clip = None
    else:
        k = int(np.searchsorted(explained, variance - 1e-9, side="left")) + 1
        k = min(max(k, 1), 2 * n)

    return ShapeModel(
        mean=mean.reshape(n, 2),
        reference=reference,
        components=np.ascontiguousarray(evecs[:k]),
        eigenvalues=evals[:k].copy(),
        variance=variance,
        explained=explained,
        procrustes=procrustes,
        clip=clip,
        num_shapes=m,
        iterations=iterations,
    )
