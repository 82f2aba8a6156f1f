"""Tiny re-ranking policies for tests: TorchScript modules written as versions of ``<model>.policy``
with :func:`recpilot.rl.artifact.write_policy_version`, whose values are known by hand."""

from __future__ import annotations

import os
from pathlib import Path

from recpilot.rl.features import POLICY_FEATURES
from recpilot.rl.slate import Exploration


def reversed_scores_module(scale: float = 1.0):
    """value(x) = -scale * ranker_score: prefers the pool's *lowest* ranker scores (a policy that
    visibly differs from the ranker's order)."""
    import torch

    col = POLICY_FEATURES.index("ranker_score")

    class Reversed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = scale
            self.col = col

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return -self.scale * x[:, self.col]

    return Reversed()


def write_toy_policy(root: Path, model: str = "ranker", exploration: str = "greedy", pool_size: int = 4,
                     scale: float = 1.0, tampered: bool = False) -> str:
    """The next version of ``<model>.policy`` at ``root`` (a :func:`reversed_scores_module`); with
    ``tampered`` its policy.pt is overwritten afterwards with as many other bytes: the repository's
    quick check (sizes) passes, so deployment commands naming it are applied, and the load fails
    on the manifest's sha256."""
    from recpilot.models.repository import POLICY_ARTIFACT, ModelRepository
    from recpilot.rl.artifact import policy_repo_name, write_policy_version

    repo = ModelRepository(root)
    version = write_policy_version(repo, model, reversed_scores_module(scale), list(POLICY_FEATURES),
                                   Exploration.parse(exploration), pool_size=pool_size, gamma=0.0,
                                   training={"source": "test"})
    if tampered:
        d = repo.path(policy_repo_name(model), version)
        os.chmod(d, 0o755)
        os.chmod(d / POLICY_ARTIFACT, 0o644)
        size = (d / POLICY_ARTIFACT).stat().st_size
        (d / POLICY_ARTIFACT).write_bytes(b"x" * size)
    return version
