"""Source: logged impressions read from Kafka (``--data kafka``, feature_set "recpilot").

A bounded read of the ``impressions`` and ``events.clean`` topics, from the beginning up to the
high watermarks seen at start, committing nothing. Each ``Impression`` carries the dense feature
snapshot serving used, read as ``"<position>:<feature>"`` (as services/inference logs it) per shown
item; the category id comes from the events' ``context["category"]``. The rows are the exported
table format of :mod:`.table`, labelled by later CLICK / PURCHASE events with the same request_id.
"""

from __future__ import annotations

from recpilot import featurespec
from recpilot.models.data.dataset import DataError, DataNotFound, Dataset, DataUnavailable, TrainSettings
from recpilot.models.data.table import examples_from_impressions


def impressions_to_rows(impressions: list, categories: dict[str, str] | None = None) -> list[dict]:
    """Flatten ``recpilot.v1.Impression`` messages into table rows (one per shown item).

    The snapshot is read as ``"<position>:<feature>"`` (what services/inference logs), or
    ``"<position>.<feature>"`` / ``"<item_id>.<feature>"``; a feature missing for an item is 0, and an
    item with no snapshot value at all (a fallback response) is skipped.
    ``categories`` (item -> category, from the events' context) restores the category id column,
    which the snapshot does not carry, so the ids match what serving computes."""
    categories = categories or {}
    rows = []
    for imp in impressions:
        feats = dict(imp.features)
        for it in imp.items:
            row = {"request_id": imp.request_id, "user_id": imp.user_id, "item_id": it.item_id,
                   "position": it.position, "timestamp_ms": imp.timestamp_ms,
                   "category": categories.get(it.item_id, "")}
            found = 0
            for f in featurespec.DENSE_FEATURES:
                for key in (f"{it.position}:{f}", f"{it.position}.{f}", f"{it.item_id}.{f}"):
                    if key in feats:
                        row[f] = feats[key]
                        found += 1
                        break
                else:
                    row[f] = 0.0
            if found:  # an item shown without any snapshot (e.g. a fallback list) is no training example
                rows.append(row)
    return rows


def read_kafka(settings, impressions_topic: str, events_topic: str, timeout_s: float = 60.0,
               group_id: str = "recpilot-train") -> tuple[list, list[dict]]:
    """Bounded read of both topics from the beginning up to the high watermarks seen at start.
    Commits nothing (a training read must not move any service's offsets)."""
    from confluent_kafka import OFFSET_BEGINNING, KafkaException

    from recpilot.kafka import TopicReader
    from recpilot.pb import events_pb2

    out_imp, out_ev = [], []

    def impression(m) -> None:
        out_imp.append(events_pb2.Impression.FromString(m.value()))

    def outcome(m) -> None:
        msg = events_pb2.UserEvent()
        try:
            msg.ParseFromString(m.value())
        except Exception:  # noqa: BLE001 - a foreign message: skip
            return
        out_ev.append({"user_id": msg.user_id, "item_id": msg.item_id, "request_id": msg.request_id,
                       "event_type": featurespec.EVENT_NAMES.get(msg.event_type, ""),
                       "timestamp_ms": msg.timestamp_ms, "category": msg.context.get("category", "")})

    for topic, on_message in ((impressions_topic, impression), (events_topic, outcome)):
        with TopicReader(settings, topic, group_id=group_id, **{"socket.timeout.ms": 10000}) as reader:
            try:
                parts = reader.partitions(timeout=min(timeout_s, 15.0))
                ends = reader.end_offsets(parts) if parts else {}
            except KafkaException as exc:
                raise DataUnavailable(f"cannot reach Kafka at {settings.kafka_bootstrap}: {exc}") from exc
            if not parts:
                raise DataNotFound(f"Kafka topic {topic!r} does not exist at {settings.kafka_bootstrap}")
            left = reader.read({p: OFFSET_BEGINNING for p in parts}, on_message, timeout_s, until=ends)
            if left:
                raise DataUnavailable(f"timed out reading {topic} after {timeout_s}s")
    return out_imp, out_ev


def load_kafka(settings: TrainSettings, platform=None) -> Dataset:
    """The dataset of the impressions on Kafka now, labelled by the outcome events."""
    if platform is None:
        from recpilot.settings import PlatformSettings, load

        platform = load(PlatformSettings)
    imps, evs = read_kafka(platform, settings.impressions_topic, settings.events_topic, settings.kafka_read_timeout_s)
    if not imps:
        raise DataError(f"Kafka topic {settings.impressions_topic!r} holds no impressions: the dataset is empty")
    import pandas as pd

    cats = {e["item_id"]: e["category"] for e in evs if e.get("item_id") and e.get("category")}
    return examples_from_impressions(pd.DataFrame(impressions_to_rows(imps, cats)), evs,
                                     source=f"kafka:{settings.impressions_topic}+{settings.events_topic}")
