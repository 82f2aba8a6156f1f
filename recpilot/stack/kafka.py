"""A real single-node Apache Kafka broker (KRaft combined mode) from Maven Central jars.

* :func:`fetch_jars` runs Maven on ``deploy/kafka/pom.xml`` once; the jars land in the
  git-ignored ``.cache/kafka/libs`` and a marker records which pom produced them, so a second
  start downloads nothing.
* Storage is formatted once with ``kafka.tools.StorageTool``; ``<home>/kafka/data`` persists.
* ``kafka_listener_security=SASL_SSL``: the client listener speaks SASL_SSL (SCRAM-SHA-256/512)
  instead of PLAINTEXT. A throw-away CA and the broker's certificate (a PKCS12 keystore, made with
  ``openssl``) and the ``admin`` SCRAM password are generated once into ``<home>/kafka/security``;
  the admin's SCRAM credentials are written at storage format time (``--add-scram``); the broker
  talks to itself as ``admin`` over SASL_SSL and to its controller over mutual TLS; the
  StandardAuthorizer is on (super users: ``admin`` and the broker's certificate), so any other
  principal needs ACLs (docs/security.md). ``security/client.env`` holds the client settings.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import secrets
import shutil
import subprocess
import uuid
from pathlib import Path

from pydantic import SecretStr

from recpilot.paths import CACHE_DIR, DEPLOY_DIR
from recpilot.settings import PlatformSettings
from recpilot.stack.process import PidRecord, ProcessTable, StackError, wait_started

POM = DEPLOY_DIR / "kafka" / "pom.xml"
LOG4J = DEPLOY_DIR / "kafka" / "log4j2.yaml"
LIBS = CACHE_DIR / "kafka" / "libs"
MARKER = LIBS / ".pom.sha256"

# The local SASL_SSL listener: the admin user (a super user) and the broker's certificate subject,
# whose principal (User:CN=recpilot-broker) is the other super user (its controller connection).
ADMIN_USER = "admin"
BROKER_DN = "CN=recpilot-broker"
SCRAM_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")


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


def _write_secret(path: Path, text: str) -> None:
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(text)


def _openssl(*args: str, cwd: Path) -> None:
    exe = shutil.which("openssl")
    if not exe:
        raise StackError("openssl not found: install it (apt-get install openssl) for the SASL_SSL listener")
    res = subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True)
    if res.returncode != 0:
        raise StackError(f"openssl {args[0]} failed (exit {res.returncode}): {res.stderr[-2000:]}")


def subject_alt_names(host: str) -> str:
    """The broker certificate's SANs: localhost, 127.0.0.1 and ``host`` (an IP or a DNS name)."""
    names = {"DNS:localhost", "IP:127.0.0.1"}
    try:
        names.add(f"IP:{ipaddress.ip_address(host)}")
    except ValueError:
        names.add(f"DNS:{host}")
    return ",".join(sorted(names))


def make_certificates(directory: Path, host: str) -> None:
    """A throw-away CA (``ca.crt``) and the broker's certificate and key signed by it, in a PKCS12
    keystore (``broker.p12``, password in ``keystore.password``) for ``host``."""
    d = directory
    _write_secret(d / "keystore.password", secrets.token_hex(16))
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "3650",
             "-subj", "/CN=recpilot-local-ca", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "broker.key", "-out", "broker.csr",
             "-subj", f"/{BROKER_DN}", cwd=d)
    (d / "broker.ext").write_text(f"subjectAltName={subject_alt_names(host)}\nbasicConstraints=CA:FALSE\n"
                                  "keyUsage=critical,digitalSignature,keyEncipherment\n"
                                  "extendedKeyUsage=serverAuth,clientAuth\n")
    _openssl("x509", "-req", "-in", "broker.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "825", "-sha256", "-extfile", "broker.ext", "-out", "broker.crt", cwd=d)
    _openssl("pkcs12", "-export", "-in", "broker.crt", "-inkey", "broker.key", "-certfile", "ca.crt",
             "-name", "broker", "-out", "broker.p12", "-passout", "file:keystore.password", cwd=d)
    for name in ("ca.key", "broker.key", "broker.p12"):
        (d / name).chmod(0o600)


class KafkaBroker:
    name = "kafka"

    def __init__(self, settings: PlatformSettings, table: ProcessTable) -> None:
        self.s = settings
        self.table = table
        self.dir = settings.home / "kafka"
        self.data_dir = self.dir / "data"
        self.config = self.dir / "server.properties"
        self.log_path = settings.home / "logs" / "kafka.log"
        self.security_dir = self.dir / "security"

    @property
    def address(self) -> str:
        return f"{self.s.kafka_host}:{self.s.kafka_port}"

    @property
    def secure(self) -> bool:
        """The client listener is SASL_SSL (``kafka_listener_security``)."""
        return self.s.kafka_listener_security == "SASL_SSL"

    # -- the SASL_SSL listener's material -------------------------------------------------
    def ensure_security(self) -> None:
        """Generate the CA, the broker keystore and the admin password once per stack home."""
        d = self.security_dir
        if (d / "broker.p12").exists() and (d / "admin.password").exists():
            return
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o700)
        make_certificates(d, self.s.kafka_host)
        _write_secret(d / "admin.password", secrets.token_hex(16))
        (d / "client.env").write_text("".join(f"{k}={v}\n" for k, v in self._admin_env().items()))

    def _admin_env(self) -> dict[str, str]:
        d = self.security_dir
        return {"RECPILOT_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "RECPILOT_KAFKA_SASL_MECHANISM": SCRAM_MECHANISMS[0],
                "RECPILOT_KAFKA_SASL_USERNAME": ADMIN_USER,
                "RECPILOT_KAFKA_SASL_PASSWORD_FILE": str(d / "admin.password"),
                "RECPILOT_KAFKA_SSL_CA_LOCATION": str(d / "ca.crt")}

    def client_env(self) -> dict[str, str]:
        """Environment for the processes the stack starts: the admin's client settings when the
        listener is SASL_SSL and the environment sets no client security of its own; else none."""
        if not self.secure or self.s.kafka_security_protocol != "PLAINTEXT":
            return {}
        return self._admin_env()

    def client_settings(self) -> PlatformSettings:
        """Settings for the stack's own clients (readiness, topic creation): as :meth:`client_env`."""
        if not self.client_env():
            return self.s
        d = self.security_dir
        return self.s.model_copy(update={
            "kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": SCRAM_MECHANISMS[0],
            "kafka_sasl_username": ADMIN_USER,
            "kafka_sasl_password": SecretStr((d / "admin.password").read_text().strip()),
            "kafka_ssl_ca_location": d / "ca.crt"})

    def _security_props(self) -> dict[str, str]:
        d = self.security_dir
        admin_pw = (d / "admin.password").read_text().strip()
        store_pw = (d / "keystore.password").read_text().strip()
        jaas = ("org.apache.kafka.common.security.scram.ScramLoginModule required "
                f'username="{ADMIN_USER}" password="{admin_pw}";')
        props = {
            "sasl.enabled.mechanisms": ",".join(SCRAM_MECHANISMS),
            "sasl.mechanism.inter.broker.protocol": SCRAM_MECHANISMS[0],
            **{f"listener.name.sasl_ssl.{m.lower()}.sasl.jaas.config": jaas for m in SCRAM_MECHANISMS},
            "ssl.keystore.type": "PKCS12",
            "ssl.keystore.location": str(d / "broker.p12"),
            "ssl.keystore.password": store_pw,
            "ssl.key.password": store_pw,
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(d / "ca.crt"),
            # the broker reaches its controller over TLS with its own certificate
            "listener.name.controller.ssl.client.auth": "required",
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users": f"User:{ADMIN_USER};User:{BROKER_DN}",
        }
        return props

    def write_config(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        host, port, cport = self.s.kafka_host, self.s.kafka_port, self.s.kafka_controller_port
        client = "SASL_SSL" if self.secure else "PLAINTEXT"
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{host}:{cport}",
            "listeners": f"{client}://{host}:{port},CONTROLLER://{host}:{cport}",
            "advertised.listeners": f"{client}://{host}:{port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": client,
            "listener.security.protocol.map": (f"{client}:{client},CONTROLLER:SSL" if self.secure
                                               else "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"),
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
        if self.secure:
            props.update(self._security_props())
            _write_secret(self.config, "")  # it holds the passwords
        self.config.write_text("".join(f"{k}={v}\n" for k, v in props.items()))

    def formatted(self) -> bool:
        return (self.data_dir / "meta.properties").exists()

    def format_storage(self) -> None:
        """Format KRaft storage once; the cluster id is kept in <home>/kafka/cluster.id. With the
        SASL_SSL listener, the admin's SCRAM credentials are written into the metadata then."""
        scram_marker = self.security_dir / "scram-formatted"
        if self.formatted():
            if self.secure and not scram_marker.exists():
                raise StackError(f"the Kafka storage in {self.data_dir} was formatted without SCRAM credentials; "
                                 "the SASL_SSL listener needs a fresh stack home (another RECPILOT_HOME)")
            return
        cid_file = self.dir / "cluster.id"
        if not cid_file.exists() or not valid_cluster_id(cid_file.read_text().strip()):
            cid_file.write_text(new_cluster_id())
        cmd = [java(), "-Xmx256m", f"-Dlog4j2.configurationFile={LOG4J}", "-cp", _classpath(),
               "kafka.tools.StorageTool", "format", f"--cluster-id={cid_file.read_text().strip()}",
               f"--config={self.config}"]
        if self.secure:
            admin_pw = (self.security_dir / "admin.password").read_text().strip()
            for mech in SCRAM_MECHANISMS:
                cmd += ["--add-scram", f"{mech}=[name={ADMIN_USER},password={admin_pw}]"]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            out = f"{res.stdout[-2000:]}{res.stderr[-2000:]}"
            if self.secure:
                out = out.replace(admin_pw, "<hidden>")
            raise StackError(f"kafka storage format failed:\n{out}")
        if self.secure:
            scram_marker.write_text("")

    def start(self) -> PidRecord:
        running = self.table.running(self.name)
        if running:
            return running
        if not jars_present():
            fetch_jars()
        if self.secure:
            self.ensure_security()
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
        from recpilot.kafka import admin

        try:
            md = admin(self.client_settings(), log_level=0, logger=_SilentLogger()).list_topics(timeout=timeout)
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
