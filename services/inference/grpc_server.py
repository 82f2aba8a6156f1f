"""The gRPC transport: an asyncio grpcio server with the servicers of ``grpc_servicers``
(Recommender, the Open Inference Protocol), grpc.health.v1 and reflection, over one
:class:`services.inference.dataplane.DataPlane`. The server runs its own event loop in a thread;
``start()``/``stop()`` wrap it.

Health is honest: NOT_SERVING until the data plane is ready (the default model has a loaded
production version and Redis answers a PING); re-checked every ``_HEALTH_PERIOD_S``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from recpilot.lifecycle import name_os_thread, new_event_loop
from recpilot.pb import open_inference_grpc_pb2 as oip_pb
from recpilot.pb import open_inference_grpc_pb2_grpc as oip_grpc
from recpilot.pb import recommend_pb2, recommend_pb2_grpc
from services.inference import metrics as m
from services.inference.dataplane import DataPlane
from services.inference.grpc_servicers import OpenInferenceServicer, RecommenderServicer
from services.inference.security import interceptors, server_credentials
from services.inference.settings import InferenceSettings

log = logging.getLogger(__name__)

_HEALTH_PERIOD_S = 0.5
RECOMMENDER = recommend_pb2.DESCRIPTOR.services_by_name["Recommender"].full_name
OIP = oip_pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


class InferenceServer:
    """start(): bind, serve, keep health current; stop(): NOT_SERVING, drain (grace), close."""

    def __init__(self, settings: InferenceSettings, plane: DataPlane) -> None:
        self.s = settings
        self.plane = plane
        self.port: int | None = None
        self.loop, self.loop_name = new_event_loop(settings.event_loop)
        self._thread = threading.Thread(target=self._run, name="grpc", daemon=True)
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._server: grpc.aio.Server | None = None
        self._health = None
        self._health_task: asyncio.Task | None = None
        self._stopped = asyncio.Event()
        plane.models.loop = self.loop

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
            await self.plane.check_dependencies()
            ok, details = self.plane.ready()
            if ok != last:
                status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
                for svc in ("", RECOMMENDER, OIP):
                    await self._health.set(svc, status)
                log.info("health", extra={"serving": ok, **details})
                last = ok
            m.sample_gpu()
            await asyncio.sleep(_HEALTH_PERIOD_S)

    # -- lifecycle -------------------------------------------------------------------------------
    async def _serve(self) -> None:
        opts = [("grpc.max_receive_message_length", self.s.grpc_max_message_bytes),
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
                ("grpc.so_reuseport", 1 if self.s.reuse_port else 0)]  # off: a taken port is an error
        server = grpc.aio.server(interceptors=interceptors(self.s), options=opts)
        recommend_pb2_grpc.add_RecommenderServicer_to_server(RecommenderServicer(self.plane), server)
        oip_grpc.add_GRPCInferenceServiceServicer_to_server(OpenInferenceServicer(self.plane), server)
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
        await self.plane.refresh_popular()
        log.info("grpc server listening", extra={"address": f"{self.s.grpc_host}:{self.port}",
                                                  "tls": creds is not None, "auth": bool(self.s.auth_token),
                                                  "event_loop": self.loop_name})
        self._started.set()
        await self._stopped.wait()
        await self._health.enter_graceful_shutdown()
        self._health_task.cancel()
        self._lag_task.cancel()
        await server.stop(self.s.grace_s)
        await self.plane.models.close()

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
