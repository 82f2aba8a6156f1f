"""The inference server as a real process following a test's own control topic."""

from __future__ import annotations

from pathlib import Path

from bench.inference import Server, publish_command


def publish(platform, topic: str, action: str, version: str, percent: float = 0.0) -> str:
    """A deployment command for "ranker" on ``topic`` (no controller checks); its command id."""
    return publish_command(platform, topic, action, version, percent, actor="test", reason="test")


def server_env(root: Path, topic: str, unique: str, **extra: str) -> dict:
    """Settings for `python -m services.inference` on the test stack, isolated by ``unique``."""
    return {"RECPILOT_MODEL_REPOSITORY": str(root), "RECPILOT_INFERENCE_FEATURE_KEY_PREFIX": f"t{unique}:",
            "RECPILOT_INFERENCE_DEPLOYMENTS_TOPIC": topic, "RECPILOT_INFERENCE_BOOTSTRAP": "false",
            "RECPILOT_INFERENCE_IMPRESSIONS_TOPIC": f"impressions.test-{unique}",
            "RECPILOT_INFERENCE_GRPC_HOST": "127.0.0.1", **extra}


def start_server(env: dict, log: Path, timeout: float) -> Server:
    """The server process on free ports, once its /readyz answers 200."""
    return Server(env, log).wait_ready(timeout)
