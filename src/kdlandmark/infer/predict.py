"""``kdlandmark predict IMAGE|DIR|VIDEO ... --model CKPT --out DIR``: landmarks of files, written to disk.

For each image: ``<out>/<name>.json`` (faces: box, score, layout, landmarks in image pixels), unless
``--json-only`` an annotated copy ``<out>/<name>.<ext>`` (landmarks drawn with
:func:`kdlandmark.draw.draw_landmarks`, boxes with ``--show-box``), and with ``--pts`` (default
on for layouts whose benchmark ships ``.pts`` files, i.e. 300W) one 1-based ``.pts`` file per face:
``<name>.pts`` for the first face, ``<name>_1.pts``, ``<name>_2.pts`` ... for the others.

Folders are read recursively (image extensions below), outputs mirror the sub-folders.  A video
(``cv2.VideoCapture``) is read frame by frame and processed in batches of ``--batch`` frames, or with
``--smooth`` tracked and smoothed (:mod:`kdlandmark.infer.track`); it writes ``<name>.json`` (one entry
per frame; with ``--smooth`` also the tracker's events) and, unless ``--json-only``, an annotated
``<name>.mp4``.  A model with confidence heads adds ``visibility`` and ``error`` (pixels) to every face,
and hidden points are drawn in red; ``--confidence`` makes a model without them an error.

Unreadable files are reported on stderr as they are met and skipped; the command then ends with exit
status 1 and a summary naming them (status 2 when no input could be processed at all).  Nothing is
skipped silently.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kdlandmark.data.samples import DatasetError

__all__ = ["IMAGE_EXTENSIONS", "VIDEO_EXTENSIONS", "PTS_LAYOUTS", "HIDDEN_COLOUR", "collect_inputs",
           "annotate", "example_figure",
           "read_boxes_table", "predict_main", "predict_files"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
#: Layouts whose benchmark stores landmarks as ``.pts`` files: ``--pts`` is on by default for them.
PTS_LAYOUTS = frozenset({"300w"})


def collect_inputs(paths: Sequence[str | Path]) -> tuple[list[tuple[Path, Path]], list[tuple[str, str]]]:
    """``[(file, output stem relative to --out)]`` for the given files and folders, and the problems met.

    Files are taken as given (images or videos by extension; other extensions are tried as images and
    reported if they cannot be read).  Folders are searched recursively for image and video files.
    """
    items: list[tuple[Path, Path]] = []
    problems: list[tuple[str, str]] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in
                           IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)
            if not found:
                problems.append((str(p), "no image or video files in this folder"))
            items.extend((f, f.relative_to(p).with_suffix("")) for f in found)
        elif p.is_file():
            items.append((p, Path(p.stem)))
        else:
            problems.append((str(p), "no such file or folder"))
    seen: dict[Path, int] = {}
    unique = []
    for f, stem in items:                    # a.jpg and a.png in one folder: keep both outputs apart
        k = seen.get(stem, 0)
        seen[stem] = k + 1
        unique.append((f, stem if k == 0 else stem.with_name(f"{stem.name}_{f.suffix.lstrip('.')}")))
    return unique, problems


#: Colour (BGR) of the points a model with a visibility head calls hidden (the synthetic sheets' red).
HIDDEN_COLOUR = (40, 40, 255)


def annotate(image_bgr: np.ndarray, faces: Sequence[Any], *, show_box: bool = False) -> np.ndarray:
    """A copy of the image with each face's landmarks (and box) drawn; points a visibility head calls
    hidden (probability below 0.5) are drawn in red."""
    import cv2

    from kdlandmark.draw import draw_landmarks

    out = image_bgr
    for face in faces:
        hidden = face.hidden() if hasattr(face, "hidden") else None
        out = draw_landmarks(out, face.landmarks, face.layout, occluded=hidden, occluded_color=HIDDEN_COLOUR)
        if show_box:
            x0, y0, x1, y1 = (round(v) for v in face.box)
            cv2.rectangle(out, (x0, y0), (x1, y1), (0, 160, 255), 1, cv2.LINE_AA)
            cv2.putText(out, f"{face.score:.2f}", (x0, max(10, y0 - 3)), cv2.FONT_HERSHEY_SIMPLEX, 0.35,
                        (0, 160, 255), 1, cv2.LINE_AA)
    return out if out is not image_bgr else image_bgr.copy()


def _pts_paths(stem: Path, count: int) -> list[Path]:
    return [stem.with_name(stem.name + (".pts" if k == 0 else f"_{k}.pts")) for k in range(count)]


def _write_image_outputs(out: Path, stem: Path, src: Path, image: np.ndarray, faces: list[Any], *,
                         json_only: bool, pts: bool, show_box: bool) -> None:
    import cv2

    from kdlandmark.data.formats._common import write_pts

    base = out / stem
    base.parent.mkdir(parents=True, exist_ok=True)
    doc = {"image": str(src), "width": int(image.shape[1]), "height": int(image.shape[0]),
           "faces": [f.to_json() for f in faces]}
    base.with_name(base.name + ".json").write_text(json.dumps(doc, indent=1) + "\n")
    if pts:
        for path, face in zip(_pts_paths(base, len(faces)), faces, strict=True):
            write_pts(path, face.landmarks)
    if not json_only:
        ext = src.suffix.lower() if src.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp") else ".png"
        target = base.with_name(base.name + ext)
        if target.resolve() == src.resolve():
            raise DatasetError(target, "refusing to overwrite the input image; choose another --out")
        if not cv2.imwrite(str(target), annotate(image, faces, show_box=show_box)):
            raise DatasetError(target, "cannot write the annotated image")


def _frames(cap: Any, batch: int) -> Iterator[list[np.ndarray]]:
    chunk: list[np.ndarray] = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        chunk.append(frame)
        if len(chunk) == batch:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class _VideoOut:
    """The outputs of one video: per-frame JSON entries and the annotated ``.mp4`` (opened on the first
    frame), written even when the video stops early so the frames before a problem are kept."""

    def __init__(self, base: Path, fps: float, args: argparse.Namespace) -> None:
        self.base, self.fps, self.args = base, fps, args
        self.frames: list[dict] = []
        self.writer: Any = None
        self.size: tuple[int, int] | None = None
        self.no_face: list[int] = []

    def add(self, frame: np.ndarray, faces: list[Any]) -> None:
        import cv2

        self.frames.append({"frame": len(self.frames), "faces": [f.to_json() for f in faces]})
        if not faces:
            self.no_face.append(len(self.frames) - 1)
        if self.args.json_only:
            return
        if self.writer is None:
            h, w = frame.shape[:2]
            path = self.base.with_name(self.base.name + ".mp4")
            self.writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (w, h))
            if not self.writer.isOpened():
                raise DatasetError(path, "cannot open a video writer")
        self.writer.write(annotate(frame, faces, show_box=self.args.show_box))

    def close(self, src: Path, extra: dict) -> None:
        if self.writer is not None:
            self.writer.release()
        doc = {"video": str(src), "fps": self.fps, **extra, "frames": self.frames}
        self.base.with_name(self.base.name + ".json").write_text(json.dumps(doc) + "\n")


def _same_size(frame: np.ndarray, first: tuple[int, int] | None, index: int) -> tuple[int, int]:
    h, w = frame.shape[:2]
    if first is not None and (w, h) != first:
        raise ValueError(f"frame {index} is {w}x{h} pixels, but the video started at {first[0]}x{first[1]}: "
                         "a frame of another size")
    return (w, h)


def _spans(frames: Sequence[int]) -> str:
    """``3-7, 12`` for frames 3, 4, 5, 6, 7, 12."""
    out: list[str] = []
    for f in frames:
        if out and f == int(out[-1].split("-")[-1]) + 1:
            out[-1] = f"{out[-1].split('-')[0]}-{f}"
        else:
            out.append(str(f))
    return ", ".join(out[:8]) + (" ..." if len(out) > 8 else "")


def _process_video(lmk: Any, src: Path, out: Path, stem: Path, args: argparse.Namespace
                   ) -> tuple[int, list[str], str | None]:
    """Landmarks of every frame of a video: the number of frames written, notes for the user, and the
    problem that stopped it early (or None).

    Frame by frame (``--batch`` frames through the model together), or with ``--smooth`` through a
    :class:`~kdlandmark.infer.track.FaceTracker` (tracked crops, One Euro filter).  A frame of another
    size ends the video: the frames before it are written, and the problem names the frame.  A video
    that cannot be opened or has no decodable frame is a :class:`DatasetError`.
    """
    import cv2
    from tqdm.auto import tqdm

    cap = cv2.VideoCapture(str(src))
    if not cap.isOpened():
        raise DatasetError(src, "cannot open video (not a video file, or a codec this OpenCV lacks)")
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) or None
    base = out / stem
    base.parent.mkdir(parents=True, exist_ok=True)
    video = _VideoOut(base, fps, args)
    extra: dict[str, Any] = {"mode": "frame by frame"}
    notes: list[str] = []
    problem: str | None = None
    first: tuple[int, int] | None = None
    tracker = None
    if getattr(args, "smooth", False):
        from kdlandmark.infer.track import FaceTracker

        tracker = FaceTracker(lmk, fps=fps, min_cutoff=args.min_cutoff, beta=args.beta,
                              redetect_every=args.redetect_every, flip=bool(getattr(args, "flip", None)))
        extra = {"mode": "tracking + One Euro smoothing",
                 "one_euro": {"min_cutoff": args.min_cutoff, "beta": args.beta}}
    try:
        with tqdm(total=total, desc=src.name, unit="frame", disable=None, leave=False) as bar:
            for chunk in _frames(cap, 1 if tracker is not None else max(1, args.batch)):
                good = chunk
                try:
                    for k, frame in enumerate(chunk):
                        first = _same_size(frame, first, len(video.frames) + k)
                except ValueError as exc:                    # keep the frames of the chunk before it
                    good, problem = chunk[:k], str(exc)
                results = [tracker.update(f) for f in good] if tracker is not None else \
                    (lmk.predict(good) if good else [])
                for frame, faces in zip(good, results, strict=True):
                    video.add(frame, faces)
                bar.update(len(good))
                if problem is not None:
                    break
    finally:
        cap.release()
        if tracker is not None:
            extra["events"] = [e.to_json() for e in tracker.events]
            extra["detector_runs"] = tracker.detections
        if problem is not None:
            extra["error"] = problem
        if total and problem is None and len(video.frames) < total:
            notes.append(f"decoded {len(video.frames)} of the {total} frames the file announces (truncated?)")
            extra["warning"] = notes[-1]
        video.close(src, extra)
    if not video.frames and problem is None:
        raise DatasetError(src, "no frame could be decoded")
    if video.no_face:
        lost = [e for e in (tracker.events if tracker is not None else []) if e.event == "lost"]
        why = f" (tracked face lost: {lost[0].why} at frame {lost[0].frame})" if lost else ""
        notes.append(f"no face in frame(s) {_spans(video.no_face)}{why}")
    if problem is not None:
        problem = f"{problem}; the {len(video.frames)} frame(s) before it were written"
    return len(video.frames), notes, problem


def _boxes_for(table: dict[str, list] | None, f: Path, stem: Path) -> Any:
    """The table's boxes for file ``f`` (by relative path, file name or stem), or None (detect)."""
    if table is None:
        return None
    for key in (stem.with_suffix(f.suffix).as_posix(), f.name, f.stem, str(f)):
        if key in table:
            return table[key]
    return None


def predict_files(lmk: Any, inputs: Sequence[str | Path], out: str | Path, *, args: argparse.Namespace,
                  boxes: dict[str, list] | None = None) -> dict:
    """Run ``lmk`` on files and folders, write the outputs; returns counts and the list of problems.

    ``boxes`` maps image names (relative path, file name or stem) to face boxes; those images skip
    detection.  An image the detector cannot serve (no detector, no boxes) is reported as a problem.
    """
    from tqdm.auto import tqdm

    from kdlandmark.infer.landmarker import to_bgr

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    items, problems = collect_inputs(inputs)
    for path, why in problems:
        print(f"error: {path}: {why}", file=sys.stderr)
    pts = args.pts if args.pts is not None else lmk.layout.name in PTS_LAYOUTS
    images = [(f, s) for f, s in items if f.suffix.lower() not in VIDEO_EXTENSIONS]
    videos = [(f, s) for f, s in items if f.suffix.lower() in VIDEO_EXTENSIONS]
    stats = {"images": 0, "faces": 0, "no_face": [], "frames": 0, "videos": 0, "problems": problems}
    batch = max(1, int(args.batch))
    with tqdm(total=len(images), desc="predict", unit="image", disable=None) as bar:
        for start in range(0, len(images), batch):
            chunk = images[start:start + batch]
            loaded = []
            for f, s in chunk:
                try:
                    loaded.append((f, s, to_bgr(f)))
                except DatasetError as exc:
                    problems.append((str(f), exc.problem))
                    print(f"error: {f}: {exc.problem}", file=sys.stderr)
            given = [_boxes_for(boxes, f, s) for f, s, _ in loaded]
            usable = [k for k, g in enumerate(given) if g is not None or lmk.detector is not None]
            for k in sorted(set(range(len(loaded))) - set(usable)):
                problems.append((str(loaded[k][0]), "no face box given and no detector"))
                print(f"error: {loaded[k][0]}: no face box given and no detector", file=sys.stderr)
            loaded = [loaded[k] for k in usable]
            given = [given[k] for k in usable]
            results = lmk.predict([img for _, _, img in loaded], given) if loaded else []
            for (f, s, img), faces in zip(loaded, results, strict=True):
                try:
                    _write_image_outputs(out, s, f, img, faces, json_only=args.json_only, pts=pts,
                                         show_box=args.show_box)
                except (DatasetError, OSError) as exc:
                    problems.append((str(f), str(exc)))
                    print(f"error: {f}: {exc}", file=sys.stderr)
                    continue
                stats["images"] += 1
                stats["faces"] += len(faces)
                if not faces:
                    stats["no_face"].append(str(f))
            bar.update(len(chunk))
    for f, s in videos:
        if lmk.detector is None:
            problems.append((str(f), "videos need a face detector"))
            print(f"error: {f}: videos need a face detector", file=sys.stderr)
            continue
        try:
            frames, notes, problem = _process_video(lmk, f, out, s, args)
            stats["frames"] += frames
            stats["videos"] += 1
            for note in notes:
                print(f"predict: {f}: {note}")
            if problem is not None:
                problems.append((str(f), problem))
                print(f"error: {f}: {problem}", file=sys.stderr)
        except DatasetError as exc:
            problems.append((str(f), exc.problem))
            print(f"error: {f}: {exc.problem}", file=sys.stderr)
    return stats


# ------------------------------------------------------------------------------------------------ command
def read_boxes_table(path: Path) -> dict[str, list]:
    """Face boxes from a JSON file ``{image name or relative path: [[x0, y0, x1, y1], ...]}``."""
    try:
        table = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(path, f"cannot read the boxes JSON ({exc})") from None
    if not isinstance(table, dict):
        raise DatasetError(path, "expected a JSON object {image name: [[x0, y0, x1, y1], ...]}")
    return table


def build_landmarker(model: str | Path | None, *, backend: str | None = None, **kwargs: Any) -> Any:
    """A :class:`~kdlandmark.infer.landmarker.Landmarker` for the command line: the shipped model when
    ``model`` is None (ONNX Runtime unless ``backend`` says otherwise), else the checkpoint or ``.onnx``
    file (backend by its suffix unless given); ``kwargs`` as ``Landmarker.from_checkpoint``, where
    ``flip=None`` means the model's default (on for the shipped model, off for others)."""
    from kdlandmark.infer.landmarker import Landmarker

    if kwargs.get("flip", False) is None:
        del kwargs["flip"]

    if model is None:
        return Landmarker.from_pretrained(backend=backend or "onnx", **kwargs)
    backend = backend or ("onnx" if Path(model).suffix == ".onnx" else "torch")
    return Landmarker.from_checkpoint(model, backend=backend, **kwargs)


def predict_main(args: argparse.Namespace) -> int:
    """``kdlandmark predict``: 0 when every input was processed, 1 when some could not be read, 2 when
    none could (or the model or the boxes file is bad: those raise, and the command line reports them)."""
    from kdlandmark.infer.detect import DetectorUnavailable
    from kdlandmark.infer.landmarker import DEFAULT_UPRIGHT_DEG
    from kdlandmark.infer.track import DEFAULT_BETA, DEFAULT_MIN_CUTOFF

    if getattr(args, "smooth", False):
        args.min_cutoff = DEFAULT_MIN_CUTOFF if args.min_cutoff is None else args.min_cutoff
        args.beta = DEFAULT_BETA if args.beta is None else args.beta
        if args.beta < 0:
            raise ValueError(f"--beta must be >= 0, got {args.beta}")
    table = read_boxes_table(args.boxes) if args.boxes is not None else None
    lmk = build_landmarker(args.model, backend=args.backend, device=args.device, detector=args.detector,
                           batch_size=max(1, args.batch), min_score=args.min_score, max_faces=args.max_faces,
                           refine=args.refine, flip=getattr(args, "flip", None),
                           upright=getattr(args, "upright", DEFAULT_UPRIGHT_DEG))
    if getattr(args, "confidence", False):
        lmk.require_heads()                 # a CheckpointError: one clear error line, exit status 2
    try:
        _ = lmk.detector            # build it now: a missing detector is one clear error, not one per file
    except DetectorUnavailable as exc:
        if table is None:
            print(f"error: face detector {args.detector!r} unavailable: {exc}", file=sys.stderr)
            return 2
        lmk._detector_spec = None                   # every image must then be in the boxes table
    stats = predict_files(lmk, args.inputs, args.out, args=args, boxes=table)
    done = f"{stats['images']} image(s), {stats['faces']} face(s)"
    if stats["videos"]:
        done += f", {stats['videos']} video(s) with {stats['frames']} frame(s)"
    print(f"predict: {done} -> {args.out}")
    if stats["no_face"]:
        print(f"predict: no face found in {len(stats['no_face'])} image(s): "
              + ", ".join(stats["no_face"][:10]) + (" ..." if len(stats["no_face"]) > 10 else ""))
    if stats["problems"]:
        print(f"predict: {len(stats['problems'])} input(s) could not be processed:", file=sys.stderr)
        for path, why in stats["problems"]:
            print(f"  {path}: {why}", file=sys.stderr)
        if not stats["images"] and not stats["videos"]:
            print("error: no input could be processed (the problems are listed above)", file=sys.stderr)
            return 2
        return 1
    return 0


def example_figure(model: str | Path, out: str | Path, *, count: int = 6, seed: int = 777, size: int = 256,
                   cols: int = 3, backend: str = "torch") -> Path:
    """Picture of ``model``'s landmarks on ``count`` synthetic test faces (docs/img/predict_example.png).

    Faces come from :func:`kdlandmark.data.synth.render_face` with ``seed`` (not a training seed); each
    face box is the renderer's detector-like box (the landmark box with a few percent of jitter), so
    the picture shows the full box -> crop -> model -> image path.  Predictions in green, the box in
    orange; the inter-ocular NME of each face is written in its corner.
    """
    import cv2

    from kdlandmark.data.synth import render_face
    from kdlandmark.draw import image_grid
    from kdlandmark.evaluate.metrics import nme_per_image
    from kdlandmark.infer.landmarker import Landmarker

    lmk = Landmarker.from_checkpoint(model, backend=backend, detector=None)
    rng = np.random.default_rng(seed)
    tiles = []
    for _ in range(count):
        img, lm, info = render_face(rng, lmk.layout, size)
        face = lmk(img, boxes=[info["box"]])[0]
        nme = float(nme_per_image(face.landmarks[None], lm[None], lmk.layout)[0])
        tile = annotate(img, [face], show_box=True)
        cv2.putText(tile, f"NME {100 * nme:.1f}%", (5, size - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(tile)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), image_grid(tiles, cols), [cv2.IMWRITE_PNG_COMPRESSION, 9]):
        raise OSError(f"{out}: cannot write the figure")
    return out
