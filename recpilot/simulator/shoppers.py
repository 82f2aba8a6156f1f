"""Shoppers with latent category tastes, a position-bias click model, sessions and drift.

Ground truth (known, so learning curves can be checked against it):

* user ``u`` has a taste vector over categories (three favourites with most of the mass plus a
  small floor everywhere) and a price sensitivity;
* an item's attractiveness for a user is
  ``attract(u, i) = min(0.95, base_ctr * (0.3 + 6 * taste_u[cat_i]) * quality_i * price_factor)``;
* a ranked list is examined top-down with ``P(examine position k) = 1 / k ** position_bias``
  (position-based model), and a shown item is clicked with ``P(examine) * attract``;
* after a click, add-to-cart with ``p_cart`` and, after a cart, purchase with ``p_purchase``;
* drift (``drift_per_hour`` > 0): tastes move linearly from the user's own vector toward the same
  vector rotated by ``len(categories) // 2`` categories, fully after ``1 / drift_per_hour`` hours of
  simulated time; ``sudden_drift_at_s`` switches to the rotated tastes at once at that time.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass, field
from itertools import accumulate

from recpilot.simulator.catalogue import CATEGORY_NAMES, CATEGORIES, Item


@dataclass(frozen=True)
class User:
    user_id: str
    index: int
    tastes: tuple[float, ...]  # over CATEGORY_NAMES, sums to 1
    price_sensitivity: float   # 0 (does not care) .. 1 (prefers cheap items)
    activity: float            # relative chance to start a session


def user_id(index: int) -> str:
    return f"user-{index:06d}"


def make_user(seed: int, index: int) -> User:
    rng = random.Random(seed * 7_919 + 13 + index * 1_000_033)
    n = len(CATEGORY_NAMES)
    weights = [0.02] * n
    favourites = rng.sample(range(n), 3)
    for share, c in zip((0.5, 0.25, 0.13), favourites, strict=True):
        weights[c] += share
    total = sum(weights)
    tastes = tuple(w / total for w in weights)
    activity = (1.0 - rng.random()) ** (-1.0 / 1.5)
    return User(user_id(index), index, tastes, round(rng.random(), 4), round(activity, 4))


@dataclass
class ClickModel:
    base_ctr: float = 0.12
    position_bias: float = 1.0
    p_cart: float = 0.25
    p_purchase: float = 0.45
    drift_per_hour: float = 0.0
    sudden_drift_at_s: float | None = None

    def tastes(self, user: User, elapsed_s: float) -> tuple[float, ...]:
        w = 0.0
        if self.sudden_drift_at_s is not None and elapsed_s >= self.sudden_drift_at_s:
            w = 1.0
        elif self.drift_per_hour > 0:
            w = min(1.0, self.drift_per_hour * elapsed_s / 3600.0)
        if w == 0.0:
            return user.tastes
        n = len(user.tastes)
        shift = n // 2
        return tuple((1 - w) * user.tastes[c] + w * user.tastes[(c + shift) % n] for c in range(n))

    def attractiveness(self, user: User, item: Item, elapsed_s: float = 0.0) -> float:
        taste = self.tastes(user, elapsed_s)[_CAT_INDEX[item.category]]
        price_factor = 1.0 - 0.5 * user.price_sensitivity * min(1.0, item.price / 300.0)
        return min(0.95, self.base_ctr * (0.3 + 6.0 * taste) * item.quality * price_factor)

    def examine(self, position: int) -> float:
        """P(the shopper looks at 1-based ``position``)."""
        return 1.0 / position ** self.position_bias

    def click_probability(self, user: User, item: Item, position: int, elapsed_s: float = 0.0) -> float:
        return self.examine(position) * self.attractiveness(user, item, elapsed_s)


_CAT_INDEX = {name: i for i, name in enumerate(CATEGORY_NAMES)}


class WeightedSampler:
    """O(log n) sampling from fixed weights with a caller-supplied uniform draw."""

    def __init__(self, values: list, weights: list[float]) -> None:
        if not values:
            raise ValueError("nothing to sample from")
        self.values = values
        self.cum = list(accumulate(weights))
        self.total = self.cum[-1]

    def sample(self, u: float):
        return self.values[min(bisect.bisect_right(self.cum, u * self.total), len(self.values) - 1)]


@dataclass
class Population:
    """Users, created lazily (deterministic from ``seed`` and index)."""

    seed: int
    n_users: int
    _cache: dict[int, User] = field(default_factory=dict)
    _sampler: WeightedSampler | None = None

    def user(self, index: int) -> User:
        u = self._cache.get(index)
        if u is None:
            u = self._cache[index] = make_user(self.seed, index)
        return u

    def sample(self, u: float) -> User:
        if self._sampler is None:
            # activity skew without building every user: a Zipf-like weight by index
            self._sampler = WeightedSampler(list(range(self.n_users)),
                                            [1.0 / (1 + i) ** 0.6 for i in range(self.n_users)])
        return self.user(self._sampler.sample(u))


def category_queries() -> dict[str, tuple[str, ...]]:
    """Search words per category (the nouns of CATEGORIES)."""
    return {name: nouns for name, nouns, _lo, _hi in CATEGORIES}
