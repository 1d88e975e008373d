"""Process metrics for a service's own registry: CPU, memory (``process_*``) and GC pauses.

The services keep their metrics in private registries (never prometheus_client's global one), so
the standard process collector is not there by default. :func:`add_process_metrics` adds

* ``process_cpu_seconds_total``, ``process_resident_memory_bytes``, ``process_start_time_seconds``
  ... (prometheus_client's ``ProcessCollector``, read from ``/proc`` at scrape time): the CPU rate
  is what ``python -m architect diagnose`` sizes replicas from;
* ``python_gc_pause_seconds{generation}``: a histogram of the wall time of every garbage
  collection of this process, from ``gc.callbacks`` (``start`` -> ``stop`` of one collection; the
  callback is installed once per process and costs two ``perf_counter`` calls per collection).

Call it once per process, on the registry that process exposes (the gRPC services' runner, the
gateway's app, the events consumer); not on the in-process stages' registries, which the
gateway's exposition already includes. Several gateway workers (multiprocess mode) cannot export
either: their exposition only aggregates the workers' files.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

# 0.1 ms .. 1 s: a young collection is well under a millisecond, a full one over many objects tens of ms
GC_PAUSE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class _GCPauses:
    """Process-wide: per generation, cumulative bucket counts, sum and count of GC pauses."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts = {g: [0] * (len(GC_PAUSE_BUCKETS) + 1) for g in range(3)}  # last: +Inf only
        self.sums = {g: 0.0 for g in range(3)}
        self._started: float | None = None
        self.installed = False

    def callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        started, self._started = self._started, None
        if started is None:
            return
        seconds = time.perf_counter() - started
        gen = int(info.get("generation", 2))
        counts = self.counts.setdefault(gen, [0] * (len(GC_PAUSE_BUCKETS) + 1))
        i = 0
        while i < len(GC_PAUSE_BUCKETS) and seconds > GC_PAUSE_BUCKETS[i]:
            i += 1
        with self.lock:
            counts[i] += 1
            self.sums[gen] = self.sums.get(gen, 0.0) + seconds

    def install(self) -> None:
        if not self.installed:
            gc.callbacks.append(self.callback)
            self.installed = True


_PAUSES = _GCPauses()


class GCPauseCollector(Collector):
    """``python_gc_pause_seconds{generation}`` from the process-wide pause record."""

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(
            "python_gc_pause_seconds", "Wall time of each garbage collection of this process, per generation "
            "(gc.callbacks: start to stop).", labels=["generation"])
        with _PAUSES.lock:
            snapshot = {g: (list(c), _PAUSES.sums.get(g, 0.0)) for g, c in _PAUSES.counts.items()}
        for gen, (counts, total) in sorted(snapshot.items()):
            cumulative, buckets = 0, []
            for bound, n in zip((*GC_PAUSE_BUCKETS, float("inf")), counts, strict=True):
                cumulative += n
                buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), cumulative))
            family.add_metric([str(gen)], buckets, total)
        yield family


def add_process_metrics(registry: CollectorRegistry) -> None:
    """``process_*`` and ``python_gc_pause_seconds`` in ``registry`` (see the module docstring)."""
    _PAUSES.install()
    ProcessCollector(registry=registry)
    registry.register(GCPauseCollector())
