"""The traffic model of the load test, kept free of locust (importing locust monkey-patches the
process with gevent), so it is unit-tested on its own (tests/loadtest/).

``Population``: who sends requests (Zipf-weighted known users from the bundle, a share of unknown
ones); ``Tally``: exact latencies and counts of the response fields ``fallback`` and ``cached``.
"""

from __future__ import annotations

import bisect
import itertools
import json
import random
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
ML100K_USERS = range(1, 944)
ML100K_ITEMS = range(1, 1683)


# ---------------------------------------------------------------- population
def _bundle_ids(bundle: Path, name: str) -> list[int] | None:
    """Ids from the bundle's ``<name>`` npy (row 0 is the reserved -1), or None if unreadable."""
    try:
        import numpy as np

        manifest = json.loads((bundle / "manifest.json").read_text())
        ids = np.load(bundle / manifest["files"][name]["path"], allow_pickle=False)
        known = [int(i) for i in ids.tolist() if int(i) >= 0]
        return known or None
    except Exception:  # any unreadable bundle: fall back to MovieLens' id ranges
        return None


class Population:
    """Who sends requests: Zipf-weighted known users plus a share of unknown ones."""

    def __init__(self, user_ids: list[int], item_ids: list[int], *, zipf_s: float,
                 unknown_ratio: float, seed: int) -> None:
        if not user_ids:
            raise ValueError("no user ids")
        self.rng = random.Random(seed)
        self.users = list(user_ids)
        self.rng.shuffle(self.users)  # rank 1 = most active user
        weights = [1.0 / (rank ** zipf_s) for rank in range(1, len(self.users) + 1)]
        self.cum_weights = list(itertools.accumulate(weights))
        self.items = list(item_ids)
        self.unknown_ratio = unknown_ratio

    @classmethod
    def from_options(cls, options: Any) -> Population:
        bundle = Path(options.bundle)
        if not bundle.is_absolute():
            bundle = REPO_ROOT / bundle
        users = _bundle_ids(bundle, "user_ids")
        items = _bundle_ids(bundle, "item_ids")
        source = f"bundle {bundle}" if users else "MovieLens-100K ids 1..943 (bundle unreadable)"
        print(f"loadtest: {len(users or ML100K_USERS)} known users from {source}")
        return cls(users or list(ML100K_USERS), items or list(ML100K_ITEMS), zipf_s=options.zipf_s,
                   unknown_ratio=options.unknown_ratio, seed=options.seed)

    def user_id(self, rng: random.Random) -> tuple[str, bool]:
        """(user id as sent, known?)"""
        if rng.random() < self.unknown_ratio:
            # never-seen ids: numeric ones past the catalog and opaque strings
            if rng.random() < 0.5:
                return str(10_000_000 + rng.randrange(1_000_000)), False
            return f"anon-{uuid.UUID(int=rng.getrandbits(128)).hex[:12]}", False
        x = rng.random() * self.cum_weights[-1]
        return str(self.users[bisect.bisect_left(self.cum_weights, x)]), True

    def items_sample(self, rng: random.Random, n: int) -> list[int]:
        return rng.sample(self.items, min(n, len(self.items)))


# ---------------------------------------------------------------- run-wide tallies
class Tally:
    """Exact latencies and response-field counts, written to --summary-json on quit."""

    def __init__(self) -> None:
        self.latencies_ms: list[float] = []  # every /recommend request, failed ones included
        self.requests = 0
        self.failures = 0
        self.first_at: float | None = None  # wall-clock bounds of the measured requests
        self.last_at: float | None = None
        self.fallbacks: Counter[str] = Counter()
        self.responses = 0
        self.cached = 0
        self.known = Counter()

    def request(self, response_time_ms: float, failed: bool, now: float) -> None:
        self.requests += 1
        self.failures += failed
        self.latencies_ms.append(float(response_time_ms))
        if self.first_at is None:
            self.first_at = now - response_time_ms / 1000.0
        self.last_at = now

    def record(self, body: dict[str, Any], known: bool) -> None:
        self.responses += 1
        self.known["known" if known else "unknown"] += 1
        if body.get("fallback"):
            self.fallbacks[str(body["fallback"])] += 1
        if body.get("cached"):
            self.cached += 1

    def as_dict(self) -> dict[str, Any]:
        span = (self.last_at - self.first_at) if self.first_at is not None and self.last_at is not None else 0.0
        return {
            "requests": self.requests,
            "failures": self.failures,
            "duration_s": span,
            "latencies_ms": self.latencies_ms,
            "responses_checked": self.responses,
            "fallbacks": dict(self.fallbacks),
            "cached": self.cached,
            "users": dict(self.known),
        }
