"""`recpilot bench ...`: every benchmark program's command line (light to import: each program's
module loads only when its command runs)."""

from __future__ import annotations

import argparse


def _run(module: str):
    """A command that imports ``bench.<module>`` and calls its ``run(args)``."""

    def run(args: argparse.Namespace) -> int:
        import importlib

        return importlib.import_module(f"bench.{module}").run(args)

    return run


def register(sub: argparse._SubParsersAction) -> None:
    bp = sub.add_parser("bench", help="benchmark programs (results go in docs/benchmarks.md)")
    bench = bp.add_subparsers(dest="bench", metavar="COMPONENT")
    _ingest(bench)
    _features(bench)
    _train(bench)
    _deployments(bench)
    _inference(bench)
    _policy(bench)
    _grpc_floor(bench)
    _ope(bench)
    _rl_join(bench)
    _rl(bench)
    _monitor(bench)
    _soak(bench)


def _ingest(bench: argparse._SubParsersAction) -> None:
    p = bench.add_parser("ingest", help="sustained raw->clean events/s, consumer lag, peak RSS of one ingest process")
    p.add_argument("--events", type=int, default=300_000, help="backlog drained by one ingest process")
    p.add_argument("--rate", type=float, default=0.0, help="then an open-loop phase at this rate (0 = skip)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of the open-loop phase")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--malformed-share", type=float, default=0.01)
    p.add_argument("--duplicate-share", type=float, default=0.01)
    p.add_argument("--format", choices=("proto", "json"), default="proto")
    p.add_argument("--transactions", action="store_true",
                   help="exactly-once mode (Kafka transactions) instead of at-least-once (commit after flush)")
    p.add_argument("--batch-size", type=int, default=5000)
    p.add_argument("--keep-topics", action="store_true")
    p.add_argument("--no-verify", action="store_true", help="skip counting the outputs afterwards")
    p.set_defaults(func=_run("ingest"))


def _features(bench: argparse._SubParsersAction) -> None:
    p = bench.add_parser("features", help="features pipeline: sustained events/s, freshness, lag, peak memory")
    p.add_argument("--events", type=int, default=200_000, help="backlog size for the throughput phase (0 = skip)")
    p.add_argument("--rate", type=float, default=2000.0, help="open-loop rate of the freshness phase (events/s)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of the freshness phase (0 = skip)")
    p.add_argument("--partitions", type=int, default=None, help="input partitions (default: RECPILOT_EVENTS_PARTITIONS)")
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--items", type=int, default=50_000)
    p.add_argument("--read-calls", type=int, default=300, help="read API calls timed at the end (0 = skip)")
    p.add_argument("--keep", action="store_true", help="keep the bench topic and Redis keys")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=_run("features"))


def _train(bench: argparse._SubParsersAction) -> None:
    b = bench.add_parser("train", help="time training on synthetic logged impressions, both frameworks")
    b.add_argument("--rows", type=int, default=100_000)
    b.add_argument("--frameworks", default="torch,tensorflow")
    b.add_argument("--epochs", type=int, default=None, help="default: the training default (3)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--no-early-stopping", action="store_true", help="run all epochs")
    b.set_defaults(func=_run("train"))


def _deployments(bench: argparse._SubParsersAction) -> None:
    p = bench.add_parser("deployments", help="deployment control: replay, follower catch-up, propagation latency")
    p.add_argument("--commands", type=int, default=5000, help="commands in the log to replay (default 5000)")
    p.add_argument("--repeat", type=int, default=3, help="replays to time")
    p.add_argument("--changes", type=int, default=50, help="commands timed from produce to on_change")
    p.add_argument("--submits", type=int, default=20, help="controller round trips to time")
    p.set_defaults(func=_run("deployments"))


def _policy(bench: argparse._SubParsersAction) -> None:
    p = bench.add_parser("policy", help="the re-ranking policy step of Recommend: a learned policy vs the ranker's order")
    p.add_argument("--candidates", type=int, default=200)
    p.add_argument("--pool", type=int, default=40, help="the policy's pool (inference setting policy_pool)")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--width", type=int, default=64, help="hidden units per layer of the learned policy's MLP")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--exploration", nargs="+", default=["greedy", "epsilon_greedy:0.1", "softmax:0.5"])
    p.add_argument("--requests", type=int, default=5000, help="requests timed per policy")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run("policy"))


def _inference(bench: argparse._SubParsersAction) -> None:
    p = bench.add_parser("inference", help="Recommend throughput/latency, batching on vs off, latency during model swaps")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    p.add_argument("--seconds", type=float, default=10.0, help="per phase")
    p.add_argument("--candidates", type=int, default=200)
    p.add_argument("--infer-rows", type=int, default=200, help="rows per ModelInfer request (Open Inference Protocol phase)")
    p.add_argument("--items", type=int, default=2000)
    p.add_argument("--users", type=int, default=500)
    p.add_argument("--model", choices=["ranker", "toy-mlp"], default="ranker",
                   help="ranker: the platform's DLRM-style ranker trained by recpilot's trainer on synthetic "
                        "logged impressions (what `recpilot train` deploys); toy-mlp: a wider plain MLP with "
                        "random weights (--hidden)")
    p.add_argument("--framework", choices=["torch", "tensorflow"], default="torch", help="for --model ranker")
    p.add_argument("--hidden", type=int, nargs="+", default=[256, 128, 64], help="toy-mlp hidden sizes")
    p.add_argument("--max-batch-size", type=int, default=8192, help="rows")
    p.add_argument("--max-queue-delay-ms", type=float, default=0.0)
    p.add_argument("--rate", type=float, default=500.0, help="open-loop phase rate (0 = skip)")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds at --rate before the open-loop phase is measured")
    p.add_argument("--swaps", type=int, default=10)
    p.add_argument("--swap-interval", type=float, default=1.5)
    p.add_argument("--swap-concurrency", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.add_argument("--compute-threads", type=int, default=None,
                   help="server's RECPILOT_INFERENCE_COMPUTE_THREADS (default: the server's default)")
    p.add_argument("--workers", type=int, default=1, help="server processes (RECPILOT_INFERENCE_WORKERS)")
    p.add_argument("--event-loop", choices=["auto", "uvloop", "asyncio"], default=None,
                   help="server's RECPILOT_INFERENCE_EVENT_LOOP (default: the server's default, auto = uvloop)")
    p.add_argument("--channels", type=int, default=8,
                   help="client connections the load is spread over (SO_REUSEPORT balances connections)")
    p.add_argument("--item-cache-ms", type=float, default=5000.0, help="server's item feature cache TTL")
    p.add_argument("--redis-timeout-ms", type=float, default=200.0, help="server's feature fetch timeout")
    p.add_argument("--generator", choices=["python", "native"], default="python",
                   help="closed-loop load generator: python (grpc.aio) or native (C++ "
                        "libgrpc++, less CPU per call; built on first use, needs g++ and libgrpc++-dev); the open loop "
                        "and the swap phase always use python")
    p.add_argument("--skip-unbatched", action="store_true")
    p.add_argument("--json", default=None, help="also write the results here")
    p.set_defaults(func=_run("inference"))


def _grpc_floor(bench: argparse._SubParsersAction) -> None:
    p = bench.add_parser("grpc-floor", help="gRPC's own cost here: a no-op server under the inference bench's load")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--generator", choices=["python", "native"], default="python",
                   help="python: grpc.aio, as bench inference's default; native: the C++ generator "
                        "(bench/native), which spends less CPU per call than grpc.aio")
    p.add_argument("--server", choices=["aio", "sync"], default="aio",
                   help="the no-op server: grpc.aio (as the inference server) or grpcio's synchronous server")
    p.add_argument("--sync-threads", type=int, default=4, help="handler threads of --server sync")
    p.add_argument("--event-loop", choices=["uvloop", "asyncio"], default="uvloop",
                   help="the event loop of --server aio (the inference server's default is uvloop)")
    p.set_defaults(func=_run("floor"))


def _ope(bench: argparse._SubParsersAction) -> None:
    p = bench.add_parser("ope", help="off-policy estimators against a known truth, and the Open Bandit sample report")
    p.add_argument("--part", choices=("coverage", "sim", "obd", "all"), default="all")
    p.add_argument("--seeds", type=int, default=20, help="coverage: synthetic logs drawn; sim: logs of the simulator")
    p.add_argument("--decisions", type=int, default=2000, help="coverage: decisions per log")
    p.add_argument("--logger", default="uniform", help="coverage: the logging rule (uniform: 3 slots; else 1 slot)")
    p.add_argument("--target", default="epsilon_greedy:0.2", help="coverage: the target's rule")
    p.add_argument("--n-boot", type=int, default=200)
    p.add_argument("--level", type=float, default=0.95)
    p.add_argument("--l2", type=float, default=1.0, help="obd: the reward model's L2 penalty")
    p.add_argument("--obd-dir", default=None, help="obd: the dataset folder (default: RECPILOT_TRAIN_OBD_DIR)")
    p.add_argument("--sim-decisions", type=int, default=2000, help="sim: decisions logged per seed")
    p.add_argument("--sim-train", type=int, default=3000, help="sim: decisions of the log the target learns from")
    p.add_argument("--sim-q-steps", type=int, default=3000, help="sim: the target Q-learner's minibatch updates")
    p.add_argument("--sim-logger", default="epsilon_greedy:0.1", help="sim: the logging rule on the ranker's scores")
    p.add_argument("--sim-target", default="epsilon_greedy:0.05", help="sim: the rule the learned target serves with")
    p.add_argument("--sim-first-seed", type=int, default=0, help="sim: seeds below this are logged (the stream "
                   "advances as in a full run) but not evaluated: finishes a run cut short")
    p.add_argument("--refit", action="store_true", help="coverage, sim: DM's and DR's bootstrap replicates refit the "
                   "reward model (recpilot ope --refit)")
    p.add_argument("--ranker-impressions", type=int, default=3000, help="sim: as bench rl (its cached ranker)")
    p.add_argument("--cache", default=".cache/rl-bench", help="sim: bench rl's ranker cache")
    p.add_argument("--json", default=None, help="also write the results here")
    p.set_defaults(func=_run("ope"))


def _rl_join(bench: argparse._SubParsersAction) -> None:
    p = bench.add_parser("rl-join", help="reward joiner: impressions joined/s, reward latency, exactly one reward each")
    p.add_argument("--impressions", type=int, default=100_000, help="backlog of the throughput phase")
    p.add_argument("--items", type=int, default=10, help="shown items per impression")
    p.add_argument("--outcome-share", type=float, default=0.3, help="share of impressions with outcome events")
    p.add_argument("--stream-rate", type=float, default=5000.0,
                   help="event-time spacing of the backlog (impressions/s of the stream it stands for)")
    p.add_argument("--rate", type=float, default=1000.0, help="impressions/s of the live latency phase")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of the live phase (0 = skip)")
    p.add_argument("--window", type=float, default=5.0, help="attribution window (s) the service runs with")
    p.add_argument("--grace-ms", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=5000)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--replicas", type=int, default=1, help="rl_feedback processes sharing the partitions")
    p.add_argument("--timeout", type=float, default=300.0, help="give up on the throughput phase after this long")
    p.add_argument("--keep-topics", action="store_true")
    p.set_defaults(func=_run("rl_join"))


def _rl(bench: argparse._SubParsersAction) -> None:
    p = bench.add_parser("rl", help="learning curves of re-ranking policies (uniform, popularity, ranker, "
                                    "Q-learning, Vowpal Wabbit) on the in-process shop")
    p.add_argument("--impressions", type=int, default=50_000, help="requests per policy and seed")
    p.add_argument("--window", type=int, default=5_000, help="impressions per point of the curves")
    p.add_argument("--k", type=int, default=10, help="slots shown")
    p.add_argument("--pool", type=int, default=40, help="the ranker's top candidates a policy chooses from")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--methods", default="uniform,popularity,ranker,qlearn,vw")
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--items", type=int, default=2_000)
    p.add_argument("--ranker-impressions", type=int, default=3_000,
                   help="requests logged (random order) to train each seed's ranker")
    p.add_argument("--cache", default=".cache/rl-bench", help="where the trained rankers are kept")
    p.add_argument("--q-hidden", type=int, nargs="+", default=[64, 32])
    p.add_argument("--q-lr", type=float, default=1e-3)
    p.add_argument("--q-batch", type=int, default=128)
    p.add_argument("--q-steps", type=int, default=1, help="updates per training call")
    p.add_argument("--q-train-every", type=int, default=1, help="impressions between training calls")
    p.add_argument("--q-gamma", type=float, default=0.0)
    p.add_argument("--q-target-sync", type=int, default=250)
    p.add_argument("--q-explore", default="epsilon_greedy:0.05", help="the final exploration rule")
    p.add_argument("--q-explore-start", type=float, default=0.3, help="its parameter at the start")
    p.add_argument("--q-explore-decay", type=int, default=10_000, help="impressions to reach the final rule")
    p.add_argument("--vw-explore", default="epsilon_greedy:0.05", help="epsilon_greedy:E or softmax:T")
    p.add_argument("--vw-args", default="", help="extra vw arguments")
    p.add_argument("--plot", default="docs/img/rl_learning_curves.png", help="PNG path ('' = none)")
    p.add_argument("--json", default=None, help="also write the curves here")
    p.add_argument("--from-json", default=None, metavar="A.json,B.json",
                   help="run nothing: merge the --json files of runs on disjoint seeds into one table and picture")
    p.set_defaults(func=_run("rl"))


def _monitor(bench: argparse._SubParsersAction) -> None:
    p = bench.add_parser("monitor", help="the monitor's engine: metric events/s, detection delays of injected "
                                         "changes, false alarms on a stationary stream, Evidently as the peer")
    p.add_argument("--parts", default="throughput,drift,mix,ctr,latency,stationary",
                   help="comma-separated: throughput, drift, mix, ctr, latency, stationary; and rollback "
                        "(the real stack: needs Kafka running, e.g. recpilot up --no-services)")
    p.add_argument("--rollback-rate", type=float, default=3000.0, help="rewards (shown items) per second of the "
                   "rollback part")
    p.add_argument("--seeds", type=int, default=3, help="runs of the drift, mix and latency delays")
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--ctr-seeds", type=int, default=10, help="runs of the CTR delay")
    p.add_argument("--ctr-before-items", type=int, default=250_000, help="items of the previous version")
    p.add_argument("--ctr-max-items", type=int, default=60_000, help="items of the new version at most")
    p.add_argument("--ctr-stationary-items", type=int, default=1_000_000,
                   help="items of one version at a constant CTR, per --seeds run")
    p.add_argument("--replicas", type=int, default=4, help="inference replicas of the latency part")
    p.add_argument("--throughput-replicas", type=int, default=64, help="inference replicas of the throughput part")
    p.add_argument("--throughput-seconds", type=int, default=600, help="simulated seconds of the throughput part")
    p.add_argument("--events-rate", type=float, default=100.0, help="events.clean sampled per second (mix part)")
    p.add_argument("--stationary-messages", type=int, default=1_000_000)
    p.add_argument("--no-peer", action="store_true", help="skip Evidently")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=_run("monitor"))


def _soak(bench: argparse._SubParsersAction) -> None:
    p = bench.add_parser(
        "soak", help="the whole platform under the shopper simulator at a fixed rate: memory, CPU and consumer lag "
                     "per component over time (a table, verdicts, a picture)",
        description="Starts the whole platform (recpilot up: Kafka, Redis, Alertmanager when installed, the five "
                    "services, default settings) on a fresh home, drives it with the shopper simulator at --rate "
                    "steps/s for --minutes, and reads every --interval seconds the RSS and CPU of each process, "
                    "the lag of each consumer group with committed offsets (Kafka admin API), the simulator's "
                    "steps/s and events/s, Recommend p50/p99 and CTR. Then the shoppers stop, ingest accounts for every event, "
                    "the consumers get --drain seconds to catch up, and recpilot down stops everything (also on "
                    "Ctrl-C or an error). Prints a table per component and per group with a verdict each: 'memory "
                    "flat' (RSS slope over the second half below --flat-mib-per-min), 'lag bounded' (back to "
                    "--lag-near-zero messages or fewer in the last quarter). Kafka, Redis and the service ports "
                    "come from the usual RECPILOT_* variables: pick ports no other stack uses.")
    p.add_argument("--minutes", type=float, default=10.0, help="minutes under load (default 10)")
    p.add_argument("--rate", type=float, default=150.0,
                   help="shopper steps/s, as recpilot simulate --rate (default 150: what the simulator held on 2 "
                        "shared cores with every service running; 200 fell behind). About 30%% of the steps ask the "
                        "Recommender and wait for its answer; a step produces one event or, after a recommendation, "
                        "the shopper's clicks, carts and buys (none when the shopper ignores the list): about three "
                        "events for four steps")
    p.add_argument("--interval", type=float, default=10.0, help="seconds between readings (default 10)")
    p.add_argument("--seed", type=int, default=42, help="the simulator's seed")
    p.add_argument("--drain", type=float, default=30.0,
                   help="seconds the consumers get after the shoppers stop; the last lag reading comes after them "
                        "(default 30: rl_feedback's 10 s attribution window and some)")
    p.add_argument("--flat-mib-per-min", type=float, default=1.0,
                   help="'memory flat' below this RSS slope over the second half (MiB/min, default 1)")
    p.add_argument("--lag-near-zero", type=int, default=500,
                   help="'lag bounded' when a group's lag came back to this many messages or fewer in the last "
                        "quarter of the load (default 500)")
    p.add_argument("--home", default=None,
                   help="the platform's home for the run (must not exist or be empty; default: a new temporary "
                        "directory, removed after a run that went well)")
    p.add_argument("--keep-home", action="store_true", help="keep the temporary home (data and logs) at the end")
    p.add_argument("--plot", default="docs/img/soak.png", help="PNG path ('' = none; default docs/img/soak.png)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results, every sample included, here")
    p.add_argument("--from-json", default=None, metavar="PATH",
                   help="run nothing: print the tables and verdicts and draw the picture again from a result "
                        "written by --json (with this command's thresholds and --plot)")
    p.set_defaults(func=_run("soak"))
