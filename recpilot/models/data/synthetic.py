"""Source: generated data — raw events from the shopper simulator (``--data sim[:EVENTS[:SEED]]``,
replayed through :mod:`.events`) and synthetic logged impressions with a hidden click model (in the
exported table format of :mod:`.table`; for the training benchmark and tests). The same arguments
give the same data.
"""

from __future__ import annotations

import numpy as np

from recpilot import featurespec
from recpilot.models.data.dataset import DataError, Dataset
from recpilot.models.data.events import examples_from_events


def load_simulator(spec: str, attribution_ms: int) -> Dataset:
    """``sim[:EVENTS[:SEED]]`` (default 100,000 events, seed 0) as a dataset of raw events."""
    parts = spec.split(":")
    try:
        n = int(parts[1]) if len(parts) > 1 and parts[1] else 100_000
        seed = int(parts[2]) if len(parts) > 2 else 0
    except ValueError:
        raise DataError(f"bad simulator spec {spec!r} (expected sim[:EVENTS[:SEED]])") from None
    return examples_from_events(simulated_events(n, seed), attribution_ms, source=f"simulator:{n}:{seed}")


def simulated_events(n: int, seed: int = 0, start_ms: int = 1_760_000_000_000, gap_ms: int = 200) -> list[dict]:
    """``n`` raw events from the project's shopper simulator (``recpilot.simulator``), as dicts."""
    if n <= 0:
        raise DataError("the simulator was asked for 0 events: the dataset is empty")
    from recpilot.simulator import ShopSimulator

    sim = ShopSimulator(seed=seed, run_id=f"train{seed}")  # fixed ids: the same seed, the same dataset
    out, now = [], start_ms
    for _ in range(n):
        now += gap_ms
        ev = sim.next_event(now)
        out.append({"event_id": ev.event_id, "user_id": ev.user_id, "session_id": ev.session_id,
                    "event_type": featurespec.EVENT_NAMES.get(int(ev.event_type), ""), "item_id": ev.item_id,
                    "price": ev.price, "timestamp_ms": ev.timestamp_ms, "request_id": ev.request_id,
                    "context": dict(ev.context)})
    return out


def synthetic_impressions(n: int, seed: int = 0, n_users: int = 20_000, n_items: int = 5_000,
                          per_request: int = 20):
    """A table of ``n`` logged impressions with the featurespec features and a hidden click model
    (for the training benchmark and tests): returns a pandas DataFrame in the exported format (b)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    n_req = (n + per_request - 1) // per_request
    users = rng.integers(0, n_users, n_req)
    req_ts = np.sort(rng.integers(1_700_000_000_000, 1_700_000_000_000 + 7 * 86_400_000, n_req))
    item_pop = rng.zipf(1.3, n_items).clip(1, 10_000).astype(np.float64)
    item_q = rng.normal(0, 1, n_items)
    user_q = rng.normal(0, 0.5, n_users)
    items = rng.choice(n_items, n_req * per_request, p=item_pop / item_pop.sum())[:n]
    r = np.repeat(np.arange(n_req), per_request)[:n]
    pos = (np.arange(n) % per_request) + 1
    views = item_pop[items] * rng.uniform(5, 15, n)
    clicks = views * (0.04 * np.exp(0.6 * item_q[items])) * rng.uniform(0.8, 1.2, n)
    df = pd.DataFrame({
        "request_id": [f"r{x}" for x in r], "user_id": [f"u{u}" for u in users[r]],
        "item_id": [f"i{x}" for x in items], "position": pos, "timestamp_ms": req_ts[r],
        "category": [f"c{x % 50}" for x in items],
    })
    f = {name: np.zeros(n) for name in featurespec.DENSE_FEATURES}
    f["item_log_views"] = np.log1p(views)
    f["item_log_clicks"] = np.log1p(clicks)
    f["item_log_carts"] = np.log1p(clicks * 0.3)
    f["item_log_purchases"] = np.log1p(clicks * 0.1)
    f["item_log_views_1h"] = np.log1p(views / 100)
    f["item_log_clicks_1h"] = np.log1p(clicks / 100)
    f["item_log_views_24h"] = np.log1p(views / 10)
    f["item_log_clicks_24h"] = np.log1p(clicks / 10)
    f["item_log_purchases_24h"] = np.log1p(clicks / 100)
    f["item_ctr"] = (clicks + 1) / (views + 20)
    f["item_log_price"] = np.log1p(rng.lognormal(3, 1, n_items)[items])
    aff = rng.exponential(1.0, n) * (rng.random(n) < 0.4)
    f["user_cat_affinity"] = np.log1p(aff)
    f["user_cat_affinity_share"] = aff / (aff + 3.0)
    f["user_viewed_item"] = (rng.random(n) < 0.1).astype(float)
    f["user_clicked_item"] = (rng.random(n) < 0.03).astype(float)
    f["user_bought_item"] = (rng.random(n) < 0.01).astype(float)
    f["user_log_session_events"] = np.log1p(rng.integers(1, 30, n))
    for k, v in f.items():
        df[k] = v.astype(np.float32)
    logit = (-2.5 + 0.9 * item_q[items] + 0.6 * user_q[users[r]] + 1.5 * f["user_cat_affinity"]
             + 1.0 * f["user_viewed_item"] - 0.15 * (pos - 1))
    df["label"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    return df
