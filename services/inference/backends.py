"""Backends glue: load a model version from the repository through the shared loader, warm it
up, and put a dynamic batcher in front of it.

The loading itself is `recpilot.models.loader.load_model` and the repository is
`recpilot.models.repository.ModelRepository`. Only the framework the model needs is
imported (by the loader), after the loader has checked every file against the version's manifest
(sha256, no unlisted file, no symbolic link): a version that fails is a :class:`LoadFailed`, and the
routing keeps the version that serves. Threads for TF/torch are set once per process via
``configure_threads`` before the first model loads.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from recpilot.errors import Unavailable
from services.inference import metrics as m
from services.inference.batching import DynamicBatcher
from services.inference.settings import BatchingConfig

log = logging.getLogger(__name__)


class LoadFailed(Unavailable, RuntimeError):
    """A version could not be loaded or warmed up; the message says why."""


_threads_configured = False


def configure_threads(intra: int, inter: int) -> None:
    global _threads_configured
    if _threads_configured:
        return
    from recpilot.models.loader import configure_threads as cfg

    cfg(intra, inter)
    _threads_configured = True


def _load_model(path: Path, meta: dict, device: str):
    from recpilot.models.loader import load_model

    return load_model(path, meta, device=device)


def read_meta(root: Path, name: str, version: str) -> tuple[Path, dict]:
    """``(version dir, parsed model.json)`` through the model repository (validated there)."""
    from recpilot.models.repository import ModelRepository

    repo = ModelRepository(root)
    return repo.path(name, version), repo.meta(name, version)


@dataclass
class ModelVersion:
    """One loaded, warmed-up version with its batcher; immutable once serving."""

    name: str
    version: str
    meta: dict
    model: object  # recpilot.models.loader.LoadedModel
    batcher: DynamicBatcher
    loaded_ms: int = field(default_factory=lambda: int(time.time() * 1000))

    @property
    def label(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def framework(self) -> str:
        return str(self.meta.get("framework", ""))

    @property
    def dense_dim(self) -> int:
        return len(self.meta.get("dense_features") or ())

    @property
    def ids_dim(self) -> int:
        return len(self.meta.get("id_features") or ())

    async def score(self, dense: np.ndarray, ids: np.ndarray) -> np.ndarray:
        return await self.batcher.infer(dense, ids)


def load_version(
    root: Path, name: str, version: str, *, device: str, batching: BatchingConfig, executor: Executor
) -> ModelVersion:
    """Load + warm up (blocking; call from a loader thread). Raises :class:`LoadFailed`."""
    t0 = time.perf_counter()
    try:
        path, meta = read_meta(root, name, version)
        model = _load_model(path, meta, device)
        model.warmup()
        # A real forward pass of the serving shape, checked, before any traffic.
        d = len(meta.get("dense_features") or ())
        k = len(meta.get("id_features") or ())
        out = np.asarray(model.predict(np.zeros((4, d), np.float32), np.zeros((4, k), np.int64)), np.float32)
        if out.reshape(-1).shape[0] != 4 or not np.all(np.isfinite(out)):
            raise LoadFailed(f"{name}:{version} warm-up returned {out.shape} / non-finite scores")
    except LoadFailed:
        m.MODEL_LOADS.labels(name, "failed").inc()
        raise
    except Exception as exc:
        m.MODEL_LOADS.labels(name, "failed").inc()
        raise LoadFailed(f"{name}:{version}: {type(exc).__name__}: {exc}") from exc
    took = time.perf_counter() - t0
    m.MODEL_LOADS.labels(name, "ok").inc()
    m.MODEL_LOAD_SECONDS.labels(name).observe(took)
    label = f"{name}:{version}"
    log.info("model loaded", extra={"model": name, "model_version": version, "seconds": round(took, 3),
                                    "framework": meta.get("framework"), "device": getattr(model, "device", "")})
    return ModelVersion(name, version, meta, model, DynamicBatcher(label, model.predict, batching, executor))
