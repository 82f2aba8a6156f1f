"""The gRPC transport: an asyncio grpcio server with the servicers of ``grpc_servicers``
(Recommender, the Open Inference Protocol), grpc.health.v1 and reflection, over one
:class:`services.inference.dataplane.DataPlane`. The server runs its own event loop in a thread;
``start()``/``stop()`` wrap it.

Health is honest. Ready (grpc.health.v1 SERVING, OIP ServerReady, ``/readyz``): the data plane is
ready (the default model has a loaded production version; Redis is reported, not required),
re-checked every ``_HEALTH_PERIOD_S``. Live (OIP ServerLive, ``/healthz``): the server thread runs
and its event loop makes progress: :class:`LoopWatchdog` fails liveness once the loop has not
ticked for ``loop_stall_s`` (a blocking call, a hung inline execution), so the orchestrator
restarts a wedged replica instead of waiting for the process to exit.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable

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


class LoopWatchdog:
    """Liveness of an event loop. The loop calls :meth:`tick` often (the lag loop, every 50 ms);
    :meth:`live` (any thread) is false once no tick came for ``stall_s``. A watchdog thread checks
    every quarter of that and reports each stall once: a log line with the loop thread's stack (what
    it is stuck in) and ``recpilot_inference_event_loop_stalls_total``."""

    def __init__(self, stall_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stall_s = stall_s
        self.clock = clock
        self._last: float | None = None  # None: the loop has not ticked yet (starting)
        self._stalled = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.loop_thread_id: int | None = None

    def tick(self) -> None:
        self._last = self.clock()

    def live(self) -> tuple[bool, dict]:
        last = self._last
        if last is None:
            return True, {"event_loop": "starting"}
        since = self.clock() - last
        return since <= self.stall_s, {"event_loop_since_tick_s": round(since, 3)}

    def check(self) -> bool:
        """One watchdog round: report a stall when it starts and when it ends; True when live."""
        ok, details = self.live()
        if not ok and not self._stalled:
            self._stalled = True
            m.LOOP_STALLS.inc()
            frame = sys._current_frames().get(self.loop_thread_id) if self.loop_thread_id else None
            log.error("event loop stalled: liveness fails", extra={
                **details, "stall_s": self.stall_s,
                "loop_stack": "".join(traceback.format_stack(frame)[-8:]) if frame is not None else ""})
        elif ok and self._stalled:
            self._stalled = False
            log.warning("event loop ticks again", extra=details)
        return ok

    def start(self) -> None:
        def run() -> None:
            name_os_thread("loop-watchdog")
            while not self._stop.wait(self.stall_s / 4):
                self.check()

        self._thread = threading.Thread(target=run, name="loop-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


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
        self.watchdog = LoopWatchdog(settings.loop_stall_s)
        plane.models.loop = self.loop

    async def _lag_loop(self, period: float = 0.05) -> None:
        """Event-loop lag: how late a 50 ms timer fires. Every request handler, gRPC callback and
        batch execution runs on this loop, so lag is queueing every request sees before its
        handler starts (a long GC pause, a CPU-starved process, a blocking call)."""
        hist, tick = m.LOOP_LAG, self.watchdog.tick
        while True:
            tick()
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
        server = grpc.aio.server(interceptors=interceptors(self.s), options=opts,
                                 maximum_concurrent_rpcs=self.s.max_concurrent_rpcs)
        recommend_pb2_grpc.add_RecommenderServicer_to_server(RecommenderServicer(self.plane), server)
        oip_grpc.add_GRPCInferenceServiceServicer_to_server(OpenInferenceServicer(self.plane, live=self.live),
                                                            server)
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
        await server.stop(self.s.grace_s)
        self._lag_task.cancel()  # after the drain: the loop stays live while it drains
        await self.plane.models.close()

    def _run(self) -> None:
        name_os_thread("grpc-loop")
        self.watchdog.loop_thread_id = threading.get_ident()
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
        self.watchdog.start()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def live(self) -> tuple[bool, dict]:
        """Liveness: the server thread runs and its event loop ticks (``loop_stall_s``)."""
        if not self.running:
            return False, {"grpc": "stopped"}
        return self.watchdog.live()

    def stop(self) -> None:
        self.watchdog.stop()
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._stopped.set)
            self._thread.join(self.s.grace_s + 15)
