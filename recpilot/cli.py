"""The `recpilot` command line.

Each command group lives in its own module with a ``register(subparsers)`` function; this file
only assembles them. Command modules must stay light to import (no torch/tensorflow at module
level) so that `recpilot status` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from recpilot.settings import SettingsError

# Command groups, in --help order. A group whose module does not exist yet is skipped, so each
# part of the platform adds its commands by creating its module, without editing this list.
COMMAND_MODULES = [
    "recpilot.stack.commands",      # setup, up, down, status, topics
    "services.ingest.commands",     # generate, simulate
    "bench.commands",               # bench ingest|features|train|deployments|inference|grpc-floor
    "services.features.commands",   # features user|item
    "recpilot.models.train_commands",  # train, tune
    "recpilot.models.commands",     # models list|deploy|promote|canary|shadow|rollback|status
    "services.inference.commands",  # recommend, search
    "services.rl_feedback.commands",
    "services.monitor.commands",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recpilot",
        description="recpilot: deploy, serve, monitor and continuously improve e-commerce ranking models.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):
                continue  # that part of the platform has no commands yet
            raise
        if hasattr(mod, "register"):
            mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from recpilot.stack.kafka import StackError

    try:
        rc = args.func(args)
    except SettingsError as exc:
        print(f"recpilot: error: {exc}", file=sys.stderr)
        return 2
    except StackError as exc:
        print(f"recpilot: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    raise SystemExit(main())
