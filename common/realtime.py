"""The real-time loop's shared contract: event types, the stream entry format and every Redis key.

The gateway (``POST /events``: ingest, response cache generations, exposure log), the events
consumer (``python -m services.events``: apply) and the candidate sources that read live state
(``popular``, ``item_to_item``) all import their key names from here, so they cannot drift.

Key layout (Redis Cluster ready: the part in braces is the hash tag; every multi-key operation
touches keys of a single tag):

==========================================  ===========================================================
``{recsys:ev}:stream``                      the event stream (``XADD`` by the gateway, consumer group
                                            :data:`GROUP`)
``{recsys:ev}:dead``                        dead letters: an entry's fields plus ``reason`` and
                                            ``stream_id``
``{recsys:ev}:id:<event_id>``               idempotency key, ``SET NX`` with the stream append (one Lua
                                            script): ``a`` = accepted, ``p`` = aggregates applied
``{recsys:ev}:popular``                     ZSET item -> time-decayed weight, scaled by
                                            ``2 ** ((ts - epoch) / half_life)`` (see :class:`PopularScale`)
``{recsys:ev}:popular:meta``                HASH ``epoch``, ``half_life_s`` of that scale
``{recsys:ev}:covisit:<item>``              ZSET neighbour item -> co-visitation count
``{recsys:ev}:item_n``                      HASH item -> events counted for co-visitation
``{u:<user>}:recent``                       ZSET item -> epoch s of the user's latest event on it
``{u:<user>}:events``                       ZSET event_id -> epoch s (the last 24 h: recent counts)
``{u:<user>}:seen``                         SET of item ids the user interacted with ("seen" types)
``{u:<user>}:gen``                          the user's generation: ``INCR`` after their feature rows
                                            changed; part of every cached answer's validity
``{u:<user>}:pre``                          the user's precomputed top-N (``python -m services.precompute``,
                                            packed by :mod:`common.precomputed`), read by the gateway's
                                            ``precomputed`` / ``hybrid`` serving modes with ``:seen`` and
                                            ``:recent`` in one round trip
``{recsys:exp}:stream``                     the exposure log (``/recommend`` answers, sampled)
==========================================  ===========================================================

Stream entry fields (all UTF-8 strings): ``event_id``, ``user_id``, ``item_id``, ``type``,
``ts`` (epoch seconds), ``value`` (absent when the event had none), ``received`` (epoch seconds
of the gateway's append). :func:`decode_entry` is the one parser (the consumer's).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

EVENT_TYPES = ("view", "click", "add_to_cart", "purchase", "rating", "impression")

EVENTS_TAG = "{recsys:ev}"
STREAM = f"{EVENTS_TAG}:stream"
DEAD_LETTER = f"{EVENTS_TAG}:dead"
GROUP = "appliers"
POPULAR = f"{EVENTS_TAG}:popular"
POPULAR_META = f"{EVENTS_TAG}:popular:meta"
ITEM_COUNTS = f"{EVENTS_TAG}:item_n"
EXPOSURES = "{recsys:exp}:stream"

ACCEPTED, APPLIED = b"a", b"p"  # values of an event id key


def event_id_key(event_id: str) -> str:
    return f"{EVENTS_TAG}:id:{event_id}"


def covisit_key(item_id: int) -> str:
    return f"{EVENTS_TAG}:covisit:{int(item_id)}"


def user_tag(user_id: str) -> str:
    """``{u:<user>}``; a user id with a brace in it is hashed, so the tag stays the whole tag."""
    if "{" in user_id or "}" in user_id:
        user_id = "h" + hashlib.blake2b(user_id.encode(), digest_size=8).hexdigest()
    return "{u:" + user_id + "}"


def user_recent_key(user_id: str) -> str:
    return user_tag(user_id) + ":recent"


def user_events_key(user_id: str) -> str:
    return user_tag(user_id) + ":events"


def user_seen_key(user_id: str) -> str:
    return user_tag(user_id) + ":seen"


def generation_key(user_id: str) -> str:
    return user_tag(user_id) + ":gen"


def precomputed_key(user_id: str) -> str:
    """The user's precomputed list (same hash tag as :func:`user_seen_key`, :func:`user_recent_key`)."""
    return user_tag(user_id) + ":pre"


class PoisonEvent(ValueError):
    """A stream entry that can never be applied; the message is the dead-letter reason."""


@dataclass(frozen=True, slots=True)
class Event:
    event_id: str
    user_id: str
    item_id: int
    type: str
    ts: float  # epoch seconds
    value: float | None = None
    received: float | None = None  # epoch seconds of the append (freshness)

    def fields(self) -> dict[str, str]:
        """The stream entry's fields (what the gateway's ``XADD`` writes)."""
        out = {"event_id": self.event_id, "user_id": self.user_id, "item_id": str(self.item_id),
               "type": self.type, "ts": repr(float(self.ts))}
        if self.value is not None:
            out["value"] = repr(float(self.value))
        if self.received is not None:
            out["received"] = repr(float(self.received))
        return out


def decode_entry(fields: dict) -> Event:
    """A stream entry's fields (bytes or str keys and values) -> :class:`Event`;
    :class:`PoisonEvent` naming what is wrong."""
    f = {(k.decode() if isinstance(k, bytes) else k): (v.decode(errors="replace") if isinstance(v, bytes) else v)
         for k, v in fields.items()}
    for name in ("event_id", "user_id", "item_id", "type", "ts"):
        if not f.get(name):
            raise PoisonEvent(f"missing field {name}")
    if f["type"] not in EVENT_TYPES:
        raise PoisonEvent(f"unknown type {f['type']!r}")
    try:
        item_id = int(f["item_id"])
        ts = float(f["ts"])
        value = float(f["value"]) if f.get("value") not in (None, "") else None
        received = float(f["received"]) if f.get("received") not in (None, "") else None
    except ValueError as exc:
        raise PoisonEvent(f"unparseable field: {exc}") from None
    if not math.isfinite(ts) or (value is not None and not math.isfinite(value)):
        raise PoisonEvent("non-finite ts or value")
    return Event(f["event_id"], f["user_id"], item_id, f["type"], ts, value, received)


@dataclass(frozen=True, slots=True)
class PopularScale:
    """How :data:`POPULAR` scores are kept: an event of weight ``w`` at ``ts`` adds
    ``w * 2 ** ((ts - epoch) / half_life_s)`` (no per-item rewrite as time passes); the weight
    as of ``now`` is ``score * 2 ** (-(now - epoch) / half_life_s)``. The consumer moves the epoch
    forward (rescaling every score) before the exponent grows large."""

    epoch: float
    half_life_s: float

    def increment(self, weight: float, ts: float) -> float:
        return weight * 2.0 ** ((ts - self.epoch) / self.half_life_s)

    def factor_now(self, now: float) -> float:
        """Multiply a stored score by this to get its decayed weight at ``now``."""
        return 2.0 ** (-(now - self.epoch) / self.half_life_s)
