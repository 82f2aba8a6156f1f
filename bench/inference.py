"""`recpilot bench inference`: the real server (``python -m services.inference`` in its own
process) against real Redis features and Kafka deployment control, loaded by a closed-loop
gRPC client in this process (same machine).

Phases: steady closed-loop at several concurrencies (batching on), the same at the highest
concurrency with batching off (a second server process), an open-loop phase at a fixed rate, and
``--swaps`` PROMOTE commands through ``control.deployments`` under load (p99 during swaps vs steady,
failed requests counted). The model (``--model``) is either the platform's own ranker, trained by
``recpilot.models.train`` on synthetic logged impressions (TorchScript or SavedModel, one version
per seed), or a wider random-weight TorchScript MLP (bench.toymodel); each request asks
for k=10 out of ``--candidates`` given candidate ids.
"""

from __future__ import annotations

import asyncio
import gc
import json
import random
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np

from bench.loadgen import closed_loop, infer_requests, native_closed_loop, own_cpu
from bench.machine import busy_cores, cpu_probe, machine, thread_cpu
from recpilot import kafka
from recpilot.net import free_port
from recpilot.stack.process import ServiceProcess

CHANNELS = 1  # client connections the load is spread over (set from --channels)
GENERATOR = "python"  # closed-loop load generator: "python" (grpc.aio) or "native" (bench/native)


def channels(port: int):
    """CHANNELS client channels (:func:`bench.loadgen.channels`)."""
    from bench.loadgen import channels as open_channels

    return open_channels(port, CHANNELS)


def _pct(lat: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(lat) * 1000, q)) if lat else float("nan")


class Server(ServiceProcess):
    """The inference server process, with readings of its /metrics."""

    def __init__(self, env: dict, log: Path) -> None:
        self.grpc_port, self.http_port = free_port(), free_port()
        super().__init__("services.inference", log, env={**env, "RECPILOT_INFERENCE_GRPC_PORT": str(self.grpc_port)},
                         http_port=self.http_port)
        self.start()

    def wait_ready(self, timeout: float = 120.0, interval: float = 0.3) -> Server:
        return super().wait_ready(timeout, interval)

    def _series(self, name: str):
        """(labels text, value) of every sample whose name (+ the given labels) matches; a
        ``worker`` label (several server processes) is ignored for matching."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=5) as r:
            text = r.read().decode()
        base, _, want = name.partition("{")
        want = [x for x in want.rstrip("}").split(",") if x]
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            series, _, value = line.rpartition(" ")
            sname, _, labels = series.partition("{")
            if sname != base:
                continue
            have = labels.rstrip("}").split(",") if labels else []
            if all(w in have for w in want):
                yield labels, float(value)

    def metric(self, name: str) -> float:
        return sum(v for _, v in self._series(name))

    def per_worker(self, name: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for labels, v in self._series(name):
            w = labels.split('worker="', 1)[1].split('"', 1)[0] if 'worker="' in labels else "0"
            out[w] = out.get(w, 0.0) + v
        return out

    def buckets(self, name: str, method: str = "Recommend") -> list[tuple[float, float]]:
        """Cumulative (le, count) of a server histogram, for server-side percentiles."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=5) as r:
            text = r.read().decode()
        out = []
        for line in text.splitlines():
            if line.startswith(name + "_bucket{") and (not method or f'method="{method}"' in line):
                le = line.split('le="', 1)[1].split('"', 1)[0]
                out.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
        summed: dict[float, float] = {}
        for le, c in out:  # one series per worker when the server runs several
            summed[le] = summed.get(le, 0.0) + c
        return sorted(summed.items())

    def breakdown(self) -> dict:
        """Mean server-side times (ms) since start: request, feature fetch, queue wait, compute."""
        out = {}
        for label, base in (("Recommend", 'recpilot_inference_request_latency_seconds_{}{{method="Recommend"}}'),
                            ("feature fetch", "recpilot_inference_feature_fetch_seconds_{}"),
                            ("queue", "recpilot_inference_queue_latency_seconds_{}"),
                            ("compute/execution", "recpilot_inference_compute_seconds_{}")):
            n = self.metric(base.format("count"))
            out[label] = self.metric(base.format("sum")) / n * 1000 if n else float("nan")
        return out


def _ranker_versions(root: Path, framework: str, count: int, rows: int = 20_000) -> list[str]:
    """``count`` versions of the platform's ranker (one per seed), trained on synthetic logged
    impressions exactly as ``recpilot train`` does, in the repository at ``root``."""
    from recpilot.models.data import examples_from_impressions, synthetic_impressions
    from recpilot.models.repository import ModelRepository
    from recpilot.models.train import train_and_register

    ds = examples_from_impressions(synthetic_impressions(rows, seed=0), source="bench:synthetic")
    repo = ModelRepository(root)
    out = []
    for seed in range(1, count + 1):
        rep = train_and_register(ds, framework, name="ranker", hp={"epochs": 1}, seed=seed, repository=repo)
        out.append(rep.version)
    return out


async def _closed_loop(port: int, conc: int, seconds: float, items: list[str], users: list[str], n_cand: int,
                       infer: bool = False, generator: str | None = None) -> dict:
    """Closed loop of Recommend (or ModelInfer with ``infer``); ``generator`` overrides GENERATOR
    (the swap phase needs the Python one: it runs beside the swap commands in this event loop)."""
    import grpc

    from recpilot.pb import open_inference_grpc_pb2_grpc as oip_grpc
    from recpilot.pb import recommend_pb2, recommend_pb2_grpc

    rng = random.Random(conc)
    if infer:
        reqs = infer_requests(n_cand)
    else:
        reqs = [recommend_pb2.RecommendRequest(user_id=rng.choice(users), k=10, candidate_ids=rng.sample(items, n_cand))
                for _ in range(256)]
    if (generator or GENERATOR) == "native":
        return _native_closed_loop(port, conc, seconds, reqs, infer)
    lat: list[tuple[float, float]] = []
    errors: list[str] = []
    ranked: list[float] = []
    fallbacks = 0
    chans = channels(port)
    try:
        stubs = [recommend_pb2_grpc.RecommenderStub(ch) for ch in chans]
        istubs = [oip_grpc.GRPCInferenceServiceStub(ch) for ch in chans]
        stop_at = time.monotonic() + seconds

        async def worker(i: int) -> None:
            nonlocal fallbacks
            j = i
            stub, istub = stubs[i % len(stubs)], istubs[i % len(istubs)]
            while time.monotonic() < stop_at:
                t0 = time.perf_counter()
                try:
                    if infer:
                        await istub.ModelInfer(reqs[j % len(reqs)], timeout=5.0)
                        lat.append((time.monotonic(), time.perf_counter() - t0))
                        j += conc
                        continue
                    resp = await stub.Recommend(reqs[j % len(reqs)], timeout=5.0)
                    if resp.fallback:
                        fallbacks += 1
                    else:
                        ranked.append(time.perf_counter() - t0)
                    if len(resp.items) != 10:
                        errors.append(f"{len(resp.items)} items")
                except grpc.aio.AioRpcError as exc:
                    errors.append(exc.code().name)
                lat.append((time.monotonic(), time.perf_counter() - t0))
                j += conc

        t0 = time.monotonic()
        await asyncio.gather(*(worker(i) for i in range(conc)))
        took = time.monotonic() - t0
    finally:
        for ch in chans:
            await ch.close()
    lats = [x for _, x in lat]
    return {"concurrency": conc, "requests": len(lats), "rps": len(lats) / took, "p50_ms": _pct(lats, 50),
            "p99_ms": _pct(lats, 99), "p999_ms": _pct(lats, 99.9), "errors": len(errors),
            "error_kinds": sorted(set(errors))[:5], "fallbacks": fallbacks, "timeline": lat,
            "ranked_p50_ms": _pct(ranked, 50), "ranked_p99_ms": _pct(ranked, 99)}


def _native_closed_loop(port: int, conc: int, seconds: float, reqs: list, infer: bool) -> dict:
    """The same closed loop driven by the native generator (responses are not parsed: fallbacks
    come from the server's counter in the phase, latency from the generator)."""
    from bench import native

    method = ("/inference.GRPCInferenceService/ModelInfer" if infer else "/recpilot.v1.Recommender/Recommend")
    r = native.closed_loop(port, method, reqs, conc, seconds, connections=CHANNELS, warmup=0.5)
    return {"concurrency": conc, "requests": r["requests"], "rps": r["rps"], "p50_ms": r["p50_ms"],
            "p99_ms": r["p99_ms"], "p999_ms": r["p999_ms"], "errors": r["errors"],
            "error_kinds": sorted(r["error_kinds"])[:5], "fallbacks": None, "timeline": [],
            "ranked_p50_ms": float("nan"), "ranked_p99_ms": float("nan"), "generator": "native",
            "generator_cpu_ms_per_request": r["client_cpu_ms_per_request"]}


async def _floor(port: int, conc: int, seconds: float) -> dict:
    """Closed loop of ServerLive (an empty request the server answers without any work): the most
    requests/s any method can reach on this box with this load generator and gRPC on both sides.
    A batching speed-up can be at most floor / (throughput with batching off)."""
    if GENERATOR == "native":
        r = native_closed_loop(port, "ServerLive", 1, conc, seconds, connections=CHANNELS, warmup=0.5)
    else:
        r = await closed_loop(port, "ServerLive", 1, conc, seconds, connections=CHANNELS)
    return {"concurrency": conc, "requests": r["requests"], "rps": r["rps"], "client_cpu_ms_per_request": r["client_cpu_ms"]}


class _GcWatch:
    """Full (generation 2) collections of this process while it generates load."""

    def __init__(self) -> None:
        self.count, self.seconds, self._t0 = 0, 0.0, 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.count += 1
            self.seconds += time.perf_counter() - self._t0

    def __enter__(self):
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc) -> None:
        gc.callbacks.remove(self)


async def _open_loop(port: int, rate: float, seconds: float, items: list[str], users: list[str], n_cand: int) -> dict:
    import grpc

    from recpilot.pb import recommend_pb2, recommend_pb2_grpc

    rng = random.Random(7)
    reqs = [recommend_pb2.RecommendRequest(user_id=rng.choice(users), k=10, candidate_ids=rng.sample(items, n_cand))
            for _ in range(256)]
    lats: list[float] = []
    sched: list[float] = []
    lag: list[float] = []
    slow_by_conn: dict[int, int] = {}
    errors = 0
    chans = channels(port)
    try:
        stubs = [recommend_pb2_grpc.RecommenderStub(ch) for ch in chans]

        async def one(r, t_sched: float, stub, ch: int) -> None:
            nonlocal errors
            lag.append(time.perf_counter() - t_sched)  # the generator's own delay in sending it
            try:
                await stub.Recommend(r, timeout=5.0)
            except grpc.aio.AioRpcError:
                errors += 1
            lats.append(time.perf_counter() - t_sched)  # from the scheduled send time: no coordinated omission
            sched.append(t_sched - t0)
            if lats[-1] > 0.025:
                slow_by_conn[ch] = slow_by_conn.get(ch, 0) + 1

        tasks = []
        t0 = time.perf_counter()
        n = int(rate * seconds)
        for i in range(n):
            t_sched = t0 + i / rate
            delay = t_sched - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one(reqs[i % len(reqs)], t_sched, stubs[i % len(stubs)], i % len(stubs))))
        await asyncio.gather(*tasks)
        took = time.perf_counter() - t0
    finally:
        for ch in chans:
            await ch.close()
    return {"rate": rate, "requests": len(lats), "achieved_rps": len(lats) / took, "p50_ms": _pct(lats, 50),
            "p99_ms": _pct(lats, 99), "p999_ms": _pct(lats, 99.9), "errors": errors,
            "slow_seconds": _slow_seconds(sched, lats), "send_lag_p99_ms": _pct(lag, 99),
            "slow_by_connection": slow_by_conn}


def _hist_pct(before: list[tuple[float, float]], after: list[tuple[float, float]], q: float) -> float:
    """The q-th percentile (ms) of a histogram's observations between two reads, as the upper
    bound of the bucket it falls in (an upper estimate)."""
    b = dict(before)
    delta = [(le, c - b.get(le, 0.0)) for le, c in after]
    if not delta or delta[-1][1] <= 0:
        return float("nan")
    want = delta[-1][1] * q / 100
    return next(le for le, c in delta if c >= want) * 1000


def _slow_seconds(sched: list[float], lats: list[float], slow_s: float = 0.025) -> dict[str, int]:
    """How many requests took longer than ``slow_s``, by the second of the run they were sent in
    (shows whether the tail is spread out or comes from a few stalls)."""
    out: dict[str, int] = {}
    for t, x in zip(sched, lats):
        if x > slow_s:
            out[str(int(t))] = out.get(str(int(t)), 0) + 1
    return out


def publish_command(platform, topic: str, action: str, version: str, percent: float = 0.0, actor: str = "bench",
                    reason: str = "bench inference") -> str:
    """Produce one deployment command for model "ranker" straight to the control ``topic`` (no
    controller checks); its command id."""
    from recpilot.models.deployments import new_command
    from recpilot.pb import deployments_pb2 as pb

    prod = kafka.producer(platform)
    cmd = new_command(action, "ranker", version, percent=percent, actor=actor, reason=reason)
    prod.produce(topic, key=b"ranker", value=pb.ControlMessage(command=cmd).SerializeToString())
    kafka.flush_or_raise(prod, 10)
    return cmd.command_id


def _seed_features(platform, prefix: str, n_items: int, n_users: int) -> tuple[list[str], list[str]]:
    from recpilot.pb import events_pb2
    from services.features.client import connect
    from services.features.writer import FeatureWriter

    rng = random.Random(1)
    items = [f"bi{i:05d}" for i in range(n_items)]
    users = [f"bu{i:05d}" for i in range(n_users)]
    now = int(time.time() * 1000)
    evs = []
    for off in range(n_users * 20):
        it = rng.choice(items)
        evs.append((off, events_pb2.UserEvent(
            event_id=f"b{off}", user_id=rng.choice(users), session_id="s", item_id=it,
            event_type=rng.choice([events_pb2.VIEW, events_pb2.VIEW, events_pb2.CLICK, events_pb2.PURCHASE]),
            price=10.0 + (hash(it) % 90), timestamp_ms=now - 3_600_000 + off,
            context={"category": f"c{int(it[2:]) % 30}", "title": f"item {it}"})))

    async def write():
        # the layout the inference service reads (RECPILOT_REDIS_SHARDS / RECPILOT_REDIS_CLUSTER)
        r = connect(platform.redis_url, platform.redis_cluster, aio=True)
        await FeatureWriter(r, prefix, shards=platform.redis_shards, cluster=platform.redis_cluster).apply(
            {"bench:0": evs})
        await r.aclose()

    asyncio.run(write())
    return items, users


def _clean_features(platform, prefix: str) -> None:
    from services.features.client import connect

    r = connect(platform.redis_url, platform.redis_cluster)
    for pattern in (f"{prefix}*", f"{{{prefix}*"):  # (and the shard-tagged keys)
        for k in r.scan_iter(match=pattern, count=2000):
            r.delete(k)
    r.close()


def run(args) -> int:
    from recpilot.settings import PlatformSettings, load
    from bench.toymodel import write_version

    global CHANNELS, GENERATOR
    CHANNELS, GENERATOR = args.channels, args.generator
    if GENERATOR == "native":
        from bench import native

        try:
            print(f"load generator: native ({native.binary().name}) for the closed loops and the gRPC floor; "
                  "grpc.aio for the open loop and the swaps")
        except native.NativeUnavailable as exc:
            print(f"--generator native: {exc}", file=sys.stderr)
            return 2
    platform = load(PlatformSettings)
    uid = uuid.uuid4().hex[:8]
    prefix, topic = f"bench{uid}:", f"control.bench-{uid}"
    work = Path(tempfile.mkdtemp(prefix="recpilot-bench-inference-"))
    root = work / "models"
    probe0 = cpu_probe()
    print(f"machine: {machine()}; CPU probe {probe0:.3f} s (a fixed Python loop; higher = slower box now)")
    if args.model == "ranker":
        t0 = time.monotonic()
        versions = _ranker_versions(root, args.framework, args.swaps + 1)
        model_desc = (f"the platform's ranker ({args.framework}, DLRM-style: embeddings 3x16, bottom MLP 64-32, "
                      f"top MLP 64-32; trained on 20,000 synthetic logged impressions, {len(versions)} versions "
                      f"in {time.monotonic() - t0:.0f} s)")
    else:
        versions = [write_version(root, "ranker", seed=s, hidden=tuple(args.hidden)) for s in range(1, args.swaps + 2)]
        model_desc = f"toy TorchScript MLP (embeddings 3x8 + 17 dense -> {args.hidden}, random weights)"
    print(f"setup: {args.items} items, {args.users} users in Redis ({platform.redis_url}, prefix {prefix}); "
          f"{model_desc}; k=10 of {args.candidates} candidates; server workers {args.workers}, "
          f"client connections {args.channels}")
    print(f"server settings: compute threads {args.compute_threads if args.compute_threads is not None else 'default'}, "
          f"event loop {args.event_loop or 'default'}, batching (when on) max_batch_size {args.max_batch_size} rows, "
          f"max_queue_delay_ms {args.max_queue_delay_ms:g}; ModelInfer phases {args.infer_rows} rows per request")
    results_model = {"model": args.model, "framework": args.framework if args.model == "ranker" else "torch",
                     "description": model_desc, "workers": args.workers, "channels": args.channels}
    items, users = _seed_features(platform, prefix, args.items, args.users)
    publish_command(platform, topic, "deploy", versions[0])
    base_env = {"RECPILOT_MODEL_REPOSITORY": str(root), "RECPILOT_INFERENCE_FEATURE_KEY_PREFIX": prefix,
                "RECPILOT_INFERENCE_DEPLOYMENTS_TOPIC": topic, "RECPILOT_INFERENCE_BOOTSTRAP": "false",
                "RECPILOT_INFERENCE_IMPRESSIONS_TOPIC": f"impressions.bench-{uid}",
                "RECPILOT_INFERENCE_DEVICE": args.device, "RECPILOT_INFERENCE_GRPC_HOST": "127.0.0.1",
                "RECPILOT_INFERENCE_ITEM_CACHE_MS": str(args.item_cache_ms),
                "RECPILOT_INFERENCE_REDIS_TIMEOUT_MS": str(args.redis_timeout_ms),
                "RECPILOT_INFERENCE_WORKERS": str(args.workers)}
    if args.compute_threads is not None:
        base_env["RECPILOT_INFERENCE_COMPUTE_THREADS"] = str(args.compute_threads)
    if args.event_loop is not None:
        base_env["RECPILOT_INFERENCE_EVENT_LOOP"] = args.event_loop
    results: dict = {"machine": machine(), "model": results_model}
    try:
        def phase(batching: bool, levels: list[int]) -> list[dict]:
            cfg = {"enabled": batching, "max_batch_size": args.max_batch_size,
                   "max_queue_delay_ms": args.max_queue_delay_ms, "max_queue_size": 4096}
            srv = Server({**base_env, "RECPILOT_INFERENCE_BATCHING": json.dumps(cfg)}, work / f"server-{batching}.log")
            out = []
            try:
                srv.wait_ready()
                asyncio.run(_closed_loop(srv.grpc_port, 4, 2.0, items, users, args.candidates))  # warm
                for c in levels:
                    e0, r0 = srv.metric("recpilot_inference_batch_executions_total"), srv.metric(
                        "recpilot_inference_batch_requests_total")
                    cpu0, ccpu0 = srv.cpu_seconds(), own_cpu()
                    fb0 = srv.metric('recpilot_inference_fallbacks_total{method="Recommend"}')
                    r = asyncio.run(_closed_loop(srv.grpc_port, c, args.seconds, items, users, args.candidates))
                    r["server_cpu_ms_per_request"] = (srv.cpu_seconds() - cpu0) * 1000 / max(r["requests"], 1)
                    r["client_cpu_ms_per_request"] = r.get("generator_cpu_ms_per_request",
                                                           (own_cpu() - ccpu0) * 1000 / max(r["requests"], 1))
                    if r["fallbacks"] is None:  # native generator: the server's count (incl. its warm-up)
                        r["fallbacks"] = srv.metric('recpilot_inference_fallbacks_total{method="Recommend"}') - fb0
                    e1, r1 = srv.metric("recpilot_inference_batch_executions_total"), srv.metric(
                        "recpilot_inference_batch_requests_total")
                    r["avg_batch"] = (r1 - r0) / max(e1 - e0, 1)
                    r["server"] = srv.breakdown()
                    if args.workers > 1:
                        r["requests_per_worker"] = srv.per_worker('recpilot_inference_requests_total{method="Recommend"}')
                        print(f"      Recommend requests per worker so far: {r['requests_per_worker']}", flush=True)
                    r.pop("timeline")
                    r["batching"] = batching
                    out.append(r)
                    print(f"  batching={'on ' if batching else 'off'} c={c:<3} {r['rps']:7.0f} req/s  p50 {r['p50_ms']:6.1f} ms"
                          f"  p99 {r['p99_ms']:6.1f} ms  p999 {r['p999_ms']:6.1f} ms  avg batch {r['avg_batch']:5.1f}"
                          f"  errors {r['errors']}  fallbacks {r['fallbacks']}", flush=True)
                    if r["ranked_p50_ms"] == r["ranked_p50_ms"]:  # not NaN: the Python generator reads answers
                        print(f"      model-ranked answers only: p50 {r['ranked_p50_ms']:.1f} ms, "
                              f"p99 {r['ranked_p99_ms']:.1f} ms", flush=True)
                    print("      server means: " + ", ".join(f"{k} {v:.2f} ms" for k, v in r["server"].items())
                          + f"; CPU per request: server {r['server_cpu_ms_per_request']:.2f} ms, "
                          f"load generator {r['client_cpu_ms_per_request']:.2f} ms", flush=True)
                c = levels[-1]
                e0, r0 = srv.metric("recpilot_inference_batch_executions_total"), srv.metric(
                    "recpilot_inference_batch_requests_total")
                cpu0, ccpu0, th0, t0 = srv.cpu_seconds(), own_cpu(), thread_cpu(srv.proc.pid), time.monotonic()
                r = asyncio.run(_closed_loop(srv.grpc_port, c, args.seconds, items, users, args.infer_rows, infer=True))
                threads = busy_cores(th0, thread_cpu(srv.proc.pid), time.monotonic() - t0)
                e1, r1 = srv.metric("recpilot_inference_batch_executions_total"), srv.metric(
                    "recpilot_inference_batch_requests_total")
                r.pop("timeline")
                r.update(batching=batching, avg_batch=(r1 - r0) / max(e1 - e0, 1), kind="ModelInfer", rows=args.infer_rows,
                         server_cpu_ms_per_request=(srv.cpu_seconds() - cpu0) * 1000 / max(r["requests"], 1),
                         client_cpu_ms_per_request=r.get("generator_cpu_ms_per_request",
                                                         (own_cpu() - ccpu0) * 1000 / max(r["requests"], 1)),
                         server_threads=threads)
                results.setdefault("model_infer", []).append(r)
                print(f"  ModelInfer ({args.infer_rows} rows) batching={'on ' if batching else 'off'} c={c:<3} "
                      f"{r['rps']:7.0f} req/s  p50 {r['p50_ms']:6.1f} ms  p99 {r['p99_ms']:6.1f} ms  "
                      f"avg batch {r['avg_batch']:5.1f}  errors {r['errors']}; CPU per request: server "
                      f"{r['server_cpu_ms_per_request']:.2f} ms, load generator {r['client_cpu_ms_per_request']:.2f} ms",
                      flush=True)
                print(f"      server threads, cores busy: {threads}", flush=True)
                if batching:
                    f = asyncio.run(_floor(srv.grpc_port, c, min(args.seconds, 5.0)))
                    results["grpc_floor"] = f
                    print(f"  gRPC floor (ServerLive, no work) c={c:<3} {f['rps']:7.0f} req/s; load generator CPU "
                          f"{f['client_cpu_ms_per_request']:.2f} ms per request", flush=True)
                if batching and args.rate > 0:
                    # warm-up at the same rate, not measured (the ModelInfer phase left the item cache cold)
                    asyncio.run(_open_loop(srv.grpc_port, args.rate, args.warmup, items, users, args.candidates))
                    pending = srv.metric("recpilot_inference_impressions_pending")
                    cpu0, ccpu0 = srv.cpu_seconds(), own_cpu()
                    h0 = srv.buckets("recpilot_inference_request_latency_seconds")
                    lag0 = srv.buckets("recpilot_inference_event_loop_lag_seconds", method="")
                    ff0 = srv.buckets("recpilot_inference_feature_fetch_seconds", method="")
                    gc0 = (srv.metric('recpilot_inference_gc_pause_seconds_count{generation="2"}'),
                           srv.metric('recpilot_inference_gc_pause_seconds_sum{generation="2"}'))
                    with _GcWatch() as gcw:
                        o = asyncio.run(_open_loop(srv.grpc_port, args.rate, args.seconds, items, users, args.candidates))
                    o["generator_full_gc"] = {"collections": gcw.count, "seconds": gcw.seconds}
                    h1 = srv.buckets("recpilot_inference_request_latency_seconds")
                    gc1 = (srv.metric('recpilot_inference_gc_pause_seconds_count{generation="2"}'),
                           srv.metric('recpilot_inference_gc_pause_seconds_sum{generation="2"}'))
                    o["impressions_pending_at_start"] = pending
                    o["server_full_gc"] = {"collections": gc1[0] - gc0[0], "seconds": gc1[1] - gc0[1]}
                    lag1 = srv.buckets("recpilot_inference_event_loop_lag_seconds", method="")
                    o["server_feature_fetch_p99_ms_at_most"] = _hist_pct(
                        ff0, srv.buckets("recpilot_inference_feature_fetch_seconds", method=""), 99)
                    o["server_loop_lag_p99_ms_at_most"] = _hist_pct(lag0, lag1, 99)
                    o["server_loop_lag_max_ms_at_most"] = _hist_pct(lag0, lag1, 100)
                    o["server_p50_ms_at_most"] = _hist_pct(h0, h1, 50)
                    o["server_p99_ms_at_most"] = _hist_pct(h0, h1, 99)
                    o["server_cpu_ms_per_request"] = (srv.cpu_seconds() - cpu0) * 1000 / max(o["requests"], 1)
                    o["client_cpu_ms_per_request"] = (own_cpu() - ccpu0) * 1000 / max(o["requests"], 1)
                    results["open_loop"] = o
                    print(f"  open loop at {o['rate']:.0f} req/s: achieved {o['achieved_rps']:.0f} req/s  p50 "
                          f"{o['p50_ms']:.1f} ms  p99 {o['p99_ms']:.1f} ms  p999 {o['p999_ms']:.1f} ms  errors {o['errors']}; "
                          f"CPU per request: server {o['server_cpu_ms_per_request']:.2f} ms, load generator "
                          f"{o['client_cpu_ms_per_request']:.2f} ms; server-side (in the handler) p50 <= "
                          f"{o['server_p50_ms_at_most']:g} ms, p99 <= {o['server_p99_ms_at_most']:g} ms (feature fetch p99 <= "
                          f"{o['server_feature_fetch_p99_ms_at_most']:g} ms); "
                          f"generator's own send lag p99 {o['send_lag_p99_ms']:.1f} ms; server event-loop lag p99 <= "
                          f"{o['server_loop_lag_p99_ms_at_most']:g} ms, max <= {o['server_loop_lag_max_ms_at_most']:g} ms; "
                          f"generator full GCs {o['generator_full_gc']['collections']} "
                          f"({o['generator_full_gc']['seconds'] * 1000:.0f} ms); impressions queued at the start "
                          f"{o['impressions_pending_at_start']:.0f}; server full GCs "
                          f"{o['server_full_gc']['collections']:.0f} ({o['server_full_gc']['seconds'] * 1000:.0f} ms); "
                          f"over 25 ms by second of the run: "
                          f"{o['slow_seconds'] or 'none'}; by connection: {o['slow_by_connection'] or 'none'}",
                          flush=True)
                if batching and args.swaps > 0:
                    results["swaps"] = swaps(srv)
            finally:
                srv.stop()
            return out

        def swaps(srv: Server) -> dict:
            c = args.swap_concurrency
            steady = asyncio.run(_closed_loop(srv.grpc_port, c, args.seconds, items, users, args.candidates,
                                              generator="python"))

            async def under_swaps():
                load = asyncio.ensure_future(_closed_loop(srv.grpc_port, c, args.swap_interval * (args.swaps + 1) + 1,
                                                          items, users, args.candidates, generator="python"))
                loop = asyncio.get_running_loop()
                windows = []
                for v in versions[1:]:
                    await asyncio.sleep(args.swap_interval)
                    t0 = time.monotonic()
                    await loop.run_in_executor(None, publish_command, platform, topic, "promote", v)
                    windows.append((t0, v))
                return await load, windows

            during, windows = asyncio.run(under_swaps())
            loads = srv.metric("recpilot_inference_model_loads_total")
            # latency of requests that overlapped a swap (from the command to 2 s after)
            swap_lats = [x for t, x in during["timeline"] if any(w <= t <= w + 2.0 for w, _ in windows)]
            out = {"concurrency": c, "swaps": len(windows), "steady_p99_ms": steady["p99_ms"],
                   "during_p99_ms": during["p99_ms"], "swap_window_p99_ms": _pct(swap_lats, 99),
                   "requests": during["requests"], "failed": during["errors"], "fallbacks": during["fallbacks"],
                   "model_loads_total": loads, "steady_rps": steady["rps"], "during_rps": during["rps"]}
            print(f"  swaps: {out['swaps']} PROMOTEs under c={c}: {out['requests']} requests, failed {out['failed']}, "
                  f"fallbacks {out['fallbacks']}; p99 steady {out['steady_p99_ms']:.1f} ms, whole run "
                  f"{out['during_p99_ms']:.1f} ms, within 2 s of a swap {out['swap_window_p99_ms']:.1f} ms; "
                  f"loads {loads:.0f}", flush=True)
            return out

        gc.collect()  # the load generator: no full-collection pauses from the training above
        gc.freeze()
        print("closed loop, Recommend:")
        results["batching_on"] = phase(True, args.concurrency)
        if not args.skip_unbatched:
            results["batching_off"] = phase(False, [args.concurrency[-1]])
            on = next(r for r in results["batching_on"] if r["concurrency"] == args.concurrency[-1])
            off = results["batching_off"][0]
            floor = results.get("grpc_floor", {}).get("rps", 0.0)

            def ceiling(off_rps: float) -> str:  # no batcher can beat the gRPC floor
                return f" (ceiling on this box: gRPC floor / off = {floor / max(off_rps, 1e-9):.2f}x)" if floor else ""

            print(f"batching speed-up at c={on['concurrency']}: Recommend {on['rps'] / max(off['rps'], 1e-9):.2f}x"
                  + ceiling(off["rps"]))
            mi = {r["batching"]: r for r in results.get("model_infer", [])}
            if True in mi and False in mi:
                print(f"batching speed-up at c={on['concurrency']}: ModelInfer "
                      f"{mi[True]['rps'] / max(mi[False]['rps'], 1e-9):.2f}x" + ceiling(mi[False]["rps"]))
    finally:
        gc.unfreeze()  # frozen objects outlive teardown: nanobind (triton, under torch) reports them as leaks
        _clean_features(platform, prefix)
        try:
            from recpilot.topics import acks_topic

            failed = kafka.delete_topics(platform, [topic, acks_topic(topic), f"impressions.bench-{uid}"], timeout=10)
        except Exception as exc:  # noqa: BLE001 - the broker is gone: say so, keep the results
            failed = {"all": str(exc)}
        if failed:
            print(f"could not delete the bench topics: {failed}")
    probe1 = cpu_probe()
    results["cpu_probe_s"] = [probe0, probe1]
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    print(f"machine at the end: {machine()}; CPU probe {probe1:.3f} s")
    print(f"server logs: {work}")
    return 0
