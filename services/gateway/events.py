"""Event ingest for ``POST /events``: dedup by ``event_id`` and append to the event stream.

One Lua script (``EVALSHA`` through redis-py's ``register_script``; loaded again by redis-py
after a Redis restart) handles a whole batch atomically. For each event, in order:

* its idempotency key :func:`common.realtime.event_id_key` exists -> a duplicate (``0``);
* else ``XADD`` :data:`common.realtime.STREAM` ``*`` with :meth:`common.realtime.Event.fields`,
  then ``SET <id key> a NX EX <GATEWAY_EVENT_DEDUP_TTL_S>`` -> accepted (``1``).

The append comes before the mark so that a script stopped by a failing command (e.g. Redis out
of memory) can leave an event appended and not yet marked (a retry appends it again: the
consumer's ``p`` mark absorbs that), never marked without being appended (a retry would then
drop it). A second event with the same id in one batch finds the first one's key: a duplicate.
Every key has the ``{recsys:ev}`` hash tag, so the script is Redis Cluster safe.

Its own Redis client with a short socket timeout (``GATEWAY_EVENTS_TIMEOUT_MS``) and no
retries: a dead or stalled Redis is :class:`EventsUnavailable` (503) after at most that long.
"""

from __future__ import annotations

from collections.abc import Sequence

from common.realtime import ACCEPTED, STREAM, Event, event_id_key
from common.redis_client import async_client

# KEYS[1] = the stream, KEYS[1 + i] = event i's id key; ARGV[1] = dedup TTL (s), ARGV[2] = the
# id key's value (ACCEPTED), then per event: its number of fields n and n field/value pairs.
INGEST_LUA = """
local ttl, mark = ARGV[1], ARGV[2]
local out = {}
local a = 3
for i = 2, #KEYS do
  local n = tonumber(ARGV[a])
  if redis.call('EXISTS', KEYS[i]) == 0 then
    redis.call('XADD', KEYS[1], '*', unpack(ARGV, a + 1, a + 2 * n))
    redis.call('SET', KEYS[i], mark, 'NX', 'EX', ttl)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
  a = a + 1 + 2 * n
end
return out
"""


class EventsUnavailable(Exception):
    """Redis refused, failed or did not answer within the timeout: nothing is known to be appended
    (some events of the batch may be; a retry counts those as duplicates)."""


class EventLog:
    def __init__(self, url: str, *, dedup_ttl_s: int, timeout_s: float) -> None:
        self.dedup_ttl_s = dedup_ttl_s
        self._redis = async_client(url, timeout_s=timeout_s, max_connections=64)
        self._ingest = self._redis.register_script(INGEST_LUA)

    async def append(self, events: Sequence[Event]) -> list[bool]:
        """Per event: True = appended, False = a duplicate; :class:`EventsUnavailable` on failure."""
        from redis.exceptions import RedisError

        keys = [STREAM, *(event_id_key(e.event_id) for e in events)]
        args: list[str | int | bytes] = [self.dedup_ttl_s, ACCEPTED]
        for e in events:
            fields = e.fields()
            args.append(len(fields))
            for name, value in fields.items():
                args += (name, value)
        try:
            result = await self._ingest(keys=keys, args=args)
        except (RedisError, OSError) as exc:  # OSError: TimeoutError too
            raise EventsUnavailable(f"{type(exc).__name__}: {exc}") from exc
        return [bool(int(r)) for r in result]

    async def close(self) -> None:
        await self._redis.aclose()
