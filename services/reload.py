"""Hot swap: a service follows ``ARTIFACTS_DIR`` (the ``current`` link) without a restart.

:class:`Reloader` is polled by the server (every ``<SERVICE>_RELOAD_POLL_S``; 0 = off) on a
worker thread, off the request path. When the link resolves to another version folder it loads
and verifies the bundle (every sha256), builds the pipeline exactly as at start-up, warms it,
and only then swaps it in: the servicer reads its ``pipeline`` attribute once per call, so a call
in flight finishes on the object it started with and the old pipeline is freed when the last
such call returns. A bundle that fails to load, build or warm is refused: the service keeps
serving what it had, logs it, counts it (``recsys_bundle_reloads_total{outcome="refused"}``) and
does not retry that folder until the link moves again. Memory during a swap holds both
pipelines, so peaks at about twice one.

``keep_previous_s`` > 0 (ranking) keeps the replaced pipeline that long in ``servicer.previous``,
so that a request retrieved with the old version is still ranked by it (no mixed answer during
the seconds the services take to switch one after the other).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.bundle import Bundle, load_bundle

log = logging.getLogger(__name__)


class Reloader:
    def __init__(self, *, name: str, artifacts_dir: Path, servicer: Any, build: Callable[[Bundle], Any],
                 registry, set_model: Callable[[str], None], loaded_root: Path, keep_previous_s: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        from prometheus_client import Counter, Gauge

        self.name = name
        self.artifacts_dir = Path(artifacts_dir)
        self.servicer = servicer
        self.build = build
        self.set_model = set_model
        self.keep_previous_s = keep_previous_s
        self.clock = clock
        self.root = Path(loaded_root)  # the version folder being served
        self._refused: Path | None = None
        self._previous_until = 0.0
        self._lock = threading.Lock()
        self.reloads = Counter("recsys_bundle_reloads_total", "Bundle hot swaps by outcome (swapped, refused).",
                               ["service", "outcome"], registry=registry)
        self.seconds = Gauge("recsys_bundle_reload_seconds", "Duration of the last bundle load + warm-up + swap.",
                             ["service"], registry=registry)

    def check(self) -> str | None:
        """One poll: swap if ``current`` moved; drop an expired previous pipeline. Returns
        "swapped", "refused" or None (nothing to do)."""
        with self._lock:  # a SIGHUP and the poll never load twice at once
            if self._previous_until and self.clock() >= self._previous_until:
                self.servicer.previous = None
                self._previous_until = 0.0
            try:
                target = self.artifacts_dir.resolve(strict=True)
            except OSError:
                return None  # the link is being replaced or gone: keep serving
            if target == self.root or target == self._refused:
                return None
            t = time.perf_counter()
            try:
                bundle = load_bundle(target)
                pipeline = self.build(bundle)
            except Exception as exc:  # noqa: BLE001 - any failure: refuse it, keep serving the old one
                self._refused = target
                self.reloads.labels(self.name, "refused").inc()
                log.error("%s: refused bundle %s, still serving %s: %s", self.name, target.name, self.root.name, exc)
                return "refused"
            old = self.servicer.pipeline
            if self.keep_previous_s > 0:
                self.servicer.previous = old
                self._previous_until = self.clock() + self.keep_previous_s
            self.servicer.pipeline = pipeline  # one attribute store: a call sees the old or the new one
            self.root, self._refused = target, None
            self.set_model(bundle.version)
            self.reloads.labels(self.name, "swapped").inc()
            self.seconds.labels(self.name).set(time.perf_counter() - t)
            log.info("%s: now serving bundle %s (was %s; loaded and warmed in %.1fs)", self.name, bundle.version,
                     getattr(old, "version", "?"), time.perf_counter() - t)
            return "swapped"
