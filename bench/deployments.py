"""`recpilot bench deployments`: how long rebuilding deployment state from control.deployments takes,
and how fast a change reaches a serving replica.

Uses a throw-away topic ``bench.deployments.<id>`` and its acks topic ``bench.deployments.<id>.acks``
on the configured broker (deleted at the end) and a throw-away model repository in a temp dir;
never touches ``control.deployments`` or ``control.acks``.

Figures:
* replay: time for a fresh reader to rebuild the state from a log of N commands (N/2 acks beside it,
  on the acks topic, which a replay does not read);
* follower catch-up: start of a DeploymentFollower until ``ready`` on that log;
* propagation: a command produced (acks=all, flushed) until ``on_change`` runs in a live follower;
* controller round trip: ``DeploymentController.submit`` (replay, repository check, publish, read back)
  and with ``wait_acks_s`` until the follower's ack is read back from the acks topic: what
  `recpilot models canary --wait` costs besides interpreter start-up.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path

from bench.machine import machine


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def _tiny_version(stage: Path, auc: float) -> dict:
    from recpilot.featurespec import DENSE_FEATURES, ID_FEATURES

    (stage / "model.pt").write_bytes(b"bench")
    block = {"auc": auc, "auc_ci": [auc - 0.01, auc + 0.01], "logloss": 0.4, "recall@10": 0.1, "ndcg@10": 0.1}
    return {"framework": "torch", "artifact": "model.pt",
            "inputs": [{"name": "dense", "datatype": "FP32", "shape": [-1, len(DENSE_FEATURES)]},
                       {"name": "ids", "datatype": "INT64", "shape": [-1, len(ID_FEATURES)]}],
            "outputs": [{"name": "score", "datatype": "FP32", "shape": [-1]}], "feature_set": "recpilot",
            "dense_features": list(DENSE_FEATURES), "id_features": [[n, b] for n, b in ID_FEATURES],
            "training": {"source": "bench", "rows": 0, "data_window": {"start_ms": 0, "end_ms": 0}, "seed": 0,
                         "hyperparameters": {}, "seconds": 0.0},
            "metrics": {**block, "baseline": block, "production": None}, "reference": {}}


def run(args: argparse.Namespace) -> int:
    from recpilot.kafka import delete_topics, flush_or_raise, producer, quiet_client_logs
    from recpilot.models.deployments import (
        DeploymentController,
        DeploymentFollower,
        DeploymentSettings,
        ensure_control_topic,
        new_command,
        replay,
    )
    from recpilot.models.repository import ModelRepository
    from recpilot.pb import deployments_pb2 as pb
    from recpilot.settings import PlatformSettings, load
    from recpilot.topics import acks_topic

    quiet_client_logs("recpilot.deployments.kafka")
    s = load(PlatformSettings)
    topic = f"bench.deployments.{uuid.uuid4().hex[:10]}"
    acks = acks_topic(topic)
    print(f"machine: {machine()}")
    print(f"broker: {s.kafka_bootstrap}, topic {topic}, log of {args.commands} commands")
    ensure_control_topic(s, topic)
    ensure_control_topic(s, acks)
    prod = producer(s, **{"client.id": "recpilot-bench"})
    try:
        # 1. a log: deploy, then canary / clear_canary pairs; an ack for every other command on the acks topic
        t0 = time.perf_counter()
        cmds = [new_command("deploy", "ranker", "1", actor="bench")]
        for i in range(args.commands - 1):
            cmds.append(new_command("canary", "ranker", "2", percent=1 + i % 50, actor="bench") if i % 2 == 0
                        else new_command("clear_canary", "ranker", actor="bench"))
        for i, c in enumerate(cmds):
            prod.produce(topic, key=b"ranker", value=pb.ControlMessage(command=c).SerializeToString())
            if i % 2 == 0:
                ack = pb.DeploymentAck(command_id=c.command_id, model_name="ranker", status=pb.APPLIED,
                                       replica="bench:0", timestamp_ms=c.timestamp_ms)
                prod.produce(acks, key=b"ranker", value=pb.ControlMessage(ack=ack).SerializeToString())
            if i % 1000 == 999:
                prod.poll(0)
        flush_or_raise(prod, 60)
        n_msgs, n_acks = len(cmds), (len(cmds) + 1) // 2
        print(f"publish {n_msgs} commands + {n_acks} acks: {time.perf_counter() - t0:.2f}s")

        # 2. replay
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            book = replay(s, topic, timeout=120)
            times.append(time.perf_counter() - t0)
        st = book.state("ranker")
        assert book.messages == n_msgs and st.revision == len(cmds), (book.messages, st.revision)
        print(f"replay {n_msgs} messages -> revision {st.revision}: median {statistics.median(times) * 1000:.0f} ms "
              f"(min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f}, {args.repeat} runs, fresh reader each)")

        # 3. follower catch-up and propagation
        seen: dict[str, float] = {}
        got = threading.Event()

        def on_change(state, command):
            seen[command.command_id] = time.perf_counter()
            got.set()

        t0 = time.perf_counter()
        f = DeploymentFollower(s, "bench-replica", on_change, topic=topic)
        f.start()
        if not f.wait_ready(120):
            print("follower did not catch up within 120 s")
            return 1
        print(f"follower catch-up on {n_msgs} messages: {(time.perf_counter() - t0) * 1000:.0f} ms")
        lat = []
        try:
            for i in range(args.changes):
                c = (new_command("canary", "ranker", "2", percent=5, actor="bench")
                     if f.state("ranker").canary_version == "" else new_command("clear_canary", "ranker", actor="bench"))
                got.clear()
                t0 = time.perf_counter()
                prod.produce(topic, key=b"ranker", value=pb.ControlMessage(command=c).SerializeToString())
                flush_or_raise(prod, 10)
                while c.command_id not in seen:
                    if not got.wait(10):
                        print(f"command {i} not seen by the follower within 10 s")
                        return 1
                    got.clear()
                lat.append(seen[c.command_id] - t0)
            print(f"propagation produce -> on_change ({args.changes} commands): p50 {_pct(lat, 0.5) * 1000:.1f} ms, "
                  f"p99 {_pct(lat, 0.99) * 1000:.1f} ms, max {max(lat) * 1000:.1f} ms")

            # 4. controller round trip with a live replica acknowledging
            f.on_change = lambda state, command: f.ready and f.ack(command, pb.APPLIED, "bench")
            with tempfile.TemporaryDirectory() as tmp:
                repo = ModelRepository(tmp)
                for auc in (0.7, 0.71):
                    repo.create_version("ranker", lambda stage, a=auc: _tiny_version(stage, a))
                rt, rt_ack = [], []
                with DeploymentController(s, repo, DeploymentSettings(topic=topic), actor="bench") as ctl:
                    for i in range(args.submits):
                        canary = ctl.state("ranker").canary_version
                        t0 = time.perf_counter()
                        if canary:
                            sub = ctl.submit("clear_canary", "ranker", wait_acks_s=10 if i % 2 else 0)
                        else:
                            sub = ctl.submit("canary", "ranker", "2", percent=10, wait_acks_s=10 if i % 2 else 0)
                        (rt_ack if i % 2 else rt).append(time.perf_counter() - t0)
                        assert sub.outcome.applied
                        if i % 2:
                            assert sub.acks, "no ack"
            print(f"controller submit (replay + checks + publish + read back), {len(rt)} runs: "
                  f"p50 {_pct(rt, 0.5) * 1000:.0f} ms, max {max(rt) * 1000:.0f} ms")
            print(f"controller submit + wait for the replica's ack, {len(rt_ack)} runs: "
                  f"p50 {_pct(rt_ack, 0.5) * 1000:.0f} ms, max {max(rt_ack) * 1000:.0f} ms")
        finally:
            f.stop()
    finally:
        prod.flush(10)
        for name, why in delete_topics(s, [topic, acks]).items():
            print(f"could not delete {name}: {why}")
    return 0
