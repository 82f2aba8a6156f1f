"""The data plane: the one object every transport calls, and it knows nothing of transports.

* ``recommend`` / ``search`` (from :class:`services.inference.service.RankingService`: features,
  ranking, policy, impressions, popularity fallbacks);
* the Open Inference Protocol calls: ``model_infer``, ``model_metadata``, ``model_ready``;
* readiness: ``ready()`` as Triton and KServe mean it, "a model is loaded and can answer": the
  default model has a loaded production version and whatever ``extra_ready`` adds holds (e.g. the
  deployment follower caught up). Redis is reported (``redis`` in the details, the
  ``recpilot_inference_dependency_up`` gauge) but does not make the replica unready: without it
  answers are popularity fallbacks, flagged and counted, so a Redis outage degrades the fleet
  instead of emptying it.

Errors are the kinds of :mod:`recpilot.errors`: an unknown model or version is ``NotFound``, a
model with no production version loaded yet (or one unloading while the server stops) is
``Unavailable``, a full queue ``ResourceExhausted``, a malformed input ``InvalidArgument``, a
model that fails while scoring ``Internal``. Once a version has been chosen, the error carries it
as ``model_version`` (the failure metric's label).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np

from recpilot.errors import Internal, InvalidArgument, NotFound, RecpilotError, Unavailable
from services.inference import metrics as m
from services.inference.backends import ModelVersion
from services.inference.batching import BatcherClosed
from services.inference.oip import infer_inputs
from services.inference.service import RankingService

NO_VERSION = "-"


def _about(exc: RecpilotError, version: str) -> RecpilotError:
    exc.model_version = version
    return exc


class DataPlane(RankingService):
    def __init__(self, settings, features, models, *, policies=None, impressions=None, index=None,
                 telemetry=None, extra_ready: Callable[[], tuple[bool, dict]] | None = None) -> None:
        super().__init__(settings, features, models, policies=policies, impressions=impressions, index=index,
                         telemetry=telemetry)
        self.extra_ready = extra_ready
        self.redis_ok = False

    # -- readiness -------------------------------------------------------------------------------
    def ready(self) -> tuple[bool, dict]:
        ok = self.models.loaded(self.s.default_model)
        details = {"model_loaded": ok, "redis": self.redis_ok}
        if self.extra_ready is not None:
            extra_ok, extra = self.extra_ready()
            details.update(extra)
            ok = ok and extra_ok
        r = self.models.routes(self.s.default_model)
        if r.production is not None:
            details["model_version"] = r.production.version
        return ok, details

    async def check_dependencies(self, timeout: float = 1.0) -> None:
        try:
            self.redis_ok = bool(await asyncio.wait_for(self.features.ping(), timeout))
        except Exception:
            self.redis_ok = False
        m.DEPENDENCY_UP.labels("redis").set(1 if self.redis_ok else 0)

    def model_label(self, name: str) -> str:
        """``name`` as a metric label: ``"unknown"`` for a model this server does not serve."""
        return name if self.models.serves(name) else "unknown"

    # -- Open Inference Protocol ------------------------------------------------------------------
    def model_ready(self, name: str, version: str) -> bool:
        return self.models.find(name, version) is not None

    def version(self, name: str, version: str) -> ModelVersion:
        """The loaded ``version`` of ``name`` (``""``: production)."""
        if not self.models.serves(name):
            raise _about(NotFound(f"unknown model {name!r}"), NO_VERSION)
        mv = self.models.find(name, version)
        if mv is None:
            kind = NotFound if version else Unavailable
            raise _about(kind(f"model {name!r} version {version or '(production)'} is not loaded"), NO_VERSION)
        return mv

    def model_metadata(self, name: str, version: str) -> tuple[ModelVersion, list[str]]:
        """The version and every loaded version of the model (in numeric order)."""
        mv = self.version(name, version)
        return mv, sorted(self.models.routes(name).versions(), key=lambda v: (len(v), v))

    async def model_infer(self, request) -> tuple[ModelVersion, np.ndarray]:
        """Score an Open Inference Protocol ``ModelInferRequest``: the version that answered and
        its scores."""
        mv = self.models.find(request.model_name, request.model_version)
        if mv is None:  # unknown model or version not loaded: the precise error
            mv = self.version(request.model_name, request.model_version)
        try:
            dense, ids = infer_inputs(request, mv.dense_dim, mv.ids_dim)
            if dense.shape[0] > self.s.max_infer_rows:
                raise InvalidArgument(f"{dense.shape[0]} rows, at most {self.s.max_infer_rows} per ModelInfer")
            try:
                return mv, await mv.score(dense, ids)
            except BatcherClosed:  # swapped out while queued: the new production version answers
                mv = self.version(request.model_name, "")
                return mv, await mv.score(dense, ids)
        except RecpilotError as exc:
            if not hasattr(exc, "model_version"):
                exc.model_version = mv.version
            raise
        except Exception as exc:
            raise _about(Internal(f"model execution failed: {exc}"), mv.version) from exc
