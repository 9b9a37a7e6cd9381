"""Batched, on-device augmentation: stored uint8 crops -> model-ready float tensors and model coordinates.

Everything here is pure tensor work on the batch's own device (CPU or CUDA), with no per-sample Python
loop over images:

* one random similarity per sample (rotation, scale, translation, horizontal flip) built as a batched
  2x3 matrix, applied to the images with a single ``F.affine_grid`` + ``F.grid_sample`` that produces
  the ``out_size`` model input directly, and applied to every landmark set with the same matrices;
* colour jitter (brightness, contrast, saturation), Gaussian blur with a per-sample sigma (one grouped
  separable convolution over the samples that are blurred), Gaussian noise and cutout (random
  rectangles filled with noise or grey) -- all with masks over the batch.

Geometry (docs/DATA_PIPELINE.md has the derivation).  Stored crops are ``S x S`` and were cut with
``crop_affine(box, S, context_margin)``; the model's at-rest view is the central part of side
``view_scale * S`` with ``view_scale = (1 + 2 * margin) / (1 + 2 * context_margin)``, i.e. exactly the
crop ``crop_affine(box, out_size, margin)`` of the original image.  Let ``u = (p - (S - 1) / 2) /
(view_scale * S)`` be a stored point ``p`` in at-rest model coordinates.  A sample's augmentation is
``m = M u + t`` with ``M = s R(theta) F`` (``F = diag(-1, 1)`` when flipped); ``m`` is the returned model
coordinate ``(q - (out - 1) / 2) / out`` of output pixel ``q``.  With ``align_corners=False`` a grid value
``g`` addresses pixel ``(g + 1) * S / 2 - 1/2``, so ``g_in = 2 view_scale u`` and ``g_out = 2 m``: the
sampling matrix is ``theta = view_scale M^-1 [I | -2t]``.  Pixel centres sit at integers everywhere,
as in :mod:`kdlandmark.data.crop`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from kdlandmark.config import AugmentConfig
from kdlandmark.layouts import Layout

__all__ = ["AugmentConfig", "BatchAugmenter"]

ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, torch.Tensor)

#: ITU-R BT.601 luma weights for RGB, used for saturation and grey-level statistics.
_LUMA = (0.299, 0.587, 0.114)


# Column layout of the one table of per-sample uniforms drawn per call (fixed, so a seed reproduces a batch).
_U_ROT, _U_SCALE, _U_TX, _U_TY, _U_FLIP, _U_BRIGHT, _U_CONTRAST, _U_SAT = range(8)
_U_BLUR, _U_SIGMA, _U_NOISE, _U_NOISE_STD = range(8, 12)
_U_CUT, _U_CUT_W, _U_CUT_H, _U_CUT_X, _U_CUT_Y, _U_GREY = range(12, 18)
_NUM_UNIFORMS = 18


class BatchAugmenter:
    """Turns a batch of stored crops into model inputs and model-coordinate targets.

    Args:
        layout: landmark layout (its flip permutation is applied to mirrored samples).
        stored_size: side ``S`` of the stored crops (``PreparedSet.size``).
        out_size: side of the model input produced.
        view_scale: fraction of the stored side the model sees at rest,
            ``(1 + 2 * margin) / (1 + 2 * context_margin)`` (``PreparedSet`` stores both margins).
        config: random augmentation for training mode; None uses :class:`AugmentConfig` defaults.
    """

    def __init__(self, layout: Layout, stored_size: int, out_size: int, view_scale: float,
                 config: AugmentConfig | None = None) -> None:
        if stored_size <= 0 or out_size <= 0:
            raise ValueError(f"sizes must be positive, got stored_size={stored_size}, out_size={out_size}")
        if not 0.0 < view_scale <= 4.0:
            raise ValueError(f"view_scale must be in (0, 4], got {view_scale}")
        self.layout = layout
        self.stored_size = int(stored_size)
        self.out_size = int(out_size)
        self.view_scale = float(view_scale)
        self.config = config if config is not None else AugmentConfig()
        self._flip = torch.as_tensor(layout.flip_array, dtype=torch.long)
        self._flip_cache: dict[torch.device, torch.Tensor] = {}

    # ------------------------------------------------------------------ coordinates
    def model_to_stored(self, coords: ArrayOrTensor) -> ArrayOrTensor:
        """At-rest model coordinates -> stored-crop pixels (the inverse of the eval-mode mapping).

        Map a prediction back to the original image with ``apply_affine(invert_affine(affine), p)``
        using the stored affine of the sample.
        """
        c = (self.stored_size - 1) / 2.0
        k = self.view_scale * self.stored_size
        if isinstance(coords, torch.Tensor):
            return coords * k + c
        return (np.asarray(coords, dtype=np.float64) * k + c).astype(np.float32)

    def stored_to_model(self, points: ArrayOrTensor) -> ArrayOrTensor:
        """Stored-crop pixels -> at-rest model coordinates (what eval mode returns for landmarks)."""
        c = (self.stored_size - 1) / 2.0
        k = self.view_scale * self.stored_size
        if isinstance(points, torch.Tensor):
            return (points - c) / k
        return ((np.asarray(points, dtype=np.float64) - c) / k).astype(np.float32)

    # ------------------------------------------------------------------ main entry
    def __call__(self, images: torch.Tensor, landmarks: Sequence[torch.Tensor], *, train: bool = True,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Augment (``train=True``) or just cut the at-rest view (``train=False``, no randomness).

        Args:
            images: ``(B, S, S, 3)`` uint8 RGB stored crops on any device.
            landmarks: landmark sets, each ``(B, N, 2)`` float in stored-crop pixels (e.g. hard and soft
                landmarks); all are transformed identically.
            train: apply random augmentation.
            generator: source of randomness (ideally on the images' device) for reproducible batches.

        Returns:
            ``(B, 3, out, out)`` float32 RGB in [0, 1], contiguous, and each landmark set as float32
            model coordinates ``(q - (out - 1) / 2) / out`` with the flip permutation applied.
        """
        x, lms, _ = self._run(images, landmarks, train, generator, None)
        return x, lms

    def with_visibility(self, images: torch.Tensor, landmarks: Sequence[torch.Tensor], occluded: torch.Tensor,
                        *, train: bool = True, generator: torch.Generator | None = None
                        ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """As :meth:`__call__` (the same random draws, so the same batch), plus which points are hidden.

        ``occluded``: ``(B, N)`` bool flags of the data (all False where a format has none).  Returns
        ``(B, N)`` bool, True where a point of the first landmark set is hidden in the model input: flagged
        occluded (flags follow the flip permutation), covered by this batch's cutout rectangle, or outside
        the input.  The visibility head trains on its complement.
        """
        x, lms, hidden = self._run(images, landmarks, train, generator, occluded)
        assert hidden is not None
        return x, lms, hidden

    def _run(self, images: torch.Tensor, landmarks: Sequence[torch.Tensor], train: bool,
             generator: torch.Generator | None, occluded: torch.Tensor | None
             ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None]:
        if images.dim() != 4 or images.shape[-1] != 3 or images.shape[1] != images.shape[2]:
            raise ValueError(f"images must be (B, S, S, 3), got {tuple(images.shape)}")
        if images.shape[1] != self.stored_size:
            raise ValueError(f"images are {images.shape[1]} px, augmenter built for {self.stored_size}")
        bsz = images.shape[0]
        device = images.device
        sets = [torch.as_tensor(lm) for lm in landmarks]
        for lm in sets:
            if lm.dim() != 3 or lm.shape[0] != bsz or lm.shape[2] != 2:
                raise ValueError(f"each landmark set must be (B, N, 2) with B={bsz}, got {tuple(lm.shape)}")

        if train:
            u = self._uniforms(bsz, generator, device)
            mat, trans, flip = self._geometry(u)
        else:
            u = None
            mat = torch.eye(2, device=device, dtype=torch.float32).expand(bsz, 2, 2)
            trans = torch.zeros(bsz, 2, device=device, dtype=torch.float32)
            flip = None

        out = self._warp(images, mat, trans)
        lms = [self._transform_points(lm.to(device=device, dtype=torch.float32), mat, trans, flip)
               for lm in sets]
        if train:
            assert u is not None
            out = self._photometric(out, u, generator)
        hidden = None
        if occluded is not None:
            if not lms or tuple(occluded.shape) != tuple(lms[0].shape[:2]):
                raise ValueError(f"occlusion flags {tuple(occluded.shape)} must be (B, N) of the first "
                                 "landmark set")
            hidden = self._hidden(lms[0], occluded.to(device=device, dtype=torch.bool), flip, u)
        return out.contiguous(), lms, hidden

    def _hidden(self, points: torch.Tensor, occluded: torch.Tensor, flip: torch.Tensor | None,
                u: torch.Tensor | None) -> torch.Tensor:
        """Points flagged occluded (after the flip), under the cutout rectangle, or outside the input."""
        if flip is not None:
            occluded = torch.where(flip[:, None], occluded[:, self._flip_on(occluded.device)], occluded)
        hidden = occluded | (points.abs() > 0.5).any(dim=-1)
        cfg = self.config
        if u is not None and cfg.cutout_prob > 0 and cfg.cutout_size[1] > 0:
            n = self.out_size
            lo, hi = cfg.cutout_size
            w = (lo + (hi - lo) * u[:, _U_CUT_W]) * n
            h = (lo + (hi - lo) * u[:, _U_CUT_H]) * n
            cx = u[:, _U_CUT_X] * n - 0.5
            cy = u[:, _U_CUT_Y] * n - 0.5
            q = points * n + (n - 1) / 2.0                       # output pixels, as _cutout's rectangle
            covered = ((q[..., 0] - cx[:, None]).abs() <= w[:, None] / 2) & \
                ((q[..., 1] - cy[:, None]).abs() <= h[:, None] / 2)
            hidden = hidden | (covered & (u[:, _U_CUT] < cfg.cutout_prob)[:, None])
        return hidden

    # ------------------------------------------------------------------ geometry
    def _uniforms(self, bsz: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
        gen_device = generator.device if generator is not None else device
        return torch.rand(bsz, _NUM_UNIFORMS, generator=generator, device=gen_device).to(device)

    def _geometry(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample ``M = s R F`` (B, 2, 2), translation (B, 2) in model units, flip mask (B,)."""
        cfg = self.config
        theta = (u[:, _U_ROT] * 2 - 1) * math.radians(cfg.rotation_deg)
        lo, hi = cfg.scale
        s = lo + (hi - lo) * u[:, _U_SCALE]
        trans = (u[:, [_U_TX, _U_TY]] * 2 - 1) * cfg.translate
        flip = u[:, _U_FLIP] < cfg.flip_prob
        f = torch.where(flip, -1.0, 1.0)
        cos, sin = torch.cos(theta), torch.sin(theta)
        mat = torch.stack([torch.stack([s * cos * f, -s * sin], dim=-1),
                           torch.stack([s * sin * f, s * cos], dim=-1)], dim=-2)
        return mat, trans, flip

    def _warp(self, images: torch.Tensor, mat: torch.Tensor, trans: torch.Tensor) -> torch.Tensor:
        """One ``affine_grid`` + ``grid_sample`` for the whole batch; output in [0, 1]."""
        bsz = images.shape[0]
        inv = torch.linalg.inv(mat.double()).float()
        a = self.view_scale * inv
        b = -(a @ (2.0 * trans).unsqueeze(-1))
        theta = torch.cat([a, b], dim=-1)
        x = images.permute(0, 3, 1, 2).float()
        grid = F.affine_grid(theta, [bsz, 3, self.out_size, self.out_size], align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return out.mul_(1.0 / 255.0)  # bilinear weights are convex: the result stays in [0, 1]

    def _transform_points(self, lm: torch.Tensor, mat: torch.Tensor, trans: torch.Tensor,
                          flip: torch.Tensor | None) -> torch.Tensor:
        c = (self.stored_size - 1) / 2.0
        u = (lm - c) / (self.view_scale * self.stored_size)
        m = torch.einsum("bij,bnj->bni", mat, u) + trans[:, None, :]
        if flip is not None:
            perm = self._flip_on(m.device)
            m = torch.where(flip[:, None, None], m[:, perm], m)
        return m.contiguous()

    def _flip_on(self, device: torch.device) -> torch.Tensor:
        if device not in self._flip_cache:
            self._flip_cache[device] = self._flip.to(device)
        return self._flip_cache[device]

    # ------------------------------------------------------------------ photometric
    def _photometric(self, x: torch.Tensor, u: torch.Tensor,
                     generator: torch.Generator | None) -> torch.Tensor:
        cfg = self.config
        bsz = x.shape[0]

        def factor(col: int, amount: float) -> torch.Tensor:
            return (1.0 + (u[:, col] * 2 - 1) * amount).view(bsz, 1, 1, 1)

        luma = torch.tensor(_LUMA, device=x.device, dtype=x.dtype)
        if cfg.brightness > 0 or cfg.contrast > 0:
            # Brightness b then contrast c around the mean grey g of the brightened image (= b * grey of
            # x) fused into one pass: x' = c * b * x + (1 - c) * b * g.
            b = factor(_U_BRIGHT, cfg.brightness)
            c = factor(_U_CONTRAST, cfg.contrast)
            grey_mean = (x.mean(dim=(2, 3)) @ luma).view(bsz, 1, 1, 1)
            x = x.mul_(c * b).add_((1.0 - c) * b * grey_mean).clamp_(0.0, 1.0)
        if cfg.saturation > 0:
            s = factor(_U_SAT, cfg.saturation)
            grey = torch.einsum("bchw,c->bhw", x, luma).unsqueeze(1)
            x = x.mul_(s).add_(grey.mul_(1.0 - s)).clamp_(0.0, 1.0)
        if cfg.blur_prob > 0:
            x = self._blur(x, u)
        if cfg.noise_prob > 0 and cfg.noise_std[1] > 0:
            x = self._noise(x, u, generator)
        if cfg.cutout_prob > 0 and cfg.cutout_size[1] > 0:
            x = self._cutout(x, u, generator)
        return x

    def _blur(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Separable Gaussian with a per-sample sigma: one grouped convolution over the blurred subset."""
        cfg = self.config
        idx = torch.nonzero(u[:, _U_BLUR] < cfg.blur_prob).squeeze(1)
        k = idx.numel()
        if k == 0:
            return x
        lo, hi = cfg.blur_sigma
        sigma = lo + (hi - lo) * u[idx, _U_SIGMA]                        # (k,)
        radius = max(1, min(int(math.ceil(3.0 * hi)), (self.out_size - 1) // 2))
        taps = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
        kern = torch.exp(-0.5 * (taps[None, :] / sigma[:, None]) ** 2)
        kern = kern / kern.sum(dim=1, keepdim=True)                      # (k, 2r+1)
        kern = kern.repeat_interleave(3, dim=0)                          # (3k, 2r+1)
        sub = x.index_select(0, idx).reshape(1, 3 * k, self.out_size, self.out_size)
        sub = F.pad(sub, (radius, radius, 0, 0), mode="reflect")
        sub = F.conv2d(sub, kern.view(3 * k, 1, 1, -1), groups=3 * k)
        sub = F.pad(sub, (0, 0, radius, radius), mode="reflect")
        sub = F.conv2d(sub, kern.view(3 * k, 1, -1, 1), groups=3 * k)
        return x.index_copy_(0, idx, sub.reshape(k, 3, self.out_size, self.out_size))

    def _noise(self, x: torch.Tensor, u: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        cfg = self.config
        idx = torch.nonzero(u[:, _U_NOISE] < cfg.noise_prob).squeeze(1)
        k = idx.numel()
        if k == 0:
            return x
        lo, hi = cfg.noise_std
        std = (lo + (hi - lo) * u[idx, _U_NOISE_STD]).view(k, 1, 1, 1)
        noise = self._randn((k, 3, self.out_size, self.out_size), generator, x.device)
        sub = x.index_select(0, idx).add_(noise.mul_(std)).clamp_(0.0, 1.0)
        return x.index_copy_(0, idx, sub)

    def _cutout(self, x: torch.Tensor, u: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        cfg = self.config
        idx = torch.nonzero(u[:, _U_CUT] < cfg.cutout_prob).squeeze(1)
        k = idx.numel()
        if k == 0:
            return x
        n = self.out_size
        lo, hi = cfg.cutout_size
        w = (lo + (hi - lo) * u[idx, _U_CUT_W]) * n
        h = (lo + (hi - lo) * u[idx, _U_CUT_H]) * n
        cx = u[idx, _U_CUT_X] * n - 0.5
        cy = u[idx, _U_CUT_Y] * n - 0.5
        pix = torch.arange(n, device=x.device, dtype=x.dtype)
        in_x = ((pix[None, :] - cx[:, None]).abs() <= w[:, None] / 2)          # (k, n)
        in_y = ((pix[None, :] - cy[:, None]).abs() <= h[:, None] / 2)          # (k, n)
        mask = (in_y[:, :, None] & in_x[:, None, :]).unsqueeze(1)              # (k, 1, n, n)
        if cfg.cutout_fill == "noise":
            fill = self._rand((k, 3, n, n), generator, x.device)
        else:
            fill = u[idx, _U_GREY].view(k, 1, 1, 1).expand(k, 3, n, n)
        sub = torch.where(mask, fill, x.index_select(0, idx))
        return x.index_copy_(0, idx, sub)

    @staticmethod
    def _rand(shape: tuple[int, ...], generator: torch.Generator | None,
              device: torch.device) -> torch.Tensor:
        gen_device = generator.device if generator is not None else device
        return torch.rand(shape, generator=generator, device=gen_device).to(device)

    @staticmethod
    def _randn(shape: tuple[int, ...], generator: torch.Generator | None,
               device: torch.device) -> torch.Tensor:
        gen_device = generator.device if generator is not None else device
        return torch.randn(shape, generator=generator, device=gen_device).to(device)
