"""ONNX export of a checkpoint, with its metadata, a parity check, and safe, checked loading.

``export_onnx`` writes ``model.onnx`` (input ``image``: float ``(B, 3, S, S)`` RGB in ``[0, 1]``; output
``landmarks``: ``(B, N, 2)`` model coordinates, exactly what :class:`~kdlandmark.models.LandmarkRegressor`
takes and returns; the ImageNet normalisation is inside the graph; a model with confidence heads has
the outputs ``visibility`` and ``error``, ``(B, N)`` each, after it) and ``model.onnx.json`` beside it: the
layout, input size, normalisation, crop margin and the source checkpoint.  The same JSON is stored in
the ONNX file's ``metadata_props`` (key ``kdlandmark``), so the ``.onnx`` alone is self-describing.
:func:`build_onnx` makes the same model in memory (the ONNX backend of ``Landmarker`` and the inference
benchmark use it).

Options: ``fp16`` (half-precision weights and input: for GPUs; ONNX Runtime's CPU kernels for it are
few), ``dynamic_batch`` (any batch; otherwise the batch is fixed, 1 by default, and callers loop),
``int8`` (an additional ``model.int8.onnx``: dynamic quantisation of the fp32 graph with
``onnxruntime.quantization.quantize_dynamic``: int8 weights, activations quantised on the fly).

Loading (:func:`load_onnx`) never executes code: an ONNX file is a protobuf and the metadata is JSON,
parsed once into a :class:`~kdlandmark.modelfile.meta.ModelMeta`.  A malformed or truncated file, or
one whose graph disagrees with its metadata (input size, number of points, layout), raises
:class:`~kdlandmark.errors.CheckpointError` naming the file.

A leaf of :mod:`kdlandmark.infer`: it imports no other inference module, and torch only to export.
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

from kdlandmark.atomic import atomic_write_bytes
from kdlandmark.errors import CheckpointError
from kdlandmark.layouts import Layout
from kdlandmark.modelfile.meta import MODEL_COORDINATES, ONNX_FORMAT, ONNX_VERSION, ModelMeta, read_json

__all__ = [
    "ONNX_FORMAT",
    "META_KEY",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "DEFAULT_OPSET",
    "onnx_meta_path",
    "onnx_model_bytes",
    "output_names",
    "onnx_meta",
    "build_onnx",
    "export_onnx",
    "quantize_int8",
    "read_onnx_meta",
    "load_onnx",
    "onnx_session",
]

META_KEY = "kdlandmark"
INPUT_NAME = "image"
OUTPUT_NAME = "landmarks"
DEFAULT_OPSET = 17


def onnx_meta_path(onnx_path: str | Path) -> Path:
    """The JSON metadata file beside an ONNX model: ``model.onnx`` -> ``model.onnx.json``."""
    p = Path(onnx_path)
    return p.with_name(p.name + ".json")


def _write_model(path: Path, data: bytes, meta: dict) -> None:
    """The ``.onnx`` file and its JSON beside it, each written atomically."""
    atomic_write_bytes(path, data)
    atomic_write_bytes(onnx_meta_path(path), (json.dumps(meta, indent=1) + "\n").encode())


# ------------------------------------------------------------------------------------------------ export
def _torch_export(model: Any, dummy: Any, dynamic_batch: bool, opset: int,
                  outputs: tuple[str, ...] = (OUTPUT_NAME,)) -> bytes:
    """Serialise ``model`` to ONNX bytes (TorchScript exporter; the dynamo one needs onnxscript)."""
    import torch

    buf = io.BytesIO()
    kwargs: dict[str, Any] = dict(input_names=[INPUT_NAME], output_names=list(outputs), opset_version=opset,
                                  do_constant_folding=True)
    if dynamic_batch:
        kwargs["dynamic_axes"] = {name: {0: "batch"} for name in (INPUT_NAME, *outputs)}
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
    """ONNX bytes of a :class:`~kdlandmark.models.LandmarkRegressor` (no metadata: :func:`export_onnx`).

    A model with heads gets one more output per head after ``landmarks`` (:func:`output_names`), as
    :class:`~kdlandmark.models.InferenceOutputs` computes them.
    """
    import torch

    m = copy.deepcopy(model).to("cpu").eval()
    dtype = torch.float16 if fp16 else torch.float32
    m = m.to(dtype)
    heads = tuple(getattr(m, "heads", ()))
    from kdlandmark.models import InferenceOutputs

    m = InferenceOutputs(m)        # forward(x) alone: the exporter must not see forward's `heads` switch
    dummy = torch.rand(batch, int(getattr(m, "in_chans", 3)), input_size, input_size, dtype=dtype)
    return _torch_export(m, dummy, dynamic_batch, opset, output_names(heads))


def output_names(heads: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The graph's outputs: ``landmarks``, then one per head (``visibility``, ``error``) in model order."""
    return (OUTPUT_NAME, *heads)


#: What each head output holds (written into the metadata).
HEAD_CONTENT = {
    "visibility": "probability that the point is visible (not occluded, not outside the crop)",
    "error": "expected distance of the point from its true position, in model units (a fraction of the "
             "crop side; the mean of the predicted radial Laplace, 2 b)",
}


def _with_metadata(data: bytes, meta: dict) -> bytes:
    import onnx

    proto = onnx.load_model_from_string(data)
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(meta, sort_keys=True)
    proto.producer_name = "kdlandmark"
    return proto.SerializeToString()


def onnx_meta(meta: ModelMeta, source: str | Path, *, precision: str = "fp32", dynamic_batch: bool = True,
              batch: int = 1, opset: int = DEFAULT_OPSET) -> dict:
    """The metadata JSON of an ONNX export of the checkpoint ``source`` whose metadata is ``meta``."""
    b: int | str = "batch" if dynamic_batch else int(batch)
    size = meta.input_size
    return {
        "format": ONNX_FORMAT,
        "version": ONNX_VERSION,
        "layout": meta.layout.to_json(),
        "input_size": size,
        "crop": meta.raw.get("crop"),
        "normalisation": meta.normalisation,
        "architecture": dict(meta.architecture),
        "role": meta.role,
        "precision": precision,
        "dynamic_batch": bool(dynamic_batch),
        "opset": int(opset),
        "input": {"name": INPUT_NAME, "shape": [b, meta.in_chans, size, size],
                  "dtype": "float16" if precision == "fp16" else "float32",
                  "content": "RGB face crop scaled to [0, 1]: crop_affine(box, input_size, crop.margin), "
                             "divided by 255 (mean/std normalisation is inside the graph)"},
        "output": {"name": OUTPUT_NAME, "shape": [b, meta.num_points, 2],
                   "coordinates": f"{MODEL_COORDINATES}, x then y"},
        **({"head_outputs": {h: {"name": h, "shape": [b, meta.num_points], "content": HEAD_CONTENT[h]}
                             for h in meta.heads}} if meta.heads else {}),
        "source": {"checkpoint": str(source), "weights_sha256": meta.weights_sha256,
                   "metrics": dict(meta.metrics)},
    }


def build_onnx(model: Any, meta: ModelMeta, *, source: str | Path, fp16: bool = False,
               dynamic_batch: bool = True, batch: int = 1, opset: int = DEFAULT_OPSET
               ) -> tuple[bytes, ModelMeta]:
    """The ONNX model of ``model`` (a checkpoint's network and its ``meta``), built in memory.

    Returns the serialised model, its metadata embedded in ``metadata_props``, and that metadata as a
    :class:`ModelMeta`.  ``source``: the checkpoint the model came from (recorded).
    """
    data = json.loads(json.dumps(onnx_meta(meta, source, precision="fp16" if fp16 else "fp32",
                                           dynamic_batch=dynamic_batch, batch=batch, opset=opset)))
    graph = onnx_model_bytes(model, meta.input_size, fp16=fp16, dynamic_batch=dynamic_batch, batch=batch,
                             opset=opset)
    return _with_metadata(graph, data), ModelMeta.from_json(data, source, formats=(ONNX_FORMAT,))


def _parity(model: Any, session: Any, meta: ModelMeta, *, fp16: bool, batch: int, dynamic_batch: bool,
            seed: int = 0) -> dict:
    """Max |ONNX - PyTorch| on random inputs and on synthetic face crops, for every output.

    Keys: ``random`` and ``synthetic_faces`` for the landmarks, ``<head>:random`` and
    ``<head>:synthetic_faces`` for each head output of a model with heads.
    """
    import torch

    from kdlandmark.data.synth.sample_faces import synthetic_crops  # the renderer, only when checking

    rng = np.random.default_rng(seed)
    n = 3 if dynamic_batch else batch
    size = meta.input_size
    xs = {"random": rng.random((n, 3, size, size), dtype=np.float32),
          "synthetic_faces": synthetic_crops(meta.layout, n, size, seed, margin=meta.margin)}
    out: dict[str, float] = {}
    m = model.to("cpu").eval()
    if meta.heads:
        from kdlandmark.models import InferenceOutputs

        m = InferenceOutputs(m)
    dtype = np.float16 if fp16 else np.float32
    for name, x in xs.items():
        with torch.inference_mode():
            refs = m(torch.from_numpy(x))
        refs = refs if isinstance(refs, tuple) else (refs,)
        gots = session.run(None, {INPUT_NAME: x.astype(dtype)})
        for output, ref, got in zip(output_names(meta.heads), refs, gots, strict=True):
            key = name if output == OUTPUT_NAME else f"{output}:{name}"
            out[key] = float(np.abs(np.asarray(got, np.float32) - ref.float().numpy()).max())
    return out


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
    data = dict(meta.raw)
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

            from kdlandmark.data.synth.sample_faces import synthetic_crops

            crops = synthetic_crops(meta.layout, calibration, meta.input_size, 12345, margin=meta.margin)
            batches = [{INPUT_NAME: c[None]} for c in crops]
            fixed = (data.get("input") or {}).get("shape", [None])[0]
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
    data["precision"] = "int8"
    data["quantisation"] = ("onnxruntime quantize_dynamic: uint8 weights, activations quantised at run time"
                            if mode == "dynamic" else
                            f"onnxruntime quantize_static, QDQ, per-channel int8 weights, uint8 activations "
                            f"calibrated on {calibration} synthetic faces")
    _write_model(dst, _with_metadata(proto.SerializeToString(), data), data)
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
    from kdlandmark.modelfile.checkpoint import load_checkpoint, model_checkpoint_files

    meta_path, _ = model_checkpoint_files(checkpoint)
    model, ckpt_meta = load_checkpoint(checkpoint, device="cpu")
    folder = meta_path.parent
    out = Path(out) if out is not None else folder / ("model.fp16.onnx" if fp16 else "model.onnx")
    out.parent.mkdir(parents=True, exist_ok=True)
    data, meta = build_onnx(model, ckpt_meta, source=folder, fp16=fp16, dynamic_batch=dynamic_batch,
                            batch=batch, opset=opset)
    written = dict(meta.raw)
    result: dict[str, Any] = {"onnx": out, "json": onnx_meta_path(out)}
    if check:
        parity = _parity(model, onnx_session(data, where=out), ckpt_meta, fp16=fp16, batch=batch,
                         dynamic_batch=dynamic_batch)
        written["parity_max_abs_diff"] = result["parity"] = parity
        worst = max(parity.values())
        if not fp16 and worst >= 1e-4:
            raise RuntimeError(f"{out}: ONNX Runtime differs from PyTorch by {worst:.2e} (>= 1e-4): {parity}")
    _write_model(out, data, written)
    if int8:
        result["int8"] = _export_int8(model, ckpt_meta, folder, out, written, fp16=fp16, mode=int8_mode,
                                      dynamic_batch=dynamic_batch, batch=batch, opset=opset)
    return result


def _export_int8(model: Any, ckpt_meta: ModelMeta, folder: Path, out: Path, written: dict, *, fp16: bool,
                 mode: str, dynamic_batch: bool, batch: int, opset: int) -> Path:
    """``<out stem>.int8.onnx``: the int8 quantisation of the fp32 graph (never of the half one)."""
    if not fp16:
        return quantize_int8(out, out.with_name(out.stem + ".int8.onnx"), mode=mode)
    fp32 = out.with_name(f".{out.stem}.fp32-{os.getpid()}.onnx")
    data, _ = build_onnx(model, ckpt_meta, source=folder, dynamic_batch=dynamic_batch, batch=batch,
                         opset=opset)
    meta32 = {**written, "precision": "fp32"}
    _write_model(fp32, _with_metadata(data, meta32), meta32)
    try:
        return quantize_int8(fp32, out.with_name(out.stem.replace(".fp16", "") + ".int8.onnx"), mode=mode)
    finally:
        fp32.unlink(missing_ok=True)
        onnx_meta_path(fp32).unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------ loading
def _parse_onnx(data: bytes, path: Path) -> Any:
    import onnx
    from google.protobuf.message import DecodeError

    if not data:
        raise CheckpointError(path, "empty file")
    try:
        proto = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(path, f"not a readable ONNX model ({type(exc).__name__}: {exc}); truncated "
                                    "or corrupt?") from exc
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


def read_onnx_meta(path: str | Path) -> ModelMeta:
    """An exported model's metadata: ``model.onnx.json`` if present, checked against the embedded copy."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(p, "ONNX model file not found")
    return _resolve_meta(_parse_onnx(p.read_bytes(), p), p)


def _resolve_meta(proto: Any, p: Path) -> ModelMeta:
    embedded = _embedded_meta(proto, p)
    side = onnx_meta_path(p)
    sidecar = read_json(side) if side.is_file() else None
    if sidecar is None and embedded is None:
        raise CheckpointError(p, f"no kdlandmark metadata: neither {side.name} nor "
                                 f"metadata_props[{META_KEY!r}]")
    if sidecar is not None and embedded is not None:
        for key in _MUST_AGREE:
            if sidecar.get(key) != embedded.get(key):
                raise CheckpointError(side, f"{key!r} is {sidecar.get(key)!r} here but {embedded.get(key)!r} "
                                            f"in {p.name}'s own metadata: the JSON belongs to another model")
    if sidecar is not None:
        return ModelMeta.from_json(sidecar, side, formats=(ONNX_FORMAT,))
    return ModelMeta.from_json(embedded, p, formats=(ONNX_FORMAT,))


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


def _check_graph(proto: Any, meta: ModelMeta, path: Path) -> None:
    """The graph's input and output shapes (and, for heads, output names) must be what the metadata says."""
    size, layout = meta.input_size, meta.layout
    inputs = [i for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer}]
    want = output_names(meta.heads)
    if len(inputs) != 1 or len(proto.graph.output) != len(want):
        raise CheckpointError(path, f"expected one input and {len(want)} output(s) ({', '.join(want)}), "
                                    f"found {len(inputs)} and {len(proto.graph.output)}")
    din, dout = _dims(inputs[0]), _dims(proto.graph.output[0])
    if len(din) != 4 or din[2:] != [size, size]:
        raise CheckpointError(path, f"graph input shape {din} does not match input_size {size} of the "
                                    "metadata (expected [B, 3, S, S])")
    if len(dout) != 3 or dout[1:] != [layout.num_points, 2]:
        raise CheckpointError(path, f"graph output shape {dout} does not match the {layout.name} layout's "
                                    f"{layout.num_points} points of the metadata (expected [B, N, 2])")
    for name, out in zip(want[1:], list(proto.graph.output)[1:], strict=True):
        dims = _dims(out)
        if out.name != name or len(dims) != 2 or dims[1] != layout.num_points:
            raise CheckpointError(path, f"graph output {out.name!r} {dims} is not the {name!r} head of the "
                                        f"metadata (expected [B, {layout.num_points}])")


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
              providers: list[str] | None = None) -> tuple[Any, ModelMeta]:
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
    meta.check_layout(layout, p)
    _check_graph(proto, meta, p)
    del proto
    return onnx_session(data, threads=threads, providers=providers, where=p), meta
