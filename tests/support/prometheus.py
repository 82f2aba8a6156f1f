"""What the services export to Prometheus, for the tests that check deploy/prometheus rules and the
Grafana dashboard against it: a renamed metric or label breaks a test, not the ops side."""

from __future__ import annotations

import importlib
import re

METRICS_MODULES = ("services.ingest.metrics", "services.features.metrics", "services.inference.metrics",
                   "services.rl_feedback.metrics", "services.monitor.metrics", "recpilot.models.deployments")
SCRAPE_LABELS = {"job", "instance"}  # added by Prometheus to every scraped series
RECORDED = re.compile(r"\b[a-z_]+:[a-zA-Z0-9_:]+")  # a recording rule's name (level:metric:operations)


def exported_families() -> dict[str, set[str]]:
    """Every recpilot_* sample name the services' metrics modules declare -> its label names."""
    from prometheus_client import REGISTRY

    for mod in METRICS_MODULES:
        importlib.import_module(mod)
    families = {}
    for fam in REGISTRY.collect():
        if not fam.name.startswith("recpilot_"):
            continue
        labels = set()
        collector = REGISTRY._names_to_collectors.get(fam.name) or REGISTRY._names_to_collectors.get(fam.name + "_total")
        if collector is not None:
            labels = set(getattr(collector, "_labelnames", ()))
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",),
                    "info": ("",)}.get(fam.type, ("",))
        for sfx in suffixes:
            families[fam.name + sfx] = labels | ({"le"} if sfx == "_bucket" else set())
    return families


def check_expr(expr: str, families: dict[str, set[str]], where: str, extra_labels: set[str] = frozenset()) -> int:
    """Assert that every recpilot_* series ``expr`` reads is exported, with each label it groups by
    (``by (...)``) or matches on (``{label=...}``); recorded series (names with a colon) are skipped.
    Returns the number of series references checked."""
    plain = RECORDED.sub(" ", expr)
    names = re.findall(r"recpilot_[a-z0-9_]+", plain)
    for name in names:
        assert name in families, f"{where}: unknown metric {name}"
        allowed = families[name] | extra_labels
        for grouped in re.findall(r"by \(([^)]*)\)", plain):
            for label in (x.strip() for x in grouped.split(",")):
                assert label in allowed, f"{where}: {name} has no label {label!r}"
    for name, matchers in re.findall(r"(recpilot_[a-z0-9_]+)\{([^}]*)\}", plain):
        for label in re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", matchers):
            assert label in families[name] | extra_labels, f"{where}: {name} has no label {label!r}"
    return len(names)
