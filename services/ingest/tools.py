"""Helpers shared by `recpilot bench ingest` and the ingest tests: run ingest as a real subprocess
on given topics, read a topic to its end, read committed offsets and lag of a group."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, TopicPartition

from recpilot import kafka as rkafka
from recpilot.paths import REPO_ROOT
from recpilot.settings import PlatformSettings
from recpilot.topics import TopicSpec


def ingest_env(raw: str, clean: str, dlq: str, metrics: str, group: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "PYTHONUNBUFFERED": "1",
        "RECPILOT_INGEST_RAW_TOPIC": raw, "RECPILOT_INGEST_CLEAN_TOPIC": clean,
        "RECPILOT_INGEST_DLQ_TOPIC": dlq, "RECPILOT_INGEST_METRICS_TOPIC": metrics,
        "RECPILOT_INGEST_GROUP_ID": group, "RECPILOT_INGEST_HTTP_PORT": "0",
    })
    env.update({k.upper() if k.startswith("RECPILOT") else f"RECPILOT_INGEST_{k.upper()}": str(v)
                for k, v in extra.items()})
    return env


def spawn_ingest(env: dict[str, str], log_path: Path) -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(log_path, "ab")  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen([sys.executable, "-m", "services.ingest"], cwd=REPO_ROOT, env=env,
                                stdout=fh, stderr=subprocess.STDOUT)
    finally:
        fh.close()


def http_address(log_path: Path, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> str:
    """The host:port ingest listens on (from its 'http server listening' log line)."""
    import json

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"ingest exited with {proc.returncode}; see {log_path}")
        if log_path.exists():
            for line in log_path.read_text(errors="replace").splitlines():
                if '"http server listening"' in line:
                    return json.loads(line)["address"]
        time.sleep(0.1)
    raise TimeoutError(f"ingest did not report its address; see {log_path}")


def wait_ready(address: str, timeout: float = 90.0, proc: subprocess.Popen | None = None) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"ingest exited with {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"http://{address}/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"ingest at {address} not ready after {timeout}s")


def create_topics(platform: PlatformSettings, names: list[str], partitions: int) -> None:
    rkafka.ensure_topics(rkafka.admin(platform), [TopicSpec(n, partitions) for n in names])


def delete_topics(platform: PlatformSettings, names: list[str]) -> None:
    futs = rkafka.admin(platform).delete_topics(names, operation_timeout=30)
    for f in futs.values():
        try:
            f.result()
        except Exception:
            pass


def end_offsets(platform: PlatformSettings, topic: str) -> dict[int, int]:
    c = Consumer({"bootstrap.servers": platform.kafka_bootstrap, "group.id": "recpilot-offsets-probe"})
    try:
        md = c.list_topics(topic, timeout=10).topics[topic]
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in md.partitions}
    finally:
        c.close()


def committed(platform: PlatformSettings, group: str, topic: str, partitions: list[int]) -> dict[int, int]:
    """Committed offsets of ``group`` (without joining it); -1001 (none) becomes 0."""
    # read_uncommitted: do not wait for offsets pending in an open transaction (require_stable off)
    c = Consumer({"bootstrap.servers": platform.kafka_bootstrap, "group.id": group, "enable.auto.commit": False,
                  "isolation.level": "read_uncommitted"})
    try:
        tps = c.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        return {tp.partition: max(0, tp.offset) for tp in tps}
    finally:
        c.close()


def read_all(platform: PlatformSettings, topic: str, idle_s: float = 2.0, read_committed: bool = True,
             max_s: float = 120.0) -> list:
    """Every message now in ``topic`` (all partitions, from the start, until each partition is at
    its end and nothing new came for ``idle_s``)."""
    c = Consumer({"bootstrap.servers": platform.kafka_bootstrap, "group.id": "recpilot-read-all",
                  "enable.auto.commit": False, "enable.partition.eof": True,
                  "isolation.level": "read_committed" if read_committed else "read_uncommitted"})
    out = []
    try:
        md = c.list_topics(topic, timeout=10).topics[topic]
        c.assign([TopicPartition(topic, p, 0) for p in md.partitions])  # 0 = from the beginning
        at_end: set[int] = set()
        t0 = last = time.monotonic()
        while time.monotonic() - t0 < max_s:
            msgs = c.consume(10_000, 0.2)
            for m in msgs:
                err = m.error()
                if err is None:
                    out.append(m)
                    at_end.discard(m.partition())
                    last = time.monotonic()
                elif err.code() == KafkaError._PARTITION_EOF:
                    at_end.add(m.partition())
            if len(at_end) == len(md.partitions) and time.monotonic() - last >= idle_s:
                break
    finally:
        c.close()
    return out


def peak_rss_mb(pid: int, field: str = "VmHWM") -> float | None:
    """Peak (VmHWM) or current (``field="VmRSS"``) resident memory of ``pid`` in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


