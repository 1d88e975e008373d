"""The event stream as the consumer group sees it: create, read, claim, acknowledge, dead-letter,
trim, measure. Thin wrappers over the Redis stream commands, so that the loop
(:mod:`services.events.consumer`) reads as the protocol it follows.

* the group :data:`~common.realtime.GROUP` is created at id 0 with ``MKSTREAM``: entries appended
  before the first start are applied too;
* a read returns :class:`Entry` objects with their delivery count when it is known (history
  reads and claims: from ``XPENDING``; new entries: 1);
* a dead letter is ``XADD DEAD_LETTER`` of the entry's fields plus ``reason`` and ``stream_id``,
  in one ``MULTI`` with the ``XACK`` of the batch (same hash tag);
* trimming (``XTRIM MINID ~``) never passes the oldest entry some group has not acknowledged:
  its bound is the minimum of the retention cut-off, every group's oldest pending id and every
  group's last delivered id.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from redis.exceptions import ResponseError

from common.realtime import DEAD_LETTER, GROUP, STREAM

DEAD_LETTER_MAXLEN = 100_000  # approximate cap of the dead letter stream


@dataclass
class Entry:
    id: str
    fields: dict | None  # None: the entry was deleted (trimmed) while pending
    deliveries: int = 1


def _s(x) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def id_ms(stream_id: str) -> int:
    return int(stream_id.split("-", 1)[0])


class Stream:
    def __init__(self, client, consumer: str, stream: str = STREAM, group: str = GROUP,
                 dead_letter: str = DEAD_LETTER) -> None:
        self.client = client
        self.consumer = consumer
        self.stream, self.group, self.dead_letter = stream, group, dead_letter

    def ensure_group(self) -> bool:
        """Create the group (id 0, MKSTREAM) if missing; True when it was created."""
        try:
            self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
            return True
        except ResponseError as exc:
            if "BUSYGROUP" in str(exc):
                return False
            raise

    # -- reads --------------------------------------------------------------------------------
    def _entries(self, reply) -> list[Entry]:
        if not reply:
            return []
        (_, items), = reply
        return [Entry(_s(i), f or None) for i, f in items]

    def read_new(self, count: int, block_ms: int) -> list[Entry]:
        return self._entries(self.client.xreadgroup(self.group, self.consumer, {self.stream: ">"},
                                                    count=count, block=block_ms))

    def read_own_pending(self, after: str, count: int) -> list[Entry]:
        """This consumer's pending entries after ``after`` (history read: delivery count +1)."""
        entries = self._entries(self.client.xreadgroup(self.group, self.consumer, {self.stream: after}, count=count))
        self._delivery_counts(entries)
        return entries

    def autoclaim(self, min_idle_ms: int, start: str, count: int) -> tuple[str, list[Entry]]:
        """Entries pending longer than ``min_idle_ms`` (any consumer's) become this consumer's.
        Returns (next cursor, entries); the cursor is ``0-0`` when the scan is complete."""
        reply = self.client.xautoclaim(self.stream, self.group, self.consumer, min_idle_ms, start_id=start, count=count)
        cursor, items = _s(reply[0]), reply[1]
        entries = [Entry(_s(i), f or None) for i, f in items]
        self._delivery_counts(entries)
        return cursor, entries

    def _delivery_counts(self, entries: list[Entry]) -> None:
        if not entries:
            return
        ids = [e.id for e in entries]
        rows = self.client.xpending_range(self.stream, self.group, min=min(ids, key=_key), max=max(ids, key=_key),
                                          count=len(ids) * 2 + 10, consumername=self.consumer)
        counts = {_s(r["message_id"]): int(r["times_delivered"]) for r in rows}
        for e in entries:
            e.deliveries = counts.get(e.id, e.deliveries)

    # -- acknowledgement ----------------------------------------------------------------------
    def ack(self, ids: Sequence[str], dead: Sequence[tuple[Entry, str]] = ()) -> None:
        """Dead-letter ``dead`` and acknowledge ``ids`` plus the dead ones, atomically."""
        all_ids = list(ids) + [e.id for e, _ in dead]
        if not all_ids:
            return
        with self.client.pipeline(transaction=bool(dead)) as pipe:
            for e, reason in dead:
                fields = {_s(k): v for k, v in (e.fields or {}).items()}
                fields.update({"reason": reason, "stream_id": e.id})
                pipe.xadd(self.dead_letter, fields, maxlen=DEAD_LETTER_MAXLEN, approximate=True)
            pipe.xack(self.stream, self.group, *all_ids)
            pipe.execute()

    # -- housekeeping -------------------------------------------------------------------------
    def groups(self) -> list[dict]:
        try:
            return self.client.xinfo_groups(self.stream)
        except ResponseError as exc:
            if "no such key" in str(exc).lower():
                return []
            raise

    def trim(self, retention_s: float, now: float | None = None) -> int:
        """``XTRIM MINID ~`` up to the retention cut-off, never past an unacknowledged entry."""
        now = time.time() if now is None else now
        bound = (int((now - retention_s) * 1000), 0)
        groups = self.groups()
        for g in groups:
            last = _key(_s(g["last-delivered-id"]))
            bound = min(bound, last)
            if int(g.get("pending", 0)):
                summary = self.client.xpending(self.stream, _s(g["name"]))
                if summary.get("min"):
                    bound = min(bound, _key(_s(summary["min"])))
        if bound <= (0, 0):
            return 0
        return int(self.client.xtrim(self.stream, minid=f"{bound[0]}-{bound[1]}", approximate=True))

    def lag(self, now: float | None = None) -> tuple[int | None, float, bool]:
        """(entries not yet delivered to the group (``XINFO GROUPS`` lag, None when Redis cannot
        tell), age in seconds of the oldest entry not yet applied (0 when caught up), group exists)."""
        now = time.time() if now is None else now
        mine = next((g for g in self.groups() if _s(g["name"]) == self.group), None)
        if mine is None:
            return None, 0.0, False
        lag = mine.get("lag")
        oldest: int | None = None
        if int(mine.get("pending", 0)):
            summary = self.client.xpending(self.stream, self.group)
            if summary.get("min"):
                oldest = id_ms(_s(summary["min"]))
        if lag is None or int(lag) > 0:
            nxt = self.client.xrange(self.stream, min="(" + _s(mine["last-delivered-id"]), count=1)
            if nxt:
                ms = id_ms(_s(nxt[0][0]))
                oldest = ms if oldest is None else min(oldest, ms)
        age = max(0.0, now - oldest / 1000.0) if oldest is not None else 0.0
        return (int(lag) if lag is not None else None), age, True


def _key(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)
