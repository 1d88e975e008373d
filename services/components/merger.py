"""``Merger``: the sources' candidates -> one list of at most k, with per-source quotas.

Slots come in config order. A *primary* slot has a ``quota`` (at most that many of its
candidates per request), a ``share`` (at most that share of k) or ``quota = "rest"`` (whatever the other quotas leave of k); a
*backfill* slot is only used to fill up to k when the primaries together had fewer (a cold or
thin user). Three passes:

1. each primary slot, in order, takes its new candidates up to its limit;
2. if fewer than k were taken, the ``rest`` source's remaining candidates fill up (a source
   with a quota of 20 that found 5 leaves 15 places to it); a quota is never exceeded;
3. then the backfill slots, in order.

An item proposed by several sources is kept once, from the first slot that takes it: scores of
different sources are not on one scale (an inner product, a co-visitation weight, a popularity),
so "best score wins" would only compare units. Output order is the order of taking, which is also
the answer when ranking is down.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from services.components.types import Candidates

REST = "rest"


@dataclass(frozen=True, slots=True)
class Slot:
    name: str
    quota: int | None = None  # None (and no share): "rest" (primary) or unlimited (backfill)
    backfill: bool = False
    share: float | None = None  # instead of a quota: this share of k (rounded, at least 1)

    def limit(self, k: int) -> int | None:
        """The slot's quota for a request of k, None for "rest" / backfill."""
        if self.share is not None:
            return min(k, max(1, round(self.share * k)))
        return None if self.quota is None else min(self.quota, k)


@dataclass(frozen=True, slots=True)
class Merged:
    item_ids: np.ndarray  # int64 [<= k]
    scores: np.ndarray  # float32
    source_codes: np.ndarray  # uint8, index into the merger's slot names
    taken: dict[str, int]  # per source name: how many candidates it contributed


class Merger:
    name = "merge"

    def __init__(self, slots: Sequence[Slot]) -> None:
        self.slots = tuple(slots)
        self.names = tuple(s.name for s in self.slots)

    def wanted(self, k: int) -> list[int]:
        """How many candidates to ask each slot's source for, before filtering: k from every one.
        A quota slot too, because the items it proposes that an earlier slot already took do not
        count towards its quota (the offline evaluation merges item_to_item's top k the same way)."""
        return [k] * len(self.slots)

    def merge(self, per_slot: Sequence[Candidates], k: int) -> Merged:
        n = 0
        limits = [None if s.backfill else s.limit(k) for s in self.slots]
        rest = max(k - sum(q for q in limits if q is not None), 0)
        parts: list[tuple[int, np.ndarray]] = []  # (slot index, positions) in taking order
        used_ids: list[np.ndarray] = []

        def take(i: int, start: int, limit: int) -> int:
            """Up to ``limit`` new candidates of slot i, from position ``start``; returns the new start."""
            nonlocal n
            ids = per_slot[i].item_ids
            if limit <= 0 or start >= ids.size:
                return start
            pos = np.arange(start, ids.size)
            if used_ids:
                pos = pos[~np.isin(ids[pos], np.concatenate(used_ids))]
            pos = pos[:limit]
            if pos.size:
                parts.append((i, pos))
                used_ids.append(ids[pos])
                n += int(pos.size)
            return int(pos[-1]) + 1 if pos.size else ids.size

        primaries = [i for i, s in enumerate(self.slots) if not s.backfill]
        next_pos = dict.fromkeys(primaries, 0)
        for i in primaries:  # 1. quotas
            next_pos[i] = take(i, 0, min(rest if limits[i] is None else limits[i], k - n))
        for i in primaries:  # 2. the "rest" source fills what the quota sources left
            if n >= k:
                break
            if limits[i] is None:
                next_pos[i] = take(i, next_pos[i], k - n)
        for i, slot in enumerate(self.slots):  # 3. backfill
            if n >= k:
                break
            if slot.backfill:
                take(i, 0, k - n)

        if not parts:
            return Merged(np.empty(0, np.int64), np.empty(0, np.float32), np.empty(0, np.uint8),
                          dict.fromkeys(self.names, 0))
        item_ids = np.concatenate([per_slot[i].item_ids[p] for i, p in parts])
        scores = np.concatenate([per_slot[i].scores[p] for i, p in parts]).astype(np.float32, copy=False)
        codes = np.concatenate([np.full(p.size, i, np.uint8) for i, p in parts])
        counts = dict.fromkeys(self.names, 0)
        for i, p in parts:
            counts[self.names[i]] += int(p.size)
        return Merged(item_ids, scores, codes, counts)
