"""The `recpilot` command line.

Each command group lives in its own module with a ``register(subparsers)`` function; this file
only assembles them from :data:`COMMAND_MODULES` and maps errors to exit codes. Command modules
must stay light to import (no torch/tensorflow at module level) so that `recpilot status` answers
at once.

Errors: a command raises a :class:`recpilot.errors.RecpilotError` kind and ``main`` (the one
mapping point) prints ``recpilot: error: <message>`` and exits with the kind's ``exit_code``
(2 for a usage error, 1 for a failure).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from recpilot.errors import EXIT_USAGE, FailedPrecondition, RecpilotError

# Command groups, in --help order. Every module here must import and have register(subparsers);
# one that does not is an error of the whole CLI, never a group that silently disappears.
COMMAND_MODULES = [
    "recpilot.stack.commands",      # setup, up, down, status, topics
    "recpilot.story",               # run (the story: `make run`)
    "services.ingest.commands",     # generate, simulate
    "bench.commands",               # bench ingest|features|train|deployments|inference|policy|grpc-floor|ope|rl-join|rl|monitor|soak (development checkout only)
    "services.features.commands",   # features user|item|popular|candidates
    "recpilot.models.train_commands",  # train, tune
    "recpilot.models.commands",     # models list|verify|deploy|promote|canary|shadow|rollback|status
    "services.inference.commands",  # recommend, search
    "recpilot.rl.commands",         # ope
    "services.rl_feedback.commands",  # policy status
    "services.monitor.commands",    # monitor status|actions, report drift
]

# The benchmark package lives beside the product and is not in the service image; there, and only
# when the package itself is absent, `recpilot bench` says why instead of disappearing.
BENCH_MODULE = "bench.commands"
BENCH_MISSING = "recpilot bench needs a development checkout (the bench/ package is not installed here)"


def _import(name: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if name == BENCH_MODULE and exc.name == "bench":
            return None
        raise


def _bench_missing(args: argparse.Namespace) -> int:
    raise FailedPrecondition(BENCH_MISSING)


def _register_bench_missing(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmark programs (development checkout only; not installed here)",
                       description=BENCH_MISSING)
    p.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p.set_defaults(func=_bench_missing)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recpilot",
        description="recpilot: deploy, serve, monitor and continuously improve e-commerce ranking models.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        mod = _import(name)
        if mod is None:
            _register_bench_missing(sub)
        else:
            mod.register(sub)
    return parser


def _message(exc: BaseException) -> str:
    """The message, then each note a command added (``add_note``) in parentheses."""
    return " ".join([str(exc), *(f"({note})" for note in getattr(exc, "__notes__", ()))])


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        rc = args.func(args)
    except RecpilotError as exc:
        print(f"recpilot: error: {_message(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    raise SystemExit(main())
