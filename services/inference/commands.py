"""`recpilot recommend` and `recpilot search` (gRPC clients).
Light to import: grpc loads only when a command runs."""

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
