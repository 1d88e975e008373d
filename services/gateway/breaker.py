"""Per-dependency protection in the gateway: a circuit breaker and a bulkhead.

:class:`CircuitBreaker` - closed -> open -> half-open -> closed, on the failure *rate*:

* closed: calls go through. Each call's outcome enters a window of the last ``window`` calls;
  once the window holds at least ``min_calls`` outcomes and the share of failures reaches
  ``failure_rate``, the breaker opens. A rate, not a run of consecutive failures: under load a few
  timeouts in a row are normal and must not take a healthy dependency out of service, while a
  dead one fails every call and opens the breaker after ``min_calls`` calls.
* open: calls are refused at once (the caller takes its fallback) for ``reset_s`` seconds.
* half-open: one probe call is let through; success closes the breaker (with an empty window),
  failure re-opens it.

Outcomes count only for the state their call was allowed in. :meth:`CircuitBreaker.allow` hands
out a :class:`Permit` stamped with the breaker's *generation*, which every state change bumps;
``record_success`` / ``record_failure`` / ``release`` take that permit back, and one from an
older generation is ignored. Without this, with up to 4 calls in flight, a call allowed while
closed that succeeds *after* its siblings' failures opened the breaker would close it again, and
a late completion in half-open would let a second probe through: a partly failing dependency
made the breaker flap.

:class:`Bulkhead` - at most ``limit`` calls in flight to one dependency. The gRPC services run
one CPU-bound request at a time per process; sending them 32 requests at once only moves the
queue into their socket buffers, where every queued request burns its *stage* budget and the
work done for the ones that time out is wasted. With the bulkhead the queue stays in the gateway,
waiting is bounded by the *request* deadline, and a request that cannot get a slot in time is
shed to its fallback rung without touching the dependency or its breaker.

States are exported as Prometheus metrics by the callbacks the gateway passes in. Time is read
from an injectable clock so the breaker is unit-testable without sleeping.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
STATES = (CLOSED, OPEN, HALF_OPEN)


@dataclass(frozen=True, slots=True)
class Permit:
    """Leave to make one call, valid for the breaker state (generation) it was given in."""

    generation: int
    probe: bool = False


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        *,
        failure_rate: float,
        window: int,
        min_calls: int,
        reset_s: float,
        on_change: Callable[[str, str | None, str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``on_change(name, old, new)`` is called once at construction (``old`` None) and on
        every state change after it (the gateway exports both as metrics)."""
        if not 0.0 < failure_rate <= 1.0:
            raise ValueError(f"failure_rate must be in (0, 1], got {failure_rate}")
        if not 1 <= min_calls <= window:
            raise ValueError(f"need 1 <= min_calls <= window, got {min_calls} and {window}")
        self.name = name
        self.failure_rate = failure_rate
        self.min_calls = min_calls
        self.reset_s = reset_s
        self._on_change = on_change
        self._clock = clock
        self._state = CLOSED
        self._generation = 0  # bumped by every state change; permits of older ones are stale
        self._outcomes: deque[bool] = deque(maxlen=window)  # True = failure
        self._failures = 0  # failures currently in the window
        self._opened_at = 0.0
        self._probe_in_flight = False
        if on_change is not None:
            on_change(name, None, CLOSED)

    @property
    def state(self) -> str:
        # An open breaker whose cool-down has elapsed reports half-open (a probe may go through).
        if self._state == OPEN and self._clock() - self._opened_at >= self.reset_s:
            return HALF_OPEN
        return self._state

    def allow(self) -> Permit | None:
        """A permit for one call now, or None (refused). In half-open only one probe at a time."""
        if self._state == CLOSED:
            return Permit(self._generation)
        if self._state == OPEN:
            if self._clock() - self._opened_at < self.reset_s:
                return None
            self._set(HALF_OPEN)
        if self._probe_in_flight:
            return None
        self._probe_in_flight = True
        return Permit(self._generation, probe=True)

    def record_success(self, permit: Permit) -> None:
        if not self._current(permit):
            return
        if self._state == HALF_OPEN:  # the probe got through
            self._probe_in_flight = False
            self._reset_window()
            self._set(CLOSED)
        else:
            self._record(False)

    def record_failure(self, permit: Permit) -> None:
        if not self._current(permit):
            return
        if self._state == HALF_OPEN:  # the probe failed
            self._probe_in_flight = False
            self._trip()
            return
        self._record(True)
        n = len(self._outcomes)
        if n >= self.min_calls and self._failures >= self.failure_rate * n:
            self._trip()

    def release(self, permit: Permit) -> None:
        """An allowed call ended without telling anything about the dependency."""
        if permit.probe and self._current(permit):
            self._probe_in_flight = False  # the next request may probe

    def _current(self, permit: Permit) -> bool:
        """Does this permit's outcome still count? Not when the state changed since it was given."""
        return permit.generation == self._generation

    def _record(self, failed: bool) -> None:
        window = self._outcomes
        if len(window) == window.maxlen and window[0]:
            self._failures -= 1
        window.append(failed)
        self._failures += failed

    def _reset_window(self) -> None:
        self._outcomes.clear()
        self._failures = 0

    def _trip(self) -> None:
        self._opened_at = self._clock()
        self._reset_window()
        self._set(OPEN)

    def _set(self, state: str) -> None:
        old, self._state = self._state, state
        self._generation += 1
        if self._on_change is not None:
            self._on_change(self.name, old, state)


class Bulkhead:
    """At most ``limit`` calls in flight; the others wait in FIFO order, each at most ``timeout_s``."""

    def __init__(self, name: str, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.name = name
        self.limit = limit
        self._semaphore = asyncio.Semaphore(limit)  # binds to the running loop on first wait

    @property
    def in_flight(self) -> int:
        return self.limit - self._semaphore._value  # noqa: SLF001 - read-only peek for the gauge

    async def acquire(self, timeout_s: float) -> bool:
        """Take a slot; False when none frees up within ``timeout_s`` (the caller sheds)."""
        semaphore = self._semaphore
        if not semaphore.locked():
            await semaphore.acquire()  # a free slot: returns without suspending
            return True
        if timeout_s <= 0:
            return False
        try:
            async with asyncio.timeout(timeout_s):
                await semaphore.acquire()
        except TimeoutError:
            return False
        return True

    def release(self) -> None:
        self._semaphore.release()
