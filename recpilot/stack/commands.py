"""`recpilot setup | up | down | status | topics`."""

from __future__ import annotations

import argparse


def _stack():
    from recpilot.stack.manager import Stack

    return Stack()


def cmd_setup(args: argparse.Namespace) -> int:
    if args.obd_sample:
        from recpilot.models import obd_sample

        fetched = obd_sample.fetch()  # a download or checksum failure is DataUnavailable (exit 1)
        print(f"Open Bandit sample (3 campaigns x 2 policies): {'downloaded' if fetched else 'cached'} in "
              f"{obd_sample.OBD_SAMPLE_DIR}\nuse it: RECPILOT_TRAIN_OBD_DIR={obd_sample.OBD_SAMPLE_DIR} "
              "recpilot train --data obd/men ...")
        return 0
    from recpilot.stack import alertmanager, kafka, redis

    fetched = kafka.fetch_jars(quiet=not args.verbose)
    print("kafka jars: " + ("downloaded" if fetched else "cached") + f" in {kafka.LIBS}")
    print(f"redis-server: {redis.ensure_installed()}")
    print(f"prometheus-alertmanager, promtool: {alertmanager.ensure_installed()[1]}")
    kafka.java()
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from recpilot.stack.manager import services

    if args.only:
        services(args.only)  # an unknown name is a usage error before anything starts
    stack = _stack()
    stack.up(services=not args.no_services)
    if args.only:
        stack.up_services(args.only)
    print("up. `recpilot status` shows each component; `recpilot down` stops them.")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    result = _stack().down()
    if not result:
        print("nothing of ours was running")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from recpilot.stack.manager import dumps, format_status

    st = _stack().status()
    print(dumps(st) if args.json else format_status(st))
    if args.check:
        return 0 if all(c["ready"] for c in st["components"]) else 1
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    from recpilot.kafka import admin, ensure_topics
    from recpilot.settings import PlatformSettings, load
    from recpilot.topics import catalogue

    s = load(PlatformSettings)
    adm = admin(s)
    created = ensure_topics(adm, catalogue(s))
    md = adm.list_topics(timeout=10)
    for name in sorted(md.topics):
        if not name.startswith("__"):
            print(f"{name:<28} partitions={len(md.topics[name].partitions)}{'  (created)' if name in created else ''}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("setup", help="fetch the Kafka broker jars, install redis-server, and "
                       "prometheus-alertmanager with promtool when root (idempotent)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--obd-sample", action="store_true",
                   help="only fetch the Open Bandit sample of all three campaigns (all, men, women) from PyPI "
                        "(the obp 0.4.1 wheel, SHA-256 checked) into .cache/obd-sample")
    p.set_defaults(func=cmd_setup)

    p = sub.add_parser("up", help="start Kafka, Redis, Alertmanager (when installed) and the services; wait "
                       "until each is ready")
    p.add_argument("--no-services", action="store_true", help="infrastructure only (Kafka, Redis, topics, Alertmanager)")
    p.add_argument("--only", nargs="+", metavar="SERVICE", help="with --no-services: also start these services")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("down", help="stop what `up` started (by pid); data is kept")
    p.set_defaults(func=cmd_down)

    p = sub.add_parser("status", help="each component: running, ready, pid, address")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--check", action="store_true", help="exit 1 unless every component is ready")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("topics", help="create missing topics and list them with partition counts")
    p.set_defaults(func=cmd_topics)

