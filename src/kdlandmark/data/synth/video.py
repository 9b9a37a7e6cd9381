"""Synthetic video clips with exact landmarks per frame: one face moving smoothly.

A clip is a sequence of :class:`~kdlandmark.data.synth.render.Scene` objects that share one appearance
(identity, skin, hair, colours, background, occluder kind, camera settings: the first key scene's) and
whose geometry moves: head pose (yaw, pitch, roll), placement (translation and scale), expression,
light direction and strength, and the occluder's position drift between *key scenes* drawn with
:func:`~kdlandmark.data.synth.render.sample_scene`.  Between two keys every value follows a smoothstep
(``3 s^2 - 2 s^3``), so the face moves, slows to rest at each key and moves on; keys are
``key_every`` frames apart on average (0.5-1.5 times that, seeded).  Only the sensor noise is drawn
anew in every frame (its seed), as a camera's would be.

Options make the hard cases of a tracker: ``cut_at`` (a scene cut: from that frame on, another face
in another scene) and ``exit_at`` (from that frame on the face slides out of the picture to the right:
``EXIT_FRAMES`` frames later every landmark is outside it, only the back of the head still shows).

:func:`write_clip` writes the clip as a video file (``.mp4``, MPEG-4 Part 2 through OpenCV, lossy
like real video) and one JSON file of ground truth: per frame the landmarks of every layout (0-based
pixels, projections of the 3D points, also where a point is hidden or outside the frame), the
occlusion flags (under the occluder), whether each point lies inside the frame, and the head pose.
:func:`read_clip_truth` reads it back.  :func:`synthesize_videos` writes ``count`` clips (``kdlandmark
synth --video``).
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from kdlandmark.data.samples import DatasetError
from kdlandmark.data.synth.face import build_geometry
from kdlandmark.data.synth.render import Scene, _place, render_scene, sample_scene
from kdlandmark.layouts import get_layout

__all__ = [
    "VIDEO_TRUTH_FORMAT",
    "VIDEO_LAYOUTS",
    "EXIT_FRAMES",
    "VideoClip",
    "ClipTruth",
    "smoothstep",
    "clip_scenes",
    "render_clip",
    "write_clip",
    "read_clip_truth",
    "synthesize_videos",
    "format_video_summary",
]

VIDEO_TRUTH_FORMAT = "kdlandmark-video-truth"
VIDEO_TRUTH_VERSION = 1
#: Every clip's ground truth holds all three layouts (a face does not depend on its labelling).
VIDEO_LAYOUTS = ("300w", "wflw", "cofw")
#: Frames the face takes to slide out of the picture after ``exit_at``.
EXIT_FRAMES = 20
#: Expression parameters of :class:`FaceShape` that move during a clip (identity stays).
_EXPRESSION = ("open", "smile", "close_l", "close_r", "brow_raise", "frown", "gaze_x", "gaze_y")
#: Mixed into the seed of a clip's second part (after a scene cut).
_CUT_SALT = 7_777_777


def smoothstep(s: np.ndarray | float) -> np.ndarray:
    """``3 s^2 - 2 s^3`` on ``[0, 1]`` (clipped): 0 and 1 at the ends, zero slope at both."""
    s = np.clip(np.asarray(s, dtype=np.float64), 0.0, 1.0)
    return s * s * (3.0 - 2.0 * s)


def _geometry(scene: Scene) -> dict[str, np.ndarray]:
    """The values of a scene that move during a clip, as float arrays."""
    g = {"pose": np.array([scene.yaw, scene.pitch, scene.roll]),
         "face_fraction": np.array([scene.face_fraction]),
         "offset": np.asarray(scene.offset, dtype=np.float64),
         "expression": np.array([getattr(scene.shape, k) for k in _EXPRESSION]),
         "light": np.concatenate([np.asarray(scene.light["direction"], dtype=np.float64),
                                  [scene.light["ambient"], scene.light["diffuse"]]])}
    if scene.occluder is not None:
        g["occluder"] = np.concatenate([np.asarray(scene.occluder["shift"], dtype=np.float64),
                                        [scene.occluder["angle"]]])
    return g


def _with_geometry(base: Scene, g: dict[str, np.ndarray], noise_seed: int) -> Scene:
    """``base`` (its appearance) with the moving values ``g`` and a new sensor-noise seed."""
    direction = g["light"][:3] / max(float(np.linalg.norm(g["light"][:3])), 1e-9)
    light = {**base.light, "direction": direction, "ambient": float(g["light"][3]),
             "diffuse": float(g["light"][4])}
    occluder = base.occluder
    if occluder is not None and "occluder" in g:
        occluder = {**occluder, "shift": g["occluder"][:2].copy(), "angle": float(g["occluder"][2])}
    shape = dataclasses.replace(base.shape, **{k: float(v) for k, v in zip(_EXPRESSION, g["expression"],
                                                                           strict=True)})
    yaw, pitch, roll = (float(v) for v in g["pose"])
    return dataclasses.replace(base, shape=shape, yaw=yaw, pitch=pitch, roll=roll,
                               face_fraction=float(g["face_fraction"][0]),
                               offset=(float(g["offset"][0]), float(g["offset"][1])), light=light,
                               occluder=occluder, seeds=(base.seeds[0], int(noise_seed)))


def _key_times(rng: np.random.Generator, frames: int, key_every: float) -> np.ndarray:
    """Frame times of the key scenes: 0, then gaps of 0.5-1.5 x ``key_every``, past the last frame."""
    times = [0.0]
    while times[-1] < frames - 1:
        times.append(times[-1] + float(rng.uniform(0.5, 1.5)) * key_every)
    return np.asarray(times)


def _check_keys(key_every: float, motion: float) -> None:
    if key_every <= 0 or not 0.0 <= motion <= 1.0:
        raise ValueError(f"key_every must be > 0 and motion in [0, 1], got {key_every} and {motion}")


def _key_blend(times: np.ndarray, t: int) -> tuple[int, float]:
    """The key ``k`` at or before frame ``t`` and the smoothstep weight of key ``k + 1`` there."""
    k = min(int(np.searchsorted(times, t, side="right")) - 1, len(times) - 2)
    return k, float(smoothstep((t - times[k]) / (times[k + 1] - times[k])))


def _segment(entropy: Sequence[int], frames: int, size: int, key_every: float, motion: float) -> list[Scene]:
    """``frames`` scenes of one face moving between key scenes (see the module)."""
    rng = np.random.default_rng([*entropy, 0])
    times = _key_times(rng, frames, key_every)
    base = sample_scene(np.random.default_rng([*entropy, 1]), size)
    g0 = _geometry(base)
    keys = [g0]
    for k in range(1, len(times)):
        gk = _geometry(sample_scene(np.random.default_rng([*entropy, 1 + k]), size))
        keys.append({name: v + motion * (gk.get(name, v) - v) for name, v in g0.items()})
    noise = rng.integers(2**31, size=frames)
    scenes = []
    for t in range(frames):
        k, w = _key_blend(times, t)
        g = {name: (1.0 - w) * keys[k][name] + w * keys[k + 1][name] for name in g0}
        scenes.append(_with_geometry(base, g, int(noise[t])))
    return scenes


def _exit_offset(scene: Scene) -> float:
    """The ``offset[0]`` that puts every landmark of ``scene`` just right of the frame (2 pixels out).

    ``_place`` maps the leftmost feature point to ``margin + offset[0] * room``; the rest of the head
    (cheek, ear, hair) trails behind, so the picture still holds a part of it.
    """
    geo = build_geometry(scene.shape)
    x0 = _place(dataclasses.replace(scene, offset=(0.0, scene.offset[1])), geo).tx
    x1 = _place(dataclasses.replace(scene, offset=(1.0, scene.offset[1])), geo).tx
    room = x1 - x0
    if room <= 1e-6:
        raise ValueError("the face fills the frame: it cannot slide out")
    margin = 0.02 * scene.size
    return (scene.size + 2.0 - margin) / room


def clip_scenes(seed: int, frames: int, *, size: int = 256, key_every: float = 40.0, motion: float = 1.0,
                cut_at: int | None = None, exit_at: int | None = None, index: int = 0) -> list[Scene]:
    """The scenes of one clip (see the module).

    Args:
        seed, index: the clip is a function of ``(seed, index)`` alone.
        frames: number of frames.
        size: image side in pixels.
        key_every: mean distance of the key scenes in frames.
        motion: how far the keys move from the first one (0: a still face; 1: independent draws).
        cut_at: a scene cut at this frame (another face from there on), or None.
        exit_at: from this frame on the face slides out to the right (every landmark outside the frame
            ``EXIT_FRAMES`` later and after).
    """
    if frames < 1:
        raise ValueError(f"a clip needs at least one frame, got {frames}")
    _check_keys(key_every, motion)
    for name, at in (("cut_at", cut_at), ("exit_at", exit_at)):
        if at is not None and not 0 < at < frames:
            raise ValueError(f"{name} must lie in (0, {frames}), got {at}")
    first = frames if cut_at is None else cut_at
    scenes = _segment((seed, index), first, size, key_every, motion)
    if cut_at is not None:
        scenes += _segment((seed, index, _CUT_SALT), frames - cut_at, size, key_every, motion)
    if exit_at is not None:
        x_start, y = (float(v) for v in scenes[exit_at].offset)
        for t in range(exit_at, frames):
            w = min(1.0, (t - exit_at) / EXIT_FRAMES)
            x = x_start + w * w * (_exit_offset(scenes[t]) - x_start)          # accelerates away
            scenes[t] = dataclasses.replace(scenes[t], offset=(x, y))
    return scenes


@dataclass
class VideoClip:
    """A rendered clip: BGR frames and their exact labels.

    Attributes:
        frames: ``T`` BGR uint8 images of one size.
        landmarks: layout name -> ``(T, N, 2)`` float32 landmarks (0-based pixels).
        occluded: layout name -> ``(T, N)`` bool, under the occluder (COFW's flags).
        inside: layout name -> ``(T, N)`` bool, the point lies inside the frame.
        pose: ``(T, 3)`` yaw, pitch, roll in degrees.
        segment: ``(T,)`` int, 0 before a scene cut and 1 after it.
    """

    frames: list[np.ndarray]
    landmarks: dict[str, np.ndarray]
    occluded: dict[str, np.ndarray]
    inside: dict[str, np.ndarray]
    pose: np.ndarray
    segment: np.ndarray

    def __len__(self) -> int:
        return len(self.frames)


def render_clip(seed: int, frames: int, *, size: int = 256, layouts: Sequence[str] = VIDEO_LAYOUTS,
                key_every: float = 40.0, motion: float = 1.0, cut_at: int | None = None,
                exit_at: int | None = None, index: int = 0) -> VideoClip:
    """Render clip ``index`` of ``seed`` (arguments as :func:`clip_scenes`), labelled in ``layouts``."""
    scenes = clip_scenes(seed, frames, size=size, key_every=key_every, motion=motion, cut_at=cut_at,
                         exit_at=exit_at, index=index)
    lays = [get_layout(name) for name in layouts]
    images: list[np.ndarray] = []
    lms: dict[str, list[np.ndarray]] = {lay.name: [] for lay in lays}
    occ: dict[str, list[np.ndarray]] = {lay.name: [] for lay in lays}
    for scene in scenes:
        face = render_scene(scene)
        images.append(face.image)
        for lay in lays:
            lms[lay.name].append(face.landmarks(lay))
            occ[lay.name].append(face.occluded(lay))
    landmarks = {k: np.stack(v).astype(np.float32) for k, v in lms.items()}
    inside = {k: ((v >= -0.5) & (v <= size - 0.5)).all(axis=-1) for k, v in landmarks.items()}
    segment = np.zeros(frames, np.int64)
    if cut_at is not None:
        segment[cut_at:] = 1
    pose = np.array([[s.yaw, s.pitch, s.roll] for s in scenes])
    return VideoClip(frames=images, landmarks=landmarks, occluded={k: np.stack(v) for k, v in occ.items()},
                     inside=inside, pose=pose, segment=segment)


def write_clip(clip: VideoClip, stem: str | Path, *, fps: float = 25.0, settings: dict | None = None
               ) -> tuple[Path, Path]:
    """Write ``<stem>.mp4`` (MPEG-4, lossy) and ``<stem>.json`` (ground truth); returns both paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    video = stem.with_name(stem.name + ".mp4")
    h, w = clip.frames[0].shape[:2]
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (w, h))
    if not writer.isOpened():
        raise DatasetError(video, "cannot open a video writer (OpenCV without an MPEG-4 encoder?)")
    try:
        for frame in clip.frames:
            writer.write(frame)
    finally:
        writer.release()
    doc = {
        "format": VIDEO_TRUTH_FORMAT,
        "version": VIDEO_TRUTH_VERSION,
        "video": video.name,
        "fps": float(fps),
        "width": int(w),
        "height": int(h),
        "frames": len(clip),
        "coordinates": "0-based pixels, pixel centres at integers; projections of the 3D points, also "
                       "where a point is hidden or outside the frame",
        "layouts": {name: {"landmarks": np.round(lm.astype(np.float64), 3).tolist(),
                           "occluded": clip.occluded[name].astype(int).tolist(),
                           "inside": clip.inside[name].astype(int).tolist()}
                    for name, lm in clip.landmarks.items()},
        "pose": np.round(clip.pose, 3).tolist(),
        "segment": clip.segment.astype(int).tolist(),
        "settings": settings or {},
    }
    truth = stem.with_name(stem.name + ".json")
    truth.write_text(json.dumps(doc) + "\n", encoding="utf-8")
    return video, truth


@dataclass
class ClipTruth:
    """What a clip's JSON says (:func:`read_clip_truth`)."""

    path: Path
    video: Path
    fps: float
    width: int
    height: int
    landmarks: dict[str, np.ndarray]
    occluded: dict[str, np.ndarray]
    inside: dict[str, np.ndarray]
    pose: np.ndarray
    segment: np.ndarray

    @property
    def frames(self) -> int:
        return int(len(self.pose))


def read_clip_truth(path: str | Path) -> ClipTruth:
    """Read a clip's ground truth (the ``.json`` beside its video, or the video's path); every problem
    is a :class:`~kdlandmark.errors.DatasetError` naming the file."""
    p = Path(path)
    if p.suffix.lower() != ".json":
        p = p.with_suffix(".json")
    if not p.is_file():
        raise DatasetError(p, "ground-truth file not found (kdlandmark synth --video writes one per clip)")
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(p, f"unreadable JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != VIDEO_TRUTH_FORMAT:
        raise DatasetError(p, f"not a kdlandmark video ground truth (format {doc.get('format')!r})"
                           if isinstance(doc, dict) else "not a JSON object")
    try:
        t = int(doc["frames"])
        lms, occ, ins = {}, {}, {}
        for name, entry in doc["layouts"].items():
            n = get_layout(name).num_points
            lms[name] = np.asarray(entry["landmarks"], np.float64).reshape(t, n, 2)
            occ[name] = np.asarray(entry["occluded"], bool).reshape(t, n)
            ins[name] = np.asarray(entry["inside"], bool).reshape(t, n)
        pose = np.asarray(doc["pose"], np.float64).reshape(t, 3)
        segment = np.asarray(doc.get("segment", [0] * t), np.int64).reshape(t)
        truth = ClipTruth(path=p, video=p.with_name(str(doc["video"])), fps=float(doc["fps"]),
                          width=int(doc["width"]), height=int(doc["height"]), landmarks=lms, occluded=occ,
                          inside=ins, pose=pose, segment=segment)
    except (KeyError, TypeError, ValueError) as exc:
        raise DatasetError(p, f"malformed ground truth ({type(exc).__name__}: {exc})") from None
    return truth


# ------------------------------------------------------------------------------------------ many clips

def _make_clip(task: tuple) -> dict:
    out, seed, index, frames, size, fps, key_every, motion, cut, exit_ = task
    cut_at = frames // 2 if cut else None
    exit_at = max(1, frames - EXIT_FRAMES - 10) if exit_ else None
    clip = render_clip(seed, frames, size=size, key_every=key_every, motion=motion, cut_at=cut_at,
                       exit_at=exit_at, index=index)
    settings = {"seed": seed, "index": index, "frames": frames, "size": size, "key_every": key_every,
                "motion": motion, "cut_at": cut_at, "exit_at": exit_at}
    video, truth = write_clip(clip, Path(out) / f"clip_{index:03d}", fps=fps, settings=settings)
    return {"video": str(video), "truth": str(truth), "frames": len(clip)}


def _init_worker() -> None:
    cv2.setNumThreads(1)


def synthesize_videos(count: int, out: str | Path, *, seed: int = 0, frames: int = 100, size: int = 256,
                      fps: float = 25.0, key_every: float = 40.0, motion: float = 1.0, cuts: bool = False,
                      exits: bool = False, workers: int | None = None) -> dict:
    """Write ``count`` clips ``clip_000.mp4`` + ``clip_000.json`` ... under ``out`` (``kdlandmark synth
    --video``).  Clip ``i`` is a function of ``(seed, i)`` and the settings; ``cuts`` puts a scene cut
    in the middle of every clip, ``exits`` makes the face leave the picture near the end.  Returns a
    summary (clips, frames, seconds, frames per second, the files)."""
    if count < 1 or frames < 2:
        raise ValueError(f"count must be >= 1 and frames >= 2, got {count} and {frames}")
    if size < 32:
        raise ValueError(f"size must be at least 32 pixels, got {size}")
    if exits and frames <= EXIT_FRAMES + 11:
        raise ValueError(f"a clip whose face leaves the picture needs more than {EXIT_FRAMES + 11} frames")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tasks = [(str(out), seed, i, frames, size, fps, key_every, motion, cuts, exits) for i in range(count)]
    workers = max(1, min(workers or os.cpu_count() or 1, count))
    start = time.perf_counter()
    results = []
    with tqdm(total=count, desc="synth video", unit="clip", disable=None) as bar:
        if workers == 1:
            for r in map(_make_clip, tasks):
                results.append(r)
                bar.update()
        else:
            with mp.get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
                for r in pool.imap(_make_clip, tasks):
                    results.append(r)
                    bar.update()
    seconds = time.perf_counter() - start
    total = sum(r["frames"] for r in results)
    return {"root": str(out), "clips": count, "frames": total, "seconds": seconds,
            "frames_per_second": total / max(seconds, 1e-9), "workers": workers,
            "files": [r["video"] for r in results]}


def format_video_summary(summary: dict) -> str:
    """The lines ``kdlandmark synth --video`` prints."""
    return (f"wrote {summary['clips']} clip(s), {summary['frames']} frames, to {summary['root']} in "
            f"{summary['seconds']:.1f} s ({summary['frames_per_second']:.0f} frames/s, "
            f"{summary['workers']} worker(s)); ground truth: clip_NNN.json beside each clip_NNN.mp4")
