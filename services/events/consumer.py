"""The consumer loop: recover, then read, apply, acknowledge; claim from crashed consumers, trim.

* **start**: create the group if missing (id 0, MKSTREAM); re-read this consumer's own pending
  entries (id 0: a batch it had read but not acknowledged before a crash); ``XAUTOCLAIM`` entries
  idle longer than ``claim_idle_ms`` (a crashed consumer's); then new entries (``>``).
  Claiming is repeated every ``claim_idle_ms / 2``.
* **a batch**: deleted entries are acknowledged; an entry delivered more than ``max_deliveries``
  times, an undecodable one (:class:`~common.realtime.PoisonEvent`) or one on an item the served
  bundle does not know goes to the dead letter stream; the rest are applied
  (:class:`~services.events.apply.Applier`, steps b-e); then one ``MULTI``: dead letters + ``XACK``
  of the batch. Poison never blocks the stream.
* **failures**: a transient Redis error (connection, timeout, OOM, LOADING, BUSY, READONLY...)
  is logged and the same step retried with a bounded exponential back-off; nothing is
  acknowledged that was not applied. Any other error applying a batch: its events are applied one
  by one, and one that still fails stays pending (``recsys_events_failed_total{reason}``) until
  it is claimed again, up to ``max_deliveries`` times, then dead-lettered.
* **SIGTERM** (``stop()``): the batch in hand is finished and acknowledged, then ``run`` returns
  0; a read waits at most ``block_ms``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from redis.exceptions import BusyLoadingError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from common.realtime import Event, PoisonEvent, decode_entry
from services.events.apply import Applier
from services.events.catalog import Catalog
from services.events.metrics import EventsMetrics
from services.events.settings import EventsSettings
from services.events.stream import Entry, Stream, id_ms

log = logging.getLogger(__name__)

T = TypeVar("T")
BACKOFF_START_S, BACKOFF_MAX_S = 0.05, 5.0
TRIM_EVERY_S = 60.0
LAG_EVERY_S = 1.0
TRANSIENT_REPLIES = ("OOM", "BUSY", "LOADING", "READONLY", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN", "NOGROUP",
                     "NOREPLICAS", "UNBLOCKED")


class Stopped(Exception):
    """Asked to stop while a step was being retried (nothing acknowledged)."""


def transient(exc: BaseException) -> bool:
    if isinstance(exc, RedisConnectionError | RedisTimeoutError | BusyLoadingError):
        return True
    return isinstance(exc, ResponseError) and str(exc).upper().startswith(TRANSIENT_REPLIES)


class Consumer:
    def __init__(self, stream: Stream, applier: Applier, catalog: Catalog, metrics: EventsMetrics,
                 settings: EventsSettings, clock: Callable[[], float] = time.time) -> None:
        self.stream = stream
        self.applier = applier
        self.catalog = catalog
        self.metrics = metrics
        self.settings = settings
        self.clock = clock
        self._stop = threading.Event()
        self.last_iteration = 0.0  # monotonic; 0 = the loop has not run yet
        self.group_exists = False
        self._last_claim = self._last_trim = self._last_lag = 0.0

    # -- control ------------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _retry(self, what: str, fn: Callable[[], T]) -> T:
        delay = BACKOFF_START_S
        while True:
            try:
                return fn()
            except Exception as exc:
                if not transient(exc):
                    raise
                self.metrics.failed.labels(reason="redis").inc()
                if "NOGROUP" in str(exc).upper():
                    log.warning("%s: the consumer group is gone (%s); creating it again", what, exc)
                    try:
                        self.stream.ensure_group()
                    except Exception as again:  # noqa: BLE001 - retried below
                        log.warning("could not create the group: %r", again)
                else:
                    log.warning("%s failed (%r); retrying in %.2fs", what, exc, delay)
                if self._stop.wait(delay):
                    raise Stopped(what) from exc
                delay = min(delay * 2, BACKOFF_MAX_S)

    # -- the loop -----------------------------------------------------------------------------
    def run(self) -> int:
        s = self.settings
        try:
            if self._retry("create group", self.stream.ensure_group):
                log.info("created consumer group %s on %s (from id 0)", self.stream.group, self.stream.stream)
            self.group_exists = True
            self.recover()
            while not self.stopping:
                self.last_iteration = time.monotonic()
                self.housekeeping()
                entries = self._retry("read", lambda: self.stream.read_new(s.batch_size, s.block_ms))
                if entries:
                    self.process(entries)
        except Stopped as exc:
            log.warning("stopped while retrying %s: its entries stay pending (applied on the next start)", exc)
        log.info("events consumer %s stopped", self.stream.consumer)
        return 0

    def recover(self) -> None:
        """This consumer's own pending entries (id 0), then entries idle in dead consumers."""
        after, n = "0", 0
        while not self.stopping:
            entries = self._retry("read own pending", lambda a=after: self.stream.read_own_pending(a, self.settings.batch_size))
            if not entries:
                break
            self.process(entries)
            after, n = entries[-1].id, n + len(entries)
        if n:
            log.info("re-applied %d entries pending for %s from before its restart", n, self.stream.consumer)
        self.claim()

    def claim(self) -> int:
        self._last_claim = time.monotonic()
        cursor, n = "0-0", 0
        while not self.stopping:
            cursor, entries = self._retry("autoclaim", lambda c=cursor: self.stream.autoclaim(
                self.settings.claim_idle_ms, c, self.settings.batch_size))
            if entries:
                n += len(entries)
                self.process(entries)
            if cursor == "0-0":
                break
        if n:
            log.info("claimed %d entries idle > %d ms in other consumers", n, self.settings.claim_idle_ms)
        return n

    def housekeeping(self) -> None:
        now = time.monotonic()
        if now - self._last_claim >= self.settings.claim_idle_ms / 2000.0:
            self.claim()
        if now - self._last_trim >= TRIM_EVERY_S:
            self._last_trim = now
            try:
                removed = self.stream.trim(self.settings.stream_retention_s, self.clock())
                if removed:
                    log.info("trimmed %d acknowledged entries older than %.0fs", removed, self.settings.stream_retention_s)
            except Exception as exc:  # noqa: BLE001 - housekeeping never stops the loop
                log.warning("stream trim failed: %r", exc)
        if now - self._last_lag >= LAG_EVERY_S:
            self.update_lag()
        self.catalog.maybe_reload()

    def update_lag(self) -> None:
        self._last_lag = time.monotonic()
        try:
            lag, age, exists = self.stream.lag(self.clock())
        except Exception as exc:  # noqa: BLE001
            log.debug("lag query failed: %r", exc)
            return
        self.group_exists = exists
        if lag is not None:
            self.metrics.lag_entries.set(lag)
        self.metrics.lag_seconds.set(age)

    # -- one batch ----------------------------------------------------------------------------
    def process(self, entries: Sequence[Entry]) -> None:
        t0 = time.perf_counter()
        s = self.settings
        ack: list[str] = []
        dead: list[tuple[Entry, str]] = []
        events: list[Event] = []
        owners: list[Entry] = []
        for e in entries:
            if e.fields is None:  # deleted while pending: nothing to apply
                ack.append(e.id)
            elif e.deliveries > s.max_deliveries:
                dead.append((e, f"failed {e.deliveries} deliveries"))
            else:
                try:
                    ev = decode_entry(e.fields)
                except PoisonEvent as exc:
                    dead.append((e, str(exc)))
                    continue
                events.append(ev)
                owners.append(e)
        if events:
            known = self.catalog.contains([ev.item_id for ev in events])
            if not known.all():
                for ok, ev, e in zip(known.tolist(), events, owners, strict=True):
                    if not ok:
                        dead.append((e, f"unknown item {ev.item_id}"))
                pairs = [(ev, e) for ok, ev, e in zip(known.tolist(), events, owners, strict=True) if ok]
                events, owners = [p[0] for p in pairs], [p[1] for p in pairs]
        ack += self._apply(events, owners)
        self._retry("ack", lambda: self.stream.ack(ack, dead))
        for _, reason in dead:
            self.metrics.dead(reason)
        if dead:
            log.warning("dead-lettered %d entries (%s)", len(dead), "; ".join(sorted({r for _, r in dead}))[:300])
        self.metrics.apply_seconds.observe(time.perf_counter() - t0)
        self.metrics.batch_size.observe(len(entries))
        if time.monotonic() - self._last_lag >= LAG_EVERY_S:
            self.update_lag()

    def _apply(self, events: list[Event], owners: list[Entry]) -> list[str]:
        """Apply; the ids that may be acknowledged."""
        if not events:
            return []
        try:
            self._apply_all(events, owners)
            return [e.id for e in owners]
        except Stopped:
            raise
        except Exception:
            log.exception("applying a batch of %d events failed; applying them one by one", len(events))
        ok = []
        for ev, e in zip(events, owners, strict=True):
            try:
                self._apply_all([ev], [e])
                ok.append(e.id)
            except Stopped:
                raise
            except Exception as exc:
                self.metrics.failed.labels(reason=type(exc).__name__).inc()
                log.exception("event %s (stream id %s, delivery %d) failed: left pending", ev.event_id, e.id, e.deliveries)
        return ok

    def _apply_all(self, events: list[Event], owners: list[Entry]) -> None:
        out = self._retry("apply", lambda: self.applier.apply(events))
        for t, n in out.applied.items():
            self.metrics.applied.labels(type=t).inc(n)
        if out.duplicates:
            self.metrics.duplicates.inc(out.duplicates)
        if out.anonymous:
            self.metrics.anonymous.inc(out.anonymous)
        now = self.clock()
        for ev, e in zip(events, owners, strict=True):
            received = ev.received if ev.received is not None else id_ms(e.id) / 1000.0
            self.metrics.freshness.observe(max(0.0, now - received))

    # -- readiness ----------------------------------------------------------------------------
    def ready(self) -> tuple[bool, dict]:
        max_age = max(10.0, 5 * self.settings.block_ms / 1000.0)
        age = time.monotonic() - self.last_iteration if self.last_iteration else None
        try:
            self.stream.client.ping()
            redis_ok = True
        except Exception:  # noqa: BLE001
            redis_ok = False
        loop_ok = age is not None and age <= max_age
        ok = redis_ok and self.group_exists and loop_ok
        return ok, {"redis": redis_ok, "group": self.group_exists,
                    "loop_age_s": None if age is None else round(age, 2), "catalog": self.catalog.version}
