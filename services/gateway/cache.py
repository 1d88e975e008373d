"""The response cache: Redis (redis.asyncio + hiredis) or an in-process LRU when REDIS_URL is unset.

Keys hold everything that changes the answer: model version, user, k and a hash of the request
shape (context and exclusions), so a new model version or a different request never reads a
stale entry. Only non-degraded responses are cached (a fallback answer must not outlive the
outage). Each is also kept, under :func:`stale_key` and the longer ``GATEWAY_STALE_TTL_S``, as
the user's last good answer: the ``cached`` rung of the fallback ladder serves it when retrieval
or ranking fails.

Per-user generations (the real-time loop): the events consumer ``INCR``s
:func:`common.realtime.generation_key` after it changed a user's features. A value is
``{"gen": g, "items": [...], "model_version": ..., "mode": ...}`` (:func:`encode_entry`), ``g`` being the
generation read when the request that computed it *started*; :meth:`ResponseCache.lookup` reads
the current generation and the entry in one round trip (a non-transactional pipeline of two
``GET``s: both keys carry the user's hash tag :func:`common.realtime.user_tag`, so they share a
Redis Cluster slot) and :func:`fresh_entry` accepts it only when its ``gen`` is the current one
(no generation key = 0). So an answer computed from features older than the latest bump is never
served, with no key scan and no extra round trip. The in-process and null caches have no
consumer: their generation is always 0.

The last good answer (``cached`` rung) is generation-blind on purpose: it is only served when
retrieval or ranking is failing, as a better-than-popular degraded answer, and may then predate
the user's latest events (e.g. still list an item they have just bought).

Every cache failure is the caller's to swallow: the request is then served without cache.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from typing import Protocol

import orjson

from common.realtime import generation_key, user_tag
from common.redis_client import async_client


def cache_key(model_version: str, user_id: str, k: int, context: dict | None, exclude: list[int],
              variant: str = "", mode: str = "online") -> str:
    """``variant``: the experiment bucket (what beyond the version makes an arm's answers differ);
    ``mode``: the gateway's GATEWAY_SERVING_MODE (a gateway restarted in another mode never serves
    the other mode's answers)."""
    if context or exclude:
        shape = orjson.dumps({"c": context or {}, "x": sorted(set(exclude))}, option=orjson.OPT_SORT_KEYS)
        digest = hashlib.blake2b(shape, digest_size=8).hexdigest()
    else:
        digest = "-"
    # the user's hash tag first: the first ``{...}`` of a key is its Redis Cluster hash tag
    return f"{user_tag(user_id)}:resp:{mode}:{model_version}:{variant or '-'}:{k}:{digest}"


def stale_key(user_id: str) -> str:
    """The user's last good answer (any k, shape or model version): the ``cached`` fallback rung."""
    return f"{user_tag(user_id)}:last"


def encode_entry(generation: int, items: list[dict], model_version: str, mode: str = "online") -> bytes:
    """A cache value: the answer, the path that answered it (``mode``: online, precomputed,
    hybrid) and the user's generation read when its request started."""
    return orjson.dumps({"gen": generation, "items": items, "model_version": model_version, "mode": mode})


def fresh_entry(raw: bytes | None, generation: int) -> dict | None:
    """The decoded entry when it was computed at ``generation`` (the current one), else None
    (missing, or the user's features changed since: a miss)."""
    if raw is None:
        return None
    entry = orjson.loads(raw)
    return entry if entry.get("gen") == generation else None


class ResponseCache(Protocol):
    name: str
    enabled: bool

    async def lookup(self, user_id: str, key: str) -> tuple[int, bytes | None]:
        """(the user's current generation, the raw entry under ``key``), in one round trip."""
        ...

    async def get(self, key: str) -> bytes | None: ...
    async def set(self, key: str, value: bytes, ttl_s: int | None = None) -> None: ...
    async def ping(self) -> bool: ...
    async def close(self) -> None: ...


class NullCache:
    """``GATEWAY_CACHE_TTL_S=0``: every request goes through the whole pipeline."""

    name, enabled = "disabled", False

    async def lookup(self, user_id: str, key: str) -> tuple[int, bytes | None]:
        return 0, None

    async def get(self, key: str) -> bytes | None:
        return None

    async def set(self, key: str, value: bytes, ttl_s: int | None = None) -> None:
        return None

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None


class InProcessCache:
    """LRU with per-entry expiry, for the embedded stack (no Redis). One worker process only."""

    name, enabled = "in_process", True

    def __init__(self, ttl_s: int, max_entries: int, clock=time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clock = clock
        self._data: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    async def lookup(self, user_id: str, key: str) -> tuple[int, bytes | None]:
        return 0, await self.get(key)  # no consumer bumps generations in the embedded stack

    async def get(self, key: str) -> bytes | None:
        entry = self._data.get(key)
        if entry is None:
            return None
        expires, value = entry
        if expires <= self._clock():
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return value

    async def set(self, key: str, value: bytes, ttl_s: int | None = None) -> None:
        self._data[key] = (self._clock() + (self.ttl_s if ttl_s is None else ttl_s), value)
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._data.clear()


class RedisCache:
    """Redis GET / SET EX. No client-side retries: a slow or dead Redis costs one timeout, then
    the gateway's circuit breaker stops calling it until a probe succeeds."""

    name, enabled = "redis", True

    def __init__(self, url: str, ttl_s: int, timeout_s: float) -> None:
        self.ttl_s = ttl_s
        self._redis = async_client(url, timeout_s=timeout_s, max_connections=64)

    async def lookup(self, user_id: str, key: str) -> tuple[int, bytes | None]:
        pipe = self._redis.pipeline(transaction=False)  # no MULTI/EXEC: one round trip, two GETs
        pipe.get(generation_key(user_id))
        pipe.get(key)
        generation, value = await pipe.execute()
        return int(generation or 0), value

    async def get(self, key: str) -> bytes | None:
        return await self._redis.get(key)

    async def set(self, key: str, value: bytes, ttl_s: int | None = None) -> None:
        await self._redis.set(key, value, ex=self.ttl_s if ttl_s is None else ttl_s)

    async def ping(self) -> bool:
        return bool(await self._redis.ping())

    async def close(self) -> None:
        await self._redis.aclose()


def build_cache(redis_url: str | None, ttl_s: int, max_entries: int, timeout_s: float) -> ResponseCache:
    if ttl_s <= 0:
        return NullCache()
    if redis_url:
        return RedisCache(redis_url, ttl_s, timeout_s)
    return InProcessCache(ttl_s, max_entries)
