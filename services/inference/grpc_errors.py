"""The one place where errors become gRPC status codes.

Every RPC of the servicers is decorated with :func:`rpc`. The data plane and the protocol
decoding raise the kinds of :mod:`recpilot.errors`; the decorator answers with the error's
``grpc_status`` and its message, counts the failure (through the servicer's ``_failed``) and
logs what nobody raised on purpose (any other exception, and :class:`recpilot.errors.Internal`),
which it answers as INTERNAL. A cancelled call (the client went away, the server is stopping)
is counted as CANCELLED and re-raised.

The failure's model version is the one the error names (``model_version`` on the exception,
set by the data plane once it has chosen a version), else ``"-"``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable

import grpc

from recpilot.errors import Internal, RecpilotError

log = logging.getLogger(__name__)

Handler = Callable[..., Awaitable]


def rpc(method: str) -> Callable[[Handler], Handler]:
    """Decorate ``async def M(self, request, context, t0)`` (``t0``: ``time.perf_counter()`` when
    the call arrived) into the servicer method ``M(self, request, context)``. The servicer has
    ``_failed(method, request, code, version, t0)``."""

    def wrap(fn: Handler) -> Handler:
        @functools.wraps(fn)
        async def handler(self, request, context):
            t0 = time.perf_counter()
            try:
                return await fn(self, request, context, t0)
            except RecpilotError as exc:
                if isinstance(exc, Internal):
                    _log(method, request, exc)
                status, message, version = exc.grpc_status, str(exc), getattr(exc, "model_version", "-")
            except asyncio.CancelledError:
                self._failed(method, request, "CANCELLED", "-", t0)
                raise
            except Exception as exc:  # a bug: say so, count it, keep serving
                _log(method, request, exc)
                status, message, version = grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}", "-"
            self._failed(method, request, status.name, version, t0)
            await context.abort(status, message)

        return handler

    return wrap


def _log(method: str, request, exc: BaseException) -> None:
    log.error("request failed", exc_info=exc, extra={
        "method": method, "request_id": getattr(request, "request_id", ""), "error": repr(exc), "collapse": True})
