"""The DLRM-style ranker in PyTorch (the TensorFlow twin is ranker_tf.py; same layers, same I/O).

    dense [N, D] --standardise (stored in the model)--> bottom MLP --> b [N, E]
    ids [N, K]   --one embedding table per id column (ids mod buckets)--> e_1..e_K [N, E]
    z = [b, e_1, .., e_K]                                    [N, K+1, E]
    pairwise dot interactions <z_i, z_j>, i < j              [N, (K+1)K/2]
    top MLP over [b, interactions] --> logit --> sigmoid --> score [N] (click probability)

Exported as TorchScript (``model.pt``) whose ``forward(dense, ids)`` returns the score.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np

from recpilot.models.loader import prepare_torch_use

prepare_torch_use()  # TF before torch: see there

import torch  # noqa: E402
from torch import nn  # noqa: E402

ARTIFACT = "model.pt"


def _mlp(sizes: list[int], last_act: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2 or last_act:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class DLRM(nn.Module):
    def __init__(self, dense_dim: int, buckets: list[int], emb_dim: int, bottom: list[int], top: list[int],
                 dense_mean: np.ndarray, dense_std: np.ndarray, base_rate: float = 0.5) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(np.asarray(dense_mean, dtype=np.float32)))
        self.register_buffer("inv_std", torch.as_tensor(1.0 / np.maximum(np.asarray(dense_std, dtype=np.float32), 1e-6)))
        self.register_buffer("buckets", torch.as_tensor(np.asarray(buckets, dtype=np.int64)))
        # sparse gradients: an optimizer step touches only the rows of the batch, not whole tables
        self.embeddings = nn.ModuleList(nn.Embedding(b, emb_dim, sparse=True) for b in buckets)
        for e in self.embeddings:
            nn.init.uniform_(e.weight, -0.05, 0.05)
        self.bottom = _mlp([dense_dim, *bottom, emb_dim], last_act=True)
        n_vec = len(buckets) + 1
        li, lj = torch.triu_indices(n_vec, n_vec, offset=1)
        self.register_buffer("li", li)
        self.register_buffer("lj", lj)
        self.top = _mlp([emb_dim + len(li), *top, 1], last_act=False)
        p = min(max(base_rate, 1e-4), 1 - 1e-4)
        with torch.no_grad():
            self.top[-1].bias.fill_(math.log(p / (1 - p)))

    def logits(self, dense: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        x = (dense - self.mean) * self.inv_std
        b = self.bottom(x)
        ids = torch.remainder(ids, self.buckets)
        vecs = [b]
        for k, emb in enumerate(self.embeddings):
            vecs.append(emb(ids[:, k]))
        z = torch.stack(vecs, dim=1)
        inter = torch.bmm(z, z.transpose(1, 2))[:, self.li, self.lj]
        return self.top(torch.cat([b, inter], dim=1)).squeeze(-1)

    def forward(self, dense: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(dense, ids))


class TorchRanker:
    framework = "torch"
    artifact = ARTIFACT

    def __init__(self, dense_dim: int, buckets: list[int], hp: dict, seed: int, dense_mean: np.ndarray,
                 dense_std: np.ndarray, base_rate: float) -> None:
        torch.manual_seed(seed)
        self.model = DLRM(dense_dim, list(buckets), int(hp["embedding_dim"]), list(hp["bottom"]), list(hp["top"]),
                          dense_mean, dense_std, base_rate)
        emb = [p for n, p in self.model.named_parameters() if n.startswith("embeddings.")]
        rest = [p for n, p in self.model.named_parameters() if not n.startswith("embeddings.")]
        # SparseAdam (lazy Adam) for the embedding tables, Adam for the MLPs; weight decay applies to
        # the MLPs only (SparseAdam has none)
        self.opts = [torch.optim.SparseAdam(emb, lr=float(hp["lr"])),
                     torch.optim.Adam(rest, lr=float(hp["lr"]), weight_decay=float(hp.get("weight_decay", 0.0)))]
        self.loss = nn.BCEWithLogitsLoss()

    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def train_batch(self, dense: np.ndarray, ids: np.ndarray, labels: np.ndarray) -> float:
        self.model.train()
        for opt in self.opts:
            opt.zero_grad(set_to_none=True)
        logit = self.model.logits(torch.from_numpy(dense), torch.from_numpy(ids))
        loss = self.loss(logit, torch.from_numpy(labels))
        loss.backward()
        for opt in self.opts:
            opt.step()
        return float(loss.detach())

    def predict(self, dense: np.ndarray, ids: np.ndarray, batch_size: int = 16384) -> np.ndarray:
        self.model.eval()
        out = []
        with torch.inference_mode():
            for s in range(0, len(dense), batch_size):
                out.append(self.model(torch.from_numpy(dense[s:s + batch_size]), torch.from_numpy(ids[s:s + batch_size])).numpy())
        return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)

    def get_state(self) -> dict:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def set_state(self, state: dict) -> None:
        self.model.load_state_dict(state)

    def export(self, directory: Path) -> str:
        self.model.eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated upstream, still the format
            scripted = torch.jit.script(self.model)
        scripted.save(str(Path(directory) / ARTIFACT))
        return ARTIFACT
