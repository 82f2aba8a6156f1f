"""A real single-node Apache Kafka broker (KRaft combined mode) from Maven Central jars.

* :func:`fetch_jars` runs Maven on ``deploy/kafka/pom.xml`` once; the jars land in the
  git-ignored ``.cache/kafka/libs`` and a marker records which pom produced them, so a second
  start downloads nothing.
* Storage is formatted once with ``kafka.tools.StorageTool``; ``<home>/kafka/data`` persists.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import uuid
from pathlib import Path

from recpilot.paths import CACHE_DIR, DEPLOY_DIR
from recpilot.settings import PlatformSettings
from recpilot.stack.process import PidRecord, ProcessTable, StackError, wait_started

POM = DEPLOY_DIR / "kafka" / "pom.xml"
LOG4J = DEPLOY_DIR / "kafka" / "log4j2.yaml"
LIBS = CACHE_DIR / "kafka" / "libs"
MARKER = LIBS / ".pom.sha256"


def java() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    found = shutil.which("java")
    if not found:
        raise StackError("java not found: install a JDK 17+ (apt-get install openjdk-17-jre-headless)")
    return found


def _pom_digest() -> str:
    return hashlib.sha256(POM.read_bytes()).hexdigest()


def jars_present() -> bool:
    return MARKER.exists() and MARKER.read_text().strip() == _pom_digest()


def fetch_jars(quiet: bool = True) -> bool:
    """Download the broker jars unless the cache already matches the pom. Returns True if fetched."""
    if jars_present():
        return False
    mvn = shutil.which("mvn")
    if not mvn:
        raise StackError("mvn not found: install Maven (apt-get install maven) to fetch the Kafka broker jars")
    if LIBS.exists():
        shutil.rmtree(LIBS)
    LIBS.mkdir(parents=True)
    cmd = [mvn, "-B", "-f", str(POM), "dependency:copy-dependencies", f"-DoutputDirectory={LIBS}", "-DincludeScope=runtime"]
    if quiet:
        cmd.insert(1, "-q")
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise StackError(f"fetching Kafka jars failed (mvn exit {res.returncode}):\n{res.stdout[-3000:]}{res.stderr[-2000:]}")
    MARKER.write_text(_pom_digest())
    return True


def new_cluster_id() -> str:
    """A Kafka cluster id: a base64url UUID (22 chars), as `kafka-storage random-uuid` prints.

    Like Kafka's own ``Uuid.randomUuid``, never one that starts with '-' (a command line would
    read it as an option)."""
    import base64

    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if valid_cluster_id(cid):
            return cid


def valid_cluster_id(cid: str) -> bool:
    return len(cid) == 22 and not cid.startswith("-")


def _classpath() -> str:
    return str(LIBS / "*")


class KafkaBroker:
    name = "kafka"

    def __init__(self, settings: PlatformSettings, table: ProcessTable) -> None:
        self.s = settings
        self.table = table
        self.dir = settings.home / "kafka"
        self.data_dir = self.dir / "data"
        self.config = self.dir / "server.properties"
        self.log_path = settings.home / "logs" / "kafka.log"

    @property
    def address(self) -> str:
        return f"{self.s.kafka_host}:{self.s.kafka_port}"

    def write_config(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        host, port, cport = self.s.kafka_host, self.s.kafka_port, self.s.kafka_controller_port
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{host}:{cport}",
            "listeners": f"PLAINTEXT://{host}:{port},CONTROLLER://{host}:{cport}",
            "advertised.listeners": f"PLAINTEXT://{host}:{port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            "num.partitions": "1",
            "num.network.threads": "2",
            "num.io.threads": "2",
            "background.threads": "2",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            # Consumer groups of one machine need no grace period before the first rebalance.
            "group.initial.rebalance.delay.ms": "0",
            # The cleaner would take 128 MiB of heap at start otherwise.
            "log.cleaner.dedupe.buffer.size": str(4 * 1024 * 1024),
            "log.cleaner.threads": "1",
            "log.retention.hours": "168",
            "log.segment.bytes": str(256 * 1024 * 1024),
            "auto.create.topics.enable": "true",
        }
        self.config.write_text("".join(f"{k}={v}\n" for k, v in props.items()))

    def formatted(self) -> bool:
        return (self.data_dir / "meta.properties").exists()

    def format_storage(self) -> None:
        """Format KRaft storage once; the cluster id is kept in <home>/kafka/cluster.id."""
        if self.formatted():
            return
        cid_file = self.dir / "cluster.id"
        if not cid_file.exists() or not valid_cluster_id(cid_file.read_text().strip()):
            cid_file.write_text(new_cluster_id())
        cmd = [java(), "-Xmx256m", f"-Dlog4j2.configurationFile={LOG4J}", "-cp", _classpath(),
               "kafka.tools.StorageTool", "format", f"--cluster-id={cid_file.read_text().strip()}",
               f"--config={self.config}"]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise StackError(f"kafka storage format failed:\n{res.stdout[-2000:]}{res.stderr[-2000:]}")

    def start(self) -> PidRecord:
        running = self.table.running(self.name)
        if running:
            return running
        if not jars_present():
            fetch_jars()
        self.write_config()
        self.format_storage()
        heap = self.s.kafka_heap_mb
        cmd = [
            java(), f"-Xmx{heap}m", f"-Xms{min(heap, 256)}m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG4J}", "-cp", _classpath(), "kafka.Kafka", str(self.config),
        ]
        return self.table.spawn(self.name, cmd, self.log_path, self.address)

    def ready(self, timeout: float = 2.0) -> bool:
        from confluent_kafka.admin import AdminClient

        try:
            md = AdminClient({"bootstrap.servers": self.s.kafka_bootstrap, "log_level": 0,
                              "logger": _SilentLogger()}).list_topics(timeout=timeout)
            return bool(md.brokers)
        except Exception:
            return False

    def wait_ready(self, timeout: float | None = None) -> float:
        timeout = timeout or self.s.kafka_ready_timeout_s
        return wait_started("kafka", self.log_path, timeout, self._exited, self.ready, interval=0.5)

    def _exited(self) -> str | None:
        rec = self.table.get(self.name)
        return "exited" if rec is not None and not rec.alive() else None


class _SilentLogger:
    """librdkafka logs connection refusals loudly while the broker starts; readiness polling hides them."""

    def log(self, *_a, **_k) -> None:
        pass

    def __getattr__(self, _name):
        return lambda *a, **k: None
