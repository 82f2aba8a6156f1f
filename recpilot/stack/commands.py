"""`recpilot setup | up | down | status | topics`."""

from __future__ import annotations

import argparse

from recpilot.errors import InvalidArgument


def _stack():
    from recpilot.stack.manager import Stack

    return Stack()


def cmd_setup(args: argparse.Namespace) -> int:
    from concurrent.futures import ThreadPoolExecutor

    if args.obd_sample:
        from recpilot.models import obd_sample

        fetched = obd_sample.fetch()  # a download or checksum failure is DataUnavailable (exit 1)
        print(f"Open Bandit sample (3 campaigns x 2 policies): {'downloaded' if fetched else 'cached'} in "
              f"{obd_sample.OBD_SAMPLE_DIR}\nuse it: RECPILOT_TRAIN_OBD_DIR={obd_sample.OBD_SAMPLE_DIR} "
              "recpilot train --data obd/men ...")
        return 0
    from recpilot.stack import alertmanager, deploy_tools, kafka, redis

    # Maven fetches the broker jars while apt-get installs the system packages (one at a time: apt
    # holds a lock); on a fresh machine both are downloads, so they overlap.
    with ThreadPoolExecutor(1, thread_name_prefix="kafka-jars") as pool:
        jars = pool.submit(kafka.fetch_jars, quiet=not args.verbose)
        lines = [f"redis-server: {redis.ensure_installed()}",
                 f"prometheus-alertmanager, promtool: {alertmanager.ensure_installed()[1]}",
                 "docker-compose, kubectl: " + ("not needed to run the platform (--no-deploy-tools)"
                                                if args.no_deploy_tools else deploy_tools.ensure_installed())]
        fetched = jars.result()
    print("kafka jars: " + ("downloaded" if fetched else "cached") + f" in {kafka.LIBS}")
    print("\n".join(lines))
    kafka.java()
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from recpilot.stack.manager import parse_replicas, services

    if args.only:
        services(args.only)  # an unknown name is a usage error before anything starts
    replicas = parse_replicas(args.replicas) if args.replicas else None  # so is a bad --replicas
    if replicas and args.no_services and not args.only:
        raise InvalidArgument("--replicas with --no-services needs --only SERVICE ...")
    stack = _stack()
    stack.up(services=not args.no_services, replicas=replicas)
    if args.only:
        stack.up_services(args.only, replicas=replicas)
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
                       "prometheus-alertmanager with promtool, docker-compose and kubectl (for the "
                       "deployment file checks) when root (idempotent)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--no-deploy-tools", action="store_true",
                   help="leave out docker-compose and kubectl (only the test suite's deployment file checks use "
                        "them; `make run` passes this)")
    p.add_argument("--obd-sample", action="store_true",
                   help="only fetch the Open Bandit sample of all three campaigns (all, men, women) from PyPI "
                        "(the obp 0.4.1 wheel, SHA-256 checked) into .cache/obd-sample")
    p.set_defaults(func=cmd_setup)

    p = sub.add_parser("up", help="start Kafka, Redis, Alertmanager (when installed) and the services; wait "
                       "until each is ready")
    p.add_argument("--no-services", action="store_true", help="infrastructure only (Kafka, Redis, topics, Alertmanager)")
    p.add_argument("--only", nargs="+", metavar="SERVICE", help="with --no-services: also start these services")
    p.add_argument("--replicas", metavar="N|SERVICE=N,...",
                   help="run N replicas of every service but the monitor, or as many as named (ingest=2,features=2); "
                        "replica i listens on the service's HTTP port + 10*i (inference: gRPC port + i) and joins "
                        "the same consumer group; replicas beyond the number are stopped (docs/operations.md \"Scaling\")")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("down", help="stop what `up` started (by pid); data is kept")
    p.set_defaults(func=cmd_down)

    p = sub.add_parser("status", help="each component: running, ready, pid, address")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--check", action="store_true", help="exit 1 unless every component is ready")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("topics", help="create missing topics and list them with partition counts")
    p.set_defaults(func=cmd_topics)

