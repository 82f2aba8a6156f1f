"""`recpilot recommend`, `recpilot search` (gRPC clients) and `recpilot bench inference`.
Light to import: grpc and the benchmark load only when a command runs."""

from __future__ import annotations

import argparse
import json


def _channel(args):
    import grpc

    target = args.target
    if args.tls_ca:
        with open(args.tls_ca, "rb") as fh:
            return grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=fh.read()))
    return grpc.insecure_channel(target)


def _meta(args):
    return [("authorization", f"Bearer {args.token}")] if args.token else None


def _print(resp) -> None:
    from google.protobuf.json_format import MessageToDict

    print(json.dumps(MessageToDict(resp, preserving_proto_field_name=True), indent=2))


def _call(args, method: str, request) -> int:
    import grpc

    from recpilot.errors import InvalidArgument, RecpilotError
    from recpilot.pb import recommend_pb2_grpc

    with _channel(args) as ch:
        stub = recommend_pb2_grpc.RecommenderStub(ch)
        try:
            resp = getattr(stub, method)(request, timeout=args.timeout, metadata=_meta(args))
        except grpc.RpcError as err:
            # the server refusing what was typed is a usage error; anything else a failure
            kind = InvalidArgument if err.code() == grpc.StatusCode.INVALID_ARGUMENT else RecpilotError
            raise kind(f"{method} failed: {err.code().name}: {err.details()}") from None
    _print(resp)
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    from recpilot.pb import recommend_pb2

    return _call(args, "Recommend", recommend_pb2.RecommendRequest(
        user_id=args.user, k=args.k, candidate_ids=args.candidates or [], model_name=args.model or ""))


def cmd_search(args: argparse.Namespace) -> int:
    from recpilot.pb import recommend_pb2

    return _call(args, "Search", recommend_pb2.SearchRequest(
        user_id=args.user, query=args.query, k=args.k, model_name=args.model or ""))


def _client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default="127.0.0.1:50051", help="inference gRPC address")
    p.add_argument("--user", required=True)
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--model", default=None)
    p.add_argument("--timeout", type=float, default=2.0)
    p.add_argument("--token", default=None, help="bearer token (when the server requires one)")
    p.add_argument("--tls-ca", default=None, help="CA certificate to verify a TLS server")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("recommend", help="ask the inference server for recommendations")
    _client_args(p)
    p.add_argument("--candidates", nargs="*", help="rank these item ids instead of generated candidates")
    p.set_defaults(func=cmd_recommend)
    p = sub.add_parser("search", help="search the catalogue through the inference server")
    _client_args(p)
    p.add_argument("query")
    p.set_defaults(func=cmd_search)


def cmd_bench(args: argparse.Namespace) -> int:
    from services.inference.bench import run

    return run(args)


def register_bench(bench: argparse._SubParsersAction) -> None:
    p = bench.add_parser("inference", help="Recommend throughput/latency, batching on vs off, latency during model swaps")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    p.add_argument("--seconds", type=float, default=10.0, help="per phase")
    p.add_argument("--candidates", type=int, default=200)
    p.add_argument("--infer-rows", type=int, default=200, help="rows per ModelInfer request (Open Inference Protocol phase)")
    p.add_argument("--items", type=int, default=2000)
    p.add_argument("--users", type=int, default=500)
    p.add_argument("--model", choices=["ranker", "toy-mlp"], default="ranker",
                   help="ranker: the platform's DLRM-style ranker trained by recpilot's trainer on synthetic "
                        "logged impressions (what `recpilot train` deploys); toy-mlp: a wider plain MLP with "
                        "random weights (--hidden)")
    p.add_argument("--framework", choices=["torch", "tensorflow"], default="torch", help="for --model ranker")
    p.add_argument("--hidden", type=int, nargs="+", default=[256, 128, 64], help="toy-mlp hidden sizes")
    p.add_argument("--max-batch-size", type=int, default=8192, help="rows")
    p.add_argument("--max-queue-delay-ms", type=float, default=0.0)
    p.add_argument("--rate", type=float, default=500.0, help="open-loop phase rate (0 = skip)")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds at --rate before the open-loop phase is measured")
    p.add_argument("--swaps", type=int, default=10)
    p.add_argument("--swap-interval", type=float, default=1.5)
    p.add_argument("--swap-concurrency", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.add_argument("--compute-threads", type=int, default=None,
                   help="server's RECPILOT_INFERENCE_COMPUTE_THREADS (default: the server's default)")
    p.add_argument("--workers", type=int, default=1, help="server processes (RECPILOT_INFERENCE_WORKERS)")
    p.add_argument("--event-loop", choices=["auto", "uvloop", "asyncio"], default=None,
                   help="server's RECPILOT_INFERENCE_EVENT_LOOP (default: the server's default, auto = uvloop)")
    p.add_argument("--channels", type=int, default=8,
                   help="client connections the load is spread over (SO_REUSEPORT balances connections)")
    p.add_argument("--item-cache-ms", type=float, default=5000.0, help="server's item feature cache TTL")
    p.add_argument("--redis-timeout-ms", type=float, default=200.0, help="server's feature fetch timeout")
    p.add_argument("--generator", choices=["python", "native"], default="python",
                   help="closed-loop load generator: python (grpc.aio, ~0.2 ms CPU per call) or native (C++ "
                        "libgrpc++, ~0.08 ms; built on first use, needs g++ and libgrpc++-dev); the open loop "
                        "and the swap phase always use python")
    p.add_argument("--skip-unbatched", action="store_true")
    p.add_argument("--json", default=None, help="also write the results here")
    p.set_defaults(func=cmd_bench)
    from services.inference.floor import register

    register(bench)
