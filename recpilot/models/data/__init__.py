"""Training datasets for the ranker: one :class:`Dataset` shape, one module per source.

* :mod:`.dataset` — what the sources share: :class:`Dataset` (with the time-based holdout split),
  :class:`TrainSettings`, :func:`check_not_empty`, the point-in-time item click rate, and the
  errors (:class:`DataError` and its kinds :class:`DataNotFound`, :class:`DataUnavailable`);
* :mod:`.obd` — the Open Bandit Dataset (``obd[/CAMPAIGN][:POLICY[+POLICY]]``);
* :mod:`.kafka_impressions` — logged impressions read from Kafka (``kafka``);
* :mod:`.table` — an exported Parquet/CSV table (a path): logged impressions, or raw events;
* :mod:`.events` — raw events replayed through ``featurespec``'s offline feature store;
* :mod:`.synthetic` — the shopper simulator's events (``sim[:EVENTS[:SEED]]``) and synthetic
  logged impressions;
* :mod:`.load` — :func:`load_dataset`, the ``--data SPEC`` dispatch to the sources above.

Code outside ``recpilot.models`` imports from this package; inside it, from the submodules.
"""

from recpilot.models.data.dataset import (
    CTR_PRIOR_CLICKS,
    CTR_PRIOR_VIEWS,
    POSITIVE_TYPES,
    DataError,
    DataNotFound,
    Dataset,
    DataUnavailable,
    TrainSettings,
    check_not_empty,
    frozen_ctr,
    point_in_time_ctr,
)
from recpilot.models.data.events import events_from_table, examples_from_events
from recpilot.models.data.kafka_impressions import impressions_to_rows, load_kafka, read_kafka
from recpilot.models.data.load import load_dataset
from recpilot.models.data.obd import (
    OBD_CAMPAIGNS,
    OBD_CHUNK_ROWS,
    OBD_CTR_FEATURE,
    OBD_DENSE_FEATURES,
    OBD_ID_FEATURES,
    OBD_POLICIES,
    OBD_SAMPLE_DIR,
    load_obd,
    obd_files,
    parse_obd_spec,
)
from recpilot.models.data.synthetic import load_simulator, simulated_events, synthetic_impressions
from recpilot.models.data.table import examples_from_impressions, load_table, read_table

__all__ = [
    # shared
    "CTR_PRIOR_CLICKS", "CTR_PRIOR_VIEWS", "POSITIVE_TYPES", "Dataset", "TrainSettings", "check_not_empty",
    "frozen_ctr", "point_in_time_ctr",
    # errors
    "DataError", "DataNotFound", "DataUnavailable",
    # Open Bandit
    "OBD_CAMPAIGNS", "OBD_CHUNK_ROWS", "OBD_CTR_FEATURE", "OBD_DENSE_FEATURES", "OBD_ID_FEATURES", "OBD_POLICIES",
    "OBD_SAMPLE_DIR", "load_obd", "obd_files", "parse_obd_spec",
    # Kafka
    "impressions_to_rows", "load_kafka", "read_kafka",
    # tables
    "examples_from_impressions", "load_table", "read_table",
    # raw events
    "events_from_table", "examples_from_events",
    # generated
    "load_simulator", "simulated_events", "synthetic_impressions",
    # the --data dispatch
    "load_dataset",
]
