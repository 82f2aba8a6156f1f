"""`recpilot bench grpc-floor`: what gRPC in Python costs on this box, with no recpilot code.

Starts a bare grpc.aio Open Inference Protocol server in its own process whose ``ServerLive`` and
``ModelInfer`` answer at once (no parsing, no model), and drives it with the same load generator
as ``recpilot bench inference`` (grpc.aio, 8 connections, closed loop; ``--generator native`` for the
C++ one in ``bench/native``). The throughput is the most
any recpilot method can reach here; ``bench inference`` prints the same floor against the real
server (ServerLive) and the batching ceiling it implies.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

from bench.loadgen import closed_loop, native_closed_loop
from bench.machine import machine
from recpilot.stack.process import process_cpu


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


def run(args) -> int:
    from recpilot.net import free_port

    port = free_port()
    serve = (["--serve", str(port), args.event_loop] if args.server == "aio"
             else ["--serve-sync", str(port), str(args.sync_threads)])
    srv = subprocess.Popen([sys.executable, "-m", "bench.floor", *serve], stdout=subprocess.PIPE, text=True)
    try:
        if srv.stdout.readline().strip() != "ready":
            print("the no-op server did not start", file=sys.stderr)
            return 1
        if args.generator == "native":
            from bench import native

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


if __name__ == "__main__":
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        from recpilot.lifecycle import new_event_loop

        loop = new_event_loop(sys.argv[3])[0]
        asyncio.set_event_loop(loop)
        loop.run_until_complete(_serve(int(sys.argv[2])))
    elif len(sys.argv) == 4 and sys.argv[1] == "--serve-sync":
        _serve_sync(int(sys.argv[2]), int(sys.argv[3]))
