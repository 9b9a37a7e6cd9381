"""The public inference API: ``Landmarker.from_checkpoint(path)(image)`` -> landmarks in image pixels.

One call does the whole story (DESIGN.md, after face-alignment's ``api.py``)::

    from kdlandmark import Landmarker
    lmk = Landmarker.from_checkpoint("runs/demo/kd/best")            # or backend="onnx"
    for face in lmk("photo.jpg"):                                   # path, BGR array or PIL image
        face.landmarks   # (N, 2) float32, x then y, 0-based image pixels
        face.box, face.score, face.layout

Images: a file path, a NumPy array in **OpenCV's BGR** channel order (``cv2.imread``'s; greyscale and
BGRA are converted) of uint8, or a PIL image (RGB, converted).  The models themselves take RGB.

Steps, each the project's one shared implementation:

1. faces: a detector (:mod:`kdlandmark.infer.detect`: MTCNN, Haar cascade, whole image, or your callable)
   gives boxes in the landmark-box convention, or you pass boxes and detection is skipped;
2. crop: ``crop_affine(box, input_size, margin)`` of :mod:`kdlandmark.data.crop` with the checkpoint's
   margin, one ``cv2.warpAffine`` straight into a pre-allocated uint8 batch buffer at the input size
   (crops that shrink the face below half size are area-reduced first, as prepare does);
3. normalise: BGR -> RGB and ``/ 255`` into a pre-allocated float32 buffer (mean/std is inside the model);
4. model: PyTorch (eager or ``torch.compile``) or ONNX Runtime, faces of all images batched together;
5. map back: ``model_to_image_affine`` (``from_model_coords`` then the inverse crop affine, folded);
6. tilted heads: a face whose eye line is tilted by more than ``upright`` degrees runs again from a crop
   turned upright about its landmarks (``upright_crop_affine``), at most ``UPRIGHT_PASSES`` times.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from kdlandmark.data.crop import crop_affine, model_to_image_affine, upright_crop_affine
from kdlandmark.infer.detect import Box, DetectorFn, check_detections, make_detector
from kdlandmark.infer.export import INPUT_NAME, build_onnx, load_onnx, onnx_session
from kdlandmark.layouts import Layout
from kdlandmark.modelfile.meta import ModelMeta

#: Pretrained models shipped inside the package (``src/kdlandmark/pretrained/<folder>``): name -> folder.
PRETRAINED = {"68": "kdlandmark-68"}

__all__ = ["FaceLandmarks", "Landmarker", "TorchRunner", "OnnxRunner", "to_bgr", "ImageLike", "PRETRAINED",
           "pretrained_dir", "DEFAULT_UPRIGHT_DEG"]

ImageLike = Any  # str | Path | np.ndarray (BGR) | PIL.Image.Image (RGB)
BoxesLike = Any  # (F, 4) array-like of boxes, or a sequence of ((x0, y0, x1, y1), score)

#: Crops that shrink the image below this scale are area-reduced before the bilinear warp (anti-aliasing).
ANTIALIAS_BELOW = 0.5

#: Faces whose eye line the first pass finds tilted by more than this (degrees) run again from an upright
#: crop (``Landmarker(upright=...)``; docs/INFERENCE.md, "Tilted heads").
DEFAULT_UPRIGHT_DEG = 10.0
#: At most this many upright passes per face.
UPRIGHT_PASSES = 2


@dataclass(frozen=True)
class FaceLandmarks:
    """One face's result.

    Attributes:
        landmarks: ``(N, 2)`` float32, x then y, 0-based image pixels (pixel centres at integers).
        box: the face box the crop was cut around, landmark-box convention ``(x0, y0, x1, y1)``.
        score: the detector's score (1.0 for given boxes and whole-image faces).
        layout: the landmark layout (``layout.name``, groups, ...).
        visibility: ``(N,)`` float32 probability that each point is visible (not occluded, inside the
            crop), from a model with a visibility head; None otherwise.
        error: ``(N,)`` float32 expected distance of each point from its true position, in image
            pixels, from a model with an error head; None otherwise.
    """

    landmarks: np.ndarray
    box: Box
    score: float
    layout: Layout
    visibility: np.ndarray | None = None
    error: np.ndarray | None = None

    def hidden(self, threshold: float = 0.5) -> np.ndarray | None:
        """``(N,)`` bool, points whose visibility is below ``threshold``; None without a visibility head."""
        return None if self.visibility is None else np.asarray(self.visibility) < threshold

    def to_json(self) -> dict:
        """Plain-JSON form (lists of floats), as ``kdlandmark predict`` writes it; ``visibility`` and
        ``error`` (pixels) only for a model with those heads."""
        doc = {"box": [round(float(v), 3) for v in self.box], "score": float(self.score),
               "layout": self.layout.name, "num_points": self.layout.num_points,
               "landmarks": [[round(float(x), 3), round(float(y), 3)] for x, y in self.landmarks]}
        if self.visibility is not None:
            doc["visibility"] = [round(float(v), 4) for v in self.visibility]
        if self.error is not None:
            doc["error"] = [round(float(v), 3) for v in self.error]
        return doc


def to_bgr(image: ImageLike, where: str = "image") -> np.ndarray:
    """3-channel BGR uint8 of a path, a NumPy array (BGR, greyscale or BGRA) or a PIL image (RGB).

    A photo whose EXIF says it is to be shown turned (phones store portraits so) comes upright from a
    path (OpenCV applies the orientation) and from a PIL image alike (``ImageOps.exif_transpose``, which
    ``Image.open`` does not apply); an array is taken as it is."""
    if isinstance(image, str | Path):
        from kdlandmark.data.prepare import decode_image

        return decode_image(image)
    if isinstance(image, np.ndarray):
        from kdlandmark.data.formats._common import as_bgr

        return as_bgr(image, where)  # DatasetError, a ValueError naming the image
    if hasattr(image, "convert") and hasattr(image, "size"):      # PIL.Image.Image
        from PIL import ImageOps

        rgb = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    raise TypeError(f"{where}: expected a path, a NumPy array or a PIL image, got {type(image).__name__}")


# ------------------------------------------------------------------------------------------------ runners
class TorchRunner:
    """Runs a PyTorch model on ``(B, 3, S, S)`` float32 NumPy batches (no copies on the CPU).

    A model with confidence heads returns a tuple: the coordinates, then each head's ``(B, N)`` output
    (:class:`~kdlandmark.models.InferenceOutputs`).
    """

    def __init__(self, model: Any, device: str = "cpu", *, compile: bool = False) -> None:
        import torch

        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.compiled = bool(compile)
        self.heads = tuple(getattr(model, "heads", ()))
        module = self.model
        if self.heads:
            from kdlandmark.models import InferenceOutputs

            module = InferenceOutputs(self.model)
        self.fn = torch.compile(module, dynamic=False) if compile else module
        self.name = "torch-compiled" if compile else "torch"

    def __call__(self, x: np.ndarray) -> Any:
        import torch

        with torch.inference_mode():
            t = torch.from_numpy(x)
            if self.device.type != "cpu":
                t = t.to(self.device, non_blocking=True)
            out = self.fn(t)
            if self.heads:
                return tuple(o.float().cpu().numpy() for o in out)
            return out.float().cpu().numpy()


class OnnxRunner:
    """Runs an ONNX Runtime session; a fixed-batch graph is fed in chunks (the last one padded)."""

    def __init__(self, session: Any) -> None:
        self.session = session
        inp = session.get_inputs()[0]
        self.input_name = inp.name if inp.name else INPUT_NAME
        self.dtype = np.float16 if "float16" in inp.type else np.float32
        b = inp.shape[0]
        self.fixed_batch = int(b) if isinstance(b, int) and b > 0 else None
        self.name = "onnxruntime"

    def __call__(self, x: np.ndarray) -> Any:
        """The coordinates, or (a graph with head outputs) a tuple of them and each head's output."""
        if self.dtype != np.float32:
            x = x.astype(self.dtype)
        b = self.fixed_batch
        if b is None or len(x) == b:
            outs = self.session.run(None, {self.input_name: x})
        else:
            parts = []
            for start in range(0, len(x), b):
                chunk = x[start:start + b]
                n = len(chunk)
                if n < b:
                    chunk = np.concatenate([chunk, np.zeros((b - n, *chunk.shape[1:]), chunk.dtype)])
                parts.append([o[:n] for o in self.session.run(None, {self.input_name: chunk})])
            outs = [np.concatenate(p) for p in zip(*parts, strict=True)]
        if len(outs) == 1:
            return np.asarray(outs[0], dtype=np.float32)
        return tuple(np.asarray(o, dtype=np.float32) for o in outs)


# ------------------------------------------------------------------------------------------------ landmarker
class Landmarker:
    """Face landmarks of images: detect (or take boxes), crop, run the model, map back to image pixels.

    Build with :meth:`from_checkpoint`.  Call on one image (returns a list of :class:`FaceLandmarks`, one
    per face) or use :meth:`predict` for a batch of images (faces of all images run as one batch).

    Args:
        runner: ``runner(x)`` maps ``(B, 3, S, S)`` float32 RGB ``[0, 1]`` to ``(B, N, 2)`` model coords.
        meta: the model's metadata (checkpoint ``model.json`` or ONNX ``model.onnx.json``, parsed).
        source: file or folder the model came from (named in errors).
        detector: ``"auto"``/``"mtcnn"`` (MTCNN on ONNX Runtime; ``"auto"`` falls back to the Haar cascade
            without its weights), ``"haar"`` (OpenCV Haar cascade), ``"full"`` (each image is one pre-cropped
            face), ``None`` (boxes must be given), or a callable ``detector(image_bgr) -> [(box, score)]``
            returning boxes in the landmark-box convention.  Built on first use.
        batch_size: faces per model call.
        min_score: drop detections scoring below this.
        max_faces: keep at most this many faces per image (highest scores first).
        antialias: area-reduce before warping when the crop shrinks the image below half size.
        refine: extra passes per face: each crops again around the landmarks the previous pass found
            (their landmark box), which makes the result less dependent on the detector's box.
        flip: flip averaging: each crop also runs mirrored left-right (in the same model call) and the
            two answers are averaged (:meth:`Layout.average_with_mirror`); twice the model's work for a
            lower error on real faces (docs/MODEL_CARD.md).
        upright: a face found tilted (eye line) by more than this many degrees runs again from a crop
            turned upright (:func:`upright_crop_affine`), at most :data:`UPRIGHT_PASSES` times, and keeps
            that answer; only tilted faces pay (docs/INFERENCE.md, "Tilted heads").  ``None``: never.
        cv2_threads: ``cv2.setNumThreads`` value set when the landmarker is built (process-wide), 1 by
            default: a crop is far too small to gain from threads, and OpenCV's thread pool spinning
            next to PyTorch's or ONNX Runtime's threads made one end-to-end face 60x slower than the
            model alone on this 2-core machine (1244 ms against 20 ms; docs/INFERENCE.md).  ``None``
            leaves OpenCV's setting alone.
    """

    def __init__(self, runner: Callable[[np.ndarray], np.ndarray], meta: ModelMeta, *,
                 source: str | Path = "<model>", detector: str | DetectorFn | None = "auto",
                 batch_size: int = 16, min_score: float | None = None, max_faces: int | None = None,
                 antialias: bool = True, refine: int = 0, flip: bool = False,
                 upright: float | None = DEFAULT_UPRIGHT_DEG, cv2_threads: int | None = 1) -> None:
        self.runner = runner
        self.meta = meta
        self.source = str(source)
        self.layout: Layout = meta.layout
        self.input_size = meta.input_size
        self.margin = meta.margin
        self._detector_spec = detector
        self._detector: DetectorFn | None = None
        self.batch_size = max(1, int(batch_size))
        self.min_score = min_score
        self.max_faces = max_faces
        self.antialias = bool(antialias)
        if refine < 0:
            raise ValueError(f"refine must be >= 0, got {refine}")
        self.refine = int(refine)
        self.flip = bool(flip)
        if upright is not None and not 0 <= upright < 180:
            raise ValueError(f"upright must be None or an angle in [0, 180) degrees, got {upright}")
        self.upright = None if upright is None else float(upright)
        if cv2_threads is not None:
            cv2.setNumThreads(int(cv2_threads))
        s = self.input_size
        self._u8 = np.empty((self.batch_size, s, s, 3), np.uint8)
        self._x = np.empty((self.batch_size, 3, s, s), np.float32)
        self._inv255 = np.float32(1.0 / 255.0)

    # -------------------------------------------------------------------------------------------- building
    @classmethod
    def from_checkpoint(cls, path: str | Path, *, device: str = "cpu", backend: str = "torch",
                        detector: str | DetectorFn | None = "auto", layout: Layout | str | None = None,
                        batch_size: int = 16, threads: int | None = None, compile: bool = False,
                        **kwargs: Any) -> Landmarker:
        """A landmarker for a checkpoint folder (``model.json`` + ``model.safetensors``) or an ONNX model.

        Args:
            path: checkpoint folder (or its ``model.json``), or an exported ``.onnx`` file.
            device: PyTorch device (``cpu``, ``cuda``); ONNX Runtime runs on the CPU.
            backend: ``"torch"`` or ``"onnx"``.  With ``"onnx"`` and a checkpoint folder, its
                ``model.onnx`` is used when it was exported from these weights, else the model is
                exported in memory.
            detector: see the class (``"auto"``: MTCNN, built on first use).
            layout: if given, the model must be for this layout (else :class:`CheckpointError`).
            batch_size: faces per model call.
            threads: CPU threads for the model (PyTorch: ``torch.set_num_threads``, process-wide).
            compile: ``torch.compile`` the model (torch backend).
            **kwargs: ``min_score``, ``max_faces``, ``antialias``, ``refine``, ``flip``, ``cv2_threads``
                (see the class).

        Loading never executes code (safetensors, JSON, ONNX protobuf); malformed, truncated or
        mismatched files raise :class:`~kdlandmark.errors.CheckpointError` naming the file.
        """
        p = Path(path)
        if backend not in ("torch", "onnx"):
            raise ValueError(f"backend must be 'torch' or 'onnx', got {backend!r}")
        if backend == "onnx":
            session, meta, source = _open_onnx_for(p, layout, threads)
            runner: Callable[[np.ndarray], np.ndarray] = OnnxRunner(session)
        else:
            if p.suffix == ".onnx":
                raise ValueError(f"{p}: an ONNX model needs backend='onnx'")
            from kdlandmark.modelfile.checkpoint import load_checkpoint

            if threads:
                import torch

                torch.set_num_threads(int(threads))
            model, meta = load_checkpoint(p, device=device, layout=layout)
            runner, source = TorchRunner(model, device, compile=compile), p
        return cls(runner, meta, source=source, detector=detector, batch_size=batch_size, **kwargs)

    @classmethod
    def from_pretrained(cls, name: str = "68", *, backend: str = "onnx",
                        detector: str | DetectorFn | None = "auto", refine: int = 0, flip: bool = True,
                        **kwargs: Any) -> Landmarker:
        """The model shipped inside the package (no download): ``"68"``, the 68-point (300W/iBUG) student
        trained by ``configs/pretrained-68.yaml`` (docs/MODEL_CARD.md).

        Args:
            name: a key of :data:`PRETRAINED`.
            backend: ``"onnx"`` (ONNX Runtime, the fast CPU path) or ``"torch"``.
            detector: see the class (``"auto"``: MTCNN, or Haar without its weights).
            refine: extra passes around the first pass's landmarks (see the class; with the calibrated
                MTCNN boxes they do not help the shipped model: docs/MODEL_CARD.md).
            flip: flip averaging (see the class), on by default for the shipped model: on the real
                development faces it lowers its NME from 6.30 to 6.08 % (paired -0.22 points, p = 0.006;
                docs/MODEL_CARD.md) for a second model pass per face (0.4 ms on one core).  The video
                tracker runs one pass per frame whatever this says (``FaceTracker(flip=...)``).
            **kwargs: as :meth:`from_checkpoint` (``device``, ``threads``, ``batch_size``, ...).
        """
        if name not in PRETRAINED:
            raise ValueError(f"unknown pretrained model {name!r}; shipped: {', '.join(sorted(PRETRAINED))}")
        folder = pretrained_dir(name)
        model = folder / "model.onnx" if backend == "onnx" else folder   # the ONNX path needs no torch
        return cls.from_checkpoint(model, backend=backend, detector=detector, refine=refine, flip=flip,
                                   **kwargs)

    @property
    def detector(self) -> DetectorFn | None:
        """The face detector (built on first use, so a landmarker fed boxes never needs one)."""
        if self._detector is None and self._detector_spec is not None:
            self._detector = make_detector(self._detector_spec, self.margin, self.layout.name)
        return self._detector

    # -------------------------------------------------------------------------------------------- calling
    def __call__(self, image: ImageLike, boxes: BoxesLike | None = None) -> list[FaceLandmarks]:
        """Faces of one image (see :meth:`predict`)."""
        return self.predict([image], None if boxes is None else [boxes])[0]

    def detect(self, image_bgr: np.ndarray) -> list[tuple[Box, float]]:
        """Face boxes (landmark-box convention) and scores of one BGR image, filtered and ordered."""
        det = self.detector
        if det is None:
            raise ValueError("no detector: pass boxes, or build the Landmarker with a detector")
        dets = check_detections(det(image_bgr), "detector")
        if self.min_score is not None:
            dets = [d for d in dets if d[1] >= self.min_score]
        dets.sort(key=lambda d: -d[1])
        return dets[: self.max_faces] if self.max_faces is not None else dets

    def predict(self, images: Sequence[ImageLike], boxes: Sequence[BoxesLike | None] | None = None
                ) -> list[list[FaceLandmarks]]:
        """Faces of each image; all faces of all images run through the model in batches.

        Args:
            images: paths, BGR uint8 arrays or PIL images.
            boxes: per image, ``None`` (detect) or its faces' boxes: an ``(F, 4)`` array-like of
                ``(x0, y0, x1, y1)`` in the landmark-box convention, or ``[(box, score), ...]``.

        Raises:
            DatasetError: an image file cannot be read (naming it).
        """
        if boxes is not None and len(boxes) != len(images):
            raise ValueError(f"got {len(boxes)} box lists for {len(images)} images")
        bgrs = [to_bgr(img, f"image {k}") for k, img in enumerate(images)]
        owners: list[int] = []
        faces: list[tuple[Box, float]] = []
        for k, img in enumerate(bgrs):
            given = None if boxes is None else boxes[k]
            dets = self.detect(img) if given is None else _as_detections(given, f"boxes of image {k}")
            owners.extend([k] * len(dets))
            faces.extend(dets)
        results: list[list[FaceLandmarks]] = [[] for _ in bgrs]
        if not faces:
            return results
        crop_boxes = np.asarray([f[0] for f in faces], np.float64)
        heads: dict = {}
        lms = self.landmarks_in_boxes(bgrs, crop_boxes, owners, heads=heads)
        for _ in range(self.refine):
            crop_boxes = np.concatenate([lms.min(axis=1), lms.max(axis=1)], axis=1).astype(np.float64)
            heads = {}
            lms = self.landmarks_in_boxes(bgrs, crop_boxes, owners, heads=heads)
        if self.upright is not None:
            _upright_passes(self, bgrs, lms, owners, heads)
        for i, (k, box, (_, score), lm) in enumerate(zip(owners, crop_boxes, faces, lms, strict=True)):
            results[k].append(FaceLandmarks(lm, tuple(float(v) for v in box), float(score), self.layout,
                                            **_face_heads(heads, i)))
        return results

    # -------------------------------------------------------------------------------------------- confidence
    @property
    def heads(self) -> tuple[str, ...]:
        """The model's confidence outputs (``visibility``, ``error``); () for a plain model."""
        return self.meta.heads

    def require_heads(self) -> None:
        """:class:`~kdlandmark.errors.CheckpointError` naming the model unless it predicts both the
        visibility and the error of each point (what ``kdlandmark predict --confidence`` asks for)."""
        self.meta.require_heads(self.source)

    # -------------------------------------------------------------------------------------------- video
    def faces_in_boxes(self, image_bgr: np.ndarray, boxes: Sequence[Sequence[float]] | np.ndarray,
                       scores: Sequence[float] | None = None, *, snap: bool = False,
                       flip: bool | None = None) -> list[FaceLandmarks]:
        """:class:`FaceLandmarks` of the faces in ``boxes`` of one BGR image (no detection), confidence
        outputs included (``snap``, ``flip``: see :meth:`landmarks_in_boxes`)."""
        box_arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        heads: dict = {}
        lms = self.landmarks_in_boxes(image_bgr, box_arr, heads=heads, snap=snap, flip=flip)
        sc = [1.0] * len(box_arr) if scores is None else [float(v) for v in scores]
        return [FaceLandmarks(lm, tuple(box), score, self.layout, **_face_heads(heads, i))
                for i, (lm, box, score) in enumerate(zip(lms, box_arr.tolist(), sc, strict=True))]

    def track(self, frames: Iterable[ImageLike], **options: Any) -> Iterator[list[FaceLandmarks]]:
        """Faces of each frame of a video, tracked and smoothed: one list per frame, in order.

        The detector runs on the first frame, then only when a face is lost, on a schedule or at a scene
        cut; other frames are cropped around the last landmarks, smoothed by a One Euro filter; ``options``:
        :class:`~kdlandmark.infer.track.FaceTracker` (``smooth``, ``min_cutoff``, ``beta``, ``fps``,
        ``redetect_every``, ...).  A frame whose size differs from the first one's raises a
        ``ValueError`` naming it, after the frames before it were yielded.
        """
        from kdlandmark.infer.track import FaceTracker

        tracker = FaceTracker(self, **options)
        for frame in frames:
            yield tracker.update(to_bgr(frame, f"frame {tracker.frame_index}"))

    def landmarks_in_boxes(self, images: np.ndarray | Sequence[np.ndarray],
                           boxes: Sequence[Sequence[float]] | np.ndarray,
                           owners: Sequence[int] | None = None, heads: dict | None = None, *,
                           snap: bool = False, flip: bool | None = None) -> np.ndarray:
        """``(F, N, 2)`` float32 image-pixel landmarks of faces given by boxes: the lean path.

        Args:
            images: one BGR uint8 image, or a list of them (then ``owners[f]`` is face ``f``'s image).
            boxes: ``(F, 4)`` face boxes in the landmark-box convention.
            owners: image index per face (default: all faces in the one image).
            heads: a dict to receive the confidence outputs of a model with heads: ``"visibility"``
                (probabilities) and ``"error"`` (image pixels), each ``(F, N)`` float32.
            snap: cut each crop with one ``cv2.resize`` of a whole-pixel image region (edges and side
                rounded: it moves by at most half a pixel and is mapped back exactly) instead of
                ``cv2.warpAffine``; cheaper per face, the video tracker's per-frame path.
            flip: flip averaging for this call (``None``: the landmarker's ``flip``).
        """
        box_arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        crops = [crop_affine(box, self.input_size, self.margin) for box in box_arr]
        return self.landmarks_in_crops(images, crops, owners, heads, snap=snap, flip=flip)

    def landmarks_in_crops(self, images: np.ndarray | Sequence[np.ndarray],
                           crops: Sequence[np.ndarray] | np.ndarray, owners: Sequence[int] | None = None,
                           heads: dict | None = None, *, snap: bool = False, flip: bool | None = None
                           ) -> np.ndarray:
        """``(F, N, 2)`` float32 image-pixel landmarks of the faces cut by ``crops``: 2x3 affines from image
        pixels to the model's input square (:func:`~kdlandmark.data.crop.crop_affine`, or rotated:
        :func:`~kdlandmark.data.crop.upright_crop_affine`); the other arguments as
        :meth:`landmarks_in_boxes` (``snap`` applies to unrotated crops only)."""
        flip = self.flip if flip is None else bool(flip)
        imgs: Sequence[np.ndarray] = [images] if isinstance(images, np.ndarray) else images  # type: ignore
        n = len(crops)
        own = np.zeros(n, np.int64) if owners is None else np.asarray(owners, np.int64)
        s = self.input_size
        out = np.empty((n, self.layout.num_points, 2), np.float32)
        b = self.batch_size
        for start in range(0, n, b):
            stop = min(n, start + b)
            m = stop - start
            affines = np.empty((m, 2, 3), np.float64)
            for j in range(m):
                a = crops[start + j]
                image = imgs[own[start + j]]
                snapped = _snapped_cut(image, a, s, self._u8[j], self.antialias) if snap else None
                if snapped is None:
                    _warp_into(image, a, self._u8[j], self.antialias)
                    affines[j] = a
                else:
                    affines[j] = snapped
            x = self._x[:m]
            # BGR uint8 (m, S, S, 3) -> RGB float32 (m, 3, S, S) / 255 in one pass into the buffer
            np.multiply(self._u8[:m, :, :, ::-1].transpose(0, 3, 1, 2), self._inv255, out=x)
            xin = np.concatenate([x, x[..., ::-1]]) if flip else x     # flip: crops, then mirrors
            outputs = self.runner(xin)
            coords, extra = (outputs[0], outputs[1:]) if isinstance(outputs, tuple) else (outputs, ())
            if coords.shape != (len(xin), self.layout.num_points, 2):
                raise ValueError(f"{self.source}: model returned {coords.shape}, expected "
                                 f"({len(xin)}, {self.layout.num_points}, 2)")
            if flip:
                coords, *extra = self.layout.average_with_mirror(coords, *extra)
            if extra and heads is not None:
                _store_heads(heads, self.meta.heads, extra, affines, s, start, n)
            out[start:stop] = _map_back(coords, affines, s)
        return out


def _upright_passes(lmk: Landmarker, images: Sequence[np.ndarray], lms: np.ndarray, owners: Sequence[int],
                    heads: dict) -> None:
    """Run again, in place, the faces of ``lms`` whose eye line is tilted by more than ``lmk.upright``
    degrees from their crop's, each from a crop turned upright about its landmarks (their outputs replace
    the earlier ones); at most :data:`UPRIGHT_PASSES` times (a steep tilt is only partly undone by the
    first estimate)."""
    crop_roll = np.zeros(len(lms))
    todo = np.arange(len(lms))
    for _ in range(UPRIGHT_PASSES):
        roll = lmk.layout.roll(lms[todo])
        off = np.angle(np.exp(1j * (roll - crop_roll[todo])))                # wrapped to (-pi, pi]
        keep = np.abs(np.degrees(off)) > lmk.upright
        todo, roll = todo[keep], roll[keep]
        if not len(todo):
            return
        crops = [upright_crop_affine(lms[i], float(r), lmk.input_size, lmk.margin)
                 for i, r in zip(todo, roll, strict=True)]
        again: dict = {}
        lms[todo] = lmk.landmarks_in_crops(images, crops, [owners[i] for i in todo], heads=again)
        for name, value in again.items():
            heads[name][todo] = value
        crop_roll[todo] = roll


def _warp_into(image: np.ndarray, affine: np.ndarray, dst: np.ndarray, antialias: bool) -> None:
    """Cut one crop into ``dst`` (BGR uint8, S x S): one warpAffine, area-reduced first when shrinking."""
    s = dst.shape[0]
    if antialias:
        scale = abs(affine[0, 0] * affine[1, 1] - affine[0, 1] * affine[1, 0]) ** 0.5
        if scale < ANTIALIAS_BELOW:
            from kdlandmark.data.prepare import crop_image

            cv2.cvtColor(crop_image(image, affine, s), cv2.COLOR_RGB2BGR, dst=dst)
            return
    cv2.warpAffine(image, affine, (s, s), dst=dst, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                   borderValue=(0, 0, 0))


def _map_back(coords: np.ndarray, affines: np.ndarray, size: int) -> np.ndarray:
    """Model coordinates ``(B, N, 2)`` of crops cut by ``affines`` ``(B, 2, 3)`` -> image pixels."""
    out = np.empty(coords.shape, np.float32)
    src = np.ascontiguousarray(coords, dtype=np.float32)
    for j, a in enumerate(affines):
        cv2.transform(src[j:j + 1], model_to_image_affine(a, size), dst=out[j:j + 1])
    return out


def _snapped_cut(image: np.ndarray, affine: np.ndarray, size: int, dst: np.ndarray, antialias: bool = True
                 ) -> np.ndarray | None:
    """The crop of ``affine`` (scale and shift only) snapped to whole pixels and cut by one
    ``cv2.resize`` of the image region into ``dst`` (a region partly outside the image is first copied
    into a black square; area interpolation when ``antialias`` and the crop shrinks the image below
    :data:`ANTIALIAS_BELOW`); returns the affine of the crop actually cut, or None for a rotated affine or
    a region wholly outside the image (then the caller warps)."""
    scale = float(affine[0, 0])
    if affine[0, 1] != 0 or affine[1, 0] != 0 or affine[1, 1] != scale or not scale > 0:
        return None
    side = max(1, round(size / scale))                     # the crop's side in image pixels
    # the crop's left edge (-0.5 in crop pixels) in image pixels is x0 - 0.5 for pixel index x0
    x0 = round((-0.5 - float(affine[0, 2])) / scale + 0.5)
    y0 = round((-0.5 - float(affine[1, 2])) / scale + 0.5)
    h, w = image.shape[:2]
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x0 + side, w), min(y0 + side, h)
    if ix1 <= ix0 or iy1 <= iy0:
        return None
    region = image[iy0:iy1, ix0:ix1]
    if (ix1 - ix0, iy1 - iy0) != (side, side):
        square = np.zeros((side, side) + image.shape[2:], image.dtype)
        square[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0] = region
        region = square
    sc = size / side
    area = antialias and sc < ANTIALIAS_BELOW
    cv2.resize(region, (size, size), dst=dst, interpolation=cv2.INTER_AREA if area else cv2.INTER_LINEAR)
    # cv2.resize keeps pixel centres: crop d <- region (d + 0.5) / sc - 0.5, i.e. image x0 + that
    return np.array([[sc, 0.0, sc * (0.5 - x0) - 0.5], [0.0, sc, sc * (0.5 - y0) - 0.5]])


def _face_heads(heads: dict, i: int) -> dict[str, np.ndarray]:
    """Face ``i``'s confidence outputs for :class:`FaceLandmarks` (none for a plain model)."""
    return {name: heads[name][i] for name in ("visibility", "error") if name in heads}


def _store_heads(heads: dict, names: Sequence[str], outputs: Sequence[np.ndarray], affines: np.ndarray,
                 size: int, start: int, total: int) -> None:
    """Put one batch's head outputs into ``heads`` (the error from model units into image pixels: the
    crop maps the image with scale ``sqrt(|det A|)`` onto ``size`` pixels per model unit)."""
    scale = np.sqrt(np.abs(np.linalg.det(affines[:, :, :2])))            # crop px per image px
    for name, value in zip(names, outputs, strict=True):
        arr = heads.setdefault(name, np.empty((total, value.shape[1]), np.float32))
        v = np.asarray(value, np.float32)
        if name == "error":
            v = v * (size / scale)[:, None]
        arr[start:start + len(v)] = v


def _as_detections(given: BoxesLike, where: str) -> list[tuple[Box, float]]:
    """Boxes given by the caller as ``(F, 4)`` or ``[(box, score), ...]``."""
    try:
        arr = np.asarray(given, dtype=np.float64)
    except (ValueError, TypeError):
        arr = None
    if arr is not None and arr.ndim == 2 and arr.shape[1] == 4:
        return check_detections([(tuple(b), 1.0) for b in arr], where)
    if arr is not None and arr.ndim == 1 and arr.shape[0] == 4:
        return check_detections([(tuple(arr), 1.0)], where)
    if arr is not None and arr.size == 0:
        return []
    return check_detections(given, where)


def _open_onnx_for(path: Path, layout: Layout | str | None, threads: int | None
                   ) -> tuple[Any, ModelMeta, Path]:
    """ONNX session for an ``.onnx`` file, or for a checkpoint (its own export, or one made in memory)."""
    if path.suffix == ".onnx":
        session, meta = load_onnx(path, layout=layout, threads=threads)
        return session, meta, path
    from kdlandmark.modelfile.checkpoint import load_checkpoint, model_checkpoint_files, read_model_meta

    meta_path, _ = model_checkpoint_files(path)
    ckpt_meta = read_model_meta(meta_path)
    exported = meta_path.parent / "model.onnx"
    if exported.is_file() and ckpt_meta.weights_sha256:
        session, meta = load_onnx(exported, layout=layout, threads=threads)
        if meta.weights_sha256 == ckpt_meta.weights_sha256 and meta.precision == "fp32":
            return session, meta, exported
    model, ckpt_meta = load_checkpoint(path, device="cpu", layout=layout)
    data, meta = build_onnx(model, ckpt_meta, source=meta_path.parent)
    return onnx_session(data, threads=threads, where=meta_path), meta, meta_path.parent


def pretrained_dir(name: str = "68") -> Path:
    """The folder of a shipped model (``model.json``, ``model.safetensors``, ``model.onnx``,
    ``model.onnx.json``); :class:`~kdlandmark.errors.CheckpointError` when this install lacks it."""
    from kdlandmark.errors import CheckpointError

    folder = Path(__file__).resolve().parents[1] / "pretrained" / PRETRAINED[name]
    if not (folder / "model.json").is_file():
        raise CheckpointError(folder, "the shipped model is missing from this install; remake it with "
                                      "kdlandmark pipeline --config pretrained-68 (docs/MODEL_CARD.md)")
    return folder
