"""One error family for the whole platform (the shape of MLServer's ``errors.py``).

Every error a component raises on purpose derives from :class:`RecpilotError` and knows two
things about itself:

* ``grpc_status`` — the gRPC status code a server answers with (the one mapping point is
  ``services.inference.grpc_errors``; any other gRPC server uses the same decorator);
* ``exit_code`` — what the ``recpilot`` CLI exits with (the one mapping point is
  ``recpilot.cli.main``): **2 for a usage error** (bad argument, bad setting: the caller must change
  what they typed), **1 for a failure** (the request was fine, the work did not succeed).

Components subclass the kind that fits (``InvalidArgument``, ``NotFound``, ``Unavailable`` ...);
they never build status codes or exit codes themselves.
"""

from __future__ import annotations

import grpc

EXIT_FAILURE = 1
EXIT_USAGE = 2


class RecpilotError(Exception):
    """Base: a failure (exit 1, gRPC INTERNAL) unless a subclass says otherwise."""

    grpc_status: grpc.StatusCode = grpc.StatusCode.INTERNAL
    exit_code: int = EXIT_FAILURE


class UsageError(RecpilotError, ValueError):
    """The caller asked for something malformed: fix the command line or the setting."""

    grpc_status = grpc.StatusCode.INVALID_ARGUMENT
    exit_code = EXIT_USAGE


class InvalidArgument(UsageError):
    """A request field or argument is out of range or malformed."""


class NotFound(RecpilotError, LookupError):
    """What was named does not exist (a model, a version, an id)."""

    grpc_status = grpc.StatusCode.NOT_FOUND


class AlreadyExists(RecpilotError):
    grpc_status = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(RecpilotError):
    """The request is well formed but the system is not in a state to do it (a refused
    promotion, a command the deployment state does not allow)."""

    grpc_status = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(RecpilotError):
    """A dependency (broker, Redis, a model still loading) cannot answer now; retrying later may
    succeed."""

    grpc_status = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(RecpilotError):
    grpc_status = grpc.StatusCode.DEADLINE_EXCEEDED


class ResourceExhausted(RecpilotError):
    """A bounded queue or limit is full."""

    grpc_status = grpc.StatusCode.RESOURCE_EXHAUSTED


class Internal(RecpilotError):
    """A bug or an unexpected state: say so, count it, keep serving."""
