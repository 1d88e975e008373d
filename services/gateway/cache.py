"""The response cache: Redis (redis.asyncio + hiredis) or an in-process LRU when REDIS_URL is unset.

Keys hold everything that changes the answer: model version, user, k and a hash of the request
shape (context and exclusions), so a new model version or a different request never reads a
stale entry. Values are the orjson bytes of the ranked items. Only non-degraded responses are
cached (a fallback answer must not outlive the outage). Each is also kept, under
:func:`stale_key` and the longer ``GATEWAY_STALE_TTL_S``, as the user's last good answer: the
``cached`` rung of the fallback ladder serves it when retrieval or ranking fails.

Every cache failure is the caller's to swallow: the request is then served without cache.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from typing import Protocol

import orjson


def cache_key(model_version: str, user_id: str, k: int, context: dict | None, exclude: list[int]) -> str:
    if context or exclude:
        shape = orjson.dumps({"c": context or {}, "x": sorted(set(exclude))}, option=orjson.OPT_SORT_KEYS)
        digest = hashlib.blake2b(shape, digest_size=8).hexdigest()
    else:
        digest = "-"
    return f"recsys:resp:{model_version}:{k}:{digest}:{user_id}"


def stale_key(user_id: str) -> str:
    """The user's last good answer (any k, shape or model version): the ``cached`` fallback rung."""
    return f"recsys:last:{user_id}"


class ResponseCache(Protocol):
    name: str
    enabled: bool

    async def get(self, key: str) -> bytes | None: ...
    async def set(self, key: str, value: bytes, ttl_s: int | None = None) -> None: ...
    async def ping(self) -> bool: ...
    async def close(self) -> None: ...


class NullCache:
    """``GATEWAY_CACHE_TTL_S=0``: every request goes through the whole pipeline."""

    name, enabled = "disabled", False

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
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.ttl_s = ttl_s
        self._redis = Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
            health_check_interval=0,
            max_connections=64,
        )

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
