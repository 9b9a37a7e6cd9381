"""Video clips of labelled photos: a real face moved in the image plane, with exact landmarks per frame.

The renderer's clips (:mod:`kdlandmark.data.synth.video`) move a synthetic face in every way; a real
face only comes in photos.  :func:`photo_clip` makes a clip of one labelled photo (an image and its
landmarks, e.g. the ``folder`` dataset's images with ``.pts`` files): the photo is placed in a square
frame and moved smoothly between *key placements* (the face's size, its position, an in-plane roll),
as :func:`~kdlandmark.data.synth.video.clip_scenes` moves its faces (keys ``key_every`` frames apart
on average, a smoothstep between them, ``motion`` scaling how far the keys move from the first), with
fresh sensor noise in every frame; :func:`photo_videos` writes the clips of a folder as the renderer's
clips are written (an ``.mp4`` and a JSON of per-frame ground truth, read by
:func:`~kdlandmark.data.synth.video.read_clip_truth` and scored by ``kdlandmark evaluate --video``).

What one photo cannot give is not simulated: the face keeps its own pose, expression and light (a
picture moved in front of the camera).  The frame outside the photo repeats its edge pixels (no
mirrored second face).  Ground truth: the photo's landmarks through each frame's affine, in the
photo's layout only; no occlusion flags (the labels have none); ``pose`` holds the roll the motion
adds (yaw and pitch 0: the photo's own are unknown).
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from kdlandmark.data.formats._common import decode_image
from kdlandmark.data.samples import DatasetError
from kdlandmark.data.synth.video import VideoClip, _check_keys, _key_blend, _key_times, write_clip
from kdlandmark.layouts import layout_for_points

__all__ = ["PHOTO_FACE_FRACTION", "PHOTO_SHIFT", "PHOTO_ROLL", "PHOTO_NOISE", "photo_affines", "photo_clip",
           "photo_videos"]

#: The face's size at a key placement: the longer side of its landmark box, a share of the frame side.
PHOTO_FACE_FRACTION = (0.3, 0.5)
#: The landmark box centre's offset from the frame centre at a key placement, at most this share of
#: the frame side in x and in y.
PHOTO_SHIFT = 0.15
#: In-plane roll at a key placement, at most this many degrees either way.
PHOTO_ROLL = 15.0
#: Standard deviation of the sensor noise drawn anew in every frame (grey levels).
PHOTO_NOISE = 2.0


def photo_affines(landmarks: np.ndarray, frames: int, *, seed: int | tuple[int, ...], size: int = 256,
                  key_every: float = 40.0, motion: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """``(frames, 2, 3)`` affines from the photo's pixels to each frame's, and the roll (degrees) each
    adds; a function of ``seed`` and the landmarks' box alone."""
    if frames < 1 or size < 32:
        raise ValueError(f"a photo clip needs at least one frame and 32 pixels, got {frames} and {size}")
    _check_keys(key_every, motion)
    lm = np.asarray(landmarks, np.float64)
    lo, hi = lm.min(axis=0), lm.max(axis=0)
    centre, side = (lo + hi) / 2.0, max(float((hi - lo).max()), 1.0)
    rng = np.random.default_rng(seed)
    times = _key_times(rng, frames, key_every)

    def draw() -> np.ndarray:     # face fraction, x and y offset (frame sides), roll (degrees)
        return np.array([rng.uniform(*PHOTO_FACE_FRACTION), *rng.uniform(-PHOTO_SHIFT, PHOTO_SHIFT, 2),
                         rng.uniform(-PHOTO_ROLL, PHOTO_ROLL)])

    first = draw()
    keys = [first] + [first + motion * (draw() - first) for _ in range(1, len(times))]
    affines = np.empty((frames, 2, 3))
    rolls = np.empty(frames)
    mid = (size - 1) / 2.0
    for t in range(frames):
        k, w = _key_blend(times, t)
        frac, dx, dy, roll = (1.0 - w) * keys[k] + w * keys[k + 1]
        a = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), float(roll), frac * size / side)
        a[:, 2] += (mid + dx * size - centre[0], mid + dy * size - centre[1])
        affines[t], rolls[t] = a, roll
    return affines, rolls


def photo_clip(image: np.ndarray, landmarks: np.ndarray, frames: int, *, seed: int | tuple[int, ...],
               size: int = 256, key_every: float = 40.0, motion: float = 1.0, noise: float = PHOTO_NOISE,
               layout: str | None = None) -> VideoClip:
    """A clip of one photo (BGR uint8) and its ``(N, 2)`` landmarks (0-based pixels) moving in a
    ``size`` x ``size`` frame (see the module); ``layout``: the landmarks' layout (default: by their
    count).  A photo larger than its frames need is first reduced by area averaging (no aliasing)."""
    name = layout or layout_for_points(len(landmarks)).name
    lm = np.asarray(landmarks, np.float64)
    affines, rolls = photo_affines(lm, frames, seed=seed, size=size, key_every=key_every, motion=motion)
    warps = affines
    scale = float(np.sqrt(np.abs(np.linalg.det(affines[:, :, :2]))).max())
    if scale < 0.5:                                  # reduce first: warpAffine samples, it does not average
        h, w = image.shape[:2]
        image = cv2.resize(image, (max(1, round(w * 2 * scale)), max(1, round(h * 2 * scale))),
                           interpolation=cv2.INTER_AREA)
        f = np.array([image.shape[1] / w, image.shape[0] / h])
        # the reduced photo's pixel r is the photo's p with r = f p + (f - 1) / 2 (centres at integers),
        # so each frame's affine on it is A_lin / f and A_t - (A_lin / f) (f - 1) / 2
        lin = affines[:, :, :2] / f
        warps = np.concatenate([lin, affines[:, :, 2:] - lin @ ((f - 1.0) / 2.0)[:, None]], axis=2)
    rng = np.random.default_rng([*np.atleast_1d(seed).tolist(), 1])
    images, points = [], []
    for a, warp in zip(affines, warps, strict=True):
        frame = cv2.warpAffine(image, warp, (size, size), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REPLICATE)
        if noise > 0:
            frame = np.clip(frame + rng.normal(0.0, noise, frame.shape), 0, 255).astype(np.uint8)
        images.append(frame)
        points.append(lm @ a[:, :2].T + a[:, 2])
    pts = np.stack(points).astype(np.float32)
    inside = ((pts >= -0.5) & (pts <= size - 0.5)).all(axis=-1)
    pose = np.column_stack([np.zeros(frames), np.zeros(frames), rolls])
    return VideoClip(frames=images, landmarks={name: pts}, occluded={name: np.zeros(pts.shape[:2], bool)},
                     inside={name: inside}, pose=pose, segment=np.zeros(frames, np.int64))


def photo_videos(root: str | Path, out: str | Path, *, count: int | None = None, seed: int = 0,
                 frames: int = 100, size: int = 256, fps: float = 25.0, key_every: float = 40.0,
                 motion: float = 1.0, noise: float = PHOTO_NOISE) -> dict:
    """One clip per labelled photo under ``root`` (the ``folder`` dataset: images with ``.pts`` files,
    in its order; the first ``count``, default all): ``clip_NNN.mp4`` + ``clip_NNN.json`` under ``out``
    (``kdlandmark synth --video --from-photos``).  Clip ``i`` is a function of ``(seed, i)``, its photo
    and the settings.  Returns a summary as :func:`~kdlandmark.data.synth.video.synthesize_videos`'s."""
    from kdlandmark.data.formats import read_dataset

    samples = read_dataset("folder", root, "all")
    if not samples:
        raise DatasetError(root, "no labelled photos (images with .pts files) under this folder")
    if count is not None:
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        samples = samples[:count]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    files = []
    for i, sample in enumerate(tqdm(samples, desc="photo clips", unit="clip", disable=None)):
        clip = photo_clip(decode_image(sample.image_path), sample.landmarks, frames, seed=(seed, i),
                          size=size, key_every=key_every, motion=motion, noise=noise)
        settings = {"photo": str(sample.image_path), "seed": seed, "index": i, "frames": frames, "size": size,
                    "key_every": key_every, "motion": motion, "noise": noise}
        video, _ = write_clip(clip, out / f"clip_{i:03d}", fps=fps, settings=settings)
        files.append(str(video))
    seconds = time.perf_counter() - start
    total = frames * len(files)
    return {"root": str(out), "clips": len(files), "frames": total, "seconds": seconds,
            "frames_per_second": total / max(seconds, 1e-9), "workers": 1, "files": files}
