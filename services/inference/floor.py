"""`recpilot bench grpc-floor`: what gRPC in Python costs on this box, with no recpilot code.

Starts a bare grpc.aio Open Inference Protocol server in its own process whose ``ServerLive`` and
``ModelInfer`` answer at once (no parsing, no model), and drives it with the same load generator
as ``recpilot bench inference`` (grpc.aio, 8 connections, closed loop; ``--generator native`` for the
C++ one in ``services/inference/native``). The throughput is the most
any recpilot method can reach here; ``bench inference`` prints the same floor against the real
server (ServerLive) and the batching ceiling it implies.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time

from recpilot.benchutil import machine, process_cpu


def _noop_servicer(sync: bool):
    """An OIP servicer whose ServerLive and ModelInfer (a fixed 200-score answer) do no work."""
    from recpilot.pb import open_inference_grpc_pb2 as oip
    from recpilot.pb import open_inference_grpc_pb2_grpc as oip_grpc

    def live(request, context):
        return oip.ServerLiveResponse(live=True)

    def infer(request, context):
        out = oip.ModelInferResponse(model_name="noop", model_version="1")
        out.outputs.add(name="score", datatype="FP32", shape=[200])
        out.raw_output_contents.append(b"\0" * 800)
        return out

    class NoOpSync(oip_grpc.GRPCInferenceServiceServicer):
        def ServerLive(self, request, context):  # noqa: N802
            return live(request, context)

        def ModelInfer(self, request, context):  # noqa: N802
            return infer(request, context)

    class NoOpAio(oip_grpc.GRPCInferenceServiceServicer):
        async def ServerLive(self, request, context):  # noqa: N802
            return live(request, context)

        async def ModelInfer(self, request, context):  # noqa: N802
            return infer(request, context)

    return NoOpSync() if sync else NoOpAio()


_OPTIONS = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]


async def _serve(port: int) -> None:
    import grpc

    from recpilot.pb import open_inference_grpc_pb2_grpc as oip_grpc

    server = grpc.aio.server(options=_OPTIONS)
    oip_grpc.add_GRPCInferenceServiceServicer_to_server(_noop_servicer(sync=False), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


def _serve_sync(port: int, threads: int) -> None:
    """The same no-op servicer on grpcio's synchronous server (handlers in a thread pool)."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    from recpilot.pb import open_inference_grpc_pb2_grpc as oip_grpc

    server = grpc.server(ThreadPoolExecutor(threads), options=_OPTIONS)
    oip_grpc.add_GRPCInferenceServiceServicer_to_server(_noop_servicer(sync=True), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


async def closed_loop(port: int, kind: str, rows: int, conc: int, seconds: float) -> dict:
    """``kind`` ("ServerLive" | "ModelInfer" with ``rows`` per request) at ``conc`` in flight for ``seconds``."""
    from recpilot.pb import open_inference_grpc_pb2 as oip
    from recpilot.pb import open_inference_grpc_pb2_grpc as oip_grpc
    from services.inference.bench import channels, infer_requests, own_cpu

    chans = channels(port)
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
    from recpilot.pb import open_inference_grpc_pb2 as oip
    from services.inference import native
    from services.inference.bench import infer_requests

    reqs = infer_requests(rows) if kind == "ModelInfer" else [oip.ServerLiveRequest()]
    r = native.closed_loop(port, f"/inference.GRPCInferenceService/{kind}", reqs, conc, seconds,
                           connections=connections, warmup=warmup)
    if r["errors"]:
        raise RuntimeError(f"{kind}: {r['errors']} failed calls {r['error_kinds']}")
    return {"kind": kind, "rows": rows, "requests": r["requests"], "rps": r["rps"],
            "client_cpu_ms": r["client_cpu_ms_per_request"]}


def run(args) -> int:
    from recpilot.net import free_port

    port = free_port()
    serve = (["--serve", str(port), args.event_loop] if args.server == "aio"
             else ["--serve-sync", str(port), str(args.sync_threads)])
    srv = subprocess.Popen([sys.executable, "-m", "services.inference.floor", *serve], stdout=subprocess.PIPE, text=True)
    try:
        if srv.stdout.readline().strip() != "ready":
            print("the no-op server did not start", file=sys.stderr)
            return 1
        if args.generator == "native":
            from services.inference import native

            try:
                native.binary()
            except native.NativeUnavailable as exc:
                print(f"--generator native: {exc}", file=sys.stderr)
                return 2
        kind = (f"grpc.aio ({args.event_loop} loop)" if args.server == "aio"
                else f"synchronous grpc ({args.sync_threads} handler threads)")
        print(f"machine: {machine()}; no-op {kind} server pid {srv.pid}, c={args.concurrency}, "
              f"{args.seconds:g} s each, {args.generator} load generator")
        for kind, rows in (("ServerLive", 0), ("ModelInfer", 200), ("ModelInfer", 1)):
            if args.generator == "native":
                native_closed_loop(port, kind, rows or 1, args.concurrency, 1.0)  # warm
                cpu0 = process_cpu(srv.pid)
                r = native_closed_loop(port, kind, rows or 1, args.concurrency, args.seconds)
            else:
                asyncio.run(closed_loop(port, kind, rows or 1, args.concurrency, 1.0))  # warm
                cpu0 = process_cpu(srv.pid)
                r = asyncio.run(closed_loop(port, kind, rows or 1, args.concurrency, args.seconds))
            r["server_cpu_ms"] = (process_cpu(srv.pid) - cpu0) * 1000 / max(r["requests"], 1)
            what = f"{kind} ({rows} rows)" if rows else kind
            print(f"  {what:<22} {r['rps']:7.0f} req/s; CPU per request: server {r['server_cpu_ms']:.3f} ms "
                  f"({r['server_cpu_ms'] * r['rps'] / 1000:.2f} cores), load generator {r['client_cpu_ms']:.3f} ms",
                  flush=True)
    finally:
        srv.terminate()
        srv.wait(10)
    return 0


def register(bench: argparse._SubParsersAction) -> None:
    p = bench.add_parser("grpc-floor", help="gRPC's own cost here: a no-op server under the inference bench's load")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--generator", choices=["python", "native"], default="python",
                   help="python: grpc.aio, as bench inference's default; native: the C++ generator "
                        "(services/inference/native), whose own CPU per call is ~0.08 ms")
    p.add_argument("--server", choices=["aio", "sync"], default="aio",
                   help="the no-op server: grpc.aio (as the inference server) or grpcio's synchronous server")
    p.add_argument("--sync-threads", type=int, default=4, help="handler threads of --server sync")
    p.add_argument("--event-loop", choices=["uvloop", "asyncio"], default="uvloop",
                   help="the event loop of --server aio (the inference server's default is uvloop)")
    p.set_defaults(func=run)


if __name__ == "__main__":
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        from recpilot.lifecycle import new_event_loop

        loop = new_event_loop(sys.argv[3])[0]
        asyncio.set_event_loop(loop)
        loop.run_until_complete(_serve(int(sys.argv[2])))
    elif len(sys.argv) == 4 and sys.argv[1] == "--serve-sync":
        _serve_sync(int(sys.argv[2]), int(sys.argv[3]))
