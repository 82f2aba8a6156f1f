"""`recpilot up --replicas`: the replicas of a service get ports, instance ids, transactional ids
and data dirs of their own and keep the consumer group; the monitor stays one replica; a list of
gRPC addresses becomes one round-robin channel target."""

from __future__ import annotations

import json
import socket

import pytest

from recpilot.cli import main
from recpilot.errors import InvalidArgument
from recpilot.net import grpc_target
from recpilot.settings import PlatformSettings, load
from recpilot.stack.manager import HTTP_PORT_STEP, SERVICES, Stack, parse_replicas, services


def test_parse_replicas():
    assert parse_replicas("2") == {"ingest": 2, "features": 2, "inference": 2, "rl_feedback": 2, "monitor": 1}
    assert parse_replicas("ingest=2, features=3") == {"ingest": 2, "features": 3}
    for bad, why in (("monitor=2", "monitor runs as one replica"), ("nosuch=2", "unknown service nosuch"),
                     ("ingest=0", "ingest: 0 replicas"), ("ingest=x", "expected N or SERVICE=N"),
                     ("10", r"10 replicas \(1 to 9\)")):
        with pytest.raises(InvalidArgument, match=why):
            parse_replicas(bad)


def test_up_with_bad_replicas_is_a_usage_error(capsys):
    assert main(["up", "--replicas", "monitor=3"]) == 2
    err = capsys.readouterr().err
    assert "recpilot: error: monitor runs as one replica" in err and "Traceback" not in err
    assert main(["up", "--no-services", "--replicas", "2"]) == 2
    assert "--replicas with --no-services needs --only" in capsys.readouterr().err


def _settings_of(spec, env: dict[str, str], monkeypatch):
    with monkeypatch.context() as m:
        for k, v in env.items():
            m.setenv(k, v)
        return load(spec.settings_class())


def test_replicas_differ_where_they_must_and_share_the_group(monkeypatch, tmp_path):
    monkeypatch.setenv("RECPILOT_RL_FEEDBACK_INSTANCE_ID", "host")  # the default (the host name) alike everywhere
    monkeypatch.setenv("RECPILOT_INGEST_INSTANCE_ID", "host")
    http, grpc, seen = set(), set(), {}
    for spec in SERVICES:
        n = 3 if spec.scalable else 1
        for i in range(n):
            env, port = spec.replica_env(i, tmp_path)
            s = _settings_of(spec, env, monkeypatch)
            assert s.http_port == port == spec.http_port() + HTTP_PORT_STEP * i
            http.add(port)
            seen.setdefault(spec.name, []).append(s)
            if spec.name == "inference":
                grpc.add(s.grpc_port)
    assert len(http) == 3 * 4 + 1 and len(grpc) == 3  # no two processes on one port
    ingest, features, rl = seen["ingest"], seen["features"], seen["rl_feedback"]
    assert len({s.txn_id for s in ingest}) == len({s.txn_id for s in rl}) == 3
    assert len({s.group_id for s in ingest}) == len({s.group_id for s in rl}) == len({s.app_id for s in features}) == 1
    assert [s.instance_id for s in rl] == ["host", "host-1", "host-2"]
    assert [s.learner_enabled for s in rl] == [True, False, False]  # one learner publishes policies
    assert len({s.datadir for s in features}) == 3 and features[1].datadir == str(tmp_path / "features" / "recpilot-features-1")
    assert [s.grpc_port for s in seen["inference"]] == [50051, 50052, 50053]
    with pytest.raises(InvalidArgument, match="monitor runs as one replica"):
        services(["monitor"])[0].replica_env(1, tmp_path)


def test_explicit_ids_get_a_suffix_too(monkeypatch, tmp_path):
    monkeypatch.setenv("RECPILOT_INGEST_TRANSACTIONAL_ID", "ing")
    monkeypatch.setenv("RECPILOT_FEATURES_DATADIR", str(tmp_path / "faust"))
    monkeypatch.setenv("RECPILOT_INFERENCE_GRPC_PORT", "7000")
    monkeypatch.setenv("RECPILOT_INFERENCE_HTTP_PORT", "7100")
    env, port = services(["ingest"])[0].replica_env(2, tmp_path)
    assert env["RECPILOT_INGEST_TRANSACTIONAL_ID"] == "ing-2"
    env, _ = services(["features"])[0].replica_env(1, tmp_path)
    assert env["RECPILOT_FEATURES_DATADIR"] == str(tmp_path / "faust") + "-1"
    env, port = services(["inference"])[0].replica_env(1, tmp_path)
    assert (env["RECPILOT_INFERENCE_GRPC_PORT"], env["RECPILOT_INFERENCE_HTTP_PORT"], port) == ("7001", "7110", 7110)


def test_status_and_down_see_every_replica_record(tmp_path):
    st = Stack(load(PlatformSettings), services_dir=tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    for name in ("ingest-1", "ingest-2", "rl_feedback-1", "ingest-x"):  # pids that are not ours any more
        (run / f"{name}.json").write_text(json.dumps({"name": name, "pid": 2 ** 22 + 1, "start_ticks": 1, "cmd": [],
                                                      "address": "127.0.0.1:1", "log": "", "started_at": 0.0}))
    assert st.replicas(services(["ingest"])[0]) == [0, 1, 2]
    assert st.replicas(services(["features"])[0]) == [0]
    assert st.down_services() == {"rl_feedback-1": "was not running", "ingest-2": "was not running",
                                  "ingest-1": "was not running"}
    assert sorted(p.name for p in run.iterdir()) == ["ingest-x.json"]


def test_grpc_target():
    assert grpc_target("127.0.0.1:50051") == ("127.0.0.1:50051", [])
    target, options = grpc_target("127.0.0.1:50051, 127.0.0.1:50052")
    assert target == "ipv4:127.0.0.1:50051,127.0.0.1:50052"
    assert options == [("grpc.lb_policy_name", "round_robin")]
    local = socket.gethostbyname("localhost")
    assert grpc_target("localhost:1,127.0.0.1:2")[0] == f"ipv4:{local}:1,127.0.0.1:2"
    for bad in ("", "a,b", "127.0.0.1:1,:2"):
        with pytest.raises(ValueError):
            grpc_target(bad)
