"""Open Inference Protocol (KServe v2) messages <-> numpy: pure functions over the protobuf
messages of ``recpilot.pb.open_inference_grpc_pb2``; no gRPC, no model state.

A ranker takes ``dense [N, D]`` (FP32) and ``ids [N, K]`` (INT64) and answers ``score [N]`` (FP32).
Malformed inputs raise :class:`recpilot.errors.InvalidArgument`.
"""

from __future__ import annotations

import numpy as np

from recpilot.errors import InvalidArgument
from recpilot.pb import open_inference_grpc_pb2 as pb

SERVER_NAME = "recpilot"
SERVER_VERSION = "0.1.0"
DTYPES = {"FP32": np.float32, "INT64": np.int64, "FP64": np.float64, "INT32": np.int32}
_CONTENTS = {"FP32": "fp32_contents", "INT64": "int64_contents", "FP64": "fp64_contents", "INT32": "int_contents"}
_PLATFORMS = {"torch": "pytorch_torchscript", "tensorflow": "tensorflow_savedmodel"}


def tensor(request: pb.ModelInferRequest, i: int, t) -> np.ndarray:
    """Input ``t`` (the request's ``i``-th) as an array of its shape: from ``raw_input_contents[i]``
    when the request has raw contents, else from its typed contents."""
    dtype = DTYPES.get(t.datatype)
    if dtype is None:
        raise InvalidArgument(f"input {t.name!r}: datatype {t.datatype} not supported (FP32, INT64, FP64, INT32)")
    shape = tuple(t.shape)
    if len(request.raw_input_contents) > i:
        arr = np.frombuffer(request.raw_input_contents[i], dtype=dtype)
    else:
        arr = np.asarray(getattr(t.contents, _CONTENTS[t.datatype]), dtype=dtype)
    size = 1
    for d in shape:
        size *= d
    if size != arr.size or any(d < 0 for d in shape):
        raise InvalidArgument(f"input {t.name!r}: shape {list(shape)} does not match {arr.size} values")
    return arr.reshape(shape)


def infer_inputs(request: pb.ModelInferRequest, dense_dim: int, ids_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """ModelInfer's ``dense [N, dense_dim]`` (FP32) and ``ids [N, ids_dim]`` (INT64) from a request,
    or :class:`InvalidArgument`. The common case (both as raw contents, in that order and with those
    datatypes) is read in place: read-only views of the request's bytes, no copies; anything else
    takes the general path, which also converts other datatypes and typed contents."""
    try:
        inputs, raw = request.inputs, request.raw_input_contents
        if len(inputs) == 2 and len(raw) == 2:
            d, i = inputs
            ds, is_ = d.shape, i.shape
            if (d.name == "dense" and i.name == "ids" and d.datatype == "FP32" and i.datatype == "INT64"
                    and len(ds) == 2 and len(is_) == 2 and ds[1] == dense_dim and is_[1] == ids_dim
                    and ds[0] == is_[0] and ds[0] >= 0):
                dense = np.frombuffer(raw[0], dtype=np.float32)
                ids = np.frombuffer(raw[1], dtype=np.int64)
                if dense.size == ds[0] * dense_dim and ids.size == is_[0] * ids_dim:
                    return dense.reshape(ds[0], dense_dim), ids.reshape(is_[0], ids_dim)
        if len(inputs) != 2 or {inputs[0].name, inputs[1].name} != {"dense", "ids"}:
            raise InvalidArgument(
                f"inputs must be 'dense' (FP32) and 'ids' (INT64), got {sorted(t.name for t in inputs)}")
        got = {t.name: tensor(request, i, t) for i, t in enumerate(inputs)}
    except InvalidArgument:
        raise
    except ValueError as exc:  # a raw buffer whose size is not a multiple of its datatype's
        raise InvalidArgument(str(exc)) from exc
    dense = np.asarray(got["dense"], dtype=np.float32)
    ids = np.asarray(got["ids"], dtype=np.int64)
    if dense.ndim != 2 or dense.shape[1] != dense_dim:
        raise InvalidArgument(f"dense must be [N, {dense_dim}], got {list(dense.shape)}")
    if ids.ndim != 2 or ids.shape[1] != ids_dim or ids.shape[0] != dense.shape[0]:
        raise InvalidArgument(f"ids must be [{dense.shape[0]}, {ids_dim}], got {list(ids.shape)}")
    return dense, ids


def infer_response(request_id: str, model_name: str, model_version: str, scores: np.ndarray) -> pb.ModelInferResponse:
    """``score [N]`` (FP32) as raw output contents."""
    out = pb.ModelInferResponse(model_name=model_name, model_version=model_version, id=request_id)
    out.outputs.add(name="score", datatype="FP32", shape=[scores.shape[0]])
    out.raw_output_contents.append(scores.astype(np.float32, copy=False).tobytes())
    return out


def metadata_response(name: str, versions: list[str], framework: str, meta: dict) -> pb.ModelMetadataResponse:
    """A version's metadata: its platform and the input/output tensors its model.json declares."""
    out = pb.ModelMetadataResponse(name=name, versions=versions, platform=_PLATFORMS.get(framework, framework))
    for t in meta.get("inputs") or ():
        out.inputs.add(name=t["name"], datatype=t["datatype"], shape=[int(x) for x in t["shape"]])
    for t in meta.get("outputs") or ():
        out.outputs.add(name=t["name"], datatype=t["datatype"], shape=[int(x) for x in t["shape"]])
    return out


def server_metadata() -> pb.ServerMetadataResponse:
    return pb.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION, extensions=[])
