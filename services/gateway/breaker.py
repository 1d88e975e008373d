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

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
STATES = (CLOSED, OPEN, HALF_OPEN)


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        *,
        failure_rate: float,
        window: int,
        min_calls: int,
        reset_s: float,
        on_state: Callable[[str, str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0.0 < failure_rate <= 1.0:
            raise ValueError(f"failure_rate must be in (0, 1], got {failure_rate}")
        if not 1 <= min_calls <= window:
            raise ValueError(f"need 1 <= min_calls <= window, got {min_calls} and {window}")
        self.name = name
        self.failure_rate = failure_rate
        self.min_calls = min_calls
        self.reset_s = reset_s
        self._on_state = on_state
        self._clock = clock
        self._state = CLOSED
        self._outcomes: deque[bool] = deque(maxlen=window)  # True = failure
        self._failures = 0  # failures currently in the window
        self._opened_at = 0.0
        self._probe_in_flight = False
        self._notify()

    @property
    def state(self) -> str:
        # An open breaker whose cool-down has elapsed reports half-open (a probe may go through).
        if self._state == OPEN and self._clock() - self._opened_at >= self.reset_s:
            return HALF_OPEN
        return self._state

    def allow(self) -> bool:
        """May a call go through now? In half-open only one probe at a time is allowed."""
        if self._state == CLOSED:
            return True
        if self._state == OPEN:
            if self._clock() - self._opened_at < self.reset_s:
                return False
            self._set(HALF_OPEN)
        if self._probe_in_flight:
            return False
        self._probe_in_flight = True
        return True

    def record_success(self) -> None:
        self._probe_in_flight = False
        if self._state != CLOSED:
            self._reset_window()
            self._set(CLOSED)
        else:
            self._record(False)

    def record_failure(self) -> None:
        self._probe_in_flight = False
        if self._state == HALF_OPEN:
            self._trip()
            return
        self._record(True)
        n = len(self._outcomes)
        if self._state == CLOSED and n >= self.min_calls and self._failures >= self.failure_rate * n:
            self._trip()

    def release(self) -> None:
        """A call that was allowed ended without telling anything about the dependency."""
        self._probe_in_flight = False

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
        self._state = state
        self._notify()

    def _notify(self) -> None:
        if self._on_state is not None:
            self._on_state(self.name, self._state)


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
