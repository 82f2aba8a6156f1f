"""Ingest settings: prefix, defaults, overrides and a clear error for a bad value (no I/O)."""

from __future__ import annotations

import pytest

from recpilot.settings import SettingsError, load
from services.ingest.settings import IngestSettings


def test_defaults_and_env_overrides(monkeypatch):
    s = load(IngestSettings)
    assert (s.http_port, s.raw_topic, s.clean_topic, s.dlq_topic, s.metrics_topic) == (
        9101, "events.raw", "events.clean", "events.dlq", "metrics.ingest")
    assert s.max_future_ms == 300_000 and s.transactional is False
    monkeypatch.setenv("RECPILOT_INGEST_RAW_TOPIC", "t.raw")
    monkeypatch.setenv("RECPILOT_INGEST_GROUP_ID", "g1")
    monkeypatch.setenv("RECPILOT_INGEST_INSTANCE_ID", "r2")
    s = load(IngestSettings)
    assert (s.raw_topic, s.group_id, s.txn_id) == ("t.raw", "g1", "g1-r2")


def test_bad_value_names_the_variable(monkeypatch):
    monkeypatch.setenv("RECPILOT_INGEST_BATCH_SIZE", "0")
    with pytest.raises(SettingsError, match="RECPILOT_INGEST_BATCH_SIZE='0'"):
        load(IngestSettings)


def test_unknown_field_is_rejected():
    with pytest.raises(SettingsError):
        load(IngestSettings, no_such_setting=1)
