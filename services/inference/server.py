"""The gRPC transport: asyncio grpcio server with Recommender, the Open Inference Protocol
(``inference.GRPCInferenceService``, so ``tritonclient.grpc`` works unchanged), grpc.health.v1
and reflection. The server runs its own event loop in a thread; ``start()``/``stop()`` wrap it.

Health is honest: NOT_SERVING until the default model has a loaded production version and Redis
answers a PING; re-checked every ``_HEALTH_PERIOD_S``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from recpilot.lifecycle import name_os_thread, new_event_loop
from recpilot.pb import open_inference_grpc_pb2 as oip
from recpilot.pb import open_inference_grpc_pb2_grpc as oip_grpc
from recpilot.pb import recommend_pb2, recommend_pb2_grpc
from services.inference import metrics as m
from services.inference.batching import BatcherClosed, QueueFull
from services.inference.routing import ModelManager
from services.inference.security import interceptors, server_credentials
from services.inference.service import InvalidArgument, ModelNotFound, RankingService, Request, Result
from services.inference.settings import InferenceSettings

log = logging.getLogger(__name__)

_HEALTH_PERIOD_S = 0.5
RECOMMENDER = recommend_pb2.DESCRIPTOR.services_by_name["Recommender"].full_name
OIP = oip.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
SERVER_NAME = "recpilot"
SERVER_VERSION = "0.1.0"
_DTYPES = {"FP32": np.float32, "INT64": np.int64, "FP64": np.float64, "INT32": np.int32}
_CONTENTS = {"FP32": "fp32_contents", "INT64": "int64_contents", "FP64": "fp64_contents", "INT32": "int_contents"}


def _response(res: Result) -> recommend_pb2.RecommendResponse:
    out = recommend_pb2.RecommendResponse(
        request_id=res.request_id, model_name=res.model_name, model_version=res.model_version,
        policy_version=res.policy_version, fallback=res.fallback, fallback_reason=res.fallback_reason,
        variant=res.variant)
    for iid, score, pos, prop in res.items:
        out.items.add(item_id=iid, score=score, position=pos, propensity=prop)
    return out


class _Recommender(recommend_pb2_grpc.RecommenderServicer):
    def __init__(self, service: RankingService, settings: InferenceSettings) -> None:
        self.service, self.s = service, settings
        self._latency: dict[str, object] = {}  # method -> LATENCY child
        self._requests: dict[tuple, object] = {}  # labels -> REQUESTS child

    def _deadline(self, context) -> float:
        left = context.time_remaining()
        if left is None:
            left = self.s.default_timeout_ms / 1000
        return time.monotonic() + left

    async def _call(self, method: str, req: Request, context, search: bool):
        t0 = time.perf_counter()
        try:
            if search:
                res = await self.service.search(req, self._deadline(context))
            else:
                res = await self.service.recommend(req, self._deadline(context))
        except InvalidArgument as exc:
            self._failed(method, "INVALID_ARGUMENT", t0, req)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except ModelNotFound as exc:
            self._failed(method, "NOT_FOUND", t0, req)
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except asyncio.CancelledError:  # the client went away or the server is stopping
            self._failed(method, "CANCELLED", t0, req)
            raise
        except Exception as exc:  # a bug: say so, count it, keep serving
            log.exception("request failed", extra={"method": method, "request_id": req.request_id,
                                                   "error": repr(exc), "collapse": True})
            self._failed(method, "INTERNAL", t0, req)
            await context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        took = time.perf_counter() - t0
        lat = self._latency.get(method)
        if lat is None:
            lat = self._latency[method] = m.LATENCY.labels(method)
        lat.observe(took)
        if self.service.telemetry is not None:
            self.service.telemetry.request(method, took, "OK", res.fallback_reason)
        key = (method, res.model_name, res.model_version or "-", res.variant or "-")
        counter = self._requests.get(key)
        if counter is None:
            if len(self._requests) > 1024:  # versions come and go: keep the cache bounded
                self._requests.clear()
            counter = self._requests[key] = m.REQUESTS.labels(*key)
        counter.inc()
        return _response(res)

    def _failed(self, method: str, code: str, t0: float, req: Request) -> None:
        name = req.model_name or self.s.default_model
        m.FAILURES.labels(method, name if self.service.models.serves(name) else "unknown", "-", code).inc()
        if self.service.telemetry is not None:
            self.service.telemetry.request(method, time.perf_counter() - t0, code)

    async def Recommend(self, request, context):  # noqa: N802
        req = Request(request.user_id, request.k, list(request.candidate_ids), dict(request.context),
                      request.session_id, request.request_id, request.model_name)
        return await self._call("Recommend", req, context, search=False)

    async def Search(self, request, context):  # noqa: N802
        req = Request(request.user_id, request.k, list(request.candidate_ids), dict(request.context),
                      request.session_id, request.request_id, request.model_name, query=request.query)
        return await self._call("Search", req, context, search=True)


def _tensor(req, i: int, t) -> np.ndarray:
    dtype = _DTYPES.get(t.datatype)
    if dtype is None:
        raise InvalidArgument(f"input {t.name!r}: datatype {t.datatype} not supported (FP32, INT64, FP64, INT32)")
    shape = tuple(t.shape)
    if len(req.raw_input_contents) > i:
        arr = np.frombuffer(req.raw_input_contents[i], dtype=dtype)
    else:
        arr = np.asarray(getattr(t.contents, _CONTENTS[t.datatype]), dtype=dtype)
    size = 1
    for d in shape:
        size *= d
    if size != arr.size or any(d < 0 for d in shape):
        raise InvalidArgument(f"input {t.name!r}: shape {list(shape)} does not match {arr.size} values")
    return arr.reshape(shape)


def _infer_inputs(request, dense_dim: int, ids_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """ModelInfer's ``dense [N, dense_dim]`` (FP32) and ``ids [N, ids_dim]`` (INT64) from a request,
    or :class:`InvalidArgument` (``ValueError`` for a raw buffer whose size is not a multiple of its
    datatype's). The common case (both as raw contents, in that order and with those datatypes) is
    read in place: read-only views of the request's bytes, no copies; anything else takes the
    general path, which also converts other datatypes and typed contents."""
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
        raise InvalidArgument(f"inputs must be 'dense' (FP32) and 'ids' (INT64), got {sorted(t.name for t in inputs)}")
    got = {t.name: _tensor(request, i, t) for i, t in enumerate(inputs)}
    dense = np.asarray(got["dense"], dtype=np.float32)
    ids = np.asarray(got["ids"], dtype=np.int64)
    if dense.ndim != 2 or dense.shape[1] != dense_dim:
        raise InvalidArgument(f"dense must be [N, {dense_dim}], got {list(dense.shape)}")
    if ids.ndim != 2 or ids.shape[1] != ids_dim or ids.shape[0] != dense.shape[0]:
        raise InvalidArgument(f"ids must be [{dense.shape[0]}, {ids_dim}], got {list(ids.shape)}")
    return dense, ids


class _OpenInference(oip_grpc.GRPCInferenceServiceServicer):
    def __init__(self, models: ModelManager, server: "InferenceServer") -> None:
        self.models, self.server = models, server
        self._metrics: dict[tuple[str, str], tuple] = {}

    async def ServerLive(self, request, context):  # noqa: N802
        return oip.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):  # noqa: N802
        return oip.ServerReadyResponse(ready=self.server.ready()[0])

    async def ModelReady(self, request, context):  # noqa: N802
        return oip.ModelReadyResponse(ready=self.models.find(request.name, request.version) is not None)

    async def ServerMetadata(self, request, context):  # noqa: N802
        return oip.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION, extensions=[])

    def _failed(self, method: str, code: str, name: str, version: str = "-") -> None:
        m.FAILURES.labels(method, name if self.models.serves(name) else "unknown", version, code).inc()

    async def _version(self, name: str, version: str, context, method: str):
        if not self.models.serves(name):
            self._failed(method, "NOT_FOUND", name)
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model {name!r}")
        mv = self.models.find(name, version)
        if mv is None:
            code = grpc.StatusCode.NOT_FOUND if version else grpc.StatusCode.UNAVAILABLE
            self._failed(method, code.name, name)
            await context.abort(code, f"model {name!r} version {version or '(production)'} is not loaded")
        return mv

    async def ModelMetadata(self, request, context):  # noqa: N802
        mv = await self._version(request.name, request.version, context, "ModelMetadata")
        r = self.models.routes(request.name)
        out = oip.ModelMetadataResponse(name=mv.name, versions=sorted(r.versions(), key=lambda v: (len(v), v)),
                                        platform={"torch": "pytorch_torchscript",
                                                  "tensorflow": "tensorflow_savedmodel"}.get(mv.framework, mv.framework))
        for t in mv.meta.get("inputs") or ():
            out.inputs.add(name=t["name"], datatype=t["datatype"], shape=[int(x) for x in t["shape"]])
        for t in mv.meta.get("outputs") or ():
            out.outputs.add(name=t["name"], datatype=t["datatype"], shape=[int(x) for x in t["shape"]])
        return out

    def _infer_metrics(self, name: str, version: str):
        """(LATENCY, REQUESTS) children for ModelInfer of this version, bound once (labels() takes
        a lock and builds a key on every call)."""
        key = (name, version)
        got = self._metrics.get(key)
        if got is None:
            if len(self._metrics) > 1024:  # versions come and go: keep the cache bounded
                self._metrics.clear()
            got = self._metrics[key] = (m.LATENCY.labels("ModelInfer"), m.REQUESTS.labels("ModelInfer", name, version, "-"))
        return got

    async def ModelInfer(self, request, context):  # noqa: N802
        t0 = time.perf_counter()
        mv = self.models.find(request.model_name, request.model_version)
        if mv is None:  # unknown model or version not loaded: the precise status
            mv = await self._version(request.model_name, request.model_version, context, "ModelInfer")
        try:
            dense, ids = _infer_inputs(request, mv.dense_dim, mv.ids_dim)
        except (InvalidArgument, ValueError) as exc:  # ValueError: a raw buffer of the wrong size
            self._failed("ModelInfer", "INVALID_ARGUMENT", mv.name, mv.version)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        try:
            scores = await mv.score(dense, ids)
        except QueueFull as exc:
            self._failed("ModelInfer", "RESOURCE_EXHAUSTED", mv.name, mv.version)
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except BatcherClosed:  # swapped out while queued: the new version answers
            mv = await self._version(request.model_name, "", context, "ModelInfer")
            scores = await mv.score(dense, ids)
        except Exception as exc:
            self._failed("ModelInfer", "INTERNAL", mv.name, mv.version)
            await context.abort(grpc.StatusCode.INTERNAL, f"model execution failed: {exc}")
        out = oip.ModelInferResponse(model_name=mv.name, model_version=mv.version, id=request.id)
        out.outputs.add(name="score", datatype="FP32", shape=[scores.shape[0]])
        out.raw_output_contents.append(scores.astype(np.float32, copy=False).tobytes())
        latency, requests = self._infer_metrics(mv.name, mv.version)
        latency.observe(time.perf_counter() - t0)
        requests.inc()
        return out


class InferenceServer:
    """start(): bind, serve, keep health current; stop(): NOT_SERVING, drain (grace), close."""

    def __init__(self, settings: InferenceSettings, service: RankingService, models: ModelManager,
                 extra_ready=None) -> None:
        self.s = settings
        self.service = service
        self.models = models
        self.extra_ready = extra_ready  # () -> (bool, dict), e.g. deployment follower caught up
        self.port: int | None = None
        self.loop, self.loop_name = new_event_loop(settings.event_loop)
        self._thread = threading.Thread(target=self._run, name="grpc", daemon=True)
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._server: grpc.aio.Server | None = None
        self._health = None
        self._redis_ok = False
        self._health_task: asyncio.Task | None = None
        self._stopped = asyncio.Event()
        self.models.loop = self.loop

    # -- readiness -------------------------------------------------------------------------------
    def ready(self) -> tuple[bool, dict]:
        model = self.models.loaded(self.s.default_model)
        details = {"model_loaded": model, "redis": self._redis_ok}
        ok = model and self._redis_ok
        if self.extra_ready is not None:
            extra_ok, extra = self.extra_ready()
            details.update(extra)
            ok = ok and extra_ok
        r = self.models.routes(self.s.default_model)
        if r.production is not None:
            details["model_version"] = r.production.version
        return ok, details

    async def _lag_loop(self, period: float = 0.05) -> None:
        """Event-loop lag: how late a 50 ms timer fires. Every request handler, gRPC callback and
        batch execution runs on this loop, so lag is queueing every request sees before its
        handler starts (a long GC pause, a CPU-starved process, a blocking call)."""
        hist = m.LOOP_LAG
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(period)
            lag = time.perf_counter() - t0 - period
            hist.observe(max(lag, 0.0))
            if lag > 0.1:
                log.warning("event loop lagged", extra={"lag_ms": round(lag * 1000, 1), "collapse": True})

    async def _health_loop(self) -> None:
        last = None
        while True:
            try:
                self._redis_ok = bool(await asyncio.wait_for(self.service.features.ping(), 1.0))
            except Exception:
                self._redis_ok = False
            ok = self.ready()[0]
            if ok != last:
                status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
                for svc in ("", RECOMMENDER, OIP):
                    await self._health.set(svc, status)
                log.info("health", extra={"serving": ok, **self.ready()[1]})
                last = ok
            m.sample_gpu()
            await asyncio.sleep(_HEALTH_PERIOD_S)

    # -- lifecycle -------------------------------------------------------------------------------
    async def _serve(self) -> None:
        opts = [("grpc.max_receive_message_length", self.s.grpc_max_message_bytes),
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
                ("grpc.so_reuseport", 1 if self.s.reuse_port else 0)]  # off: a taken port is an error
        server = grpc.aio.server(interceptors=interceptors(self.s), options=opts)
        recommend_pb2_grpc.add_RecommenderServicer_to_server(_Recommender(self.service, self.s), server)
        oip_grpc.add_GRPCInferenceServiceServicer_to_server(_OpenInference(self.models, self), server)
        self._health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        for svc in ("", RECOMMENDER, OIP):
            await self._health.set(svc, health_pb2.HealthCheckResponse.NOT_SERVING)
        reflection.enable_server_reflection(
            (RECOMMENDER, OIP, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME), server)
        addr = f"{self.s.grpc_host}:{self.s.grpc_port}"
        creds = server_credentials(self.s)
        self.port = server.add_secure_port(addr, creds) if creds else server.add_insecure_port(addr)
        await server.start()
        self._server = server
        self._health_task = asyncio.get_running_loop().create_task(self._health_loop())
        self._lag_task = asyncio.get_running_loop().create_task(self._lag_loop())
        await self.service.refresh_popular()
        log.info("grpc server listening", extra={"address": f"{self.s.grpc_host}:{self.port}",
                                                  "tls": creds is not None, "auth": bool(self.s.auth_token),
                                                  "event_loop": self.loop_name})
        self._started.set()
        await self._stopped.wait()
        await self._health.enter_graceful_shutdown()
        self._health_task.cancel()
        self._lag_task.cancel()
        await server.stop(self.s.grace_s)
        await self.models.close()

    def _run(self) -> None:
        name_os_thread("grpc-loop")
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._serve())
        except BaseException as exc:
            self._error = exc
            log.exception("grpc server failed")
            self._started.set()

    def start(self, timeout: float = 30.0) -> None:
        self._thread.start()
        if not self._started.wait(timeout):
            raise RuntimeError("grpc server did not start")
        if self._error is not None:
            raise RuntimeError(f"grpc server failed to start: {self._error}") from self._error

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._stopped.set)
            self._thread.join(self.s.grace_s + 15)
