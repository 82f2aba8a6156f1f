"""The shopper simulator: a deterministic item catalogue, shoppers with latent tastes, a click
model with position bias, sessions and drift, and Kafka traffic with optional malformed and
duplicate messages. Library code; `recpilot generate` and `recpilot simulate` drive it."""

from recpilot.simulator.catalogue import CATEGORY_NAMES, Item, catalogue, read_catalogue, write_catalogue
from recpilot.simulator.shoppers import ClickModel, Population, User, make_user
from recpilot.simulator.traffic import (
    EXPECTED_REASON,
    MALFORMED_KINDS,
    ShopSimulator,
    TrafficMix,
    event_to_dict,
    event_to_json,
    malformed,
)

__all__ = [
    "CATEGORY_NAMES", "ClickModel", "EXPECTED_REASON", "Item", "MALFORMED_KINDS", "Population",
    "ShopSimulator", "TrafficMix", "User", "catalogue", "event_to_dict", "event_to_json", "make_user",
    "malformed", "read_catalogue", "write_catalogue",
]
