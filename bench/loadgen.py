"""The load generator shared by `recpilot bench inference` and `recpilot bench grpc-floor`: client
channels, Open Inference Protocol requests, and a closed loop of ``ServerLive`` / ``ModelInfer``
driven from Python (grpc.aio) or by the native generator (:mod:`bench.native`)."""

from __future__ import annotations

import asyncio
import os
import time

import numpy as np


def channels(port: int, connections: int):
    """``connections`` client channels, each with its own TCP connection (grpc shares one
    connection between identical channels of a process unless each has a local subchannel pool)."""
    import grpc

    return [grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(connections)]


def own_cpu() -> float:
    """user+system CPU of this process (the load generator) so far."""
    t = os.times()
    return t.user + t.system


def infer_requests(n_rows: int, count: int = 64):
    from recpilot.featurespec import DENSE_FEATURES, ID_FEATURES
    from recpilot.pb import open_inference_grpc_pb2 as oip

    rng = np.random.default_rng(3)
    out = []
    for _ in range(count):
        dense = rng.normal(size=(n_rows, len(DENSE_FEATURES))).astype(np.float32)
        ids = np.stack([rng.integers(0, b, n_rows) for _, b in ID_FEATURES], axis=1).astype(np.int64)
        r = oip.ModelInferRequest(model_name="ranker")
        r.inputs.add(name="dense", datatype="FP32", shape=list(dense.shape))
        r.inputs.add(name="ids", datatype="INT64", shape=list(ids.shape))
        r.raw_input_contents.extend([dense.tobytes(), ids.tobytes()])
        out.append(r)
    return out


async def closed_loop(port: int, kind: str, rows: int, conc: int, seconds: float, connections: int = 1) -> dict:
    """``kind`` ("ServerLive" | "ModelInfer" with ``rows`` per request) at ``conc`` in flight for
    ``seconds``, over ``connections`` client connections."""
    from recpilot.pb import open_inference_grpc_pb2 as oip
    from recpilot.pb import open_inference_grpc_pb2_grpc as oip_grpc

    chans = channels(port, connections)
    n = 0
    try:
        stubs = [oip_grpc.GRPCInferenceServiceStub(ch) for ch in chans]
        reqs = infer_requests(rows) if kind == "ModelInfer" else [oip.ServerLiveRequest()]
        stop_at = time.monotonic() + seconds

        async def worker(i: int) -> None:
            nonlocal n
            stub, j = stubs[i % len(stubs)], i
            call = stub.ModelInfer if kind == "ModelInfer" else stub.ServerLive
            while time.monotonic() < stop_at:
                await call(reqs[j % len(reqs)], timeout=5.0)
                n += 1
                j += conc

        t0, c0 = time.monotonic(), own_cpu()
        await asyncio.gather(*(worker(i) for i in range(conc)))
        took = time.monotonic() - t0
    finally:
        for ch in chans:
            await ch.close()
    return {"kind": kind, "rows": rows, "requests": n, "rps": n / took,
            "client_cpu_ms": (own_cpu() - c0) * 1000 / max(n, 1)}


def native_closed_loop(port: int, kind: str, rows: int, conc: int, seconds: float, connections: int = 8,
                       warmup: float = 0.0) -> dict:
    """:func:`closed_loop`, driven by the native generator (same result keys)."""
    from bench import native
    from recpilot.pb import open_inference_grpc_pb2 as oip

    reqs = infer_requests(rows) if kind == "ModelInfer" else [oip.ServerLiveRequest()]
    r = native.closed_loop(port, f"/inference.GRPCInferenceService/{kind}", reqs, conc, seconds,
                           connections=connections, warmup=warmup)
    if r["errors"]:
        raise RuntimeError(f"{kind}: {r['errors']} failed calls {r['error_kinds']}")
    return {"kind": kind, "rows": rows, "requests": r["requests"], "rps": r["rps"],
            "client_cpu_ms": r["client_cpu_ms_per_request"]}
