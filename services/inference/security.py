"""Transport security from settings: optional TLS (mTLS when a client CA is set) and a bearer
token checked on every RPC except the gRPC health service (probes carry no token).

An empty token is refused by the settings (it would look like auth while checking nothing); a
token without TLS works but is logged as a warning: it crosses the network in clear text."""

from __future__ import annotations

import hmac
import logging

import grpc

from services.inference.settings import InferenceSettings

log = logging.getLogger(__name__)

OPEN_SERVICES = ("/grpc.health.v1.Health/",)


def server_credentials(s: InferenceSettings) -> grpc.ServerCredentials | None:
    if s.tls_cert is None or s.tls_key is None:
        return None
    pair = [(s.tls_key.read_bytes(), s.tls_cert.read_bytes())]
    if s.tls_client_ca is not None:
        return grpc.ssl_server_credentials(pair, root_certificates=s.tls_client_ca.read_bytes(),
                                           require_client_auth=True)
    return grpc.ssl_server_credentials(pair)


def _deny(code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    async def abort(_request, context):
        await context.abort(code, message)

    return grpc.unary_unary_rpc_method_handler(abort)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Rejects RPCs without ``authorization: Bearer <token>`` (UNAUTHENTICATED)."""

    def __init__(self, token: str) -> None:
        if not token or not token.strip():
            raise ValueError("an empty bearer token checks nothing")
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(self, continuation, details):
        if details.method.startswith(OPEN_SERVICES):
            return await continuation(details)
        got = dict(details.invocation_metadata or ()).get("authorization", "")
        got = got.encode() if isinstance(got, str) else got
        if not hmac.compare_digest(got, self._expected):
            return _deny(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")
        return await continuation(details)


def interceptors(s: InferenceSettings) -> list[grpc.aio.ServerInterceptor]:
    if s.auth_token is None:
        return []
    if s.tls_cert is None:
        log.warning("a bearer token is required but TLS is off: the token crosses the network in clear text "
                    "(set RECPILOT_INFERENCE_TLS_CERT and RECPILOT_INFERENCE_TLS_KEY)")
    return [BearerTokenInterceptor(s.auth_token)]
