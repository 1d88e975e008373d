"""A named circuit breaker per dependency: closed -> open -> half-open -> closed.

* closed: calls go through; ``failure_threshold`` consecutive failures open it.
* open: calls are refused at once (the caller takes its fallback) for ``reset_s`` seconds.
* half-open: one probe call is let through; success closes the breaker, failure re-opens it.

The state is exported through a Prometheus ``Enum`` metric labelled with the breaker's name.
Time is read from an injectable clock so the state machine is unit-testable without sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
STATES = (CLOSED, OPEN, HALF_OPEN)


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int,
        reset_s: float,
        on_state: Callable[[str, str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_s = reset_s
        self._on_state = on_state
        self._clock = clock
        self._state = CLOSED
        self._failures = 0
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
        self._failures = 0
        self._probe_in_flight = False
        if self._state != CLOSED:
            self._set(CLOSED)

    def record_failure(self) -> None:
        self._probe_in_flight = False
        self._failures += 1
        if self._state == HALF_OPEN or self._failures >= self.failure_threshold:
            self._opened_at = self._clock()
            self._set(OPEN)

    def release(self) -> None:
        """A call that was allowed ended without telling anything about the dependency."""
        self._probe_in_flight = False

    def _set(self, state: str) -> None:
        self._state = state
        self._notify()

    def _notify(self) -> None:
        if self._on_state is not None:
            self._on_state(self.name, self._state)
