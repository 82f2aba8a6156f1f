from pathlib import Path

import pytest
from pydantic import Field

from recpilot.settings import PlatformSettings, RecpilotSettings, SettingsError, load
from pydantic_settings import SettingsConfigDict


class DemoSettings(RecpilotSettings):
    model_config = SettingsConfigDict(env_prefix="RECPILOT_DEMO_", extra="forbid")
    http_port: int = Field(default=9100, ge=1, le=65535)
    batch: int = 10


def test_defaults_and_env(monkeypatch):
    monkeypatch.setenv("RECPILOT_DEMO_BATCH", "42")
    s = load(DemoSettings)
    assert s.http_port == 9100
    assert s.batch == 42


def test_bad_value_names_the_variable(monkeypatch):
    monkeypatch.setenv("RECPILOT_DEMO_HTTP_PORT", "not-a-port")
    with pytest.raises(SettingsError) as err:
        load(DemoSettings)
    msg = str(err.value)
    assert "RECPILOT_DEMO_HTTP_PORT" in msg
    assert "'not-a-port'" in msg


def test_out_of_range_value(monkeypatch):
    monkeypatch.setenv("RECPILOT_DEMO_HTTP_PORT", "70000")
    with pytest.raises(SettingsError, match="RECPILOT_DEMO_HTTP_PORT='70000'"):
        load(DemoSettings)


def test_unknown_override_is_rejected():
    with pytest.raises(SettingsError, match="RECPILOT_DEMO_NOPE"):
        load(DemoSettings, nope=1)


def test_platform_addresses(monkeypatch):
    monkeypatch.setenv("RECPILOT_KAFKA_HOST", "10.1.2.3")
    monkeypatch.setenv("RECPILOT_KAFKA_PORT", "9999")
    monkeypatch.setenv("RECPILOT_REDIS_PORT", "7000")
    monkeypatch.setenv("RECPILOT_HOME", "/tmp/rp-home")
    s = load(PlatformSettings)
    assert s.kafka_bootstrap == "10.1.2.3:9999"
    assert s.redis_url == "redis://127.0.0.1:7000/0"
    assert s.model_repo == Path("/tmp/rp-home/models")
    monkeypatch.setenv("RECPILOT_KAFKA_BOOTSTRAP_SERVERS", "kafka:9092")
    monkeypatch.setenv("RECPILOT_REDIS_URL", "redis://redis:6379/2")
    s = load(PlatformSettings)
    assert s.kafka_bootstrap == "kafka:9092"
    assert s.redis_url == "redis://redis:6379/2"


def test_platform_bad_port(monkeypatch):
    monkeypatch.setenv("RECPILOT_KAFKA_PORT", "abc")
    with pytest.raises(SettingsError, match="RECPILOT_KAFKA_PORT='abc'"):
        load(PlatformSettings)


def test_load_service_exits_2_naming_the_variable(monkeypatch, capsys):
    from recpilot.settings import load_service

    monkeypatch.setenv("RECPILOT_DEMO_BATCH", "many")
    with pytest.raises(SystemExit) as ex:
        load_service("demo", DemoSettings)
    assert ex.value.code == 2
    assert "demo: invalid setting RECPILOT_DEMO_BATCH='many'" in capsys.readouterr().err
    monkeypatch.setenv("RECPILOT_DEMO_BATCH", "3")
    platform, s = load_service("demo", DemoSettings)
    assert s.batch == 3 and isinstance(platform, PlatformSettings)
