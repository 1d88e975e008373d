"""Hot swap: a service follows the artifacts root (``current``, ``rollout.json``) without a restart.

:class:`Reloader` is polled by the server (every ``<SERVICE>_RELOAD_POLL_S``; 0 = on SIGHUP only)
on a worker thread, off the request path. Each poll works out the arms
(:mod:`services.arms`) the service must hold: ``current``'s, the canary's (``rollout.json``), the
shadow ranker's (ranking), and every arm an enabled experiment names (bundle version x pipeline
file, with ``current`` where a variant names no bundle). An arm it lacks is loaded and verified
(every sha256), built exactly as at start-up and warmed up, and only then published in a new
:class:`~services.arms.Arms` snapshot: one attribute store, so a call in flight finishes on what it
started with and a replaced pipeline is freed when the last such call returns.

An arm no longer wanted is kept ``keep_previous_s`` more (requests the gateway pinned to it just
before it moved on are still answered by it), then dropped. A bundle that fails to load, build or
warm is refused: the service keeps serving what it had (a refused ``current`` leaves the old one
the default), logs it, counts it (``recsys_bundle_reloads_total{outcome="refused"}``), shows it
in :meth:`Reloader.status` (the ``/status`` page beside ``/metrics``) and does not retry that
folder for that arm until the pointer moves again. Memory: each arm is a whole pipeline; during a
swap the old and the new ``current`` are both held (measured in ``benchmarks/deploy.py``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common.bundle import Bundle, BundleError, load_bundle
from common.deployments import Rollout, RolloutReader
from services.arms import ArmKey, Arms

log = logging.getLogger(__name__)


class Reloader:
    def __init__(self, *, name: str, artifacts_dir: Path, servicer: Any, build: Callable[[Bundle, Any], Any],
                 config, registry, set_model: Callable[[str], None], keep_previous_s: float = 0.0,
                 wants_shadow: bool = False, clock: Callable[[], float] = time.monotonic) -> None:
        """``servicer.arms`` holds the start-up snapshot; ``build(bundle, pipeline_config)`` builds and
        warms one arm's pipeline; ``config``: the service's :class:`PipelineConfig` (experiments)."""
        from prometheus_client import Counter, Gauge

        self.name = name
        self.artifacts_dir = Path(artifacts_dir)
        self.root = self.artifacts_dir.parent  # where the versions, current and rollout.json are
        self.servicer = servicer
        self.build = build
        self.config = config
        self.set_model = set_model
        self.keep_previous_s = keep_previous_s
        self.wants_shadow = wants_shadow
        self.clock = clock
        self._retiring: dict[ArmKey, float] = {}  # arm -> when it is dropped
        self._refused: dict[ArmKey, tuple[Path, str, str]] = {}  # arm -> (folder, reason, when)
        self._rollout = Rollout()
        self._rollout_reader = RolloutReader(self.root, name)
        self._last_swap: dict | None = None
        self._lock = threading.Lock()
        self.reloads = Counter("recsys_bundle_reloads_total", "Arms loaded by outcome (swapped, refused).",
                               ["service", "outcome"], registry=registry)
        self.seconds = Gauge("recsys_bundle_reload_seconds", "Duration of the last arm load + warm-up.",
                             ["service"], registry=registry)
        self.arms_gauge = Gauge("recsys_arms_loaded", "Pipelines held (current, canary, shadow, experiments, retiring).",
                                ["service"], registry=registry)
        self.arms_gauge.labels(name).set(len(servicer.arms.pipelines))

    # -- what is wanted --------------------------------------------------------------------
    def _folder(self, key: ArmKey) -> Path:
        return self.root / key.version

    def wanted(self, current: str) -> set[ArmKey]:
        state = self._rollout
        keys = {ArmKey(current)}
        if state.canary is not None:
            keys.add(ArmKey(state.canary.version))
        if self.wants_shadow and state.shadow:
            keys.add(ArmKey(state.shadow))
        for exp in self.config.experiments:
            if exp.enabled:
                keys.update(ArmKey(v.bundle or current, v.pipeline or "") for v in exp.variants)
        return keys

    def _read_rollout(self) -> None:
        state = self._rollout_reader.read()
        if state is not None:  # unreadable: keep the last good state
            self._rollout = state

    # -- one poll --------------------------------------------------------------------------
    def check(self) -> str | None:
        """One poll: load what is wanted and missing, retire what is not. Returns "swapped" (the
        snapshot changed with a new arm), "refused" (an arm failed), "retired" or None."""
        with self._lock:  # a SIGHUP and the poll never load twice at once
            arms: Arms = self.servicer.arms
            try:
                current_folder = self.artifacts_dir.resolve(strict=True)
            except OSError:
                return None  # the link is being replaced or gone: keep serving
            self._read_rollout()
            current = current_folder.name
            wanted = self.wanted(current)
            pipelines = dict(arms.pipelines)
            outcome = None
            bundles: dict[Path, Bundle] = {}
            for key in sorted(wanted - pipelines.keys(), key=lambda k: (k.version != current, k)):
                folder = current_folder if key.version == current else self._folder(key)
                if key in self._refused and self._refused[key][0] == folder:
                    continue
                t = time.perf_counter()
                try:
                    if folder not in bundles:
                        bundles[folder] = load_bundle(folder)
                    bundle = bundles[folder]
                    if bundle.version != key.version:
                        raise BundleError(f"folder {folder.name} holds bundle version {bundle.version}")
                    pipelines[key] = _niced(self.build, bundle, self.config.variant(key.pipeline))
                except Exception as exc:  # noqa: BLE001 - any failure: refuse this arm, keep serving
                    self._refused[key] = (folder, str(exc), _now())
                    self.reloads.labels(self.name, "refused").inc()
                    log.error("%s: refused arm %s, still serving %s: %s", self.name, key, arms.default, exc)
                    outcome = "refused"
                    continue
                elapsed = time.perf_counter() - t
                self._refused.pop(key, None)
                self._retiring.pop(key, None)
                self.reloads.labels(self.name, "swapped").inc()
                self.seconds.labels(self.name).set(elapsed)
                self._last_swap = {"arm": str(key), "seconds": round(elapsed, 3), "at": _now()}
                log.info("%s: loaded arm %s in %.3fs (load, verify, build, warm-up)", self.name, key, elapsed)
                outcome = outcome or "swapped"
            for key in set(self._refused) - wanted:
                del self._refused[key]  # no longer asked for: not a problem to report any more
            default = ArmKey(current) if ArmKey(current) in pipelines else arms.default
            now = self.clock()
            for key in list(pipelines):
                if key in wanted or key == default:
                    self._retiring.pop(key, None)
                    continue
                until = self._retiring.setdefault(key, now + self.keep_previous_s)
                if now >= until:
                    del pipelines[key]
                    del self._retiring[key]
                    log.info("%s: dropped arm %s (no longer wanted)", self.name, key)
                    outcome = outcome or "retired"
            shadow = ArmKey(self._rollout.shadow) if self.wants_shadow and self._rollout.shadow else None
            shadow = shadow if shadow in pipelines and shadow != default else None
            if pipelines.keys() != arms.pipelines.keys() or default != arms.default or shadow != arms.shadow:
                self.servicer.arms = Arms(default, pipelines, shadow)
                self.arms_gauge.labels(self.name).set(len(pipelines))
                if default != arms.default:
                    self.set_model(default.version)
                    log.info("%s: now serving bundle %s by default (was %s)", self.name, default, arms.default)
            return outcome

    def status(self) -> dict:
        """Health details: what is served, what is on its way out, what was refused and why."""
        arms: Arms = self.servicer.arms
        return {
            "service": self.name, **arms.describe(),
            "retiring": {str(k): round(max(0.0, t - self.clock()), 1) for k, t in self._retiring.items()},
            "refused": {str(k): {"folder": str(f), "reason": r, "at": at} for k, (f, r, at) in self._refused.items()},
            "rollout": self._rollout.to_json(), "rollout_error": self._rollout_reader.error,
            "last_load": self._last_swap,
        }


# Nice value of the thread that builds and warms a new arm. Loading and warm-up are CPU work (the
# warm-up is *_WARMUP_REQUESTS full requests) beside live traffic: at 200 req/s on 2 cores they
# competed on equal terms and the swap cost a burst of deadline fallbacks (benchmarks/deploy.py).
# Niced, the live calls get the cores first; the load takes a little longer.
LOAD_NICE = 10


def _niced(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` on a thread of its own at nice LOAD_NICE (Linux: a thread's nice is its own, and it
    ends with the thread, so no pool thread stays lowered; raising it back would need privileges)."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            if hasattr(os, "setpriority"):
                with contextlib.suppress(OSError):
                    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOAD_NICE)
            out["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            out["error"] = exc

    worker = threading.Thread(target=run, name="arm-loader", daemon=True)
    worker.start()
    worker.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
