"""One batch of decoded events -> the real-time state, in an order where every step is idempotent.

A crash anywhere followed by a redelivery of the batch neither loses nor duplicates anything:

b. **per-user state**, for users whose id :func:`services.features.parse_user_id` accepts (the
   others only reach the aggregates): one script call per user (:data:`USER_SCRIPT`, on that
   user's keys only) of naturally idempotent commands: ``ZADD events NX ts event_id`` (how many
   were new: the rest are duplicates), ``ZADD recent GT ts item`` (interaction types), ``SADD
   seen item`` (seen types), trims (events older than a day, recent beyond ``N_RECENT``),
   expiries; it returns the recent ZSET as it was *before* the writes (co-visitation partners)
   and, with the counts and the seen set, *after* them; the user's Feast rows come with it in
   the same pipeline.
c. **aggregates**: :mod:`services.events.aggregates` (one Lua script, skips events already applied).
d. **Feast rows** of each touched user, recomputed from the state (a re-run writes the same row):
   ``user_context``: the recent ZSET newest first, then the items of the stored row not in it
   (materialised history), cut to ``N_RECENT``; counts = events in the last hour / day; event
   time = max(stored row's, newest interaction). ``user_seen``: the sorted union of the stored
   row and the seen set (the pipeline's parquet is sorted too); event time = max(stored, newest
   seen event). Written by :class:`feature_store.writer.UserRowWriter`.
e. ``INCR generation`` of every touched user, queued after the row writes in the same pipeline:
   the gateway's cached answers for them become unreachable once their rows changed.

Acknowledging (f) is the stream's business (:mod:`services.events.stream`).
"""

from __future__ import annotations

import heapq
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from common.realtime import Event, generation_key, user_events_key, user_recent_key, user_seen_key
from common.redis_client import PipelinedScript
from feature_store.repo.definitions import N_RECENT
from feature_store.writer import UserRow, UserRowWriter
from services.events.aggregates import AggregateEvent, Aggregates
from services.features import parse_user_id

# Step b for one user, on that user's keys only (KEYS: recent, events, seen). ARGV: day cutoff,
# hour cutoff, N_RECENT, events TTL, state TTL, then n + n (ts, event id) pairs, n + n (ts, item)
# pairs, n + n seen items. Returns {recent before (flat item, ts), events new, recent after
# (newest first, flat), count 1 h, count 24 h, seen set (or {})}. Every write is idempotent.
USER_SCRIPT = """
local day, hour, nrec = ARGV[1], ARGV[2], tonumber(ARGV[3])
local before = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local a = 6
local nids = tonumber(ARGV[a])
local new = 0
if nids > 0 then
  new = redis.call('ZADD', KEYS[2], 'NX', unpack(ARGV, a + 1, a + 2 * nids))
end
a = a + 1 + 2 * nids
local nrecent = tonumber(ARGV[a])
if nrecent > 0 then
  redis.call('ZADD', KEYS[1], 'GT', unpack(ARGV, a + 1, a + 2 * nrecent))
end
a = a + 1 + 2 * nrecent
if nids > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. day)
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(nrec + 1))
  redis.call('EXPIRE', KEYS[2], ARGV[4])
  redis.call('EXPIRE', KEYS[1], ARGV[5])
end
local nseen = tonumber(ARGV[a])
local seen = {}
if nseen > 0 then
  redis.call('SADD', KEYS[3], unpack(ARGV, a + 1, a + nseen))
  redis.call('EXPIRE', KEYS[3], ARGV[5])
  seen = redis.call('SMEMBERS', KEYS[3])
end
local after = redis.call('ZREVRANGE', KEYS[1], 0, nrec - 1, 'WITHSCORES')
local c1 = redis.call('ZCOUNT', KEYS[2], hour, '+inf')
local c24 = redis.call('ZCOUNT', KEYS[2], day, '+inf')
return {before, new, after, c1, c24, seen}
"""

DAY_S = 86400.0
HOUR_S = 3600.0
EVENTS_KEY_TTL_S = 2 * 86400  # the events ZSET only answers "how many in the last day"
CONTEXT, SEEN = "user_context", "user_seen"


@dataclass
class Outcome:
    applied: Counter = field(default_factory=Counter)  # type -> events whose aggregates were applied now
    duplicates: int = 0  # events (partly) applied before: a redelivery
    anonymous: int = 0  # events of users without an integer id (no per-user state, no row)
    users: int = 0  # users whose state and rows changed


@dataclass
class _User:
    uid: int
    key: str
    events: list[Event] = field(default_factory=list)
    recent_before: dict[int, float] = field(default_factory=dict)
    duplicates: int = 0  # interaction events already in the events ZSET


class Applier:
    def __init__(self, client, writer: UserRowWriter, aggregates: Aggregates, *, seen_types, recent_types,
                 weights: dict[str, float], covisit_window_s: float, user_state_ttl_s: int,
                 covisit_max_partners: int = 5, clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.writer = writer
        self.aggregates = aggregates
        self.seen_types = frozenset(seen_types)
        self.recent_types = frozenset(recent_types)
        self.weights = dict(weights)
        self.window = float(covisit_window_s)
        self.state_ttl = int(user_state_ttl_s)
        self.max_partners = min(int(covisit_max_partners), N_RECENT)
        self.clock = clock
        self._user_script = PipelinedScript(client, USER_SCRIPT)

    def apply(self, events: Sequence[Event]) -> Outcome:
        now = self.clock()
        events = [_clamped(e, now) for e in events]
        out = Outcome()
        users: dict[int, _User] = {}
        for e in events:
            uid = parse_user_id(e.user_id)
            if uid is None:
                out.anonymous += 1
                continue
            if e.type in self.recent_types or e.type in self.seen_types:
                u = users.get(uid)
                if u is None:
                    u = users[uid] = _User(uid, str(uid))
                u.events.append(e)
        rows = self._user_state(list(users.values()), now) if users else {}
        partners = self._partners(users, events)
        flags = self.aggregates.apply([
            AggregateEvent(e.event_id, e.item_id, self.weights.get(e.type, 0.0), e.ts,
                           covisit=i in partners, partners=partners.get(i, ()))
            for i, e in enumerate(events)], now)
        lua_dups = 0
        for e, flag in zip(events, flags, strict=True):
            if flag:
                out.applied[e.type] += 1
            else:
                lua_dups += 1
        # a redelivery: the aggregates were applied before (script), or the per-user state (ZADD NX)
        out.duplicates = max(lua_dups, sum(u.duplicates for u in users.values()))
        if users:
            self._rows_and_generations(users, rows, now)
        out.users = len(users)
        return out

    # -- b ------------------------------------------------------------------------------------
    def _user_state(self, users: list[_User], now: float) -> dict[int, tuple]:
        """One pipeline: per user one call of :data:`USER_SCRIPT` (the recent ZSET before, the
        writes, trims, expiries, then the state after: all on the user's own keys, one slot) and
        an ``HMGET`` of the stored Feast rows. Two commands a user instead of ~13 separate ones:
        redis-py's per-reply parsing was 35 % of the consumer's CPU (2,650 -> see
        docs/architecture.md#the-events-loop-post-events--servicesevents)."""
        fields = self.writer.fields_of([CONTEXT, SEEN])
        plan: list[tuple[int, bool]] = []

        def build(pipe) -> None:
            plan.clear()
            for u in users:
                ids: dict[str, float] = {}
                recent: dict[str, float] = {}
                seen: set[str] = set()
                for e in u.events:
                    if e.type in self.recent_types:
                        ids[e.event_id] = e.ts
                        item = str(e.item_id)
                        recent[item] = max(e.ts, recent.get(item, e.ts))  # ZADD GT keeps the max anyway
                    if e.type in self.seen_types:
                        seen.add(str(e.item_id))
                plan.append((len(ids), bool(seen)))
                args: list = [repr(now - DAY_S), repr(now - HOUR_S), N_RECENT, EVENTS_KEY_TTL_S, self.state_ttl,
                              len(ids)]
                for eid, ts in ids.items():
                    args += (repr(ts), eid)
                args.append(len(recent))
                for item, ts in recent.items():
                    args += (repr(ts), item)
                args.append(len(seen))
                args += sorted(seen)
                self._user_script.queue(pipe, [user_recent_key(u.key), user_events_key(u.key), user_seen_key(u.key)], args)
                pipe.hmget(self.writer.layout.redis_key("user", u.uid), fields)
        replies = iter(self._user_script.run(build))
        specs = [self.writer.views[CONTEXT], self.writer.views[SEEN]]
        rows = {}
        for u, (n_ids, has_seen) in zip(users, plan, strict=True):
            before, new, after, c1h, c24h, seen_now = next(replies)
            u.recent_before = {int(before[i]): float(before[i + 1]) for i in range(0, len(before), 2)}
            if n_ids:
                u.duplicates = n_ids - int(new)
            recent_after = [(int(after[i]), float(after[i + 1])) for i in range(0, len(after), 2)]
            seen_now = {int(x) for x in seen_now} if has_seen else set()
            stored = self.writer.decode(next(replies), specs)
            rows[u.uid] = (n_ids > 0, has_seen, recent_after, int(c1h), int(c24h), seen_now, stored)
        return rows

    def _partners(self, users: dict[int, _User], events: Sequence[Event]) -> dict[int, list[int]]:
        """Batch position of each co-visitation event -> its partner items: among the user's
        ``covisit_max_partners`` (<= ``N_RECENT``) most recent other items before it (the recent ZSET as read before this
        batch's writes, then the batch's earlier events), those at most the window older."""
        pos = {id(e): i for i, e in enumerate(events)}
        out: dict[int, list[int]] = {}
        for u in users.values():
            earlier: dict[int, float] = {}
            for e in u.events:
                if e.type not in self.recent_types:
                    continue
                cand = {j: ts for j, ts in u.recent_before.items() if ts < e.ts}
                for j, ts in earlier.items():
                    if ts <= e.ts and ts >= cand.get(j, -math.inf):
                        cand[j] = ts
                cand.pop(e.item_id, None)
                newest = heapq.nlargest(self.max_partners, cand.items(), key=lambda kv: (kv[1], kv[0]))
                lo = e.ts - self.window
                out[pos[id(e)]] = sorted(j for j, ts in newest if ts >= lo)
                earlier[e.item_id] = max(e.ts, earlier.get(e.item_id, -math.inf))
        return out

    # -- d, e ---------------------------------------------------------------------------------
    def _rows_and_generations(self, users: dict[int, _User], rows: dict[int, tuple], now: float) -> None:
        out: list[UserRow] = []
        for uid, (has_recent, has_seen, recent_after, c1h, c24h, seen, stored) in rows.items():
            if has_recent:
                values, ts = stored[CONTEXT]
                ids = [i for i, _ in recent_after]
                have = set(ids)
                for x in (values or {}).get("recent_item_ids", ()) if values else ():
                    x = int(x)
                    if x not in have:
                        have.add(x)
                        ids.append(x)
                newest = max((s for _, s in recent_after), default=now)
                out.append(UserRow(uid, CONTEXT, {"recent_item_ids": ids[:N_RECENT], "recent_count_1h": c1h,
                                                  "recent_count_24h": c24h}, max(ts or newest, newest)))
            if has_seen:
                values, ts = stored[SEEN]
                items = set(seen)
                if values and values.get("seen_item_ids") is not None:
                    items.update(int(x) for x in values["seen_item_ids"])
                newest = max(e.ts for e in users[uid].events if e.type in self.seen_types)
                out.append(UserRow(uid, SEEN, {"seen_item_ids": sorted(items)}, max(ts or newest, newest)))
        with self.client.pipeline(transaction=False) as pipe:
            self.writer.write(pipe, out)
            for uid in rows:
                pipe.incr(generation_key(str(uid)))
            pipe.execute()


def _clamped(e: Event, now: float) -> Event:
    """An event stamped in the future (a client clock ahead) counts as happening now."""
    if e.ts <= now:
        return e
    return Event(e.event_id, e.user_id, e.item_id, e.type, now, e.value, e.received)
