"""The gateway's view of the artifacts root: ``current`` (its catalog) and ``rollout.json`` (the canary).

:class:`DeploymentWatcher` is checked every ``GATEWAY_RELOAD_POLL_S`` by a background task of the
lifespan, and at once by ``POST /admin/reload``. When ``current`` resolves to another version it
loads that bundle's catalog (titles, the popular fallback list; sha256 checked) off the event loop
and, once retrieval and ranking both report that version loaded (gRPC health service
``recsys.v1.<Service>/<version>`` SERVING), hands it to the recommender, which from then on pins
requests to it. Waiting for both means no request is pinned to a version one service lacks: a
publish costs no fallbacks (measured in ``benchmarks/deploy.py``). A service that never reports
it (``GATEWAY_PIN_WAIT_S`` passed: it refused the bundle, or it is behind) does not hold the
switch forever: the gateway pins anyway and the services answer with what they hold, which the
response names. A new canary version is applied the same way; a canary dropped or resized at once.

A catalog that cannot be read keeps the old one (logged, ``gateway_reloads_total{outcome}``); a
``rollout.json`` that cannot be read keeps the last good state. In in-process mode the stages'
arms are polled here first (:meth:`services.inprocess.LocalStages.poll`), so they are loaded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from common.deployments import Rollout, RolloutReader
from services.gateway.catalog import Catalog, load_catalog

log = logging.getLogger(__name__)


class DeploymentWatcher:
    def __init__(self, artifacts_dir: Path, catalog: Catalog, *, on_catalog: Callable[[Catalog], None],
                 on_rollout: Callable[[Rollout], None], counter,
                 ready: Callable[[str], Awaitable[bool]] | None = None, pin_wait_s: float = 30.0,
                 stages_poll: Callable[[], None] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        """``ready(version)``: whether every stage serves ``version`` (None: do not wait)."""
        self.artifacts_dir = Path(artifacts_dir)
        self.root = self.artifacts_dir.parent
        self.catalog = catalog
        self.rollout = Rollout()
        self._rollout_reader = RolloutReader(self.root, "gateway")
        self._on_catalog = on_catalog
        self._on_rollout = on_rollout
        self._counter = counter  # gateway_reloads_total
        self._ready = ready
        self._pin_wait_s = pin_wait_s
        self._stages_poll = stages_poll
        self._clock = clock
        self._folder = self._resolve()
        self._lock = asyncio.Lock()
        self._refused: Path | None = None
        self._pending: dict[str, float] = {}  # version waiting for the stages -> since when

    def _resolve(self) -> Path | None:
        try:
            return self.artifacts_dir.resolve(strict=True)
        except OSError:
            return None

    @property
    def rollout_error(self) -> str | None:
        return self._rollout_reader.error

    def read_rollout(self) -> None:
        """Apply ``rollout.json`` as it is (start-up: the stages loaded it before SERVING)."""
        state = self._rollout_reader.read()
        if state is not None:
            self._apply(state)

    def _apply(self, state: Rollout) -> None:
        if state != self.rollout:
            if state.canary != self.rollout.canary:
                log.info("gateway: canary %s", f"{state.canary.version} for {state.canary.percent:g}% of users"
                         if state.canary else "off")
            self.rollout = state
            self._on_rollout(state)

    async def _may_pin(self, version: str) -> bool:
        """Whether requests may be pinned to ``version`` now: the stages serve it, or they were
        given GATEWAY_PIN_WAIT_S to."""
        if self._ready is None or await self._ready(version):
            self._pending.pop(version, None)
            return True
        since = self._pending.setdefault(version, self._clock())
        if self._clock() - since >= self._pin_wait_s:
            log.warning("gateway: pinning to %s although not every service reports it after %.0fs",
                        version, self._pin_wait_s)
            self._pending.pop(version, None)
            return True
        return False

    async def check(self) -> dict:
        """One check; returns what changed (``catalog``, ``refused``, ``waiting``) for POST /admin/reload."""
        async with self._lock:
            changed: dict = {}
            if self._stages_poll is not None:
                await asyncio.to_thread(self._stages_poll)
            state = self._rollout_reader.read()
            if state is not None:
                new_canary = state.canary is not None and (
                    self.rollout.canary is None or state.canary.version != self.rollout.canary.version)
                if not new_canary or await self._may_pin(state.canary.version):
                    self._apply(state)
                else:
                    changed.setdefault("waiting", []).append(state.canary.version)
            folder = self._resolve()
            if folder is not None and folder != self._folder and folder != self._refused:
                await self._follow(folder, changed)
            waiting = set(changed.get("waiting", ()))  # versions no longer asked for are not waited for
            self._pending = {v: t for v, t in self._pending.items() if v in waiting}
            return changed

    async def _follow(self, folder: Path, changed: dict) -> None:
        catalog = await asyncio.to_thread(load_catalog, folder)
        if catalog.error is not None:
            log.error("gateway: bundle %s refused (%s): still serving %s", folder.name, catalog.error,
                      self.catalog.version)
            self._refused = folder
            self._counter.labels(outcome="refused").inc()
            changed["refused"] = {"folder": str(folder), "reason": catalog.error}
            return
        if not await self._may_pin(catalog.version):
            changed.setdefault("waiting", []).append(catalog.version)
            return
        log.info("gateway: now pinning requests to bundle %s (was %s)", catalog.version, self.catalog.version)
        self.catalog, self._folder, self._refused = catalog, folder, None
        self._on_catalog(catalog)
        self._counter.labels(outcome="swapped").inc()
        changed["catalog"] = catalog.version

    async def run(self, poll_s: float) -> None:
        while True:
            await asyncio.sleep(poll_s)
            try:
                await self.check()
            except Exception:  # noqa: BLE001 - the watcher must outlive a bad poll
                log.exception("gateway: deployment check failed")

    def status(self) -> dict:
        return {"current": self.catalog.version or None, "rollout": self.rollout.to_json(),
                "rollout_error": self.rollout_error, "waiting_for_services": sorted(self._pending) or None,
                "refused": str(self._refused) if self._refused is not None else None}
