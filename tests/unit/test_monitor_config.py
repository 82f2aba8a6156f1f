"""The monitor's one config file: packaged defaults, partial operator files, clear errors."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from recpilot.errors import UsageError
from services.monitor.config import (ACTIONS, ALERT_NAMES, DEFAULT_PATH, ConfigError, MonitorConfig, load_config,
                                     parse_config)

ROOT = Path(__file__).resolve().parents[2]


def test_the_packaged_file_is_the_dataclass_defaults_and_ships_with_the_package():
    cfg = load_config()
    assert cfg == MonitorConfig()
    assert DEFAULT_PATH.name == "monitor.toml" and DEFAULT_PATH.parent.name == "monitor"
    with open(ROOT / "pyproject.toml", "rb") as fh:
        pdata = tomllib.load(fh)["tool"]["setuptools"]["package-data"]
    assert "*.toml" in pdata["services.monitor"]
    # every section of the packaged file sets every key (it documents them all)
    raw = tomllib.loads(DEFAULT_PATH.read_text())
    for f in dataclasses.fields(MonitorConfig):
        if f.name != "actions":
            assert set(raw[f.name]) == {x.name for x in dataclasses.fields(getattr(cfg, f.name))}, f.name


def test_every_detector_has_the_common_keys_and_effect_size_thresholds():
    cfg = load_config()
    assert cfg.feature_drift.for_windows >= 1 and cfg.feature_drift.psi == 0.2
    assert cfg.ctr_regression.min_effect == pytest.approx(0.2)
    assert cfg.latency_slo.threshold_ms in (1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1000)
    assert cfg.action_for("CtrRegression") == "rollback"
    assert cfg.action_for("FeatureDrift") == "none"
    assert set(cfg.actions) <= set(ALERT_NAMES) and set(cfg.actions.values()) <= set(ACTIONS)


def test_an_operator_file_changes_only_what_it_names(tmp_path):
    p = tmp_path / "m.toml"
    p.write_text('[feature_drift]\npsi = 0.3\nfor_windows = 3\n\n[latency_slo]\nmethods = { Recommend = 200.0 }\n'
                 '\n[actions]\nFeatureDrift = "retrain"\n')
    cfg = load_config(p)
    assert cfg.feature_drift.psi == 0.3 and cfg.feature_drift.for_windows == 3
    assert cfg.feature_drift.js == MonitorConfig().feature_drift.js
    assert cfg.latency_slo.methods == {"Recommend": 200.0}
    assert cfg.actions["FeatureDrift"] == "retrain" and cfg.actions["CtrRegression"] == "rollback"
    assert cfg.score_drift == MonitorConfig().score_drift


@pytest.mark.parametrize("text, words", [
    ("[feature_drift]\npsy = 0.3\n", ["feature_drift", "psy"]),
    ("[feature_drfit]\npsi = 0.3\n", ["feature_drfit"]),
    ("[feature_drift]\npsi = \"high\"\n", ["[feature_drift].psi", "number"]),
    ("[feature_drift]\nfor_windows = 0\n", ["for_windows"]),
    ("[feature_drift]\nseverity = \"urgent\"\n", ["severity"]),
    ("[score_drift]\nreference = \"yesterday\"\n", ["[score_drift].reference", "serving, training"]),
    ("[feature_drift]\nserving_windows = 0\n", ["serving_windows"]),
    ("[latency_slo]\nobjective = 1.5\n", ["objective"]),
    ("[ctr_regression]\nmin_effect = 0\n", ["min_effect"]),
    ("[actions]\nCtrRegression = \"reboot\"\n", ["CtrRegression", "reboot"]),
    ("[actions]\nNoSuchAlert = \"rollback\"\n", ["NoSuchAlert"]),
    ("[feature_drift\n", ["m.toml"]),
])
def test_a_malformed_file_is_a_usage_error_naming_the_key(tmp_path, text, words):
    p = tmp_path / "m.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert isinstance(e.value, UsageError)
    for w in words:
        assert w in str(e.value)


def test_a_missing_file_is_a_usage_error(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "absent.toml")


def test_parse_config_from_a_dict():
    cfg = parse_config({"engine": {"lateness_s": 1}})
    assert cfg.engine.lateness_s == 1.0 and isinstance(cfg.engine.lateness_s, float)
