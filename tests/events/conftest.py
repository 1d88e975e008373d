"""Fixtures of the events consumer tests: a private redis-server (the stream keys are global to a
Redis, so these tests do not share the session one), a private Feast project materialised into
it, the consumer's parts built in-process, and the gateway's append."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from common.realtime import Event, event_id_key
from deploy.local import Stack, start_redis
from feature_store.testing import OfflineDataMissing, private_feast
from feature_store.writer import UserRowWriter
from services.events.aggregates import Aggregates
from services.events.apply import Applier
from services.events.catalog import Catalog
from services.events.consumer import Consumer
from services.events.metrics import EventsMetrics
from services.events.settings import EventsSettings
from services.events.stream import Stream

PROJECT = "eventstest"
CATALOG = range(1, 1683)  # MovieLens-100K item ids

# The gateway's append: the idempotency key and the stream entry in one script.
APPEND = """
if redis.call('SET', KEYS[1], 'a', 'NX', 'EX', ARGV[1]) then
  return redis.call('XADD', KEYS[2], '*', unpack(ARGV, 2))
end
return false
"""


@pytest.fixture(scope="session")
def events_redis_url(tmp_path_factory) -> Iterator[str]:
    stack = Stack(tmp_path_factory.mktemp("events-redis"))
    try:
        yield start_redis(stack)
    finally:
        stack.stop("redis")


@pytest.fixture(scope="session")
def feast_env(events_redis_url, tmp_path_factory):
    try:
        return private_feast(tmp_path_factory.mktemp("events-feast"), events_redis_url, project=PROJECT)
    except OfflineDataMissing as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def writer(feast_env) -> UserRowWriter:
    return UserRowWriter.from_store(feast_env.store, PROJECT)


def clear_realtime(client) -> None:
    for pattern in ("{recsys:ev}*", "{u:*"):
        keys = list(client.scan_iter(match=pattern, count=1000))
        if keys:
            client.delete(*keys)


@pytest.fixture
def client(events_redis_url) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(events_redis_url)
    clear_realtime(c)
    yield c
    c.close()


def make_applier(client, writer, settings: EventsSettings | None = None, clock=time.time) -> Applier:
    s = settings or EventsSettings()
    return Applier(client, writer, Aggregates(client, s.popularity_half_life_s, s.covisit_max_neighbors),
                   seen_types=s.seen_type_set, recent_types=s.recent_type_set, weights=s.weights,
                   covisit_window_s=s.covisit_window_s, user_state_ttl_s=s.user_state_ttl_s,
                   covisit_max_partners=s.covisit_max_partners, clock=clock)


def make_consumer(client, writer, name: str = "test", **overrides) -> Consumer:
    s = EventsSettings(**overrides)
    return Consumer(Stream(client, name), make_applier(client, writer, s), Catalog.of(CATALOG), EventsMetrics(), s)


def append(client, events: list[Event], ttl_s: int = 86400) -> list[str | None]:
    """Append like the gateway does; an event id already accepted is not appended (None)."""
    script = client.register_script(APPEND)
    from common.realtime import STREAM

    ids = []
    for e in events:
        args = [ttl_s]
        for k, v in e.fields().items():
            args += [k, v]
        r = script(keys=[event_id_key(e.event_id), STREAM], args=args)
        ids.append(r.decode() if r else None)
    return ids
