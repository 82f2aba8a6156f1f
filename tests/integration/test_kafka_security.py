"""Every Kafka client of recpilot over SASL_SSL (SCRAM), against one private broker started by the
stack manager with its SASL_SSL listener; the example ACL set on control.deployments and
control.acks, with a real deployment follower acknowledging as the serving replicas' principal."""

from __future__ import annotations

import asyncio
import importlib.util

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import ScramCredentialInfo, ScramMechanism, UserScramCredentialUpsertion
from pydantic import SecretStr

from recpilot import kafka
from recpilot.paths import REPO_ROOT
from recpilot.settings import PlatformSettings
from recpilot.topics import CONTROL_ACKS, CONTROL_DEPLOYMENTS
from services.features.app import broker_settings


def _acls_script():
    spec = importlib.util.spec_from_file_location("recpilot_example_acls", REPO_ROOT / "deploy" / "kafka" / "acls.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _as(settings: PlatformSettings, user: str, password: str) -> PlatformSettings:
    return settings.model_copy(update={"kafka_sasl_username": user, "kafka_sasl_password": SecretStr(password)})


def _produce(settings: PlatformSettings, topic: str, value: bytes) -> KafkaError | None:
    """Produce one message with a plain (non-idempotent) producer; the delivery error or None."""
    errors: list = []
    prod = kafka.producer(settings, **{"enable.idempotence": False, "message.timeout.ms": 10000})
    prod.produce(topic, value=value, on_delivery=lambda err, _m: errors.append(err))
    prod.flush(15)
    assert errors, "no delivery report"
    return errors[0]


def test_every_client_over_sasl_ssl_wrong_password_refused_and_control_acls(secure_broker, unique, wait_until,
                                                                           tmp_path):
    plain, broker = secure_broker
    sec = broker.security_dir
    # what a user sets (RECPILOT_KAFKA_SASL_PASSWORD_FILE ...): the stack's admin principal
    s = PlatformSettings(home=plain.home, kafka_port=plain.kafka_port, kafka_security_protocol="SASL_SSL",
                         kafka_sasl_mechanism="SCRAM-SHA-512", kafka_sasl_username="admin",
                         kafka_sasl_password_file=sec / "admin.password", kafka_ssl_ca_location=sec / "ca.crt")
    topic = f"sec-{unique}"

    # admin, producer, faust's aiokafka client, consumer: one message each way
    assert set(kafka.create_topics(s, [topic, CONTROL_DEPLOYMENTS, CONTROL_ACKS], 1)) == {
        topic, CONTROL_DEPLOYMENTS, CONTROL_ACKS}
    prod = kafka.producer(s)
    prod.produce(topic, value=b"from confluent-kafka")
    kafka.flush_or_raise(prod, 30)

    async def send_with_faust_settings():
        from aiokafka import AIOKafkaProducer
        from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

        conf = broker_settings(s)
        auth = credentials_to_aiokafka_auth(conf["broker_credentials"])
        assert auth["security_protocol"] == "SASL_SSL" and auth["sasl_mechanism"] == "SCRAM-SHA-512"
        p = AIOKafkaProducer(bootstrap_servers=[b.removeprefix("kafka://") for b in conf["broker"]], **auth)
        await p.start()
        try:
            await p.send_and_wait(topic, b"from aiokafka")
        finally:
            await p.stop()

    asyncio.run(send_with_faust_settings())
    got = [m.value() for m in kafka.read_to_end(s, topic, timeout=60)]
    assert got == [b"from confluent-kafka", b"from aiokafka"]

    # a PLAINTEXT client of the same address gets nothing; a wrong password is refused, and says so
    with pytest.raises(KafkaException):
        kafka.admin(plain).list_topics(timeout=2)
    errors: list = []
    bad = kafka.admin(_as(s, "admin", "not-the-password"), error_cb=errors.append)
    with pytest.raises(KafkaException):
        bad.list_topics(timeout=5)

    def auth_failure():
        bad.poll(0.1)  # serves error_cb
        return next((e for e in errors if e.code() == KafkaError._AUTHENTICATION), None)

    auth_error = wait_until(auth_failure, 20, lambda: f"no authentication error reported: {errors}")
    del bad  # stop its reconnect attempts
    assert "Authentication failed" in auth_error.str() and "not-the-password" not in auth_error.str()

    # the example ACL set: monitor may write control.deployments, ingest (no ACL) may not, the
    # serving replicas (inference) read it and write their acks to control.acks only
    adm = kafka.admin(s)
    for fut in adm.alter_user_scram_credentials([
            UserScramCredentialUpsertion(user, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096), b"pw-" + user.encode())
            for user in ("monitor", "ingest", "inference")]).values():
        fut.result(30)
    acls = _acls_script()
    acls.apply(adm, acls.control_acls(["User:recpilot-cli", "User:monitor", "User:rl_feedback"], ["User:inference"]))
    monitor, ingest = _as(s, "monitor", "pw-monitor"), _as(s, "ingest", "pw-ingest")
    inference = _as(s, "inference", "pw-inference")
    wait_until(lambda: _produce(monitor, CONTROL_DEPLOYMENTS, b"command") is None, 60,
               "monitor cannot write control.deployments with the example ACLs")
    wait_until(lambda: kafka.admin(ingest).list_topics(timeout=5).brokers, 30, "ingest cannot authenticate")
    refused = _produce(ingest, CONTROL_DEPLOYMENTS, b"forged")
    assert refused is not None and refused.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, refused
    wait_until(lambda: kafka.admin(inference).list_topics(timeout=5).brokers, 30, "inference cannot authenticate")
    refused = _produce(inference, CONTROL_DEPLOYMENTS, b"forged by a replica")
    assert refused is not None and refused.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, refused
    assert [m.value() for m in kafka.read_to_end(s, CONTROL_DEPLOYMENTS, timeout=60)] == [b"command"]

    # a real follower as the replicas' principal: follows the command the monitor publishes and
    # acknowledges it on control.acks, where the monitor's controller reads the ack
    from recpilot.models.deployments import DeploymentController, DeploymentFollower, new_command, publish_message
    from recpilot.models.repository import ModelRepository
    from recpilot.pb import deployments_pb2 as pb

    follower = DeploymentFollower(
        inference, "replica-sasl", lambda st, c: follower.ready and follower.ack(c, pb.APPLIED, "serving"))
    follower.start()
    try:
        assert follower.wait_ready(60), f"the follower did not catch up as User:inference: {follower.error}"
        cmd = new_command("deploy", "ranker", "1", actor="monitor")
        publish_message(kafka.producer(monitor), CONTROL_DEPLOYMENTS, pb.ControlMessage(command=cmd), "ranker", 30,
                        "the command")
        with DeploymentController(monitor, ModelRepository(tmp_path / "none"), actor="monitor",
                                  verify_repository=False) as ctl:
            acks = ctl.wait_acks(cmd.command_id, 60)
            assert ctl.state("ranker").production_version == "1"
    finally:
        follower.stop()
    assert [(a.replica, a.status, a.message) for a in acks] == [("replica-sasl", pb.APPLIED, "serving")]
    assert follower.error is None
    on_acks = [pb.ControlMessage.FromString(m.value()) for m in kafka.read_to_end(s, CONTROL_ACKS, timeout=60)]
    assert [(m.WhichOneof("body"), m.ack.command_id) for m in on_acks] == [("ack", cmd.command_id)]
    assert len(kafka.read_to_end(s, CONTROL_DEPLOYMENTS, timeout=60)) == 2  # b"command" and the deploy: no ack
