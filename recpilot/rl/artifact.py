"""A re-ranking policy as a version in the model repository: write it, load it for scoring.

The policies of ranker model ``m`` are the versions of ``m.policy`` (``<root>/m.policy/<N>/``),
so they get everything ranker versions get: atomic, fsynced, read-only, sha256-manifested
versions, verified before any framework opens a file. A version holds

* ``policy.pt``: a TorchScript module, ``forward(x: Tensor[M, F]) -> Tensor[M]``: the value of each
  of the M pool items (its Q-value at the top slot), from the F inputs named in
  ``model.json["policy"]["features"]`` (:mod:`recpilot.rl.features` builds them);
* ``policy.pt2`` when ``torch.export`` can export the module (the path off TorchScript, which
  torch deprecates); serving loads ``policy.pt``;
* ``model.json`` with ``"kind": "policy"`` (schema: ``recpilot.models.repository.validate_policy_meta``,
  docs/learning.md): inputs/outputs, ``policy`` (features, exploration rule, pool size, discount),
  ``training`` and, once evaluated, ``ope``.

The policy version named in the deployment state, responses and impressions is the repository
version number of ``m.policy`` ("1", "2", ...). ``ranker-order`` is the built-in default.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recpilot.errors import FailedPrecondition
from recpilot.models.repository import (
    DEFAULT_POLICY_VERSION,
    POLICY_ARTIFACT,
    POLICY_SUFFIX,
    ModelRepository,
    verify_files,
)
from recpilot.rl.slate import Exploration

log = logging.getLogger(__name__)

EXPORT_ARTIFACT = "policy.pt2"
DEFAULT_VERSION = DEFAULT_POLICY_VERSION


def policy_repo_name(model_name: str) -> str:
    """Where the policies of ranker ``model_name`` live in the repository."""
    return model_name + POLICY_SUFFIX


def write_policy_version(repo: ModelRepository, model_name: str, module, features: list[str],
                         exploration: Exploration, *, pool_size: int, gamma: float, training: dict,
                         ope: dict | None = None, extra: dict | None = None) -> str:
    """Script ``module`` (a ``torch.nn.Module``: ``[M, F]`` float32 -> ``[M]``) and publish it as the
    next version of ``<model_name>.policy``; returns the version."""
    import torch

    module = module.eval()
    example = torch.zeros((4, len(features)), dtype=torch.float32)

    def writer(d: Path) -> dict:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated upstream, still the format
            scripted = torch.jit.script(module)
        out = scripted(example)
        if tuple(out.shape) != (4,):
            raise FailedPrecondition(f"a policy module must map [M, {len(features)}] to [M], got {tuple(out.shape)}")
        scripted.save(str(d / POLICY_ARTIFACT))
        exported = False
        try:
            from torch.export import Dim

            m = Dim("m", min=1, max=100_000)
            ep = torch.export.export(module, (example,), dynamic_shapes=({0: m},))
            torch.export.save(ep, str(d / EXPORT_ARTIFACT))
            exported = True
        except Exception as exc:  # noqa: BLE001 - the TorchScript file is what serving loads
            log.warning("torch.export could not export the policy; only TorchScript written", extra={"error": repr(exc)})
        meta = {
            "kind": "policy", "framework": "torch", "artifact": POLICY_ARTIFACT,
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, len(features)]}],
            "outputs": [{"name": "q", "datatype": "FP32", "shape": [-1]}],
            "policy": {"features": list(features), "exploration": str(exploration), "pool_size": int(pool_size),
                       "gamma": float(gamma), "model_name": model_name, "exported": exported},
            "training": dict(training),
        }
        if ope is not None:
            meta["ope"] = ope
        if extra:
            meta.update(extra)
        return meta

    return repo.create_version(policy_repo_name(model_name), writer)


@dataclass
class LoadedPolicy:
    """A policy version ready to score pools: ``values(x)`` -> float64 [M]."""

    version: str
    features: list[str]
    exploration: Exploration
    pool_size: int
    meta: dict
    module: object

    def values(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        return out.numpy().astype(np.float64, copy=False)


def load_policy(repo: ModelRepository, model_name: str, version: str) -> LoadedPolicy:
    """Verify and load version ``version`` of ``<model_name>.policy`` (CPU; a small MLP)."""
    name = policy_repo_name(model_name)
    path = repo.path(name, version)
    meta = repo.meta(name, version)
    if meta.get("kind") != "policy":
        raise FailedPrecondition(f"{name}/{version} is not a policy (kind {meta.get('kind')!r})")
    verify_files(path, meta)
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path / POLICY_ARTIFACT), map_location="cpu")
    module.eval()
    pol = meta["policy"]
    return LoadedPolicy(str(version), list(pol["features"]), Exploration.parse(pol["exploration"]),
                        int(pol.get("pool_size") or 0), meta, module)
