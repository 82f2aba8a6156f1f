"""Training against the real test broker: logged impressions + outcomes read from Kafka, and the
comparison with the production model read from the deployment state (control topic).

Own topics per test (``test.train.*.<unique>``), own model repository in tmp_path; topics deleted.
"""

from __future__ import annotations

import numpy as np
import pytest

from recpilot import featurespec
from recpilot.kafka import admin, delete_topics, ensure_topics, flush_or_raise, producer
from recpilot.models import data as D
from recpilot.models.repository import ModelRepository
from recpilot.pb import events_pb2
from recpilot.topics import TopicSpec


@pytest.fixture
def topics(stack, platform_settings, unique):
    names = {"imp": f"test.train.impressions.{unique}", "ev": f"test.train.events.{unique}",
             "ctl": f"test.train.deployments.{unique}"}
    adm = admin(platform_settings)
    ensure_topics(adm, [TopicSpec(names["imp"], 2), TopicSpec(names["ev"], 2),
                        TopicSpec(names["ctl"], 1, {"retention.ms": "-1"})])
    yield names
    delete_topics(platform_settings, names.values(), timeout=10)


def _publish_log(settings, topics: dict, requests: int = 30) -> None:
    """Impressions of items a, b, c (snapshot as services/inference logs it); item b is clicked in
    every third request, with the category in the event context."""
    p = producer(settings)
    for r in range(requests):
        imp = events_pb2.Impression(request_id=f"r{r}", user_id=f"u{r % 5}", timestamp_ms=1_000 + r)
        for pos, item in enumerate(("a", "b", "c"), start=1):
            imp.items.add(item_id=item, position=pos, score=0.1)
            imp.features[f"{pos}:item_ctr"] = 0.1 * pos
            imp.features[f"{pos}:item_log_views"] = float(r)
        p.produce(topics["imp"], key=imp.user_id, value=imp.SerializeToString())
        if r % 3 == 0:
            ev = events_pb2.UserEvent(event_id=f"e{r}", user_id=f"u{r % 5}", event_type=events_pb2.CLICK,
                                      item_id="b", request_id=f"r{r}", timestamp_ms=2_000 + r)
            ev.context["category"] = "shoes"
            p.produce(topics["ev"], key=ev.user_id, value=ev.SerializeToString())
    flush_or_raise(p)


def test_kafka_impressions_join_outcomes(platform_settings, topics):
    _publish_log(platform_settings, topics)
    ts = D.TrainSettings(impressions_topic=topics["imp"], events_topic=topics["ev"], kafka_read_timeout_s=30)
    ds = D.load_dataset("kafka", ts, platform_settings)
    assert len(ds) == 90 and ds.positives == 10
    clicked = {(g, i) for g, i, y in zip(ds.groups, ds.items, ds.labels) if y == 1.0}
    assert clicked == {(f"r{r}", "b") for r in range(0, 30, 3)}
    names = list(featurespec.DENSE_FEATURES)
    for item, ctr in (("a", 0.1), ("b", 0.2), ("c", 0.3)):
        assert ds.dense[ds.items == item, names.index("item_ctr")] == pytest.approx(ctr)
    r7 = (ds.groups == "r7") & (ds.items == "c")
    assert ds.dense[r7, names.index("item_log_views")][0] == 7.0
    # the category id comes from the events' context, as serving computes it
    assert set(ds.ids[ds.items == "b", 2]) == {featurespec.stable_hash("shoes", featurespec.ID_FEATURES[2][1])}
    assert set(ds.ids[ds.items == "a", 2]) == {featurespec.stable_hash("", featurespec.ID_FEATURES[2][1])}


def test_missing_topic_is_a_clear_error(platform_settings, stack, unique):
    ts = D.TrainSettings(impressions_topic=f"test.train.nope.{unique}", events_topic=f"test.train.nope2.{unique}",
                         kafka_read_timeout_s=10)
    with pytest.raises(D.DataError, match="does not exist"):
        D.load_dataset("kafka", ts, platform_settings)


def test_new_version_is_compared_with_production_from_the_control_topic(platform_settings, topics, tmp_path,
                                                                        monkeypatch):
    from recpilot.models.deployments import DeploymentController
    from recpilot.models.train import Production, resolve_production, train_and_register

    monkeypatch.setenv("RECPILOT_DEPLOY_TOPIC", topics["ctl"])
    repo = ModelRepository(tmp_path / "repo")
    ds = D.examples_from_impressions(D.synthetic_impressions(1200, seed=4, n_users=120, n_items=60))
    hp = {"epochs": 1, "batch_size": 128, "embedding_dim": 8, "bottom": [16], "top": [16]}
    v1 = train_and_register(ds, "torch", hp=hp, seed=1, repository=repo, production=Production(note="first"))
    assert v1.version == "1"
    # before any promotion the control topic names no production version
    none = resolve_production("ranker", repo, timeout_s=20)
    assert none.version is None and "no production version" in none.note
    with DeploymentController(platform_settings, repository=repo, topic=topics["ctl"]) as ctl:
        ctl.submit("promote", "ranker", "1", reason="integration test")
    prod = resolve_production("ranker", repo, timeout_s=20)
    assert prod.version == "1"
    v2 = train_and_register(ds, "torch", hp=hp, seed=2, repository=repo, production=prod)
    m = v2.meta["metrics"]
    assert m["production"]["version"] == "1"
    # production's metrics are v1's, recomputed on the same holdout
    assert m["production"]["auc"] == pytest.approx(v1.meta["metrics"]["auc"], abs=1e-9)
    assert m["production"]["logloss"] == pytest.approx(v1.meta["metrics"]["logloss"], abs=1e-9)
    assert not np.isclose(m["auc"], m["production"]["auc"])  # a different seed, a different model
    # v1 was trained on the same window, which does not overlap the holdout
    assert not any("overlaps" in n for n in m["notes"])
