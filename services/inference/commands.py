"""`recpilot recommend` and `recpilot search` (gRPC clients).
Light to import: grpc loads only when a command runs.

The bearer token comes from ``--token-file`` or the environment variable ``TOKEN_ENV`` (the
server's own setting name), not from the command line, where every user of the machine can read it
(``ps``, shell history); ``--token`` still works but is deprecated and says so."""

from __future__ import annotations

import argparse
import json
import os
import sys

TOKEN_ENV = "RECPILOT_INFERENCE_AUTH_TOKEN"


def _channel(args):
    import grpc

    target = args.target
    if args.tls_ca:
        with open(args.tls_ca, "rb") as fh:
            return grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=fh.read()))
    return grpc.insecure_channel(target)


def token(args) -> str | None:
    """The bearer token: ``--token-file``, else the deprecated ``--token``, else ``$TOKEN_ENV``; None
    when none is given. An empty one is a usage error."""
    from recpilot.errors import InvalidArgument

    if args.token_file:
        try:
            with open(args.token_file, encoding="utf-8") as fh:
                value, where = fh.read().strip(), f"--token-file {args.token_file}"
        except OSError as exc:
            raise InvalidArgument(f"cannot read --token-file: {exc}") from None
    elif args.token is not None:
        print(f"warning: --token is deprecated (other users can read a command line); use --token-file or "
              f"{TOKEN_ENV}", file=sys.stderr)
        value, where = args.token, "--token"
    elif TOKEN_ENV in os.environ:
        value, where = os.environ[TOKEN_ENV].strip(), TOKEN_ENV
    else:
        return None
    if not value:
        raise InvalidArgument(f"the bearer token from {where} is empty")
    return value


def _meta(args):
    tok = token(args)
    return [("authorization", f"Bearer {tok}")] if tok else None


def _print(resp) -> None:
    from google.protobuf.json_format import MessageToDict

    print(json.dumps(MessageToDict(resp, preserving_proto_field_name=True), indent=2))


def _call(args, method: str, request) -> int:
    import grpc

    from recpilot.errors import InvalidArgument, RecpilotError
    from recpilot.pb import recommend_pb2_grpc

    metadata = _meta(args)
    with _channel(args) as ch:
        stub = recommend_pb2_grpc.RecommenderStub(ch)
        try:
            resp = getattr(stub, method)(request, timeout=args.timeout, metadata=metadata)
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
    p.add_argument("--token-file", default=None,
                   help=f"file holding the bearer token (when the server requires one; default: ${TOKEN_ENV})")
    p.add_argument("--token", default=None, help=f"deprecated: the bearer token itself (visible to other users; "
                   f"use --token-file or ${TOKEN_ENV})")
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
