"""The precomputed list of a user, as the ``precomputed`` and ``hybrid`` serving modes use it.

:class:`PrecomputedStore` reads, in one round trip (a non-transactional pipeline; the three keys
share the user's hash tag, so one Redis Cluster slot), the list written by
``python -m services.precompute`` (:func:`common.realtime.precomputed_key`), the user's live seen
set and recent items that the events consumer maintains (:func:`common.realtime.user_seen_key`,
:func:`common.realtime.user_recent_key`). :func:`select` is the pure part: decode
(:mod:`common.precomputed`), check, filter, and say why a list cannot be used:

=================  =====================================================================
``missing``        no list: an unknown user, a deleted or expired (Redis TTL) key, a
                   value that does not decode
``wrong_version``  computed with another bundle than the one this request is pinned to
                   (a new ``current``, a canary user, an experiment arm's bundle)
``other_pipeline`` the request's experiment arm runs another pipeline file than the one
                   the lists were computed with
``expired``        computed longer ago than ``GATEWAY_PRECOMPUTED_MAX_AGE_S``
``too_few``        fewer than k items left after the filters
``redis_error``    the read failed or the ``redis`` breaker is open (the caller's verdict)
=================  =====================================================================

The filters are the real-time part of retrieval's (``request_exclusions``, ``recent_items``,
``seen_items``): the request's ``exclude_item_ids``; its context's recent items and the user's
recent ZSET; the seen set. What retrieval filtered at precompute time (the ``user_seen`` and
``user_context`` rows of then) is already out of the list.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from common.precomputed import PrecomputedList, decode
from common.proto.recsys.v1 import common_pb2
from common.realtime import precomputed_key, user_recent_key, user_seen_key
from common.redis_client import async_client

MISSING, WRONG_VERSION, OTHER_PIPELINE, EXPIRED, TOO_FEW, REDIS_ERROR = (
    "missing", "wrong_version", "other_pipeline", "expired", "too_few", "redis_error")
REASONS = (MISSING, WRONG_VERSION, OTHER_PIPELINE, EXPIRED, TOO_FEW, REDIS_ERROR)

_NO_IDS = np.empty(0, np.int64)


class PrecomputedStore:
    """Redis (redis.asyncio + hiredis), no client-side retries (like the response cache): a slow
    or dead Redis costs one timeout, then the ``redis`` breaker stops the reads for a while."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self._redis = async_client(url, timeout_s=timeout_s, max_connections=64)

    async def read(self, user_id: str) -> tuple[bytes | None, list, list]:
        """(the raw list or None, the seen set's members, the recent items), one round trip."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.get(precomputed_key(user_id))
        pipe.smembers(user_seen_key(user_id))
        pipe.zrange(user_recent_key(user_id), 0, -1)
        raw, seen, recent = await pipe.execute()
        return raw, seen, recent

    async def close(self) -> None:
        await self._redis.aclose()


def member_ids(members) -> set[int]:
    """Item ids of a Redis set or ZSET (bytes members); a member that is not an integer is skipped."""
    if not members:
        return set()
    try:
        return set(map(int, members))
    except ValueError:
        out = set()
        for m in members:
            try:
                out.add(int(m))
            except ValueError:
                continue
        return out


@dataclass(frozen=True)
class Selection:
    """A list and what the filters left of it, or the reason it cannot be used."""

    reason: str | None  # None: usable
    lst: PrecomputedList | None = None
    keep: np.ndarray | None = None  # positions in the list of the kept items, best first
    age_s: float | None = None
    removed: dict[str, int] = field(default_factory=dict)  # explain: filter -> items of the list removed

    @property
    def usable(self) -> bool:
        return self.reason is None

    def items(self, k: int, titles: dict) -> list[dict]:
        """The answer: the first k kept items with their ranking scores (rounded as online answers are)."""
        at = self.keep[:k]
        ids, scores = self.lst.item_ids[at].tolist(), self.lst.scores[at].tolist()
        return [{"item_id": i, "score": round(s, 6), "title": titles.get(i)} for i, s in zip(ids, scores, strict=True)]

    def candidates(self) -> common_pb2.CandidateList:
        """The kept items as ranking's input (hybrid): retrieval scores and sources, the list's order."""
        at, lst = self.keep, self.lst
        return common_pb2.CandidateList(item_ids=lst.item_ids[at].tolist(), scores=lst.retrieval_scores[at].tolist(),
                                        source_index=lst.source_codes[at].tolist(), source_names=lst.source_names)

    def ranked(self) -> common_pb2.CandidateList:
        """The kept items in the list's (precomputed ranking) order with its scores: the
        ``retrieval_order`` rung of the fallback ladder in hybrid mode."""
        at = self.keep
        return common_pb2.CandidateList(item_ids=self.lst.item_ids[at].tolist(), scores=self.lst.scores[at].tolist())

    def describe(self) -> dict:
        """Explain: whether the list was used, and why not."""
        lst = self.lst
        return {"used": self.usable, "reason": self.reason,
                "version": lst.version if lst is not None else None,
                "computed_at": lst.computed_at if lst is not None else None,
                "age_s": round(self.age_s, 3) if self.age_s is not None else None,
                "items": len(lst) if lst is not None else 0,
                "kept": int(self.keep.size) if self.keep is not None else None,
                "removed": self.removed or None}


def select(raw: bytes | None, seen, recent, *, exclude=(), context_recent=(), version: str, pipeline: str = "",
           now: float, max_age_s: float, k: int, limit: int, explain: bool = False) -> Selection:
    """Decode and check the list, then filter it: at most ``limit`` kept items, at least ``k``.
    ``seen`` / ``recent``: the Redis members as read; ``version``: the bundle the request is
    pinned to; ``pipeline``: its experiment pipeline ("" = the services' own)."""
    lst = decode(raw)
    if lst is None:
        return Selection(MISSING)
    age = now - lst.computed_at
    if lst.version != version:
        return Selection(WRONG_VERSION, lst, age_s=age)
    if pipeline:
        return Selection(OTHER_PIPELINE, lst, age_s=age)
    if age > max_age_s:
        return Selection(EXPIRED, lst, age_s=age)
    # Python sets and a loop that stops at the limit-th kept item: on these sizes (a few hundred
    # ids, tens excluded) ~10x cheaper than np.isin, which is most of what this path costs
    parts = {"request_exclusions": set(exclude), "recent_items": set(context_recent) | member_ids(recent),
             "seen_items": member_ids(seen)}
    excluded = set().union(*parts.values())
    ids = lst.item_ids.tolist()
    removed = {}
    if explain:
        removed = {name: sum(i in part for i in ids) for name, part in parts.items() if part}
    if excluded:
        kept = []
        for at, item in enumerate(ids):
            if item not in excluded:
                kept.append(at)
                if len(kept) == limit:
                    break
        keep = np.array(kept, np.intp)
    else:
        keep = np.arange(min(len(ids), limit))
    if keep.size < k:
        return Selection(TOO_FEW, lst, keep, age, removed)
    return Selection(None, lst, keep, age, removed)
