"""The DLRM-style ranker in PyTorch (the TensorFlow twin is ranker_tf.py; same layers, same I/O).

    dense [N, D] --standardise (stored in the model)--> bottom MLP --> b [N, E]
    ids [N, K]   --one embedding table per id column (ids mod buckets)--> e_1..e_K [N, E]
    z = [b, e_1, .., e_K]                                    [N, K+1, E]
    pairwise dot interactions <z_i, z_j>, i < j              [N, (K+1)K/2]
    top MLP over [b, interactions] --> logit --> sigmoid --> score [N] (click probability)

With a prior column (``prior_index`` >= 0, e.g. the OBD item click rate) the network is wide & deep /
residual: logit = log(p / (1 - p)) of that raw dense column (clipped to [1e-6, 1 - 1e-6]) + the top
MLP's output, whose last layer starts at zero (weights and bias), so the untrained model is exactly
the prior and training learns only a correction to it.

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
                 dense_mean: np.ndarray, dense_std: np.ndarray, base_rate: float = 0.5, prior_index: int = -1) -> None:
        super().__init__()
        self.prior_index = int(prior_index)
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
            if self.prior_index >= 0:  # the prior carries the base rate; the correction starts at 0
                self.top[-1].weight.zero_()
                self.top[-1].bias.zero_()
            else:
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
        out = self.top(torch.cat([b, inter], dim=1)).squeeze(-1)
        if self.prior_index >= 0:
            p = torch.clamp(dense[:, self.prior_index], 1e-6, 1.0 - 1e-6)
            out = out + (torch.log(p) - torch.log1p(-p))
        return out

    def embedding_penalty(self, ids: torch.Tensor) -> torch.Tensor:
        """Mean over the batch of the summed squared norms of the looked-up embedding rows."""
        ids = torch.remainder(ids, self.buckets)
        total = torch.zeros((), dtype=torch.float32)
        for k, emb in enumerate(self.embeddings):
            total = total + emb(ids[:, k]).pow(2).sum()
        return total / max(int(ids.shape[0]), 1)

    def forward(self, dense: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(dense, ids))


class TorchRanker:
    framework = "torch"
    artifact = ARTIFACT

    def __init__(self, dense_dim: int, buckets: list[int], hp: dict, seed: int, dense_mean: np.ndarray,
                 dense_std: np.ndarray, base_rate: float, prior_index: int = -1) -> None:
        torch.manual_seed(seed)
        self.model = DLRM(dense_dim, list(buckets), int(hp["embedding_dim"]), list(hp["bottom"]), list(hp["top"]),
                          dense_mean, dense_std, base_rate, prior_index)
        self.prior = prior_index >= 0
        self.embedding_l2 = float(hp.get("embedding_l2", 0.0))
        emb = [p for n, p in self.model.named_parameters() if n.startswith("embeddings.")]
        rest = [p for n, p in self.model.named_parameters() if not n.startswith("embeddings.")]
        # SparseAdam (lazy Adam) for the embedding tables, Adam for the MLPs; weight decay applies to
        # the MLPs only (SparseAdam has none); the embeddings' L2 is `embedding_l2` on the rows looked up
        self.opts = [torch.optim.SparseAdam(emb, lr=float(hp["lr"])),
                     torch.optim.Adam(rest, lr=float(hp["lr"]), weight_decay=float(hp.get("weight_decay", 0.0)))]
        self.loss = nn.BCEWithLogitsLoss()

    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def train_batch(self, dense: np.ndarray, ids: np.ndarray, labels: np.ndarray) -> float:
        self.model.train()
        for opt in self.opts:
            opt.zero_grad(set_to_none=True)
        ids_t = torch.from_numpy(ids)
        logit = self.model.logits(torch.from_numpy(dense), ids_t)
        loss = self.loss(logit, torch.from_numpy(labels))
        if self.embedding_l2:
            loss = loss + self.embedding_l2 * self.model.embedding_penalty(ids_t)
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
