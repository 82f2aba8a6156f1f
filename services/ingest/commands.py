"""`recpilot generate` and `recpilot simulate` (light to import)."""

from __future__ import annotations

import argparse
import json
import signal

from recpilot.errors import InvalidArgument


def _platform():
    from recpilot.settings import PlatformSettings, load

    return load(PlatformSettings)


def _write_catalogue(platform, seed: int, n_items: int) -> str:
    from recpilot.simulator import catalogue, write_catalogue

    path = write_catalogue(catalogue(seed, n_items), platform.home / "catalogue.jsonl")
    return str(path)


def cmd_generate(args: argparse.Namespace) -> int:
    from recpilot.kafka import producer
    from recpilot.simulator import ClickModel, ShopSimulator, TrafficMix
    from recpilot.simulator.drive import open_loop

    if args.duration is None and args.count is None:
        raise InvalidArgument("generate needs --duration and/or --count")
    p = _platform()
    cat = _write_catalogue(p, args.seed, args.items)
    sim = ShopSimulator(seed=args.seed, n_users=args.users, n_items=args.items,
                        click_model=ClickModel(drift_per_hour=args.drift_per_hour))
    mix = TrafficMix(sim, args.malformed_share, args.duplicate_share, args.format)
    prod = producer(p, **{"client.id": "recpilot-generate", "linger.ms": 20})
    print(f"generating {'as fast as possible' if args.rate <= 0 else f'{args.rate:g} events/s'} to "
          f"{args.topic} for {args.duration or '-'} s / {args.count or '-'} events (catalogue: {cat})", flush=True)

    def progress(r):
        print(f"  {r.seconds:6.1f}s sent={r.sent} achieved={r.rate:,.0f}/s", flush=True)

    stopping = []
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))
    res = open_loop(prod, args.topic, mix, args.rate, args.duration, args.count, stop=lambda: bool(stopping),
                    progress=None if args.quiet else progress)
    out = {"topic": args.topic, "sent": res.sent, "seconds": round(res.seconds, 3),
           "target_rate": args.rate, "achieved_rate": round(res.rate, 1), "kinds": res.kinds,
           "delivery_errors": res.delivery_errors, "format": args.format, "catalogue": cat}
    print(json.dumps(out, indent=None if args.json else 2))
    return 0 if res.delivery_errors == 0 else 1


def cmd_simulate(args: argparse.Namespace) -> int:
    from recpilot.kafka import producer
    from recpilot.log import setup_logging
    from recpilot.simulator import ClickModel, ShopSimulator
    from recpilot.simulator.drive import RecommenderProbe, simulate

    p = _platform()
    setup_logging("simulate", p.log_level)
    cat = _write_catalogue(p, args.seed, args.items)
    sim = ShopSimulator(seed=args.seed, n_users=args.users, n_items=args.items,
                        click_model=ClickModel(drift_per_hour=args.drift_per_hour))
    probe = None if args.no_recommender else RecommenderProbe(args.target)
    prod = producer(p, **{"client.id": "recpilot-simulate", "linger.ms": 20})
    print(f"shopper simulator: ~{args.rate:g} events/s to {args.topic}; recommender "
          f"{'off' if probe is None else args.target}; catalogue {cat}. Ctrl-C stops.", flush=True)
    stopping = []
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))

    last = {"shown": 0, "clicks": 0, "by_policy": {}}

    def progress(r):
        rec = "answering" if probe is not None and probe.available else "absent"
        shown, clicks = r.shown - last["shown"], r.clicks - last["clicks"]
        ctr = f"{clicks / shown:.4f}" if shown else "-"
        policies = []  # the policies that chose lists in this interval, with their CTR
        for version, (s_, c_) in sorted(r.by_policy.items()):
            s0, c0 = last["by_policy"].get(version, (0, 0))
            if s_ > s0:
                policies.append(f"{version}:{(c_ - c0) / (s_ - s0):.4f}")
        last.update(shown=r.shown, clicks=r.clicks, by_policy={k: tuple(v) for k, v in r.by_policy.items()})
        print(f"  {r.seconds:7.0f}s events={r.sent} ({r.rate:,.1f}/s) recommender={rec} "
              f"calls={r.recommend_calls} failed={r.recommend_failures} ctr={ctr} "
              f"policy_ctr={','.join(policies) or '-'}", flush=True)

    res = simulate(prod, args.topic, sim, args.rate, probe, args.recommend_share, args.duration,
                   stop=lambda: bool(stopping), fmt=args.format, progress=progress)
    if probe is not None:
        probe.close()
    print(json.dumps({"sent": res.sent, "seconds": round(res.seconds, 1), "rate": round(res.rate, 1),
                      "kinds": res.kinds, "recommend_calls": res.recommend_calls,
                      "recommend_failures": res.recommend_failures, "shown": res.shown, "clicks": res.clicks,
                      "ctr": round(res.ctr, 5),
                      "by_policy": {v: {"shown": s_, "clicks": c_, "ctr": round(c_ / s_, 5) if s_ else 0.0}
                                    for v, (s_, c_) in res.by_policy.items()}}))
    return 0


def _traffic_args(p: argparse.ArgumentParser) -> None:
    from recpilot import topics

    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--items", type=int, default=2_000)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--topic", default=topics.EVENTS_RAW)
    p.add_argument("--format", choices=("proto", "json"), default="proto")
    p.add_argument("--drift-per-hour", type=float, default=0.0,
                   help="taste drift: fraction of the way to rotated tastes per simulated hour")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="open-loop shop traffic into events.raw at a fixed rate")
    p.add_argument("--rate", type=float, default=1000.0, help="events/s (0 = as fast as possible)")
    p.add_argument("--duration", type=float, default=None, help="seconds")
    p.add_argument("--count", type=int, default=None, help="stop after this many messages")
    p.add_argument("--malformed-share", type=float, default=0.0, help="share of malformed messages (every kind)")
    p.add_argument("--duplicate-share", type=float, default=0.0, help="share of exact re-sends of recent events")
    p.add_argument("--json", action="store_true", help="one-line JSON summary")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    _traffic_args(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("simulate", help="shoppers that use the Recommender when it answers (Ctrl-C stops)")
    p.add_argument("--rate", type=float, default=50.0, help="about this many events/s")
    p.add_argument("--duration", type=float, default=None, help="seconds (default: until Ctrl-C)")
    p.add_argument("--target", default="127.0.0.1:50051", help="inference gRPC address (the Recommender); several, comma-separated (the replicas of "
                   "`recpilot up --replicas`: 127.0.0.1:50051,127.0.0.1:50052): calls spread round-robin")
    p.add_argument("--recommender", dest="target", help=argparse.SUPPRESS)  # the former spelling
    p.add_argument("--no-recommender", action="store_true", help="plain open-loop traffic")
    p.add_argument("--recommend-share", type=float, default=0.3, help="share of steps that ask for recommendations")
    _traffic_args(p)
    p.set_defaults(func=cmd_simulate)
