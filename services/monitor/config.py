"""The monitor's detector and action configuration: one TOML file, ``services/monitor/monitor.toml``
(packaged; its comments document every key), or the file ``RECPILOT_MONITOR_CONFIG_PATH`` names.
A file given by the operator may hold only the keys it changes: the rest keep their defaults.

:func:`load_config` reads it into a :class:`MonitorConfig`: one frozen dataclass per detector
section (the dataclasses' defaults are the packaged file's values; a unit test keeps them equal),
plus ``actions`` (alert name -> action). An unknown section or key, a wrong type or an out-of-range
value is a :class:`recpilot.errors.UsageError` naming the file and the key. Light to import.

Common keys of every detector section (:class:`Common`): ``enabled``; ``for_windows`` (an alert
fires after this many consecutive breaching windows); ``resolve_windows`` (it resolves after this
many consecutive clean ones); ``severity`` (``page`` or ``ticket``). Windows are seconds of event
time (``window_s``) except for the reward detectors' sequential tests (``window_items``). Thresholds
are effect sizes (a PSI, a Jensen-Shannon distance, a shift in reference standard deviations, a
relative CTR drop, a burn rate), not p-values; ``min_samples`` keeps a thin window from giving a
verdict.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

from recpilot.errors import UsageError

DEFAULT_PATH = Path(__file__).with_name("monitor.toml")
ACTIONS = ("rollback", "abort_canary", "pause_policy", "retrain", "none")
SEVERITIES = ("page", "ticket")
DRIFT_REFERENCES = ("serving", "training")
ALERT_NAMES = ("FeatureDrift", "ScoreDrift", "EventMixDrift", "CtrRegression", "ConversionRegression",
               "PolicyCtrRegression", "CanaryCtrRegression", "LatencySLOBurn", "ErrorSLOBurn",
               "FeatureFreshness", "ConsumerLag", "DataQuality", "ResourceSaturation")


class ConfigError(UsageError):
    """The monitor's config file is malformed (exit 2: fix the file)."""


@dataclass(frozen=True)
class Common:
    enabled: bool = True
    for_windows: int = 2
    resolve_windows: int = 2
    severity: str = "ticket"


@dataclass(frozen=True)
class EngineConfig:
    lateness_s: float = 2.0        # a time window closes this long after its end (late metric events)
    expire_s: float = 900.0        # a key (model version, instance ...) silent this long is forgotten;
                                   # its firing alert resolves
    catchup_s: float = 60.0        # a detector whose newest event is further behind than this (and advancing)
                                   # is replaying a backlog: its windows close on event time


@dataclass(frozen=True)
class DriftConfig(Common):
    for_windows: int = 1
    resolve_windows: int = 5
    window_s: float = 60.0
    min_samples: int = 500
    psi: float = 0.2
    js: float = 0.1
    wasserstein_sigma: float = 0.25
    reference: str = "serving"     # "serving": the version's first serving_windows windows; "training": model.json's
    serving_windows: int = 3
    serving_ttl_s: float = 7 * 86400.0  # a version's serving reference is forgotten after this long without windows


@dataclass(frozen=True)
class EventMixConfig(Common):
    for_windows: int = 1
    resolve_windows: int = 5
    window_s: float = 60.0
    min_samples: int = 500
    fields: tuple[str, ...] = ("event_type", "device")
    reference_windows: int = 10
    min_reference_windows: int = 3
    psi: float = 0.2
    js: float = 0.1


@dataclass(frozen=True)
class CusumConfig(Common):
    for_windows: int = 1
    resolve_windows: int = 3
    severity: str = "page"
    window_items: int = 200
    min_effect: float = 0.2        # the relative drop the test is sized for (3.0% -> 2.4% is 0.2)
    cusum_h: float = 9.5           # the log-likelihood-ratio CUSUM's threshold
    baseline_items: int = 200_000  # the previous version's trailing items, or this version's first
    baseline_min_items: int = 20_000
    z_baseline: float = 0.5        # the baseline tested against: its estimate minus this many standard errors


@dataclass(frozen=True)
class CanaryConfig(Common):
    severity: str = "page"
    window_s: float = 30.0
    min_items: int = 2_000
    min_effect: float = 0.2
    z: float = 3.5


@dataclass(frozen=True)
class BurnConfig(Common):
    resolve_windows: int = 3
    severity: str = "page"
    window_s: float = 5.0
    short_window_s: float = 10.0
    long_window_s: float = 20.0
    objective: float = 0.99
    burn_factor: float = 2.0
    min_samples: int = 100
    threshold_ms: float = 100.0
    methods: dict[str, float] = field(default_factory=dict)   # method -> its own threshold_ms


@dataclass(frozen=True)
class FreshnessConfig(Common):
    window_s: float = 30.0
    threshold_ms: float = 30_000.0


@dataclass(frozen=True)
class LagConfig(Common):
    for_windows: int = 3
    window_s: float = 30.0
    max_messages: int = 100_000


@dataclass(frozen=True)
class DataQualityConfig(Common):
    window_s: float = 60.0
    min_samples: int = 100
    reject_rate: float = 0.05
    duplicate_rate: float = 0.05
    missing_field_rate: float = 0.05
    invalid_rate: float = 0.05


@dataclass(frozen=True)
class ResourceConfig(Common):
    for_windows: int = 3
    window_s: float = 60.0
    cpu_saturation: float = 0.95
    memory_limit_bytes: int = 0
    gpu_memory_limit_bytes: int = 0
    hint_low: float = 0.2
    hint_high: float = 0.8


def _default_actions() -> dict[str, str]:
    return {"CtrRegression": "rollback", "ConversionRegression": "rollback", "PolicyCtrRegression": "pause_policy",
            "CanaryCtrRegression": "abort_canary"}


@dataclass(frozen=True)
class MonitorConfig:
    engine: EngineConfig = field(default_factory=EngineConfig)
    feature_drift: DriftConfig = field(default_factory=DriftConfig)
    score_drift: DriftConfig = field(default_factory=DriftConfig)
    event_mix: EventMixConfig = field(default_factory=EventMixConfig)
    ctr_regression: CusumConfig = field(default_factory=CusumConfig)
    conversion_regression: CusumConfig = field(default_factory=CusumConfig)
    policy_ctr_regression: CusumConfig = field(default_factory=CusumConfig)
    canary_ctr_regression: CanaryConfig = field(default_factory=CanaryConfig)
    latency_slo: BurnConfig = field(default_factory=BurnConfig)
    error_slo: BurnConfig = field(default_factory=lambda: BurnConfig(objective=0.999))
    freshness: FreshnessConfig = field(default_factory=FreshnessConfig)
    consumer_lag: LagConfig = field(default_factory=LagConfig)
    data_quality: DataQualityConfig = field(default_factory=DataQualityConfig)
    resource: ResourceConfig = field(default_factory=ResourceConfig)
    actions: dict[str, str] = field(default_factory=_default_actions)

    def action_for(self, alert_name: str) -> str:
        return self.actions.get(alert_name, "none")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check_value(where: str, name: str, tp, value):
    origin = typing.get_origin(tp)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}.{name}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}.{name}: expected an integer, got {value!r}")
        if value < 0:
            raise ConfigError(f"{where}.{name}: must be >= 0, got {value}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}.{name}: expected a number, got {value!r}")
        if value < 0:
            raise ConfigError(f"{where}.{name}: must be >= 0, got {value}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}.{name}: expected a string, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}.{name}: expected a list of strings, got {value!r}")
        return tuple(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}.{name}: expected a table, got {value!r}")
        vt = typing.get_args(tp)[1]
        return {str(k): _check_value(f"{where}.{name}", str(k), vt, v) for k, v in value.items()}
    raise ConfigError(f"{where}.{name}: unsupported type")  # pragma: no cover - a bug in this module


def _section(where: str, default, raw: dict):
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table, got {raw!r}")
    hints = typing.get_type_hints(type(default))
    known = {f.name for f in dataclasses.fields(default)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    values = {k: _check_value(where, k, hints[k], v) for k, v in raw.items()}
    out = dataclasses.replace(default, **values)
    if isinstance(out, Common):
        if out.severity not in SEVERITIES:
            raise ConfigError(f"{where}.severity: one of {', '.join(SEVERITIES)}, got {out.severity!r}")
        if out.for_windows < 1 or out.resolve_windows < 1:
            raise ConfigError(f"{where}: for_windows and resolve_windows must be >= 1")
        for k in ("window_s", "window_items", "short_window_s", "long_window_s"):
            if getattr(out, k, 1) <= 0:
                raise ConfigError(f"{where}.{k}: must be > 0")
    if isinstance(out, BurnConfig):
        if not 0.0 < out.objective < 1.0:
            raise ConfigError(f"{where}.objective: must be in (0, 1), got {out.objective}")
        if out.short_window_s > out.long_window_s:
            raise ConfigError(f"{where}: short_window_s must be <= long_window_s")
    if isinstance(out, DriftConfig):
        if out.reference not in DRIFT_REFERENCES:
            raise ConfigError(f"{where}.reference: one of {', '.join(DRIFT_REFERENCES)}, got {out.reference!r}")
        if out.serving_windows < 1:
            raise ConfigError(f"{where}.serving_windows: must be >= 1")
        if out.serving_ttl_s < out.window_s:
            raise ConfigError(f"{where}.serving_ttl_s: must be >= window_s")
    if isinstance(out, CusumConfig) and not 0.0 < out.min_effect < 1.0:
        raise ConfigError(f"{where}.min_effect: must be in (0, 1), got {out.min_effect}")
    return out


def parse_config(data: dict, source: str = "<config>", base: MonitorConfig | None = None) -> MonitorConfig:
    """A MonitorConfig from a parsed TOML document: the sections it has replace ``base``'s keys."""
    base = base or MonitorConfig()
    names = {f.name for f in dataclasses.fields(MonitorConfig)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {', '.join(unknown)} (known: {', '.join(sorted(names))})")
    values = {}
    for name, raw in data.items():
        if name == "actions":
            if not isinstance(raw, dict):
                raise ConfigError(f"{source}: [actions] must be a table of alert name = action")
            actions = dict(base.actions)
            for alert, action in raw.items():
                if alert not in ALERT_NAMES:
                    raise ConfigError(f"{source}: [actions] unknown alert {alert!r} (known: {', '.join(ALERT_NAMES)})")
                if action not in ACTIONS:
                    raise ConfigError(f"{source}: [actions] {alert} = {action!r}: one of {', '.join(ACTIONS)}")
                actions[alert] = action
            values["actions"] = actions
        else:
            values[name] = _section(f"{source} [{name}]", getattr(base, name), raw)
    return dataclasses.replace(base, **values)


def load_config(path: Path | str | None = None) -> MonitorConfig:
    """The packaged monitor.toml (``path`` None), or that file over the packaged defaults."""
    packaged = _read(DEFAULT_PATH)
    cfg = parse_config(packaged, str(DEFAULT_PATH))
    if path is None or Path(path).resolve() == DEFAULT_PATH.resolve():
        return cfg
    return parse_config(_read(Path(path)), str(path), base=cfg)


def _read(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"monitor config {path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"monitor config {path}: {exc}") from None


__all__ = ["MonitorConfig", "load_config", "parse_config", "ConfigError", "DEFAULT_PATH", "ACTIONS", "ALERT_NAMES",
           "Common", "EngineConfig", "DriftConfig", "EventMixConfig", "CusumConfig", "CanaryConfig", "BurnConfig",
           "FreshnessConfig", "LagConfig", "DataQualityConfig", "ResourceConfig"]
