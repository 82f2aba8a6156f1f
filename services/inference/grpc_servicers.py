"""The gRPC servicers: ``recpilot.v1.Recommender`` and the Open Inference Protocol
(``inference.GRPCInferenceService``, so ``tritonclient.grpc`` works unchanged). Each method only
converts messages and calls the :class:`services.inference.dataplane.DataPlane`; errors become
status codes in :func:`services.inference.grpc_errors.rpc`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from recpilot.pb import open_inference_grpc_pb2 as oip_pb
from recpilot.pb import open_inference_grpc_pb2_grpc as oip_grpc
from recpilot.pb import recommend_pb2, recommend_pb2_grpc
from services.inference import metrics as m
from services.inference import oip
from services.inference.dataplane import DataPlane
from services.inference.grpc_errors import rpc
from services.inference.service import Request, Result

_CACHE_MAX = 1024  # bound children caches: versions come and go


def _response(res: Result) -> recommend_pb2.RecommendResponse:
    out = recommend_pb2.RecommendResponse(
        request_id=res.request_id, model_name=res.model_name, model_version=res.model_version,
        policy_version=res.policy_version, fallback=res.fallback, fallback_reason=res.fallback_reason,
        variant=res.variant)
    for iid, score, pos, prop in res.items:
        out.items.add(item_id=iid, score=score, position=pos, propensity=prop)
    return out


class RecommenderServicer(recommend_pb2_grpc.RecommenderServicer):
    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self._timeout_s = plane.s.default_timeout_ms / 1000
        self._latency = {method: m.LATENCY.labels(method) for method in ("Recommend", "Search")}
        self._requests: dict[tuple, object] = {}  # labels -> REQUESTS child

    def _deadline(self, context) -> float:
        left = context.time_remaining()
        if left is None:
            left = self._timeout_s
        return time.monotonic() + left

    def _answered(self, method: str, t0: float, res: Result) -> recommend_pb2.RecommendResponse:
        took = time.perf_counter() - t0
        self._latency[method].observe(took)
        if self.plane.telemetry is not None:
            self.plane.telemetry.request(method, took, "OK", res.fallback_reason)
        key = (method, res.model_name, res.model_version or "-", res.variant or "-")
        counter = self._requests.get(key)
        if counter is None:
            if len(self._requests) > _CACHE_MAX:
                self._requests.clear()
            counter = self._requests[key] = m.REQUESTS.labels(*key)
        counter.inc()
        return _response(res)

    def _failed(self, method: str, request, code: str, version: str, t0: float) -> None:
        name = self.plane.model_label(request.model_name or self.plane.s.default_model)
        m.FAILURES.labels(method, name, version, code).inc()
        if self.plane.telemetry is not None:
            self.plane.telemetry.request(method, time.perf_counter() - t0, code)

    @rpc("Recommend")
    async def Recommend(self, request, context, t0):  # noqa: N802
        req = Request(request.user_id, request.k, list(request.candidate_ids), dict(request.context),
                      request.session_id, request.request_id, request.model_name)
        return self._answered("Recommend", t0, await self.plane.recommend(req, self._deadline(context)))

    @rpc("Search")
    async def Search(self, request, context, t0):  # noqa: N802
        req = Request(request.user_id, request.k, list(request.candidate_ids), dict(request.context),
                      request.session_id, request.request_id, request.model_name, query=request.query)
        return self._answered("Search", t0, await self.plane.search(req, self._deadline(context)))


class OpenInferenceServicer(oip_grpc.GRPCInferenceServiceServicer):
    def __init__(self, plane: DataPlane, live: Callable[[], tuple[bool, dict]] | None = None) -> None:
        self.plane = plane
        self.live = live  # the server's liveness (its event loop ticks); None: answering is live
        self._metrics: dict[tuple[str, str], tuple] = {}

    def _failed(self, method: str, request, code: str, version: str, t0: float) -> None:
        name = request.model_name if method == "ModelInfer" else request.name
        m.FAILURES.labels(method, self.plane.model_label(name), version, code).inc()

    async def ServerLive(self, request, context):  # noqa: N802
        return oip_pb.ServerLiveResponse(live=True if self.live is None else self.live()[0])

    async def ServerReady(self, request, context):  # noqa: N802
        return oip_pb.ServerReadyResponse(ready=self.plane.ready()[0])

    async def ModelReady(self, request, context):  # noqa: N802
        return oip_pb.ModelReadyResponse(ready=self.plane.model_ready(request.name, request.version))

    async def ServerMetadata(self, request, context):  # noqa: N802
        return oip.server_metadata()

    @rpc("ModelMetadata")
    async def ModelMetadata(self, request, context, t0):  # noqa: N802
        mv, versions = self.plane.model_metadata(request.name, request.version)
        return oip.metadata_response(mv.name, versions, mv.framework, mv.meta)

    def _infer_metrics(self, name: str, version: str):
        """(LATENCY, REQUESTS) children for ModelInfer of this version, bound once (labels() takes
        a lock and builds a key on every call)."""
        key = (name, version)
        got = self._metrics.get(key)
        if got is None:
            if len(self._metrics) > _CACHE_MAX:
                self._metrics.clear()
            got = self._metrics[key] = (m.LATENCY.labels("ModelInfer"), m.REQUESTS.labels("ModelInfer", name, version, "-"))
        return got

    @rpc("ModelInfer")
    async def ModelInfer(self, request, context, t0):  # noqa: N802
        mv, scores = await self.plane.model_infer(request)
        out = oip.infer_response(request.id, mv.name, mv.version, scores)
        latency, requests = self._infer_metrics(mv.name, mv.version)
        latency.observe(time.perf_counter() - t0)
        requests.inc()
        return out
