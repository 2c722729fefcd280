"""Random container names (``adjective_noun``) for containers created without ``--name``."""

from __future__ import annotations

import secrets
from collections.abc import Callable

__all__ = ["random_name"]

_ADJECTIVES = (
    "agile", "amber", "ardent", "balmy", "bold", "brave", "breezy", "bright", "brisk", "calm",
    "clever", "coastal", "cosmic", "crisp", "curious", "daring", "deft", "eager", "fair",
    "fearless", "fleet", "gentle", "gleaming", "golden", "happy", "hardy", "hearty", "honest",
    "jolly", "keen", "kind", "lively", "loyal", "lucid", "lunar", "merry", "mighty", "nimble",
    "noble", "patient", "plucky", "polar", "proud", "quick", "quiet", "rapid", "ready",
    "salty", "serene", "sharp", "shining", "silver", "sleek", "snug", "solar", "spry",
    "stout", "sturdy", "sunny", "swift", "tidal", "tidy", "trusty", "vivid", "wandering",
    "warm", "windy", "wise", "zesty",
)
_NOUNS = (
    "anchor", "atoll", "bay", "beacon", "bosun", "bow", "breaker", "buoy", "cabin", "cape",
    "capstan", "compass", "coral", "cove", "current", "cutter", "dinghy", "dock", "dolphin",
    "dory", "estuary", "fathom", "fjord", "gale", "galley", "gull", "harbor", "helm", "hull",
    "inlet", "island", "jib", "keel", "ketch", "knot", "lagoon", "lantern", "lee", "mast",
    "mooring", "narwhal", "oar", "orca", "otter", "pelican", "pier", "puffin", "reef",
    "rudder", "sail", "schooner", "seal", "shoal", "skiff", "sloop", "sound", "spray",
    "starboard", "strait", "swell", "tern", "tide", "voyage", "wake", "wave", "whale",
    "wharf", "yawl",
)


def random_name(taken: Callable[[str], bool]) -> str:
    """A ``/adjective_noun`` name for which ``taken`` is False (a digit is added on clashes)."""
    base = f"{secrets.choice(_ADJECTIVES)}_{secrets.choice(_NOUNS)}"
    name = f"/{base}"
    i = 0
    while taken(name):
        i += 1
        name = f"/{base}{i}" if i < 10 else f"/{base}_{secrets.token_hex(3)}"
    return name
