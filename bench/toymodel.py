"""A small, real TorchScript MLP ranker written into the model repository, for tests and the
serving benchmark (no training: seeded random weights, so its scores are known exactly).

Architecture: embeddings of the hashed ids (dim 8 each) concatenated with the dense features ->
MLP (hidden sizes ``hidden``) -> sigmoid. Inputs/outputs are the ranker's (dense FP32 [-1, D],
ids INT64 [-1, K] -> score FP32 [-1]).
"""

from __future__ import annotations

import time
from pathlib import Path

from recpilot.featurespec import DENSE_FEATURES, ID_FEATURES


def _meta(name: str, seed: int, hidden: tuple[int, ...]) -> dict:
    now = int(time.time() * 1000)
    block = {"auc": 0.5, "auc_ci": [0.5, 0.5], "logloss": 0.7, "recall@10": 0.0, "ndcg@10": 0.0}
    return {
        "name": name, "framework": "torch", "artifact": "model.pt", "created_ms": now,
        "inputs": [{"name": "dense", "datatype": "FP32", "shape": [-1, len(DENSE_FEATURES)]},
                   {"name": "ids", "datatype": "INT64", "shape": [-1, len(ID_FEATURES)]}],
        "outputs": [{"name": "score", "datatype": "FP32", "shape": [-1]}],
        "feature_set": "recpilot", "dense_features": list(DENSE_FEATURES),
        "id_features": [[n, b] for n, b in ID_FEATURES],
        "training": {"source": "toy:random-weights", "rows": 0, "data_window": {"start_ms": now, "end_ms": now},
                     "seed": seed, "hyperparameters": {"hidden": list(hidden)}, "seconds": 0.0},
        "metrics": {**block, "baseline": dict(block), "production": None},
        "reference": {},
    }


def build_module(seed: int = 0, hidden: tuple[int, ...] = (64, 32), emb_dim: int = 8):
    import torch
    from torch import nn

    class ToyRanker(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embs = nn.ModuleList([nn.Embedding(b, emb_dim) for _, b in ID_FEATURES])
            sizes = [len(DENSE_FEATURES) + emb_dim * len(ID_FEATURES), *hidden]
            layers: list[nn.Module] = []
            for a, b in zip(sizes, sizes[1:]):
                layers += [nn.Linear(a, b), nn.ReLU()]
            layers.append(nn.Linear(sizes[-1], 1))
            self.mlp = nn.Sequential(*layers)

        def forward(self, dense: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
            parts = [dense]
            for i, emb in enumerate(self.embs):
                parts.append(emb(ids[:, i]))
            return torch.sigmoid(self.mlp(torch.cat(parts, dim=1))).squeeze(1)

    torch.manual_seed(seed)
    return torch.jit.script(ToyRanker().eval())


def write_version(root: Path, name: str = "ranker", seed: int = 0, hidden: tuple[int, ...] = (64, 32),
                  corrupt: bool = False) -> str:
    """Create the next version of ``name`` in the repository at ``root``; return the version.
    ``corrupt=True`` writes an artifact that is not TorchScript (for failed-load tests)."""
    from recpilot.models.repository import ModelRepository

    def writer(stage: Path) -> dict:
        if corrupt:
            (stage / "model.pt").write_bytes(b"this is not a TorchScript archive")
        else:
            build_module(seed, hidden).save(str(stage / "model.pt"))
        return _meta(name, seed, hidden)

    return ModelRepository(root).create_version(name, writer)
