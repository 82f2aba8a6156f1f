"""The monitor: streaming drift, CTR, SLO, data-quality and resource detectors over the platform's
topics; alerts to ops channels; actions through the deployment control (docs/monitoring.md)."""
