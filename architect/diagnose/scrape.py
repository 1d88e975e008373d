"""Two looks at a running stack: direct ``/metrics`` scrapes, or Prometheus's HTTP query API.

A :class:`Snapshot` is what every component exposed at one moment (its samples, or why it could
not be read); a :class:`Window` is two snapshots ``seconds`` apart and answers what the finding
rules ask: counter increases, histogram quantiles of what happened between the two, gauges at
the end. Both sources build the same snapshots, so the rules do not know which one was used.

* **direct** (:func:`scrape_all`): one GET of each component's metrics URL, all in parallel (a
  hung process costs one timeout, not one per component); on a local stack also ``/proc/stat``
  (the host's busy CPU share, for the capacity finding).
* **Prometheus** (:func:`prometheus_snapshots`): ``/api/v1/query`` of every ``gateway_*``,
  ``recsys_*``, ``process_*``, ``python_*`` and ``up`` series at ``now - window`` and at ``now``
  (no waiting: Prometheus has the history); the ``job`` label names the component (the compose
  and chart job names are the component names; ``--job component=job`` maps others), ``up == 0``
  on every target of a job reads as "could not be scraped".
"""

from __future__ import annotations

import math
import os
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx

COMPONENTS = ("gateway", "retrieval", "ranking", "events")
Labels = tuple[tuple[str, str], ...]


@dataclass
class Scrape:
    component: str
    url: str
    t: float  # wall clock (epoch s) of the scrape
    samples: dict[tuple[str, Labels], float] | None = None  # (name, sorted labels) -> value
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.samples is not None


@dataclass
class Snapshot:
    t: float
    scrapes: dict[str, Scrape]
    host_cpu: tuple[float, float] | None = None  # (busy jiffies, total jiffies) from /proc/stat


def parse_exposition(text: str) -> dict[tuple[str, Labels], float]:
    """Prometheus text format -> {(sample name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[tuple[str, Labels], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def scrape_one(component: str, url: str, timeout: float) -> Scrape:
    t = time.time()
    try:
        r = httpx.get(url, timeout=timeout)
        if r.status_code != 200:
            return Scrape(component, url, t, error=f"HTTP {r.status_code} from {url}")
        return Scrape(component, url, t, samples=parse_exposition(r.text))
    except httpx.TimeoutException:
        return Scrape(component, url, t, error=f"no answer from {url} within {timeout:g}s (process hung or stopped?)")
    except httpx.HTTPError as exc:
        return Scrape(component, url, t, error=f"cannot reach {url}: {type(exc).__name__} {exc}".rstrip())
    except ValueError as exc:  # not Prometheus text
        return Scrape(component, url, t, error=f"{url} did not return Prometheus text: {exc}")


def host_cpu() -> tuple[float, float] | None:
    """(busy, total) jiffies of the whole host (``/proc/stat``'s cpu line); None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = [float(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already in user
    return total - idle, total


def scrape_all(urls: dict[str, str], timeout: float, local: bool) -> Snapshot:
    """Every URL at once; the snapshot's time is when the scrapes started (a hung one's timeout
    does not stretch the window)."""
    t = time.time()
    with ThreadPoolExecutor(max_workers=max(1, len(urls))) as pool:
        futures = {c: pool.submit(scrape_one, c, u, timeout) for c, u in urls.items()}
        cpu = host_cpu() if local else None
        scrapes = {c: f.result() for c, f in futures.items()}
    return Snapshot(t, scrapes, cpu)


class PrometheusError(RuntimeError):
    """Prometheus could not be queried (unreachable, or the query failed)."""


PROM_SELECTOR = '{__name__=~"gateway_.+|recsys_.+|process_.+|python_gc_.+|up"}'


def _prom_query(client: httpx.Client, base: str, query: str, at: float) -> list[dict]:
    try:
        r = client.get(f"{base.rstrip('/')}/api/v1/query", params={"query": query, "time": f"{at:.3f}"})
    except httpx.HTTPError as exc:
        raise PrometheusError(f"cannot reach Prometheus at {base}: {type(exc).__name__} {exc}".rstrip()) from exc
    try:
        body = r.json()
    except ValueError as exc:
        raise PrometheusError(f"{base}/api/v1/query answered HTTP {r.status_code}, not JSON") from exc
    if r.status_code != 200 or body.get("status") != "success":
        raise PrometheusError(f"Prometheus query failed: HTTP {r.status_code} {body.get('error', '')}")
    return body["data"]["result"]


def prometheus_snapshot(client: httpx.Client, base: str, at: float, jobs: dict[str, str]) -> Snapshot:
    """Every series of :data:`PROM_SELECTOR` at ``at``, split into components by ``job``."""
    by_job = {job: comp for comp, job in jobs.items()}
    samples: dict[str, dict[tuple[str, Labels], float]] = defaultdict(dict)
    up: dict[str, list[float]] = defaultdict(list)
    for series in _prom_query(client, base, PROM_SELECTOR, at):
        metric = dict(series["metric"])
        name = metric.pop("__name__", "")
        comp = by_job.get(metric.get("job", ""))
        if comp is None:
            continue
        value = float(series["value"][1])
        if name == "up":
            up[comp].append(value)
            continue
        metric.pop("job", None)  # the instance label stays: replicas are separate series
        samples[comp][(name, tuple(sorted(metric.items())))] = value
    scrapes = {}
    for comp, job in jobs.items():
        where = f"{base} job={job}"
        if up.get(comp) and not any(v > 0 for v in up[comp]):
            scrapes[comp] = Scrape(comp, where, at, error=f"Prometheus reports up == 0 for every {job} target")
        elif comp in samples:
            scrapes[comp] = Scrape(comp, where, at, samples=samples[comp])
        elif comp == "gateway":
            scrapes[comp] = Scrape(comp, where, at, error=f"Prometheus has no series of job {job!r}")
        # else: no series, not even ``up``: not deployed (in-process mode, no events consumer)
    return Snapshot(at, scrapes)


def prometheus_snapshots(base: str, window: float, jobs: dict[str, str], timeout: float,
                         now: float | None = None) -> tuple[Snapshot, Snapshot]:
    now = time.time() if now is None else now
    with httpx.Client(timeout=timeout) as client:
        return prometheus_snapshot(client, base, now - window, jobs), prometheus_snapshot(client, base, now, jobs)


# -- the window: what happened between two snapshots -----------------------------------------------

def _match(labels: Labels, want: dict[str, str]) -> bool:
    d = dict(labels)
    return all(d.get(k) == v for k, v in want.items())


@dataclass
class Histogram:
    """Bucket increases over the window (cumulative, by upper bound), their sum and count."""

    buckets: list[tuple[float, float]] = field(default_factory=list)
    sum: float = 0.0
    count: float = 0.0

    def quantile(self, q: float) -> float | None:
        """Prometheus's ``histogram_quantile`` (linear within a bucket); None without observations."""
        if self.count <= 0 or not self.buckets:
            return None
        rank = q * self.count
        prev_bound, prev_count = 0.0, 0.0
        for bound, cum in self.buckets:
            if cum >= rank:
                if math.isinf(bound):
                    return prev_bound  # in the +Inf bucket: the largest finite bound
                if cum == prev_count:
                    return bound
                return prev_bound + (bound - prev_bound) * (rank - prev_count) / (cum - prev_count)
            prev_bound, prev_count = bound, cum
        return prev_bound

    def share_above(self, bound: float) -> float | None:
        """Share of the observations above the bucket bound ``bound`` (must be a bucket edge)."""
        if self.count <= 0:
            return None
        below = next((c for b, c in self.buckets if b >= bound), self.count)
        return max(0.0, self.count - below) / self.count

    @property
    def mean(self) -> float | None:
        return self.sum / self.count if self.count > 0 else None


class Window:
    """Two snapshots of the same stack, ``seconds`` apart."""

    def __init__(self, first: Snapshot, last: Snapshot) -> None:
        self.first, self.last = first, last
        self.seconds = max(1e-9, last.t - first.t)

    def ok(self, component: str) -> bool:
        a, b = self.first.scrapes.get(component), self.last.scrapes.get(component)
        return a is not None and b is not None and a.ok and b.ok

    def error(self, component: str) -> str | None:
        for snap in (self.last, self.first):
            s = snap.scrapes.get(component)
            if s is not None and not s.ok:
                return s.error
        return None

    def present(self, component: str) -> bool:
        return component in self.last.scrapes

    def _series(self, snap: Snapshot, component: str, name: str, want: dict[str, str]):
        s = snap.scrapes.get(component)
        if s is None or s.samples is None:
            return {}
        return {labels: v for (n, labels), v in s.samples.items() if n == name and _match(labels, want)}

    def series_increase(self, component: str, name: str, **want: str) -> dict[Labels, float]:
        """Per series: last - first (a counter reset, or a series new in the window: its last value)."""
        before = self._series(self.first, component, name, want)
        after = self._series(self.last, component, name, want)
        out = {}
        for labels, v in after.items():
            if math.isnan(v):
                continue
            v0 = before.get(labels, 0.0)
            out[labels] = v - v0 if v >= v0 and not math.isnan(v0) else v
        return out

    def increase(self, component: str, name: str, **want: str) -> float:
        return sum(self.series_increase(component, name, **want).values())

    def increase_by(self, component: str, name: str, label: str, **want: str) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for labels, v in self.series_increase(component, name, **want).items():
            out[dict(labels).get(label, "")] += v
        return dict(out)

    def gauges(self, component: str, name: str, **want: str) -> dict[Labels, float]:
        """The last snapshot's values (NaN dropped)."""
        return {k: v for k, v in self._series(self.last, component, name, want).items() if not math.isnan(v)}

    def labels_of(self, component: str, name: str, label: str) -> set[str]:
        return {dict(k).get(label, "") for k in self._series(self.last, component, name, {})}

    def histogram(self, component: str, name: str, **want: str) -> Histogram:
        """The window's increase of histogram ``name`` (every matching series merged)."""
        by_bound: dict[float, float] = defaultdict(float)
        for labels, v in self.series_increase(component, f"{name}_bucket", **want).items():
            by_bound[float(dict(labels)["le"])] += v
        h = Histogram(sorted(by_bound.items()))
        h.sum = self.increase(component, f"{name}_sum", **want)
        h.count = self.increase(component, f"{name}_count", **want)
        return h

    def histograms_by(self, component: str, name: str, label: str, **want: str) -> dict[str, Histogram]:
        values = {dict(k).get(label, "") for k in self.series_increase(component, f"{name}_count", **want)}
        return {v: self.histogram(component, name, **{**want, label: v}) for v in sorted(values)}

    def host_busy(self) -> float | None:
        """Share of the host's CPU that was busy over the window (local stacks only)."""
        a, b = self.first.host_cpu, self.last.host_cpu
        if a is None or b is None or b[1] <= a[1]:
            return None
        return (b[0] - a[0]) / (b[1] - a[1])


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
