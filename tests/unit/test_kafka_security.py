"""Kafka security settings reach every client's configuration; PLAINTEXT adds nothing; no secret
in an error or a repr; the local broker's SASL_SSL configuration; the example ACL set."""

from __future__ import annotations

import importlib.util

import pytest

from recpilot import kafka
from recpilot.paths import REPO_ROOT
from recpilot.settings import PlatformSettings, SettingsError, load
from recpilot.stack.kafka import KafkaBroker
from recpilot.stack.process import ProcessTable

SECRET = "pa55-w0rd-never-logged"


@pytest.fixture
def captured(monkeypatch):
    """The configuration dict each factory hands to confluent-kafka (no client is built)."""
    confs = {}
    for name in ("Producer", "Consumer", "AdminClient"):
        monkeypatch.setattr(kafka, name, lambda conf, _n=name: confs.setdefault(_n, conf))
    return confs


def _build_all(settings):
    kafka.producer(settings)
    kafka.consumer(settings, "g")
    kafka.admin(settings)


def test_plaintext_adds_nothing_to_any_client(captured):
    _build_all(PlatformSettings(kafka_bootstrap_servers="127.0.0.1:9092"))
    assert set(captured["Producer"]) == {"bootstrap.servers", "enable.idempotence", "acks", "linger.ms",
                                         "batch.num.messages", "compression.type", "client.id", "logger"}
    assert set(captured["Consumer"]) == {"bootstrap.servers", "group.id", "enable.auto.commit",
                                         "enable.auto.offset.store", "auto.offset.reset",
                                         "partition.assignment.strategy", "logger"}
    assert captured["AdminClient"] == {"bootstrap.servers": "127.0.0.1:9092", "log_level": 4}
    assert kafka.security_config(PlatformSettings()) == {} and kafka.ssl_context(PlatformSettings()) is None


def test_sasl_ssl_from_the_environment_reaches_every_client(monkeypatch, tmp_path, captured):
    (tmp_path / "pw").write_text(SECRET + "\n")
    monkeypatch.setenv("RECPILOT_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("RECPILOT_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("RECPILOT_KAFKA_SASL_USERNAME", "monitor")
    monkeypatch.setenv("RECPILOT_KAFKA_SASL_PASSWORD_FILE", str(tmp_path / "pw"))
    monkeypatch.setenv("RECPILOT_KAFKA_SSL_CA_LOCATION", str(tmp_path / "ca.crt"))
    s = load(PlatformSettings)
    assert SECRET not in repr(s) and SECRET not in str(s.model_dump())
    _build_all(s)
    want = {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "monitor",
            "sasl.password": SECRET, "ssl.ca.location": str(tmp_path / "ca.crt")}
    for name, conf in captured.items():
        assert {k: conf.get(k) for k in want} == want, name
    # committed_offsets builds its consumer through the factory too
    captured.clear()
    with pytest.raises(AttributeError):  # the captured "consumer" is a dict
        kafka.committed_offsets(s, "g", "t", [0])
    assert captured["Consumer"]["sasl.password"] == SECRET


def test_mtls_without_sasl(captured):
    s = PlatformSettings(kafka_security_protocol="SSL", kafka_ssl_certificate_location="/c.pem",
                         kafka_ssl_key_location="/k.pem", kafka_ssl_key_password=SECRET)
    assert kafka.security_config(s) == {"security.protocol": "SSL", "ssl.certificate.location": "/c.pem",
                                        "ssl.key.location": "/k.pem", "ssl.key.password": SECRET}


@pytest.mark.parametrize("env, needle", [
    ({"RECPILOT_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "RECPILOT_KAFKA_SASL_PASSWORD": SECRET},
     "needs RECPILOT_KAFKA_SASL_USERNAME"),
    ({"RECPILOT_KAFKA_SASL_PASSWORD": SECRET, "RECPILOT_KAFKA_SASL_PASSWORD_FILE": "/etc/hostname"}, "not both"),
    ({"RECPILOT_KAFKA_SASL_PASSWORD_FILE": "/nonexistent/pw"}, "cannot read RECPILOT_KAFKA_SASL_PASSWORD_FILE"),
    ({"RECPILOT_KAFKA_SECURITY_PROTOCOL": "TLS"}, "RECPILOT_KAFKA_SECURITY_PROTOCOL='TLS'"),
    ({"RECPILOT_KAFKA_SSL_CERTIFICATE_LOCATION": "/c.pem"}, "go together"),
])
def test_bad_security_settings_stop_start_up_without_showing_the_secret(monkeypatch, env, needle):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SettingsError) as err:
        load(PlatformSettings)
    assert needle in str(err.value) and SECRET not in str(err.value)


def test_faust_gets_the_same_credentials():
    from services.features.app import broker_settings

    assert broker_settings(PlatformSettings(kafka_bootstrap_servers="a:1, b:2")) == {"broker": ["kafka://a:1", "kafka://b:2"]}
    conf = broker_settings(PlatformSettings(kafka_security_protocol="SASL_SSL", kafka_sasl_username="u",
                                            kafka_sasl_password=SECRET))
    creds = conf["broker_credentials"]
    assert (creds.protocol.value, creds.mechanism.value, creds.username, creds.password) == \
        ("SASL_SSL", "SCRAM-SHA-256", "u", SECRET)
    assert creds.ssl_context is not None and creds.ssl_context.check_hostname and SECRET not in repr(creds)
    plain_sasl = broker_settings(PlatformSettings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username="u",
                                                  kafka_sasl_password=SECRET, kafka_sasl_mechanism="PLAIN"))
    assert plain_sasl["broker_credentials"].protocol.value == "SASL_PLAINTEXT"
    assert broker_settings(PlatformSettings(kafka_security_protocol="SSL"))["broker_credentials"].protocol.value == "SSL"


def _props(broker: KafkaBroker) -> dict[str, str]:
    broker.write_config()
    return dict(line.split("=", 1) for line in broker.config.read_text().splitlines())


def test_local_broker_sasl_ssl_listener_config(tmp_path):
    s = PlatformSettings(home=tmp_path, kafka_port=19092, kafka_controller_port=19093,
                         kafka_listener_security="SASL_SSL")
    broker = KafkaBroker(s, ProcessTable(tmp_path / "run"))
    broker.security_dir.mkdir(parents=True)
    for name in ("admin.password", "keystore.password"):
        (broker.security_dir / name).write_text(SECRET)
    p = _props(broker)
    assert p["listeners"] == "SASL_SSL://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert p["advertised.listeners"] == "SASL_SSL://127.0.0.1:19092"
    assert p["listener.security.protocol.map"] == "SASL_SSL:SASL_SSL,CONTROLLER:SSL"
    assert p["inter.broker.listener.name"] == "SASL_SSL" and p["sasl.mechanism.inter.broker.protocol"] == "SCRAM-SHA-256"
    assert p["authorizer.class.name"].endswith("StandardAuthorizer")
    assert p["super.users"] == "User:admin;User:CN=recpilot-broker"
    assert broker.config.stat().st_mode & 0o077 == 0  # it holds the passwords
    # the stack's own clients and the services it starts use the admin principal
    assert broker.client_env()["RECPILOT_KAFKA_SASL_PASSWORD_FILE"] == str(broker.security_dir / "admin.password")
    cs = broker.client_settings()
    assert kafka.security_config(cs)["sasl.password"] == SECRET and cs.kafka_ssl_ca_location.name == "ca.crt"
    # the default listener stays PLAINTEXT, as before
    plain = KafkaBroker(PlatformSettings(home=tmp_path / "p"), ProcessTable(tmp_path / "p" / "run"))
    pp = _props(plain)
    assert pp["listener.security.protocol.map"] == "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
    assert not any(k.startswith(("sasl.", "ssl.", "authorizer", "super.")) for k in pp)
    assert plain.client_env() == {} and plain.client_settings() is plain.s


def test_example_acls_let_only_control_principals_write_the_control_topic():
    spec = importlib.util.spec_from_file_location("recpilot_example_acls", REPO_ROOT / "deploy" / "kafka" / "acls.py")
    acls = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(acls)
    control = ["User:recpilot-cli", "User:monitor", "User:rl_feedback"]
    bindings = acls.control_acls(control, ["User:inference"])

    def grants(topic):
        out: dict[str, set[str]] = {}
        for b in bindings:
            if b.restype.name == "TOPIC" and b.name == topic:
                out.setdefault(b.principal, set()).add(b.operation.name)
        return out

    assert {b.name for b in bindings if b.restype.name == "TOPIC"} == {"control.deployments", "control.acks"}
    # control.deployments: WRITE for the control plane only; the replicas read it
    assert grants("control.deployments") == {**{p: {"DESCRIBE", "READ", "WRITE"} for p in control},
                                             "User:inference": {"DESCRIBE", "READ"}}
    # control.acks: the replicas write their acks there; the control plane reads them
    assert grants("control.acks") == {**{p: {"DESCRIBE", "READ"} for p in control},
                                      "User:inference": {"DESCRIBE", "WRITE"}}
    assert {b.principal for b in bindings if b.restype.name == "GROUP"} == set(control) | {"User:inference"}
    assert all(b.permission_type.name == "ALLOW" for b in bindings)
    # another control topic gets its own acks topic, or the one named
    assert {b.name for b in acls.control_acls(control, ["User:i"], "t") if b.restype.name == "TOPIC"} == {"t", "t.acks"}
    assert {b.name for b in acls.control_acls(control, ["User:i"], "t", "a") if b.restype.name == "TOPIC"} == {"t", "a"}
