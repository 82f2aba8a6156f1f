"""``--data SPEC`` -> a :class:`~.dataset.Dataset`: the one entry point the CLI uses, dispatching to
the source module the spec names."""

from __future__ import annotations

from recpilot.models.data.dataset import Dataset, TrainSettings
from recpilot.models.data.kafka_impressions import load_kafka
from recpilot.models.data.obd import load_obd, parse_obd_spec
from recpilot.models.data.synthetic import load_simulator
from recpilot.models.data.table import load_table


def load_dataset(spec: str, settings: TrainSettings, platform=None, events_path: str | None = None) -> Dataset:
    """``spec``: ``obd[/CAMPAIGN][:POLICY[+POLICY]]`` (``parse_obd_spec``) | ``kafka`` | ``sim[:EVENTS[:SEED]]`` (raw events
    from the shopper simulator) | a .parquet/.csv path (raw events or logged impressions, told apart by
    their columns)."""
    spec = str(spec)
    if spec == "obd" or spec.startswith(("obd:", "obd/")):
        campaign, pols = parse_obd_spec(spec)
        return load_obd(settings.obd_dir, pols, campaign=campaign)
    if spec == "sim" or spec.startswith("sim:"):
        return load_simulator(spec, settings.attribution_ms)
    if spec == "kafka":
        return load_kafka(settings, platform)
    return load_table(spec, settings.attribution_ms, events_path)
