"""ONNX export of a checkpoint, with its metadata, a parity check, and safe, checked loading.

``export_onnx`` writes ``model.onnx`` (input ``image``: float ``(B, 3, S, S)`` RGB in ``[0, 1]``; output
``landmarks``: ``(B, N, 2)`` model coordinates, exactly what :class:`~kdlandmark.models.LandmarkRegressor`
takes and returns; the ImageNet normalisation is inside the graph) and ``model.onnx.json`` beside it: the
layout, input size, normalisation, crop margin and the source checkpoint.  The same JSON is stored in
the ONNX file's ``metadata_props`` (key ``kdlandmark``), so the ``.onnx`` alone is self-describing.

Options: ``fp16`` (half-precision weights and input: for GPUs; ONNX Runtime's CPU kernels for it are
few), ``dynamic_batch`` (any batch; otherwise the batch is fixed, 1 by default, and callers loop),
``int8`` (an additional ``model.int8.onnx``: dynamic quantisation of the fp32 graph with
``onnxruntime.quantization.quantize_dynamic``: int8 weights, activations quantised on the fly).

Loading (:func:`load_onnx`) never executes code: an ONNX file is a protobuf and the metadata is JSON.
A malformed or truncated file, or one whose graph disagrees with its metadata (input size, number of
points, layout), raises :class:`~kdlandmark.train.checkpoint.CheckpointError` naming the file.
"""

from __future__ import annotations

import copy
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from kdlandmark.errors import CheckpointError
from kdlandmark.layouts import Layout, get_layout, layout_for_points

__all__ = [
    "ONNX_FORMAT",
    "META_KEY",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "onnx_meta_path",
    "onnx_model_bytes",
    "export_onnx",
    "quantize_int8",
    "read_onnx_meta",
    "load_onnx",
    "onnx_session",
    "layout_from_meta",
]

ONNX_FORMAT = "kdlandmark-onnx"
ONNX_VERSION = 1
META_KEY = "kdlandmark"
INPUT_NAME = "image"
OUTPUT_NAME = "landmarks"
DEFAULT_OPSET = 17


def _atomic_write(path: str | Path, data: bytes) -> None:
    from kdlandmark.train.checkpoint import atomic_write_bytes

    atomic_write_bytes(path, data)


def onnx_meta_path(onnx_path: str | Path) -> Path:
    """The JSON metadata file beside an ONNX model: ``model.onnx`` -> ``model.onnx.json``."""
    p = Path(onnx_path)
    return p.with_name(p.name + ".json")


def layout_from_meta(meta: dict, where: str | Path) -> Layout:
    """The :class:`Layout` a checkpoint's or ONNX model's metadata names, checked against its point count."""
    lay = meta.get("layout")
    arch = meta.get("architecture") or {}
    if isinstance(lay, dict):
        name, num = lay.get("name"), lay.get("num_points", arch.get("num_points"))
    elif isinstance(lay, str):
        name, num = lay, arch.get("num_points")
    else:
        raise CheckpointError(where, f"metadata has no usable 'layout' entry ({lay!r})")
    try:
        layout = get_layout(name) if name else layout_for_points(int(num))
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(where, f"unknown layout {name!r} with {num} points ({exc})") from None
    if num is not None and int(num) != layout.num_points:
        raise CheckpointError(where, f"layout {layout.name!r} has {layout.num_points} points but the "
                     f"metadata says {num}")
    if arch.get("num_points") is not None and int(arch["num_points"]) != layout.num_points:
        raise CheckpointError(where, f"architecture has {arch['num_points']} points, layout {layout.name!r} "
                     f"{layout.num_points}")
    return layout


# ------------------------------------------------------------------------------------------------ export
def _torch_export(model: Any, dummy: Any, dynamic_batch: bool, opset: int) -> bytes:
    """Serialise ``model`` to ONNX bytes (TorchScript exporter; the dynamo one needs onnxscript)."""
    import torch

    buf = io.BytesIO()
    kwargs: dict[str, Any] = dict(input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset,
                                  do_constant_folding=True)
    if dynamic_batch:
        kwargs["dynamic_axes"] = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*will be removed.*")
        try:
            torch.onnx.export(model, (dummy,), buf, dynamo=False, **kwargs)
        except TypeError:       # an old torch without the dynamo switch
            torch.onnx.export(model, (dummy,), buf, **kwargs)
    return buf.getvalue()


def onnx_model_bytes(model: Any, input_size: int, *, fp16: bool = False, dynamic_batch: bool = True,
                     batch: int = 1, opset: int = DEFAULT_OPSET) -> bytes:
    """ONNX bytes of a :class:`~kdlandmark.models.LandmarkRegressor` (no metadata: :func:`export_onnx`)."""
    import torch

    m = copy.deepcopy(model).to("cpu").eval()
    dtype = torch.float16 if fp16 else torch.float32
    m = m.to(dtype)
    dummy = torch.rand(batch, int(getattr(m, "in_chans", 3)), input_size, input_size, dtype=dtype)
    return _torch_export(m, dummy, dynamic_batch, opset)


def _with_metadata(data: bytes, meta: dict) -> bytes:
    import onnx

    proto = onnx.load_model_from_string(data)
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(meta, sort_keys=True)
    proto.producer_name = "kdlandmark"
    return proto.SerializeToString()


def _export_meta(ckpt_meta: dict, ckpt_path: Path, *, input_size: int, precision: str, dynamic_batch: bool,
                 batch: int, opset: int) -> dict:
    arch = dict(ckpt_meta["architecture"])
    n = int(arch["num_points"])
    b: int | str = "batch" if dynamic_batch else int(batch)
    return {
        "format": ONNX_FORMAT,
        "version": ONNX_VERSION,
        "layout": ckpt_meta["layout"],
        "input_size": int(input_size),
        "crop": ckpt_meta.get("crop"),
        "normalisation": arch.get("normalisation"),
        "architecture": arch,
        "role": ckpt_meta.get("role"),
        "precision": precision,
        "dynamic_batch": bool(dynamic_batch),
        "opset": int(opset),
        "input": {"name": INPUT_NAME, "shape": [b, int(arch.get("in_chans", 3)), input_size, input_size],
                  "dtype": "float16" if precision == "fp16" else "float32",
                  "content": "RGB face crop scaled to [0, 1]: crop_affine(box, input_size, crop.margin), "
                             "divided by 255 (mean/std normalisation is inside the graph)"},
        "output": {"name": OUTPUT_NAME, "shape": [b, n, 2],
                   "coordinates": "model coordinates (p - (side - 1) / 2) / side of the input crop, "
                                  "x then y"},
        "source": {"checkpoint": str(ckpt_path),
                   "weights_sha256": (ckpt_meta.get("weights") or {}).get("sha256"),
                   "metrics": ckpt_meta.get("metrics") or {}},
    }


def _parity(model: Any, session: Any, input_size: int, *, fp16: bool, batch: int, dynamic_batch: bool,
            layout: Layout, margin: float | None = None, seed: int = 0) -> dict:
    """Max |ONNX - PyTorch| on random inputs and on synthetic face crops (when the renderer is there)."""
    import torch

    rng = np.random.default_rng(seed)
    n = 3 if dynamic_batch else batch
    xs = {"random": rng.random((n, 3, input_size, input_size), dtype=np.float32)}
    faces = _synthetic_crops(layout, n, input_size, seed, margin=margin)
    if faces is not None:
        xs["synthetic_faces"] = faces
    out: dict[str, float] = {}
    m = model.to("cpu").eval()
    dtype = np.float16 if fp16 else np.float32
    for name, x in xs.items():
        with torch.inference_mode():
            ref = m(torch.from_numpy(x)).numpy()
        got = session.run(None, {INPUT_NAME: x.astype(dtype)})[0].astype(np.float32)
        out[name] = float(np.abs(got - ref).max())
    return out


def _synthetic_crops(layout: Layout, n: int, input_size: int, seed: int, margin: float | None = None
                     ) -> np.ndarray | None:
    """``(n, 3, S, S)`` float32 RGB synthetic face crops, cut as inference cuts them (None without synth)."""
    try:
        from kdlandmark.infer.bench import synthetic_faces
    except ImportError:
        return None
    import cv2

    from kdlandmark.data.crop import DEFAULT_MARGIN, crop_affine, landmark_box

    try:
        faces = synthetic_faces(layout, n, seed=seed, size=max(2 * input_size, 128))
    except ImportError:
        return None
    crops = []
    for img, lm in faces:
        a = crop_affine(landmark_box(lm), input_size, DEFAULT_MARGIN if margin is None else margin)
        c = cv2.warpAffine(img, a, (input_size, input_size), flags=cv2.INTER_LINEAR)
        crops.append(c[:, :, ::-1].transpose(2, 0, 1).astype(np.float32) / 255.0)
    return np.ascontiguousarray(np.stack(crops))


def quantize_int8(src: str | Path, dst: str | Path, *, mode: str = "dynamic", calibration: int = 64) -> Path:
    """Int8 copy ``dst`` of the fp32 ONNX model ``src`` (metadata kept, ``precision`` int8).

    ``mode="dynamic"``: ``onnxruntime.quantization.quantize_dynamic`` (uint8 weights; activations
    quantised on the fly at run time; no data needed).  ``mode="static"``: ``quantize_static`` in QDQ
    format with per-channel int8 weights, activation ranges calibrated on ``calibration`` synthetic face
    crops cut as inference cuts them (the model's layout, input size and margin).
    """
    import logging

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if mode not in ("dynamic", "static"):
        raise ValueError(f"int8 mode must be 'dynamic' or 'static', got {mode!r}")
    src, dst = Path(src), Path(dst)
    meta = read_onnx_meta(src)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    pre = dst.with_name(f".{dst.name}.pre-{os.getpid()}.onnx")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)           # quantize_* log advice on the root logger at WARNING
    try:
        if mode == "dynamic":
            quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QUInt8)
        else:
            from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static
            from onnxruntime.quantization.shape_inference import quant_pre_process

            size = int(meta["input_size"])
            margin = float((meta.get("crop") or {}).get("margin", 0.15))
            crops = _synthetic_crops(layout_from_meta(meta, src), calibration, size, 12345, margin=margin)
            if crops is None:
                raise RuntimeError("static int8 quantisation needs kdlandmark.data.synth (calibration faces)")
            batches = [{INPUT_NAME: c[None]} for c in crops]
            fixed = meta.get("input", {}).get("shape", [None])[0]
            if isinstance(fixed, int) and fixed > 1:
                batches = [{INPUT_NAME: crops[i:i + fixed]} for i in range(0, len(crops) - fixed + 1, fixed)]

            class _Reader(CalibrationDataReader):
                def __init__(self) -> None:
                    self.it = iter(batches)

                def get_next(self) -> dict | None:
                    return next(self.it, None)

            quant_pre_process(str(src), str(pre))
            quantize_static(str(pre), str(tmp), _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)
        proto = onnx.load(str(tmp))
    finally:
        root.setLevel(level)
        for f in (tmp, pre):
            if f.exists():
                f.unlink()
    meta["precision"] = "int8"
    meta["quantisation"] = ("onnxruntime quantize_dynamic: uint8 weights, activations quantised at run time"
                            if mode == "dynamic" else
                            f"onnxruntime quantize_static, QDQ, per-channel int8 weights, uint8 activations "
                            f"calibrated on {calibration} synthetic faces")
    data = _with_metadata(proto.SerializeToString(), meta)
    _atomic_write(dst, data)
    _atomic_write(onnx_meta_path(dst), (json.dumps(meta, indent=1) + "\n").encode())
    return dst


def export_onnx(checkpoint: str | Path, out: str | Path | None = None, *, fp16: bool = False,
                dynamic_batch: bool = False, int8: bool = False, int8_mode: str = "dynamic", batch: int = 1,
                opset: int = DEFAULT_OPSET, check: bool = True) -> dict:
    """Export a checkpoint to ONNX; returns ``{"onnx": path, "json": path, "parity": {...}, "int8": path?}``.

    Args:
        checkpoint: checkpoint folder (or its ``model.json`` / ``model.safetensors``).
        out: the ``.onnx`` file (default ``<checkpoint>/model.onnx``, ``model.fp16.onnx`` with ``fp16``).
        fp16: half-precision weights and input.
        dynamic_batch: any batch size; otherwise the batch is fixed to ``batch``.
        int8: also write ``<out stem>.int8.onnx``, an int8 quantisation of the fp32 graph.
        int8_mode: ``"dynamic"`` or ``"static"`` (see :func:`quantize_int8`).
        opset: ONNX opset.
        check: run the exported model with ONNX Runtime and record the max abs difference to PyTorch
            (random and synthetic-face inputs) in the JSON; an fp32 difference above 1e-4 is an error.
    """
    from kdlandmark.train.checkpoint import load_checkpoint, model_checkpoint_files

    meta_path, _ = model_checkpoint_files(checkpoint)
    model, ckpt_meta = load_checkpoint(checkpoint, device="cpu")
    layout = layout_from_meta(ckpt_meta, meta_path)
    size = int(ckpt_meta["input_size"])
    folder = meta_path.parent
    out = Path(out) if out is not None else folder / ("model.fp16.onnx" if fp16 else "model.onnx")
    out.parent.mkdir(parents=True, exist_ok=True)
    precision = "fp16" if fp16 else "fp32"
    meta = _export_meta(ckpt_meta, folder, input_size=size, precision=precision, dynamic_batch=dynamic_batch,
                        batch=batch, opset=opset)
    data = _with_metadata(onnx_model_bytes(model, size, fp16=fp16, dynamic_batch=dynamic_batch, batch=batch,
                                           opset=opset), meta)
    result: dict[str, Any] = {"onnx": out, "json": onnx_meta_path(out)}
    if check:
        session = onnx_session(data, where=out)
        parity = _parity(model, session, size, fp16=fp16, batch=batch, dynamic_batch=dynamic_batch,
                         layout=layout, margin=float((ckpt_meta.get("crop") or {}).get("margin", 0.15)))
        meta["parity_max_abs_diff"] = parity
        result["parity"] = parity
        worst = max(parity.values())
        if not fp16 and worst >= 1e-4:
            raise RuntimeError(f"{out}: ONNX Runtime differs from PyTorch by {worst:.2e} (>= 1e-4): {parity}")
    _atomic_write(out, data)
    _atomic_write(onnx_meta_path(out), (json.dumps(meta, indent=1) + "\n").encode())
    if int8:
        if fp16:           # quantise the fp32 graph, never the half one
            fp32 = out.with_name(f".{out.stem}.fp32-{os.getpid()}.onnx")
            _atomic_write(fp32, _with_metadata(onnx_model_bytes(model, size, dynamic_batch=dynamic_batch,
                                                                     batch=batch, opset=opset),
                                                    {**meta, "precision": "fp32"}))
            _atomic_write(onnx_meta_path(fp32), json.dumps({**meta, "precision": "fp32"}).encode())
            try:
                int8_path = out.with_name(out.stem.replace(".fp16", "") + ".int8.onnx")
                result["int8"] = quantize_int8(fp32, int8_path,
                                               mode=int8_mode)
            finally:
                fp32.unlink(missing_ok=True)
                onnx_meta_path(fp32).unlink(missing_ok=True)
        else:
            result["int8"] = quantize_int8(out, out.with_name(out.stem + ".int8.onnx"), mode=int8_mode)
    return result


# ------------------------------------------------------------------------------------------------ loading
def _json_file(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(path, f"cannot read JSON ({exc}); truncated or corrupt?") from exc
    if not isinstance(data, dict):
        raise CheckpointError(path, "expected a JSON object")
    return data


def _parse_onnx(data: bytes, path: Path) -> Any:
    import onnx
    from google.protobuf.message import DecodeError

    if not data:
        raise CheckpointError(path, "empty file")
    try:
        proto = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(path, f"not a readable ONNX model ({type(exc).__name__}: {exc}); truncated or "
                     "corrupt?") from exc
    if not proto.graph.node or not proto.graph.input or not proto.graph.output:
        raise CheckpointError(path, "not a usable ONNX model (empty graph); truncated or corrupt?")
    return proto


def _embedded_meta(proto: Any, path: Path) -> dict | None:
    for prop in proto.metadata_props:
        if prop.key == META_KEY:
            try:
                data = json.loads(prop.value)
            except json.JSONDecodeError as exc:
                raise CheckpointError(path, f"metadata_props[{META_KEY!r}] is not JSON ({exc})") from exc
            if not isinstance(data, dict):
                raise CheckpointError(path, f"metadata_props[{META_KEY!r}] is not a JSON object")
            return data
    return None


#: Metadata entries the sidecar JSON and the ONNX file's own metadata must agree on.
_MUST_AGREE = ("layout", "input_size", "crop", "precision", "normalisation")


def read_onnx_meta(path: str | Path) -> dict:
    """An exported model's metadata: ``model.onnx.json`` if present, checked against the embedded copy."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(p, "ONNX model file not found")
    proto = _parse_onnx(p.read_bytes(), p)
    return _resolve_meta(proto, p)


def _resolve_meta(proto: Any, p: Path) -> dict:
    embedded = _embedded_meta(proto, p)
    side = onnx_meta_path(p)
    sidecar = _json_file(side) if side.is_file() else None
    if sidecar is None and embedded is None:
        raise CheckpointError(p, f"no kdlandmark metadata: neither {side.name} nor "
                     f"metadata_props[{META_KEY!r}]")
    if sidecar is not None and embedded is not None:
        for key in _MUST_AGREE:
            if sidecar.get(key) != embedded.get(key):
                raise CheckpointError(side, f"{key!r} is {sidecar.get(key)!r} here but {embedded.get(key)!r} "
                                            f"in {p.name}'s own metadata: the JSON belongs to another model")
    meta = sidecar if sidecar is not None else embedded
    assert meta is not None
    where = side if sidecar is not None else p
    if meta.get("format") != ONNX_FORMAT:
        raise CheckpointError(where, f"not kdlandmark ONNX metadata (format {meta.get('format')!r})")
    for key in ("layout", "input_size"):
        if key not in meta:
            raise CheckpointError(where, f"missing {key!r}")
    return meta


def _dims(value_info: Any) -> list[int | str | None]:
    dims: list[int | str | None] = []
    for d in value_info.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return dims


def _check_graph(proto: Any, meta: dict, path: Path, layout: Layout) -> None:
    """The graph's input and output shapes must be what the metadata says."""
    size = int(meta["input_size"])
    inputs = [i for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer}]
    if len(inputs) != 1 or len(proto.graph.output) != 1:
        raise CheckpointError(path, f"expected one input and one output, found {len(inputs)} and "
                     f"{len(proto.graph.output)}")
    din, dout = _dims(inputs[0]), _dims(proto.graph.output[0])
    if len(din) != 4 or din[2:] != [size, size]:
        raise CheckpointError(path, f"graph input shape {din} does not match input_size {size} of the "
                                    "metadata (expected [B, 3, S, S])")
    if len(dout) != 3 or dout[1:] != [layout.num_points, 2]:
        raise CheckpointError(path, f"graph output shape {dout} does not match the {layout.name} layout's "
                     f"{layout.num_points} points of the metadata (expected [B, N, 2])")


def onnx_session(model: bytes | str | Path, *, threads: int | None = None, providers: list[str] | None = None,
                 where: str | Path | None = None) -> Any:
    """An ``onnxruntime.InferenceSession`` with full graph optimisation, sequential execution."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    src = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(src, sess_options=opts, providers=providers or ["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 -- onnxruntime raises its own exception types
        raise CheckpointError(where or "<onnx bytes>", f"ONNX Runtime cannot load the model: {exc}") from exc


def load_onnx(path: str | Path, *, layout: Layout | str | None = None, threads: int | None = None,
              providers: list[str] | None = None) -> tuple[Any, dict]:
    """Open an exported model; returns ``(onnxruntime session, metadata)``.

    Checks, each failure a :class:`CheckpointError` naming the file: the file parses as ONNX, its
    metadata (``model.onnx.json`` or the embedded copy; both must agree) names a known layout, the
    graph's input is ``(B, 3, S, S)`` with the metadata's ``input_size`` and its output ``(B, N, 2)``
    with the layout's ``N``, and ``layout`` (if given) is the model's.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(p, "ONNX model file not found")
    data = p.read_bytes()
    proto = _parse_onnx(data, p)
    meta = _resolve_meta(proto, p)
    lay = layout_from_meta(meta, onnx_meta_path(p) if onnx_meta_path(p).is_file() else p)
    if layout is not None:
        want = get_layout(layout) if isinstance(layout, str) else layout
        if want.name != lay.name or want.num_points != lay.num_points:
            raise CheckpointError(p, f"model is for layout {lay.name!r} ({lay.num_points} points) but layout "
                         f"{want.name!r} ({want.num_points} points) is needed")
    _check_graph(proto, meta, p, lay)
    del proto
    return onnx_session(data, threads=threads, providers=providers, where=p), meta
