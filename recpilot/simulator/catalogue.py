"""A deterministic item catalogue: ids, titles, categories, prices and long-tail popularity.

``catalogue(seed, n_items)`` returns the same items in every process and Python version (each item
is drawn from its own ``random.Random`` seeded by ``(seed, index)``, whose ``random()`` stream is
documented as reproducible), so other parts (Search in inference, training) rebuild the exact
catalogue the simulator used from two numbers. Item ``i`` does not depend on ``n_items``: a bigger
catalogue extends a smaller one.

Popularity is a Pareto draw (alpha 1.16, the "80/20" shape): a few items get most of the traffic,
most items form the long tail.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

# (category, nouns, price low, price high)
CATEGORIES: tuple[tuple[str, tuple[str, ...], float, float], ...] = (
    ("dresses", ("dress", "maxi dress", "midi dress", "shirt dress"), 25.0, 180.0),
    ("tops", ("t-shirt", "blouse", "tank top", "polo"), 8.0, 60.0),
    ("knitwear", ("sweater", "cardigan", "hoodie", "turtleneck"), 20.0, 140.0),
    ("jeans", ("slim jeans", "straight jeans", "wide jeans", "jeggings"), 25.0, 120.0),
    ("trousers", ("chinos", "joggers", "cargo pants", "tailored trousers"), 20.0, 110.0),
    ("skirts", ("mini skirt", "pleated skirt", "pencil skirt", "denim skirt"), 15.0, 90.0),
    ("jackets", ("denim jacket", "bomber jacket", "blazer", "rain jacket"), 35.0, 250.0),
    ("coats", ("wool coat", "parka", "trench coat", "puffer coat"), 60.0, 400.0),
    ("sneakers", ("running shoes", "canvas sneakers", "court sneakers", "trail shoes"), 30.0, 180.0),
    ("boots", ("ankle boots", "chelsea boots", "hiking boots", "rain boots"), 40.0, 260.0),
    ("sandals", ("flip flops", "slides", "strappy sandals", "espadrilles"), 10.0, 90.0),
    ("bags", ("tote bag", "backpack", "crossbody bag", "clutch"), 15.0, 300.0),
    ("accessories", ("scarf", "belt", "beanie", "sunglasses"), 5.0, 80.0),
    ("jewelry", ("necklace", "earrings", "bracelet", "ring"), 10.0, 200.0),
    ("watches", ("analog watch", "digital watch", "smartwatch", "chronograph"), 40.0, 450.0),
    ("sportswear", ("leggings", "sports bra", "training shorts", "track jacket"), 15.0, 100.0),
    ("swimwear", ("bikini", "swimsuit", "swim shorts", "rash guard"), 15.0, 90.0),
    ("underwear", ("socks", "boxers", "bralette", "briefs"), 5.0, 45.0),
    ("kids", ("kids t-shirt", "kids jeans", "kids jacket", "kids sneakers"), 8.0, 70.0),
    ("home", ("cushion", "throw blanket", "candle", "vase"), 8.0, 120.0),
)
CATEGORY_NAMES = tuple(c[0] for c in CATEGORIES)
ADJECTIVES = ("classic", "cozy", "essential", "vintage", "modern", "relaxed", "fitted", "oversized",
              "lightweight", "premium", "everyday", "soft", "bold", "minimal", "organic", "recycled")
COLORS = ("black", "white", "navy", "grey", "beige", "olive", "red", "blue", "green", "pink",
          "brown", "cream", "yellow", "burgundy", "khaki", "lilac")
MATERIALS = ("cotton", "linen", "wool", "denim", "leather", "silk", "cashmere", "fleece", "nylon", "jersey")
PARETO_ALPHA = 1.16


@dataclass(frozen=True)
class Item:
    item_id: str
    index: int
    title: str
    category: str
    price: float
    popularity: float  # relative traffic weight (Pareto, long tail)
    quality: float     # latent appeal in [0.2, 1.0]: part of the click model's ground truth


def item_id(index: int) -> str:
    return f"item-{index:06d}"


def make_item(seed: int, index: int) -> Item:
    rng = random.Random(seed * 1_000_003 + index)
    cat_idx = int(rng.random() * len(CATEGORIES))
    category, nouns, lo, hi = CATEGORIES[cat_idx]
    noun = nouns[int(rng.random() * len(nouns))]
    title = " ".join((
        ADJECTIVES[int(rng.random() * len(ADJECTIVES))],
        COLORS[int(rng.random() * len(COLORS))],
        MATERIALS[int(rng.random() * len(MATERIALS))],
        noun,
    )).title()
    # log-uniform price in the category's range, rounded to .99 / .49 endings
    price = lo * (hi / lo) ** rng.random()
    price = max(0.49, round(int(price) + (0.99 if rng.random() < 0.7 else 0.49), 2))
    popularity = (1.0 - rng.random()) ** (-1.0 / PARETO_ALPHA)  # Pareto(alpha), >= 1
    quality = 0.2 + 0.8 * rng.random()
    return Item(item_id(index), index, title, category, price, round(popularity, 6), round(quality, 6))


def catalogue(seed: int = 42, n_items: int = 2000) -> list[Item]:
    """The catalogue for ``(seed, n_items)``: deterministic, item ``i`` independent of ``n_items``."""
    if n_items < 1:
        raise ValueError("n_items must be >= 1")
    return [make_item(seed, i) for i in range(n_items)]


def write_catalogue(items: list[Item], path: Path) -> Path:
    """Write one JSON object per line (item_id, title, category, price, popularity, quality)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for it in items:
            fh.write(json.dumps(asdict(it), ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def read_catalogue(path: Path) -> list[Item]:
    with path.open(encoding="utf-8") as fh:
        return [Item(**json.loads(line)) for line in fh if line.strip()]
