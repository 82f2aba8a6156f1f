"""Online Q-learning of a re-ranking policy from the reward stream (torch, CPU).

State and action: the policy inputs of one pool item (:mod:`recpilot.rl.features`: the ranker's
dense inputs, whose user-item columns carry the user's state, plus the ranker's score) and the
slot it is shown in. The network is

    Q(x, slot) = g(mlp(standardise(x)) + b[slot])          g = sigmoid (loss "bce") or identity ("huber")

an MLP over the item's inputs plus a learned offset per slot (1..``max_position``; later slots share
the last offset), the position-based model's form: the slot changes how likely a shown item is
examined, not which item is better. The exported module (:meth:`QLearner.export_module`, written by
``recpilot.rl.artifact.write_policy_version``) maps ``[M, F]`` to Q at the top slot, with the
standardisation inside it; slates are drawn from these values by :mod:`recpilot.rl.slate`.

Training: every observed reward row goes into a replay buffer; :meth:`QLearner.train` runs
minibatch updates (Adam) sampled uniformly from it, against the target

    y = r                                             gamma = 0 (a contextual bandit)
    y = r + gamma * max_b Q_target(x_b, slot 1)       gamma > 0

where, for gamma > 0, ``b`` ranges over the items *shown* in the same user's next impression of the
same session (what the reward stream carries: a Reward holds the shown item's inputs, not the
whole pool). This approximates ``max_a Q(s', a)`` over the next pool by its shown part evaluated at
the top slot. A row waits in the buffer, not yet sampled, until its session's next impression
arrives (its target then uses whatever rows of that impression have arrived when sampled) or until
``session_gap_ms`` of impression time passes without one (then it is terminal: y = r). A row of an
impression older than its session's latest, whose successor is no longer known, is terminal too.
The loss is BCE on the logit (gamma = 0 only: targets in [0, 1]) or Huber; the target network is a
copy synchronised every ``target_sync`` updates, or moved by Polyak averaging with ``tau`` > 0.

Exploration is a schedule over served impressions: ``explore`` (the logged rule, e.g.
``epsilon_greedy:0.05`` or ``softmax:0.02``) reached linearly from ``explore_start`` (the
parameter's starting value) over ``explore_decay`` impressions (:meth:`QLearner.exploration`).

Checkpoints (:meth:`state_dict` / :meth:`load_state_dict`) hold the networks, the optimizer, the
replay buffer, the pending sessions, the sampling generator and the counters: a restored learner
makes bit-for-bit the same next update as the original given the same data.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from torch import nn

from recpilot.featurespec import DENSE_FEATURES
from recpilot.rl.features import POLICY_FEATURES, policy_inputs
from recpilot.rl.slate import Exploration

LOSSES = ("bce", "huber")


@dataclass
class QConfig:
    hidden: tuple[int, ...] = (64, 32)
    lr: float = 1e-3
    weight_decay: float = 0.0
    gamma: float = 0.0                 # discount; 0 = contextual bandit
    loss: str = "bce"                  # "bce" (gamma 0 only) or "huber"
    batch_size: int = 128
    replay_capacity: int = 100_000     # rows (shown items)
    min_replay: int = 256              # rows before the first update
    target_sync: int = 250             # updates between target copies (when tau == 0)
    tau: float = 0.0                   # Polyak rate per update (> 0 replaces the hard copies)
    max_position: int = 10
    max_shown: int = 10                # shown items kept per impression for the gamma > 0 target
    session_gap_ms: int = 30 * 60 * 1000
    explore: str = "epsilon_greedy:0.05"
    explore_start: float | None = 0.3  # the rule's parameter (epsilon or temperature) at impression 0
    explore_decay: int = 10_000        # impressions to go from explore_start to the final parameter
    seed: int = 0
    threads: int | None = 1            # torch intra-op threads (None: leave as is)
    features: tuple[str, ...] = field(default=POLICY_FEATURES)

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if not 0.0 <= self.gamma < 1.0:
            raise ValueError(f"gamma must be in [0, 1), got {self.gamma}")
        if self.loss == "bce" and self.gamma > 0:
            raise ValueError("the bce loss needs targets in [0, 1]: use loss='huber' with gamma > 0")
        if not 0.0 <= self.tau <= 1.0:
            raise ValueError(f"tau must be in [0, 1], got {self.tau}")
        Exploration.parse(self.explore)


class QNet(nn.Module):
    """``forward(x [M, F]) -> [M]``: Q at the top slot (the exported policy). ``raw(x, slot)``: the
    pre-activation for 0-based slots (training)."""

    def __init__(self, n_features: int, hidden: tuple[int, ...], max_position: int, prob: bool) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("inv_std", torch.ones(n_features))
        sizes = [n_features, *hidden, 1]
        layers: list[nn.Module] = []
        for i in range(len(sizes) - 1):
            layers.append(nn.Linear(sizes[i], sizes[i + 1]))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        self.mlp = nn.Sequential(*layers)
        self.slot_bias = nn.Parameter(torch.zeros(max_position))
        self.prob = prob
        if prob:  # start near a low click rate instead of 0.5
            with torch.no_grad():
                self.mlp[-1].bias.fill_(-3.0)

    def raw(self, x: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        return self.mlp((x - self.mean) * self.inv_std).squeeze(-1) + self.slot_bias[slot]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.mlp((x - self.mean) * self.inv_std).squeeze(-1) + self.slot_bias[0]
        if self.prob:
            return torch.sigmoid(z)
        return z


class QLearner:
    """Online Q-learning from reward rows. A row is a dict with what a ``Reward`` carries:
    ``dense`` (the shown item's 17 ranker inputs), ``score`` (ranker score), ``position`` (1-based),
    ``reward``, ``request_id``, ``session_id``, ``user_id``, ``impression_ts_ms``."""

    def __init__(self, config: QConfig | None = None) -> None:
        cfg = self.config = config or QConfig()
        if cfg.threads:
            torch.set_num_threads(int(cfg.threads))
        torch.manual_seed(cfg.seed)
        f = len(cfg.features)
        self.net = QNet(f, tuple(cfg.hidden), cfg.max_position, cfg.loss == "bce")
        self.target = copy.deepcopy(self.net)
        for p in self.target.parameters():
            p.requires_grad_(False)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.rng = np.random.default_rng(cfg.seed)
        c = cfg.replay_capacity
        self.x = np.zeros((c, f), dtype=np.float32)
        self.slot = np.zeros(c, dtype=np.int64)
        self.r = np.zeros(c, dtype=np.float32)
        self.nxt = np.full(c, -1, dtype=np.int64)     # absolute id of the next impression, -1 terminal
        self.ready = np.zeros(c, dtype=bool)
        self.rows = 0                                  # rows ever observed (absolute row ids)
        # impressions (for the gamma > 0 target): the row ids of their shown items, a ring as large as the
        # buffer (an impression is newer than every row pointing at it, so its rows are still there)
        self.imp_rows = np.zeros((c, cfg.max_shown), dtype=np.int64) if cfg.gamma > 0 else None
        self.imp_n = np.zeros(c, dtype=np.int64) if cfg.gamma > 0 else None
        self.impressions = 0                           # impressions ever seen (absolute ids)
        self.sessions: OrderedDict[str, dict] = OrderedDict()  # open sessions, oldest impression first
        self.next_of: OrderedDict[str, int] = OrderedDict()    # request id -> its successor's impression id
        self.imp_of: OrderedDict[str, int] = OrderedDict()     # request id -> its impression id
        self.latest_ts = 0
        self.requests = 0
        self.last_request = ""
        self.updates = 0
        self.normalised = False
        self.last_loss = float("nan")
        self.reward_sum = 0.0

    # -- data --------------------------------------------------------------------------------
    def _remember(self, od: OrderedDict, key: str, value) -> None:
        od[key] = value
        od.move_to_end(key)
        while len(od) > self.config.replay_capacity:
            od.popitem(last=False)

    def _new_impression(self, request_id: str) -> int:
        iid = self.impressions
        self.impressions += 1
        c = self.config.replay_capacity
        self.imp_n[iid % c] = 0
        self._remember(self.imp_of, request_id, iid)
        return iid

    def observe(self, rows) -> int:
        """Add reward rows to the replay buffer; returns how many."""
        cfg = self.config
        c = cfg.replay_capacity
        n = 0
        for row in rows:
            x = policy_inputs(np.asarray(row["dense"], dtype=np.float32).reshape(1, len(DENSE_FEATURES)),
                              np.array([row["score"]], dtype=np.float32))[0]
            i = self.rows % c
            self.x[i] = x
            self.slot[i] = min(max(int(row["position"]), 1), cfg.max_position) - 1
            self.r[i] = float(row["reward"])
            self.nxt[i] = -1
            self.ready[i] = cfg.gamma == 0
            rid = self.rows
            self.rows += 1
            if str(row["request_id"]) != self.last_request:
                self.last_request = str(row["request_id"])
                self.requests += 1
            n += 1
            self.reward_sum += float(row["reward"])
            ts = int(row.get("impression_ts_ms") or 0)
            self.latest_ts = max(self.latest_ts, ts)
            if cfg.gamma > 0:
                self._link(rid, str(row.get("session_id") or row.get("user_id") or ""), str(row["request_id"]), ts)
        if cfg.gamma > 0:
            self._close_sessions()
        return n

    def _link(self, rid: int, sid: str, req: str, ts: int) -> None:
        c = self.config.replay_capacity
        sess = self.sessions.get(sid)
        if sess is None or (sess["req"] != req and ts >= sess["ts"]):
            imp = self.imp_of.get(req)
            if imp is None:
                imp = self._new_impression(req)
            if sess is not None:  # the session's previous impression now has a successor
                for w in sess["waiting"]:
                    if w >= self.rows - c:
                        self.nxt[w % c], self.ready[w % c] = imp, True
                self._remember(self.next_of, sess["req"], imp)
            sess = {"req": req, "ts": ts, "imp": imp, "waiting": []}
            self.sessions[sid] = sess
            self.sessions.move_to_end(sid)
        if sess["req"] == req:
            k = sess["imp"] % c
            if self.imp_n[k] < self.config.max_shown:
                self.imp_rows[k, self.imp_n[k]] = rid
                self.imp_n[k] += 1
            sess["waiting"].append(rid)
            return
        # a row of an older impression of this session: its successor if known, else terminal
        nxt = self.next_of.get(req, -1)
        self.nxt[rid % c], self.ready[rid % c] = nxt, True

    def _close_sessions(self) -> None:
        c = self.config.replay_capacity
        horizon = self.latest_ts - self.config.session_gap_ms
        while self.sessions:
            sid, sess = next(iter(self.sessions.items()))
            if sess["ts"] >= horizon:
                break
            for w in sess["waiting"]:
                if w >= self.rows - c:
                    self.nxt[w % c], self.ready[w % c] = -1, True
            del self.sessions[sid]

    # -- learning ------------------------------------------------------------------------------
    def _normalise(self) -> None:
        size = min(self.rows, self.config.replay_capacity)
        x = self.x[:size].astype(np.float64)
        mean, std = x.mean(axis=0), x.std(axis=0)
        std = np.where(std > 1e-6, std, 1.0)
        for net in (self.net, self.target):
            net.mean.copy_(torch.from_numpy(mean.astype(np.float32)))
            net.inv_std.copy_(torch.from_numpy((1.0 / std).astype(np.float32)))
        self.normalised = True

    def _targets(self, idx: np.ndarray) -> torch.Tensor:
        cfg = self.config
        y = torch.from_numpy(self.r[idx].copy())
        if cfg.gamma == 0:
            return y
        nxt = self.nxt[idx]
        live = np.flatnonzero((nxt >= 0) & (nxt >= self.impressions - cfg.replay_capacity))
        if len(live) == 0:
            return y
        slots = nxt[live] % cfg.replay_capacity
        counts = self.imp_n[slots]
        xs = self.x[self.imp_rows[slots] % cfg.replay_capacity]   # [B, S, F]
        with torch.no_grad():
            q = self.target(torch.from_numpy(xs.reshape(-1, xs.shape[-1]))).reshape(len(live), -1)
        valid = torch.from_numpy(np.arange(xs.shape[1])[None, :] < counts[:, None])
        q = torch.where(valid, q, torch.full_like(q, -torch.inf)).amax(dim=1)
        q = torch.where(torch.from_numpy(counts > 0), q, torch.zeros_like(q))
        y[torch.from_numpy(live)] += float(cfg.gamma) * q
        return y

    def train(self, steps: int = 1) -> int:
        """Up to ``steps`` minibatch updates; returns how many ran (none before ``min_replay`` rows)."""
        cfg = self.config
        size = min(self.rows, cfg.replay_capacity)
        if size < cfg.min_replay:
            return 0
        if not self.normalised:
            self._normalise()
        ready = np.flatnonzero(self.ready[:size])
        if len(ready) == 0:
            return 0
        done = 0
        self.net.train()
        for _ in range(int(steps)):
            idx = ready[self.rng.integers(0, len(ready), min(cfg.batch_size, len(ready)))]
            y = self._targets(idx)
            z = self.net.raw(torch.from_numpy(self.x[idx]), torch.from_numpy(self.slot[idx]))
            if cfg.loss == "bce":
                loss = nn.functional.binary_cross_entropy_with_logits(z, y)
            else:
                loss = nn.functional.huber_loss(z, y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.updates += 1
            done += 1
            self.last_loss = float(loss.detach())
            if cfg.tau > 0:
                with torch.no_grad():
                    for pt, p in zip(self.target.parameters(), self.net.parameters()):
                        pt.mul_(1.0 - cfg.tau).add_(p, alpha=cfg.tau)
            elif self.updates % max(cfg.target_sync, 1) == 0:
                self.target.load_state_dict(self.net.state_dict())
        self.net.eval()
        return done

    # -- using it ------------------------------------------------------------------------------
    def values(self, x: np.ndarray) -> np.ndarray:
        """Q at the top slot for pool inputs ``x`` ``[M, F]`` (float64 [M])."""
        with torch.inference_mode():
            out = self.net(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        return out.numpy().astype(np.float64)

    def exploration(self, impressions: int | None = None) -> Exploration:
        """The exploration rule after ``impressions`` served impressions (default: those seen so far)."""
        cfg = self.config
        final = Exploration.parse(cfg.explore)
        n = self.impressions_seen if impressions is None else int(impressions)
        if cfg.explore_start is None or cfg.explore_decay <= 0 or final.rule not in ("epsilon_greedy", "softmax"):
            return final
        w = min(1.0, n / cfg.explore_decay)
        if final.rule == "epsilon_greedy":
            return replace(final, epsilon=(1 - w) * cfg.explore_start + w * final.epsilon)
        return replace(final, temperature=(1 - w) * cfg.explore_start + w * final.temperature)

    @property
    def impressions_seen(self) -> int:
        """Impressions observed: changes of ``request_id`` between consecutive rows."""
        return self.requests

    def export_module(self) -> nn.Module:
        """A copy of the network for ``write_policy_version``: ``[M, F]`` -> Q at the top slot."""
        m = copy.deepcopy(self.net).eval()
        for p in m.parameters():
            p.requires_grad_(False)
        return m

    def stats(self) -> dict:
        size = min(self.rows, self.config.replay_capacity)
        return {"rows": self.rows, "replay": size, "ready": int(self.ready[:size].sum()), "updates": self.updates,
                "impressions_linked": self.impressions, "open_sessions": len(self.sessions),
                "last_loss": self.last_loss, "mean_reward": self.reward_sum / self.rows if self.rows else 0.0,
                "exploration": str(self.exploration()), "gamma": self.config.gamma}

    # -- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        arrays = {k: getattr(self, k).copy() for k in ("x", "slot", "r", "nxt", "ready")}
        if self.imp_rows is not None:
            arrays["imp_rows"], arrays["imp_n"] = self.imp_rows.copy(), self.imp_n.copy()
        return {
            "config": asdict(self.config), "net": copy.deepcopy(self.net.state_dict()),
            "target": copy.deepcopy(self.target.state_dict()), "opt": copy.deepcopy(self.opt.state_dict()),
            "arrays": arrays, "rng": copy.deepcopy(self.rng.bit_generator.state),
            "sessions": copy.deepcopy(list(self.sessions.items())), "next_of": list(self.next_of.items()),
            "imp_of": list(self.imp_of.items()),
            "counters": {"rows": self.rows, "impressions": self.impressions, "latest_ts": self.latest_ts,
                         "requests": self.requests, "last_request": self.last_request,
                         "updates": self.updates, "normalised": self.normalised, "last_loss": self.last_loss,
                         "reward_sum": self.reward_sum},
        }

    def load_state_dict(self, state: dict) -> None:
        saved = dict(state["config"])
        saved["hidden"], saved["features"] = tuple(saved["hidden"]), tuple(saved["features"])
        if QConfig(**saved) != self.config:
            raise ValueError("the checkpoint was written with another QConfig")
        self.net.load_state_dict(state["net"])
        self.target.load_state_dict(state["target"])
        self.opt.load_state_dict(state["opt"])
        for k, v in state["arrays"].items():
            setattr(self, k, np.array(v, copy=True))
        self.rng = np.random.default_rng()
        self.rng.bit_generator.state = copy.deepcopy(state["rng"])
        self.sessions = OrderedDict(copy.deepcopy(state["sessions"]))
        self.next_of = OrderedDict(state["next_of"])
        self.imp_of = OrderedDict(state["imp_of"])
        for k, v in state["counters"].items():
            setattr(self, k, v)
        self.net.eval()
