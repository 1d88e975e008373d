"""Deterministic user bucketing, shared by the canary and the A/B experiments.

``position(salt, user_id)`` maps a user to a point in [0, 1) with BLAKE2b (8 bytes): the same user
and salt give the same point in every gateway replica and process (no Python ``hash``, which is
salted per process), and different salts give independent points, so a user's canary membership
says nothing about their experiment variant. A canary at P % serves the users whose point is below
P/100: raising P keeps every user already in it (no one flips back and forth during a ramp).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

_SCALE = float(1 << 64)


def position(salt: str, user_id: str) -> float:
    digest = hashlib.blake2b(f"{salt}\x1f{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


def in_share(salt: str, user_id: str, percent: float) -> bool:
    """Whether the user is in the first ``percent`` % (0-100) of the salt's order."""
    return position(salt, user_id) * 100.0 < percent


def pick(salt: str, user_id: str, weights: Sequence[float]) -> int:
    """The index of the user's variant, each variant taking its weight's share of users."""
    total = float(sum(weights))
    point = position(salt, user_id) * total
    upto = 0.0
    for i, w in enumerate(weights):
        upto += w
        if point < upto:
            return i
    return len(weights) - 1  # rounding at the very top
