"""`recpilot run`: the story the platform exists for, played unattended on one machine.

The platform comes up (`recpilot up`), the shopper simulator drives it (a thread of this process:
shoppers that ask the Recommender and click by the position-bias model), and the story plays its
steps, each waited for on what the platform itself reports:

1. ``baseline``: the bootstrapped ranker serves in the ranker's own order; its CTR is measured;
2. ``train``: a new ranker trained on the traffic so far (``recpilot train --data kafka``);
3. ``canary``: that version takes a share of the users, then is promoted (the promotion gate may
   refuse it: the story says so and goes on with the baseline ranker);
4. ``policy``: the re-ranking policy learned online by rl_feedback serves; CTR rises;
5. ``inject``: a bad ranker (trained on the same traffic with inverted labels, alongside the new
   ranker) is promoted with ``--force`` and the reason "story: injected bad model", once the
   monitor has counted the production version's items its CtrRegression baseline needs;
6. ``alert``: the monitor's CtrRegression alert, delivered to a webhook receiver the story runs
   (and to Alertmanager when installed);
7. ``rollback``: the monitor's automatic ROLLBACK, seen in its audit (``GET /status``);
8. ``recovery``: CTR back near the policy's level;

then a summary (CTR before and after the policy, alerts, actions, events produced, accepted and
lost) and ``recpilot down``, also on Ctrl-C. The simulator's hidden variables are never read: CTR
is the shoppers' clicks over the items shown in answered recommendations.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import deque
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from recpilot.errors import RecpilotError

STORY_MONITOR_CONFIG = Path(__file__).with_name("story_monitor.toml")
BAD_MODEL_REASON = "story: injected bad model"
MODEL = "ranker"
BAD_MODEL_ROWS = 40_000  # the bad ranker learns from this many of the latest impressions (it needs no more)

# Settings the story gives the services it starts, unless the environment already sets them: the
# learner judges a candidate every 4,000 rewards or 30 s (the defaults, 50,000 or 120 s, publish
# the first learned policy after the story would have ended), and the story's monitor config.
STORY_ENV = {
    "RECPILOT_RL_FEEDBACK_LEARNER_EVERY_REWARDS": "4000",
    "RECPILOT_RL_FEEDBACK_LEARNER_EVERY_S": "30",
    "RECPILOT_RL_FEEDBACK_LEARNER_MIN_REWARDS": "1000",
    "RECPILOT_MONITOR_CONFIG_PATH": str(STORY_MONITOR_CONFIG),
}

STEPS = ("up", "baseline", "train", "canary", "policy", "inject", "alert", "rollback", "recovery", "drain")


class StoryFailed(RecpilotError, RuntimeError):
    """A step of the story did not reach its goal in time."""


@dataclass
class StoryConfig:
    """Durations (s) of the timed steps; ``scale`` multiplies them (``--duration``)."""

    rate: float = 300.0           # shopper events/s
    seed: int = 42
    baseline_s: float = 30.0      # CTR of the ranker's order
    canary_s: float = 20.0        # the canary's share of traffic before the promotion
    canary_percent: float = 20.0
    policy_min_s: float = 40.0    # the learned policy serves at least this long
    policy_max_s: float = 120.0   # ... and at most this long while CTR has not risen
    policy_rise: float = 1.25     # CTR rise (x baseline) that ends the policy step early
    ctr_window_s: float = 30.0    # CTR readings: the last this many seconds
    alert_timeout_s: float = 150.0
    rollback_timeout_s: float = 60.0
    recovery_s: float = 20.0
    drain_timeout_s: float = 60.0
    train_epochs: int = 2
    train_timeout_s: float = 300.0

    @classmethod
    def for_duration(cls, seconds: float | None, **kw) -> "StoryConfig":
        """The default story, its timed steps scaled so that they add up to about ``seconds``."""
        c = cls(**kw)
        if seconds:
            timed = c.baseline_s + c.canary_s + c.policy_min_s + c.recovery_s
            f = max(0.1, seconds / timed)
            c.baseline_s, c.canary_s, c.recovery_s = c.baseline_s * f, c.canary_s * f, c.recovery_s * f
            c.policy_min_s, c.policy_max_s = c.policy_min_s * f, max(c.policy_max_s * f, c.policy_min_s * f)
            c.ctr_window_s = min(c.ctr_window_s, max(10.0, c.policy_min_s / 2))
        return c


@dataclass
class Step:
    name: str
    status: str = "pending"   # pending | running | done | failed | skipped
    detail: str = ""
    started: float | None = None
    ended: float | None = None
    progress: float | None = None  # 0..1 while running, when known

    @property
    def seconds(self) -> float | None:
        if self.started is None:
            return None
        return round((self.ended or time.monotonic()) - self.started, 1)


# --------------------------------------------------------------------------- webhook receiver
class WebhookReceiver:
    """A local HTTP receiver for the monitor's JSON webhooks (Alertmanager-style bodies)."""

    def __init__(self) -> None:
        self.alerts: list[dict] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    doc = json.loads(body)
                except ValueError:
                    doc = {}
                with outer.lock:
                    for a in doc.get("alerts") or []:
                        outer.alerts.append({"received": time.time(), "status": a.get("status"),
                                             "labels": a.get("labels") or {}})
                self.send_response(200)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, name="story-webhook", daemon=True)

    def start(self) -> "WebhookReceiver":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def received(self) -> list[dict]:
        with self.lock:
            return list(self.alerts)


# --------------------------------------------------------------------------- helpers
def _http_json(url: str, timeout: float = 2.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return json.loads(r.read())
    except Exception:  # a service restarting or absent: no reading this time
        return None


def _metrics(address: str | None) -> dict[str, float]:
    """Prometheus text from ``http://address/metrics``, summed per sample name (labels dropped)."""
    if not address:
        return {}
    try:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=2.0) as r:
            text = r.read().decode()
    except Exception:
        return {}
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[s.name] = out.get(s.name, 0.0) + s.value
    return out


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]


def _grpc_address() -> str:
    """The inference gRPC address, from its settings (imported by name, as `recpilot up` does)."""
    from recpilot.settings import load

    mod = importlib.import_module("services.inference.settings")
    s = load(mod.InferenceSettings)
    return f"127.0.0.1:{s.grpc_port}"


def train_inverted(name: str = MODEL, epochs: int = 1, rows: int = BAD_MODEL_ROWS) -> str:
    """A bad ranker on purpose: trained on the latest ``rows`` impressions of the Kafka traffic so
    far with every label inverted (it learns to put first what shoppers skip). Registered in the
    repository, not deployed; returns its version."""
    import numpy as np

    from recpilot.models.data.dataset import TrainSettings
    from recpilot.models.data.load import load_dataset
    from recpilot.models.loader import configure_threads
    from recpilot.models.repository import ModelRepository
    from recpilot.models.train import train_and_register
    from recpilot.settings import PlatformSettings, load

    ts, plat = load(TrainSettings), load(PlatformSettings)
    configure_threads(ts.intra_op_threads, ts.inter_op_threads)
    ds = load_dataset("kafka", ts, plat)
    if len(ds) > rows:
        ds = ds.take(np.sort(np.argsort(ds.ts_ms, kind="stable")[-rows:]))
    ds.labels = (1.0 - ds.labels).astype(ds.labels.dtype)
    ds.source = f"{ds.source} (labels inverted: the story's bad model)"
    report = train_and_register(ds, "torch", name=name, hp={"epochs": epochs}, holdout_fraction=ts.holdout_fraction,
                                repository=ModelRepository(plat.model_repo))
    return str(report.version)


# --------------------------------------------------------------------------- the story
class Story:
    def __init__(self, cfg: StoryConfig, echo=print, stack=None) -> None:
        self.cfg = cfg
        self.echo = echo
        self.steps = {n: Step(n) for n in STEPS}
        self.stop_requested = threading.Event()
        self.t0 = time.monotonic()
        self.deployments: list[dict] = []   # the story's own commands
        self.log: deque[str] = deque(maxlen=8)
        self.samples: deque[tuple] = deque(maxlen=3600)  # (t, shown, clicks, by_model, by_policy, produced)
        self.latencies: deque[tuple[float, float]] = deque(maxlen=20000)  # (t, seconds)
        self.ctr: dict[str, float | None] = {}
        self.monitor_status: dict = {}
        self.freshness_s: float | None = None
        self._fresh_prev: tuple[float, float] | None = None
        self.sim_result = None
        self.sim_thread: threading.Thread | None = None
        self.sim_stop = threading.Event()
        self.delivered = 0
        self.delivery_failed = 0
        self.ingest0: dict[str, float] = {}
        self.events: dict = {}
        self.stack = stack
        self.webhook: WebhookReceiver | None = None
        self.bad_version: str | None = None
        self.trained_version: str | None = None
        self.baseline_version: str | None = None
        self.production_version: str | None = None  # production before the bad version
        self.bad_proc: subprocess.Popen | None = None

    # -- bookkeeping ------------------------------------------------------------------
    def say(self, msg: str) -> None:
        line = f"[{time.monotonic() - self.t0:6.0f}s] {msg}"
        self.log.append(line)
        self.echo(line)

    def begin(self, name: str, detail: str = "") -> Step:
        st = self.steps[name]
        st.status, st.started, st.detail = "running", time.monotonic(), detail
        self.say(f"step {name}: {detail}" if detail else f"step {name}")
        return st

    def end(self, name: str, status: str = "done", detail: str | None = None) -> None:
        st = self.steps[name]
        st.status, st.ended, st.progress = status, time.monotonic(), None
        if detail is not None:
            st.detail = detail
        self.say(f"step {name} {status}: {st.detail}")

    def _wait(self, seconds: float, step: Step | None = None, until=None) -> bool:
        """Sleep in short ticks for up to ``seconds`` (progress on ``step``); True when ``until()``
        became true, False at the end of the time or on a stop request."""
        start = time.monotonic()
        while not self.stop_requested.is_set():
            if until is not None and until():
                return True
            el = time.monotonic() - start
            if step is not None and seconds > 0:
                step.progress = min(1.0, el / seconds)
            if el >= seconds:
                return False
            time.sleep(0.25)
        return False

    def _check_stop(self) -> None:
        if self.stop_requested.is_set():
            raise KeyboardInterrupt

    # -- readings -----------------------------------------------------------------------
    def sample(self) -> None:
        """One reading of the simulator's counters (the sampler thread, every second)."""
        r = self.sim_result
        if r is None:
            return
        self.samples.append((time.monotonic(), r.shown, r.clicks,
                             {k: tuple(v) for k, v in list(r.by_model.items())},
                             {k: tuple(v) for k, v in list(r.by_policy.items())},
                             sum(list(r.kinds.values()))))

    def window(self, seconds: float, since: float | None = None) -> dict:
        """CTR, per model and per policy version, and events/s over the last ``seconds`` (or since
        the monotonic time ``since``)."""
        if len(self.samples) < 2:
            return {"ctr": None, "shown": 0, "by_model": {}, "by_policy": {}, "events_per_s": 0.0}
        last = self.samples[-1]
        cut = last[0] - seconds if since is None else since
        first = next((s for s in self.samples if s[0] >= cut), self.samples[0])

        def diff(a: dict, b: dict) -> dict:
            out = {}
            for k, (s1, c1) in a.items():
                s0, c0 = b.get(k, (0, 0))
                if s1 > s0:
                    out[k] = {"shown": s1 - s0, "ctr": round((c1 - c0) / (s1 - s0), 5)}
            return out

        shown, clicks = last[1] - first[1], last[2] - first[2]
        dt = max(1e-9, last[0] - first[0])
        return {"ctr": clicks / shown if shown else None, "shown": shown,
                "by_model": diff(last[3], first[3]), "by_policy": diff(last[4], first[4]),
                "events_per_s": (last[5] - first[5]) / dt}

    def poll_platform(self) -> None:
        """The monitor's /status and the features' freshness (the poller thread, every 2 s)."""
        st = self.stack
        mon = st.table.running("monitor")
        if mon:
            doc = _http_json(f"http://{mon.address}/status")
            if isinstance(doc, dict):
                self.monitor_status = doc
        feat = st.table.running("features")
        if feat:
            m = _metrics(feat.address)
            s, c = m.get("recpilot_features_freshness_seconds_sum"), m.get("recpilot_features_freshness_seconds_count")
            if s is not None and c:
                if self._fresh_prev and c > self._fresh_prev[1]:
                    self.freshness_s = (s - self._fresh_prev[0]) / (c - self._fresh_prev[1])
                self._fresh_prev = (s, c)

    def monitor_items(self, version: str) -> tuple[int | None, int | None]:
        """From the monitor's /status: the shown items (rewards) of ``MODEL``/``version`` its
        CtrRegression detector has counted, and ``baseline_min_items``: a version with that many is
        the baseline the next version is judged against (else the next one waits for its own)."""
        det = (self.monitor_status.get("detectors") or {}).get("CtrRegression") or {}
        need = (det.get("config") or {}).get("baseline_min_items")
        have = next((q.get("items") for q in det.get("sequences") or []
                     if q.get("model") == MODEL and str(q.get("version")) == version), None)
        return have, need

    def firing(self) -> list[dict]:
        return list(self.monitor_status.get("firing") or [])

    def actions(self) -> list[dict]:
        return list(self.monitor_status.get("actions") or [])

    def latency_ms(self, seconds: float = 10.0) -> tuple[float | None, float | None]:
        now = time.monotonic()
        lat = [v for t, v in list(self.latencies) if t >= now - seconds]
        p50, p99 = _pct(lat, 0.5), _pct(lat, 0.99)
        return (None if p50 is None else p50 * 1000, None if p99 is None else p99 * 1000)

    # -- the platform -------------------------------------------------------------------
    def cli(self, *args: str, timeout: float = 120.0, step: Step | None = None) -> subprocess.CompletedProcess:
        """``recpilot ARGS`` in a child process (the same commands an operator types)."""
        cmd = [sys.executable, "-m", "recpilot.cli", *args]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        start = time.monotonic()
        while proc.poll() is None:
            if self.stop_requested.is_set() or time.monotonic() - start > timeout:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(10)
                raise KeyboardInterrupt if self.stop_requested.is_set() else StoryFailed(
                    f"`recpilot {' '.join(args)}` took longer than {timeout:.0f}s")
            if step is not None:
                step.detail = step.detail.split(" (")[0] + f" ({time.monotonic() - start:.0f}s)"
            time.sleep(0.1)
        out, err = proc.communicate()
        return subprocess.CompletedProcess(cmd, proc.returncode, out, err)

    def command(self, *args: str, what: str, check: bool = True) -> subprocess.CompletedProcess:
        r = self.cli(*args)
        rec = {"t": round(time.monotonic() - self.t0, 1), "command": "recpilot " + " ".join(args),
               "ok": r.returncode == 0, "what": what}
        if r.returncode != 0:
            rec["error"] = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["?"]
            rec["error"] = rec["error"][0][:300]
        self.deployments.append(rec)
        self.say(f"{what}: {'ok' if rec['ok'] else 'refused: ' + rec['error']}")
        if check and r.returncode != 0:
            raise StoryFailed(f"{what}: {rec['error']}")
        return r

    def production(self) -> str | None:
        """The production ranker version the Recommender answers with now (the last second's answers)."""
        w = self.window(5.0)
        if not w["by_model"]:
            return None
        return max(w["by_model"].items(), key=lambda kv: kv[1]["shown"])[0]

    def start_simulator(self) -> None:
        from recpilot.kafka import producer
        from recpilot.settings import PlatformSettings, load
        from recpilot.simulator import ShopSimulator
        from recpilot.simulator.drive import RecommenderProbe, RunResult, simulate
        from recpilot.topics import EVENTS_RAW

        story = self

        class TimedProbe(RecommenderProbe):
            def recommend(self, *a, **kw):
                t = time.perf_counter()
                resp = super().recommend(*a, **kw)
                if resp is not None:
                    story.latencies.append((time.monotonic(), time.perf_counter() - t))
                return resp

        def on_delivery(err, _msg):
            if err is None:
                self.delivered += 1
            else:
                self.delivery_failed += 1

        p = load(PlatformSettings)
        sim = ShopSimulator(seed=self.cfg.seed)
        probe = TimedProbe(_grpc_address(), retry_s=1.0)
        prod = producer(p, **{"client.id": "recpilot-run", "linger.ms": 20, "on_delivery": on_delivery})
        self.sim_result = RunResult()

        def run():
            def progress(res):
                self.sim_result = res

            try:
                res = simulate(prod, EVENTS_RAW, sim, self.cfg.rate, probe, stop=self.sim_stop.is_set,
                               progress=progress, progress_every_s=0.2)
                self.sim_result = res
                self.delivery_failed += res.delivery_errors
            finally:
                probe.close()

        self.sim_thread = threading.Thread(target=run, name="story-simulator", daemon=True)
        self.sim_thread.start()

    def ingest_counts(self) -> dict[str, float]:
        rec = self.stack.table.running("ingest")
        m = _metrics(rec.address if rec else None)
        return {k: m.get(f"recpilot_ingest_events_{k}_total", 0.0) for k in ("accepted", "rejected", "duplicate")}

    # -- the steps ----------------------------------------------------------------------
    def play(self) -> None:
        c = self.cfg
        st = self.begin("up", "Kafka, Redis, Alertmanager (when installed) and the five services")
        self.stack.up(echo=lambda m: self.say(f"  {m}"))
        self.end("up")
        self._check_stop()
        self.ingest0 = self.ingest_counts()
        self.start_simulator()

        st = self.begin("baseline", f"the bootstrapped ranker serves in its own order; {c.rate:g} shopper events/s")
        if not self._wait(120.0, None, until=lambda: self.window(5.0)["shown"] > 0):
            self._check_stop()
            raise StoryFailed("the Recommender did not answer within 120 s")
        t_base = time.monotonic()
        self._wait(c.baseline_s, st)
        self._check_stop()
        w = self.window(0, since=t_base)
        self.baseline_version = self.production()
        self.ctr["baseline"] = w["ctr"]
        self.end("baseline", detail=f"ranker {self.baseline_version}, CTR {_f(w['ctr'])} over {w['shown']} shown items")

        st = self.begin("train", "a new ranker trained on the traffic so far (recpilot train --data kafka)")
        # the bad model is trained meanwhile, on the same traffic (the second core; the story only
        # waits here), so that the story does not wait for it later
        bad = self._start_bad_training()
        r = self.cli("train", "--framework", "torch", "--data", "kafka", "--name", MODEL, "--epochs",
                     str(c.train_epochs), "--quiet", "--json", timeout=c.train_timeout_s, step=st)
        if r.returncode != 0:
            raise StoryFailed(f"training failed: {(r.stderr or r.stdout).strip()[-300:]}")
        doc = json.loads(r.stdout[r.stdout.index("{"):])
        self.trained_version = str(doc.get("version"))
        self.end("train", detail=f"version {self.trained_version} ({_metrics_line(doc)})")

        st = self.begin("canary", f"version {self.trained_version} to {c.canary_percent:g}% of users, then promoted")
        self.command("models", "canary", "--model", MODEL, "--version", self.trained_version, "--percent",
                     str(c.canary_percent), "--reason", "story: canary of the ranker trained on the traffic",
                     what=f"canary {self.trained_version} at {c.canary_percent:g}%")
        self._wait(c.canary_s, st)
        self._check_stop()
        wc = self.window(c.canary_s)
        r = self.command("models", "promote", "--model", MODEL, "--version", self.trained_version, "--reason",
                         "story: the canary served without regression", what=f"promote {self.trained_version}",
                         check=False)
        by = wc["by_model"]
        canary, prod = by.get(self.trained_version), by.get(self.baseline_version)
        online = (f"online CTR canary {canary['ctr']:.4f} ({canary['shown']} items) vs production "
                  f"{prod['ctr']:.4f} ({prod['shown']} items)") if canary and prod else "no online comparison"
        if r.returncode != 0 and canary and prod and canary["ctr"] >= prod["ctr"]:
            # the offline gate refused (its holdout is the new version's own traffic); the canary's
            # online CTR is the better evidence: promoted anyway, with the reason in the history
            r = self.command("models", "promote", "--model", MODEL, "--version", self.trained_version, "--force",
                             "--reason", f"story: offline gate refused, {online}",
                             what=f"promote {self.trained_version} (force, on the canary's online CTR)", check=False)
        if r.returncode != 0:
            self.command("models", "canary", "--model", MODEL, "--clear", "--reason", "story: promotion refused",
                         what="clear the canary", check=False)
            self.production_version = self.baseline_version
            self.end("canary", "done", f"promotion refused ({online}); {self.baseline_version} stays production")
        else:
            self.production_version = self.trained_version
            self.end("canary", detail=f"{online}; {self.trained_version} promoted")

        st = self.begin("policy", "the re-ranking policy learned online from the rewards (rl_feedback)")
        t_pol = time.monotonic()

        def risen() -> bool:
            if time.monotonic() - t_pol < c.policy_min_s:
                return False
            w_ = self.window(c.ctr_window_s)
            learned = [k for k in w_["by_policy"] if k not in ("-", "ranker-order")]
            base = self.ctr.get("baseline") or 0.0
            return bool(learned) and w_["ctr"] is not None and w_["ctr"] >= c.policy_rise * base

        self._wait(c.policy_max_s, st, until=risen)
        self._check_stop()
        w = self.window(c.ctr_window_s)
        self.ctr["with_policy"] = w["ctr"]
        learned = sorted(k for k in w["by_policy"] if k not in ("-", "ranker-order"))
        rise = (w["ctr"] or 0) / self.ctr["baseline"] if self.ctr.get("baseline") else None
        self.end("policy", "done" if learned and rise and rise > 1.0 else "failed",
                 f"CTR {_f(w['ctr'])} over the last {c.ctr_window_s:.0f}s (x{_f(rise, 2)} the baseline); "
                 f"policy versions serving: {', '.join(learned) or 'none learned yet'}")

        st = self.begin("inject", "a bad ranker (trained with inverted labels) promoted with force")
        # the monitor judges a new version against the one before it once it has counted enough of
        # its items (CtrRegression's baseline_min_items); a version promoted shortly before has not
        prod = self.production_version

        def baseline_ready() -> bool:
            have, need = self.monitor_items(prod or "")
            return have is not None and need is not None and have >= need

        if not baseline_ready():
            st.detail = f"the monitor counts version {prod}'s items (the baseline the bad version is judged against)"
            # on a loaded machine the count grows slowly: wait on while it grows (at most 3 more periods)
            last, more = self.monitor_items(prod or "")[0] or 0, 3
            while not self._wait(c.alert_timeout_s, st, until=baseline_ready) and more > 0:
                self._check_stop()
                have = self.monitor_items(prod or "")[0]
                if have is not None and have <= last:  # known and not growing (None: no reading now)
                    break
                last, more = max(last, have or 0), more - 1
            self._check_stop()
        have, need = self.monitor_items(prod or "")
        self.bad_version = self._finish_bad_training(bad, st)
        self.command("models", "promote", "--model", MODEL, "--version", self.bad_version, "--force",
                     "--reason", BAD_MODEL_REASON, what=f"promote the bad ranker {self.bad_version} (force)")
        t_bad = time.monotonic()
        self.end("inject", detail=f"version {self.bad_version} is production (the monitor's baseline: version {prod}, "
                                  f"{have if have is not None else '?'} items counted, {need if need is not None else '?'} needed)")

        st = self.begin("alert", "the monitor's CtrRegression alert, delivered to the story's webhook")

        def alerted() -> bool:
            return any(a["labels"].get("alertname") == "CtrRegression" and a["status"] == "firing"
                       and a["labels"].get("version") == self.bad_version for a in self.webhook.received())

        ok = self._wait(c.alert_timeout_s, st, until=alerted)
        self._check_stop()
        self.ctr["bad_model"] = self.window(0, since=t_bad)["ctr"]
        bad_items = self.monitor_items(self.bad_version)[0]
        self.end("alert", "done" if ok else "failed",
                 f"CtrRegression{{model={MODEL},version={self.bad_version}}} delivered after "
                 f"{time.monotonic() - t_bad:.0f}s; CTR while it served {_f(self.ctr['bad_model'])}"
                 if ok else f"no CtrRegression within {c.alert_timeout_s:.0f}s (the monitor counted "
                            f"{bad_items if bad_items is not None else '?'} items of version {self.bad_version}; "
                            f"CTR while it served {_f(self.ctr['bad_model'])})")

        st = self.begin("rollback", "the monitor rolls production back by itself")

        def rolled_back() -> bool:
            return any(a.get("action") == "rollback" and a.get("outcome") == "executed"
                       and str(a.get("version")) == self.bad_version for a in self.actions())

        ok = self._wait(c.rollback_timeout_s, st, until=rolled_back)
        self._check_stop()
        t_rb = time.monotonic()
        self.end("rollback", "done" if ok else "failed",
                 f"ROLLBACK by the monitor after {t_rb - t_bad:.0f}s from the injection" if ok
                 else f"no rollback within {c.rollback_timeout_s:.0f}s")

        st = self.begin("recovery", "production back on the previous ranker; CTR recovers")
        self._wait(2.0, None)
        t_rec = time.monotonic()
        self._wait(c.recovery_s, st)
        self._check_stop()
        w = self.window(0, since=t_rec)
        self.ctr["recovered"] = w["ctr"]
        back = [k for k in w["by_model"] if k != self.bad_version]
        self.end("recovery", "done" if back and self.bad_version not in w["by_model"] else "failed",
                 f"ranker {', '.join(back) or '?'} serves; CTR {_f(w['ctr'])}")

    def _start_bad_training(self) -> subprocess.Popen:
        self.bad_proc = subprocess.Popen([sys.executable, "-m", "recpilot.story", "--train-inverted"],
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                         start_new_session=True)
        return self.bad_proc

    def stop_bad_training(self) -> None:
        """End the bad model's training if the story stopped before it was used."""
        proc, self.bad_proc = self.bad_proc, None
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)

    def _finish_bad_training(self, proc: subprocess.Popen, st: Step) -> str:
        start = time.monotonic()
        while proc.poll() is None:
            if self.stop_requested.is_set() or time.monotonic() - start > self.cfg.train_timeout_s:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(10)
                self._check_stop()
                raise StoryFailed("training the bad ranker took too long")
            st.detail = f"waiting for the inverted-label training ({time.monotonic() - start:.0f}s)"
            time.sleep(0.1)
        out, err = proc.communicate()
        self.bad_proc = None
        if proc.returncode != 0:
            raise StoryFailed(f"training the bad ranker failed: {err.strip()[-300:]}")
        return out.strip().splitlines()[-1]

    def drain(self) -> None:
        """Stop the shoppers, wait until ingest has accounted for every event produced."""
        st = self.begin("drain", "the simulator stops; ingest accounts for every event")
        self.sim_stop.set()
        if self.sim_thread is not None:
            self.sim_thread.join(60)
        produced = self.delivered

        def counted() -> dict:
            now = self.ingest_counts()
            return {k: int(now[k] - self.ingest0.get(k, 0.0)) for k in now}

        def settled() -> bool:
            n = counted()
            return n["accepted"] + n["rejected"] + n["duplicate"] >= produced

        self._wait(self.cfg.drain_timeout_s, st, until=settled)
        n = counted()
        lost = produced - n["accepted"] - n["rejected"] - n["duplicate"]
        self.events = {"produced": produced, "delivery_failed": self.delivery_failed, "accepted": n["accepted"],
                       "rejected": n["rejected"], "duplicates": n["duplicate"], "lost": lost}
        self.end("drain", "done" if lost == 0 and self.delivery_failed == 0 else "failed",
                 f"produced {produced}, accepted {n['accepted']}, rejected {n['rejected']}, "
                 f"duplicates {n['duplicate']}, lost {lost}")

    # -- summary ------------------------------------------------------------------------
    def summary(self) -> dict:
        r = self.sim_result
        alerts = [{"alertname": a["labels"].get("alertname"), "status": a["status"],
                   "labels": {k: v for k, v in a["labels"].items() if k != "alertname"}}
                  for a in (self.webhook.received() if self.webhook else [])]
        actions = [{k: a.get(k) for k in ("action", "alert_name", "model_name", "version", "outcome", "detail")}
                   for a in self.actions()]
        lat = [v for _, v in list(self.latencies)]
        base, pol = self.ctr.get("baseline"), self.ctr.get("with_policy")
        reached = [s.name for s in self.steps.values() if s.status == "done"]
        rollback = any(a["action"] == "rollback" and a["outcome"] == "executed" for a in actions)
        alert = any(a["alertname"] == "CtrRegression" and a["status"] == "firing" for a in alerts)
        ok = (len(reached) == len(STEPS) and alert and rollback and self.events.get("lost") == 0
              and base is not None and pol is not None and pol > base)
        return {
            "ok": ok,
            "seconds": round(time.monotonic() - self.t0, 1),
            "steps": [{"name": s.name, "status": s.status, "seconds": s.seconds, "detail": s.detail}
                      for s in self.steps.values()],
            "steps_reached": reached,
            "ctr": {"baseline": _r(base), "with_policy": _r(pol), "rise": _r(pol / base if base and pol else None, 3),
                    "bad_model": _r(self.ctr.get("bad_model")), "recovered": _r(self.ctr.get("recovered")),
                    "by_model": _by(r.by_model if r else {}), "by_policy": _by(r.by_policy if r else {})},
            "versions": {"baseline": self.baseline_version, "trained": self.trained_version, "bad": self.bad_version},
            "alerts": alerts,
            "alerts_by_name": _count(f"{a['alertname']}({a['status']})" for a in alerts),
            "alert_delivered": alert,
            "alert_channels": {k: v.get("delivered") for k, v in (self.monitor_status.get("channels") or {}).items()},
            "actions": actions,
            "rollback": rollback,
            "deployments": self.deployments,
            "events": self.events,
            "recommend": {"calls": r.recommend_calls if r else 0, "failures": r.recommend_failures if r else 0,
                          "p50_ms": _r(_pct(lat, 0.5) * 1000 if lat else None, 2),
                          "p99_ms": _r(_pct(lat, 0.99) * 1000 if lat else None, 2)},
            "settings": {"story_env": {k: os.environ.get(k) for k in STORY_ENV},
                         "note": "the learner's cadence and the monitor's actions are the story's (STORY_ENV, "
                                 "recpilot/story_monitor.toml): the defaults publish the first learned policy "
                                 "after 50,000 rewards or 120 s",
                         "config": asdict(self.cfg)},
        }


def _f(x, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _r(x, digits: int = 5):
    return None if x is None else round(x, digits)


def _count(names) -> dict[str, int]:
    out: dict[str, int] = {}
    for n in names:
        out[n] = out.get(n, 0) + 1
    return dict(sorted(out.items()))


def _by(d: dict) -> dict:
    return {k: {"shown": s, "clicks": c, "ctr": round(c / s, 5) if s else None} for k, (s, c) in sorted(d.items())}


def _metrics_line(doc: dict) -> str:
    m = doc.get("metrics") or {}
    parts = [f"{k} {m[k]:.4f}" for k in ("auc", "logloss") if isinstance(m.get(k), (int, float))]
    return ", ".join(parts) or "trained"


# --------------------------------------------------------------------------- dashboard
def render(story: Story):
    """The live dashboard (rich renderables)."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.progress_bar import ProgressBar
    from rich.table import Table

    w10, w60 = story.window(10.0), story.window(story.cfg.ctr_window_s)
    p50, p99 = story.latency_ms()
    head = Table.grid(padding=(0, 3))
    head.add_row(f"[b]events/s[/b] {w10['events_per_s']:,.0f}",
                 f"[b]feature freshness[/b] {_f(story.freshness_s, 2)} s",
                 f"[b]Recommend[/b] p50 {_f(p50, 1)} ms  p99 {_f(p99, 1)} ms",
                 f"[b]CTR (last {story.cfg.ctr_window_s:.0f}s)[/b] {_f(w60['ctr'])}",
                 f"[b]elapsed[/b] {time.monotonic() - story.t0:.0f} s")
    steps = Table(title="story", expand=True)
    steps.add_column("step")
    steps.add_column("status")
    steps.add_column("s", justify="right")
    steps.add_column("detail", ratio=1)
    colour = {"done": "green", "failed": "red", "running": "yellow", "skipped": "dim", "pending": "dim"}
    for s in story.steps.values():
        status = f"[{colour[s.status]}]{s.status}[/]"
        detail = s.detail
        if s.status == "running" and s.progress is not None:
            detail = Group(detail, ProgressBar(total=1.0, completed=s.progress, width=40))
        steps.add_row(s.name, status, "" if s.seconds is None else f"{s.seconds:.0f}", detail)
    ctr = Table(title=f"CTR, last {story.cfg.ctr_window_s:.0f}s", expand=True)
    ctr.add_column("by")
    ctr.add_column("version")
    ctr.add_column("shown", justify="right")
    ctr.add_column("CTR", justify="right")
    for kind, d in (("model", w60["by_model"]), ("policy", w60["by_policy"])):
        for k, v in sorted(d.items()):
            ctr.add_row(kind, k, f"{v['shown']:,}", f"{v['ctr']:.4f}")
    ops = Table(title="deployments, alerts, actions", expand=True)
    ops.add_column("what")
    ops.add_column("detail", ratio=1)
    for d in story.deployments[-5:]:
        ops.add_row("deploy", f"{d['what']}: {'ok' if d['ok'] else d.get('error', '')}")
    firing = _count(a.get("name") or (a.get("labels") or {}).get("alertname") for a in story.firing())
    if firing:
        ops.add_row("[red]firing[/]", ", ".join(f"{k} x{n}" for k, n in firing.items()))
    for a in (story.webhook.received() if story.webhook else [])[-3:]:
        ops.add_row("webhook", f"{a['labels'].get('alertname')} {a['status']} {a['labels'].get('version', '')}")
    for a in story.actions()[-3:]:
        ops.add_row("action", f"{a.get('action')} {a.get('model_name')}/{a.get('version')}: {a.get('outcome')}")
    return Group(Panel(head, title="recpilot run"), steps, ctr, ops, Panel("\n".join(story.log), title="log"))


# --------------------------------------------------------------------------- entry
def run(headless: bool = False, duration: float | None = None, keep_up: bool = False, rate: float = 300.0,
        out=sys.stdout) -> dict:
    """Play the story; return the summary. Sets the story's service settings (STORY_ENV) in this
    process's environment before the services start, unless they are set already."""
    from recpilot.stack.manager import Stack

    cfg = StoryConfig.for_duration(duration, rate=rate)
    webhook = WebhookReceiver().start()
    for k, v in STORY_ENV.items():
        os.environ.setdefault(k, v)
    urls = [u for u in (os.environ.get("RECPILOT_MONITOR_WEBHOOK_URLS") or "").split(",") if u]
    os.environ["RECPILOT_MONITOR_WEBHOOK_URLS"] = ",".join([*urls, webhook.url])
    stack = Stack()
    live = None
    console = None
    if headless:
        echo = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731  (stdout is the JSON)
    else:
        from rich.console import Console

        console = Console(file=out)
        echo = lambda m: None  # noqa: E731  (the dashboard's log panel shows it)
    story = Story(cfg, echo=echo, stack=stack)
    story.webhook = webhook
    if not headless:
        from rich.live import Live

        live = Live(render(story), console=console, refresh_per_second=2, screen=False)
    prev = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def on_signal(*_):
        story.stop_requested.set()

    for s in prev:
        signal.signal(s, on_signal)
    done = threading.Event()

    def sampler():
        n = 0
        last_line = time.monotonic()
        while not done.is_set():
            story.sample()
            if n % 2 == 0:
                story.poll_platform()
            if live is not None:
                live.update(render(story))
            elif time.monotonic() - last_line >= 10 and story.sim_result is not None:
                w = story.window(10.0)
                p50, p99 = story.latency_ms()
                running = next((s for s in story.steps.values() if s.status == "running"), None)
                echo(f"[{time.monotonic() - story.t0:6.0f}s] {running.name if running else '-'}"
                     f"{'' if not running or running.progress is None else f' {running.progress:.0%}'}: "
                     f"events/s {w['events_per_s']:.0f} ctr {_f(w['ctr'])} p50 {_f(p50, 1)}ms p99 {_f(p99, 1)}ms "
                     f"freshness {_f(story.freshness_s, 2)}s firing {len(story.firing())} actions {len(story.actions())}")
                last_line = time.monotonic()
            n += 1
            done.wait(1.0)

    th = threading.Thread(target=sampler, name="story-sampler", daemon=True)
    error = None
    summary = None
    try:
        if live is not None:
            live.start()
        th.start()
        try:
            story.play()
        except KeyboardInterrupt:
            story.say("stopped (Ctrl-C): summary, then the platform goes down")
            error = "interrupted"
        except RecpilotError as exc:
            story.say(f"the story stopped: {exc}")
            error = str(exc)
        running = next((s for s in story.steps.values() if s.status == "running"), None)
        if running is not None:
            story.end(running.name, "failed", running.detail)
        story.stop_bad_training()
        story.stop_requested.clear()
        story.drain()
        summary = story.summary()
        if error:
            summary["error"] = error
            summary["ok"] = False
    finally:
        done.set()
        story.sim_stop.set()
        if live is not None:
            live.stop()
        if not keep_up:
            for s in prev:  # a second Ctrl-C during `down` is the default again
                signal.signal(s, prev[s])
            t_down = time.monotonic()
            stack.down(echo=lambda m: echo(f"down: {m}"))
            if summary is not None:
                summary["down_seconds"] = round(time.monotonic() - t_down, 1)
        webhook.stop()
    return summary


def format_summary(s: dict) -> str:
    ctr = s["ctr"]
    verdict = "the whole story played" if s["ok"] else "the story did not reach its end"
    if s.get("error"):
        verdict += " (stopped by Ctrl-C)" if s["error"] == "interrupted" else f" ({s['error']})"
    down = f" (then `recpilot down` in {s['down_seconds']:.0f}s)" if s.get("down_seconds") is not None else ""
    lines = [f"recpilot run: {verdict} in {s['seconds']:.0f}s{down}"]
    for st in s["steps"]:
        secs = "" if st["seconds"] is None else f"{st['seconds']:.0f}s"
        lines.append(f"  {st['name']:<9} {st['status']:<7} {secs:>5}  {st['detail']}")
    lines.append(f"CTR: baseline {_f(ctr['baseline'])} -> with the learned policy {_f(ctr['with_policy'])} "
                 f"(x{_f(ctr['rise'], 2)}); bad model {_f(ctr['bad_model'])}; after the rollback {_f(ctr['recovered'])}")
    lines.append("alerts delivered to the story's webhook: " + (", ".join(f"{k} x{n}" for k, n in s["alerts_by_name"].items()) or "none")
                 + "; per channel: " + (", ".join(f"{k} {n}" for k, n in s["alert_channels"].items()) or "-"))
    lines.append("monitor actions: " + (", ".join(f"{a['action']} {a['model_name']}/{a['version']} {a['outcome']}"
                                                  for a in s["actions"]) or "none"))
    e = s["events"]
    if e:
        lines.append(f"events: produced {e['produced']}, accepted by ingest {e['accepted']}, rejected {e['rejected']}, "
                     f"duplicates {e['duplicates']}, lost {e['lost']}")
    rc = s["recommend"]
    lines.append(f"Recommend: {rc['calls']} calls, {rc['failures']} failed, p50 {rc['p50_ms']} ms, p99 {rc['p99_ms']} ms")
    lines.append("note: " + s["settings"]["note"])
    return "\n".join(lines)


def cmd_run(args) -> int:
    if args.duration is not None and args.duration <= 0:
        from recpilot.errors import InvalidArgument

        raise InvalidArgument("--duration must be > 0 seconds")
    summary = run(headless=args.headless, duration=args.duration, keep_up=args.keep_up, rate=args.rate)
    print(json.dumps(summary, indent=2) if args.headless else format_summary(summary), flush=True)
    if summary.get("error") == "interrupted":
        return 130
    return 0 if summary["ok"] else 1


def register(sub) -> None:
    """`recpilot run` (recpilot.cli's COMMAND_MODULES)."""
    p = sub.add_parser("run", help="the story, unattended: up, shoppers, a ranker trained and promoted, the policy "
                       "learning, a bad model, the alert, the automatic rollback, a summary, down")
    p.add_argument("--headless", action="store_true", help="no dashboard: progress lines on stderr, the summary "
                   "as JSON on stdout")
    p.add_argument("--duration", type=float, default=None, metavar="S",
                   help="the timed steps (baseline, canary, policy, recovery) scaled to add up to about S seconds "
                        "(default 110); bringing the platform up, training and the alert come on top")
    p.add_argument("--rate", type=float, default=300.0, help="shopper events/s (default 300)")
    p.add_argument("--keep-up", action="store_true", help="leave the platform running at the end")
    p.set_defaults(func=cmd_run)


def _main(argv: list[str] | None = None) -> int:
    """``python -m recpilot.story --train-inverted``: the bad ranker (prints its version)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m recpilot.story")
    ap.add_argument("--train-inverted", action="store_true", required=True)
    ap.add_argument("--epochs", type=int, default=1)
    args = ap.parse_args(argv)
    print(train_inverted(MODEL, args.epochs))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
