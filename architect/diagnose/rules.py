"""The finding rules: each reads a :class:`~architect.diagnose.scrape.Window` and returns findings.

Every rule is a plain function of the window and the :class:`Limits` (thresholds plus the
gateway settings the remediation quotes), so the unit tests run them over synthetic snapshots and
the fault tests over real ones. Thresholds are documented per kind in docs/runbook.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from architect.diagnose.findings import CRITICAL, INFO, WARNING, Evidence, Finding
from architect.diagnose.scrape import Histogram, Window

SERVICES = ("retrieval", "ranking")
METHOD = {"retrieval": "Retrieve", "ranking": "Rank"}
# the rung of the fallback ladder -> what failed (services/pipeline.toml, gateway_fallbacks_total{reason})
RUNG_COMPONENT = {"ranking_unavailable": "ranking", "retrieval_unavailable": "retrieval",
                  "all_unavailable": "retrieval+ranking", "cached": "retrieval/ranking"}


@dataclass
class Limits:
    """Thresholds of the rules (CLI options) and the stack's settings they are relative to."""

    request_timeout_ms: float = 100.0  # GATEWAY_REQUEST_TIMEOUT_MS
    p99_ms: float | None = None  # None: half the request deadline
    min_requests: int = 20  # fewer /recommend answers in the window: latency / rate findings say so instead
    fallback_warn: float = 0.01
    fallback_crit: float = 0.10
    shed_warn: float = 0.01
    shed_crit: float = 0.10
    wait_p99_ms: float = 10.0
    feature_age_warn_s: float = 26 * 3600.0  # a daily materialisation, plus slack
    feature_age_crit_s: float = 7 * 86400.0
    lag_warn_s: float = 5.0
    lag_crit_s: float = 60.0
    freshness_p99_warn_s: float = 1.0
    model_age_warn_days: float = 30.0
    gc_share_warn: float = 0.01  # share of wall time spent in GC
    gc_pause_warn_s: float = 0.05  # any single pause above this
    cpu_target: float = 0.7
    cpu_crit: float = 0.9
    cores: int = 1
    missing_warn: float = 0.2  # share of a view's values defaulted per read
    in_flight: dict[str, int] = field(default_factory=lambda: {"retrieval": 4, "ranking": 4})
    num_candidates: int = 300  # GATEWAY_NUM_CANDIDATES: item rows per ranking call

    @property
    def latency_ms(self) -> float:
        return self.p99_ms if self.p99_ms is not None else 0.5 * self.request_timeout_ms


@dataclass
class Extra:
    """What is measured outside the metrics: the stream's lag read from Redis (or why not)."""

    stream_lag_entries: int | None = None
    stream_lag_seconds: float | None = None
    stream_error: str | None = None
    now: float | None = None  # wall clock of the last snapshot (ages)


Rule = Callable[[Window, Limits, Extra], list[Finding]]


def ms(x: float | None) -> float | None:
    return None if x is None else x * 1000.0


def _sev(value: float, warn: float, crit: float) -> str | None:
    return CRITICAL if value >= crit else WARNING if value >= warn else None


def answers(w: Window) -> float:
    return w.increase("gateway", "gateway_requests_total", code="200")


# -- components that do not answer --------------------------------------------------------------

REMEDY_DOWN = {
    "retrieval": "the gateway answers from the popular list meanwhile (fallback retrieval_unavailable). Check the "
                 "process (`make status`; compose: `docker compose ps retrieval`), its log (run/retrieval.log), and restart it.",
    "ranking": "the gateway answers in retrieval order meanwhile (fallback ranking_unavailable). Check the process "
               "(`make status`; compose: `docker compose ps ranking`), its log (run/ranking.log), and restart it.",
    "events": "posted events are not applied while it is down (the stream keeps them): check the process "
              "(`make status`), its log (run/events.log) and restart it; it resumes from its pending entries.",
}


def rule_unreachable(w: Window, lim: Limits, extra: Extra) -> list[Finding]:
    out = []
    for comp in ("retrieval", "ranking", "events"):
        if not w.present(comp) or w.ok(comp):
            continue
        accepted = w.increase("gateway", "gateway_events_total", outcome="accepted")
        sev = WARNING if comp == "events" and accepted <= 0 else CRITICAL
        scrape = w.last.scrapes[comp]
        out.append(Finding(sev, "unreachable", comp, f"{comp}: metrics endpoint not answering (process down, hung or stopped)",
                           [Evidence(f"GET {scrape.url}", w.error(comp))], REMEDY_DOWN[comp], score=100.0))
    return out


# -- circuit breakers ---------------------------------------------------------------------------

def rule_breakers(w: Window, lim: Limits, extra: Extra) -> list[Finding]:
    out = []
    state = "gateway_circuit_breaker_state"
    current: dict[str, str] = {}
    for labels, v in w.gauges("gateway", state).items():
        d = dict(labels)
        if v >= 1.0:
            current[d.get("breaker", "")] = d.get(state, "")
    opened = w.increase_by("gateway", "gateway_circuit_breaker_transitions_total", "breaker", state="open")
    for name in sorted(set(current) | set(opened)):
        s, n_open = current.get(name, "closed"), opened.get(name, 0.0)
        ev = [Evidence(f'{state}{{breaker="{name}"}}', s, "closed"),
              Evidence(f'gateway_circuit_breaker_transitions_total{{breaker="{name}",state="open"}} increase', n_open, 0)]
        what = "the cache (Redis)" if name == "redis" else name
        if s in ("open", "half_open"):
            out.append(Finding(CRITICAL, "breaker_open", name, f"{name}: circuit breaker {s} in the gateway: calls to {what} are refused",
                               ev, f"The breaker opens when half of the last GATEWAY_BREAKER_WINDOW calls failed; it probes again "
                                   f"every GATEWAY_BREAKER_RESET_S. Fix {what} (see the {name} findings below: not answering, "
                                   "slow, saturated), not the breaker.", score=90.0))
        elif n_open > 0:
            out.append(Finding(WARNING, "breaker_open", name, f"{name}: circuit breaker opened {n_open:.0f}x in the window (now closed: flapping)",
                               ev, f"{what} fails in bursts: look at its latency and CPU findings; a busy machine's timeouts "
                                   "count only when the call had its whole stage budget.", score=10.0 * n_open))
    return out


# -- fallbacks ----------------------------------------------------------------------------------

def rule_fallbacks(w: Window, lim: Limits, extra: Extra) -> list[Finding]:
    total = answers(w)
    if total < lim.min_requests:
        return []
    out = []
    for reason, n in sorted(w.increase_by("gateway", "gateway_fallbacks_total", "reason").items()):
        share = n / total
        sev = _sev(share, lim.fallback_warn, lim.fallback_crit)
        if sev is None:
            continue
        comp = RUNG_COMPONENT.get(reason, "gateway")
        codes = {}
        for dep in SERVICES:
            if dep in comp:
                codes[dep] = {c: v for c, v in w.increase_by("gateway", "gateway_dependency_errors_total", "code",
                                                             dependency=dep).items() if v > 0}
        why = "; ".join(f"{d} errors: " + ", ".join(f"{c} {v:.0f}" for c, v in sorted(cs.items(), key=lambda x: -x[1]))
                        for d, cs in codes.items() if cs)
        out.append(Finding(sev, "fallbacks", comp, f"{comp}: {share:.0%} of answers are fallbacks ({reason})",
                           [Evidence(f'gateway_fallbacks_total{{reason="{reason}"}} / gateway_requests_total{{code="200"}}',
                                     share, lim.fallback_warn, "%"),
                            Evidence("gateway_dependency_errors_total by code", why or "none")],
                           f"The rung says what failed ({reason}: {comp}); the error codes say how: DEADLINE_EXCEEDED = slow "
                           "(latency / CPU findings), UNAVAILABLE = down, shed = the bulkhead was full, breaker_open = "
                           "failing before. Fix that; the ladder is [fallback] in services/pipeline.toml.",
                           data={"share": share, "reason": reason}, score=share * 100))
    return out


# -- latency: tail and where the time goes --------------------------------------------------------

def _service_breakdown(w: Window, dep: str) -> tuple[float | None, str]:
    handling = w.histogram(dep, "recsys_grpc_server_handling_seconds", method=METHOD[dep])
    stages = w.histograms_by(dep, "recsys_stage_seconds", "stage")
    calls = max(handling.count, 1.0)
    parts = sorted(((s, h.sum / calls) for s, h in stages.items() if h.count), key=lambda x: -x[1])[:3]
    text = ", ".join(f"{s} {v * 1000:.1f} ms" for s, v in parts)
    return ms(handling.quantile(0.99)), text


def rule_latency(w: Window, lim: Limits, extra: Extra) -> list[Finding]:
    total = w.histogram("gateway", "gateway_stage_latency_seconds", stage="total")
    n = total.count
    if not w.ok("gateway"):
        return []
    if n < lim.min_requests:
        return [Finding(INFO, "traffic", "gateway", f"gateway: only {n:.0f} /recommend answers in the {w.seconds:.0f} s window",
                        [Evidence('gateway_stage_latency_seconds_count{stage="total"} increase', n, lim.min_requests)],
                        "Latency, fallback and cache findings need traffic: diagnose while the stack serves, or widen --window.")]
    p99, p50 = ms(total.quantile(0.99)), ms(total.quantile(0.5))
    parts: list[tuple[str, str, float, float | None]] = []  # (part, component, mean ms per request, p99 ms)
    for stage in ("cache", "precomputed", "retrieval", "ranking", "filters"):
        h = w.histogram("gateway", "gateway_stage_latency_seconds", stage=stage)
        if h.count:
            parts.append((f"{stage} call" if stage in SERVICES else stage, stage if stage in SERVICES else "gateway",
                          h.sum / n * 1000, ms(h.quantile(0.99))))
    for dep, h in w.histograms_by("gateway", "gateway_dependency_wait_seconds", "dependency").items():
        if h.count:
            parts.append((f"{dep} bulkhead wait", dep, h.sum / n * 1000, ms(h.quantile(0.99))))
    parts.sort(key=lambda p: -(p[3] or 0.0))
    where = ", ".join(f"{p} p99 {q:.1f} ms (mean {m:.1f})" for p, _, m, q in parts[:4] if q is not None)
    top_part, comp = (parts[0][0], parts[0][1]) if parts else ("?", "gateway")
    ev = [Evidence('gateway_stage_latency_seconds{stage="total"} p99', p99, lim.latency_ms, "ms"),
          Evidence("p50", p50, None, "ms"), Evidence("where the time goes (per stage)", where or "n/a")]
    crit = 0.9 * lim.request_timeout_ms
    sev = CRITICAL if p99 >= crit else WARNING if p99 >= lim.latency_ms else INFO
    remedy = "Within target."
    if comp in SERVICES:
        svc_p99, svc_stages = _service_breakdown(w, comp)
        if svc_p99 is not None:
            ev.append(Evidence(f'recsys_grpc_server_handling_seconds{{service="{comp}"}} p99', svc_p99, None, "ms"))
        if svc_stages:
            ev.append(Evidence(f"{comp} stages (mean per call)", svc_stages))
        if sev != INFO:
            if top_part.endswith("bulkhead wait"):
                remedy = (f"Requests queue for a {comp} slot: {comp} is at capacity. Add {comp} replicas and raise "
                          f"GATEWAY_{comp.upper()}_MAX_IN_FLIGHT (now {lim.in_flight.get(comp, 4)}) to about 4 x replicas / gateways; "
                          "see the cpu_saturation finding for how many.")
            elif svc_p99 is not None and svc_p99 < 0.5 * (parts[0][3] or 0):
                remedy = (f"{comp} itself answers fast (handling p99 {svc_p99:.1f} ms): the time is spent before its handler "
                          "runs - its event loop is busy (CPU, see cpu_saturation), it is paused, or the network. "
                          f"Replicas of {comp} or CPU; GATEWAY_{comp.upper()}_TIMEOUT_MS bounds the damage.")
            else:
                remedy = (f"{comp}'s own work is slow ({svc_stages or 'see its stages'}): profile that stage, shrink "
                          f"GATEWAY_NUM_CANDIDATES (now {lim.num_candidates}) or add {comp} replicas.")
    elif sev != INFO:
        remedy = ("The gateway's own stages (cache / filters) are slow: a busy event loop (cpu_saturation, gc_pauses) "
                  "or Redis (GATEWAY_CACHE_TIMEOUT_MS bounds the cache).")
    title = (f"{comp}: /recommend p99 {p99:.1f} ms (target {lim.latency_ms:.0f} ms), most of it in {top_part}"
             if sev != INFO else f"gateway: /recommend p99 {p99:.1f} ms within the {lim.latency_ms:.0f} ms target (slowest: {top_part})")
    return [Finding(sev, "latency", comp, title, ev, remedy, data={"p99_ms": p99, "p50_ms": p50, "requests": n},
                    score=p99 / lim.latency_ms)]


# -- bulkheads ----------------------------------------------------------------------------------

def rule_bulkheads(w: Window, lim: Limits, extra: Extra) -> list[Finding]:
    out = []
    for dep, h in w.histograms_by("gateway", "gateway_dependency_wait_seconds", "dependency").items():
        calls = h.count
        if calls < lim.min_requests:
            continue
        shed = w.increase("gateway", "gateway_dependency_errors_total", dependency=dep, code="shed")
        share, p99 = shed / calls, ms(h.quantile(0.99)) or 0.0
        sev = _sev(share, lim.shed_warn, lim.shed_crit)
        if sev is None and p99 >= lim.wait_p99_ms:
            sev = WARNING
        if sev is None:
            continue
        limit = lim.in_flight.get(dep, 4)
        out.append(Finding(sev, "bulkhead", dep, f"{dep}: bulkhead full - {share:.0%} of calls shed, wait p99 {p99:.1f} ms",
                           [Evidence(f'gateway_dependency_errors_total{{dependency="{dep}",code="shed"}} / calls', share, lim.shed_warn, "%"),
                            Evidence(f'gateway_dependency_wait_seconds{{dependency="{dep}"}} p99', p99, lim.wait_p99_ms, "ms"),
                            Evidence(f"GATEWAY_{dep.upper()}_MAX_IN_FLIGHT", limit)],
                           f"{dep} is at capacity: more in flight only moves the queue into {dep}. Add {dep} replicas (R) and set "
                           f"GATEWAY_{dep.upper()}_MAX_IN_FLIGHT to about 4 x R / gateways (now {limit}); how many replicas: "
                           "the cpu_saturation finding.", data={"shed_share": share, "wait_p99_ms": p99}, score=share * 100 + p99 / 10))
    return out


# -- cache --------------------------------------------------------------------------------------

def rule_cache(w: Window, lim: Limits, extra: Extra) -> list[Finding]:
    by = w.increase_by("gateway", "gateway_cache_requests_total", "result")
    lookups = by.get("hit", 0.0) + by.get("miss", 0.0) + by.get("error", 0.0)
    errors = w.increase("gateway", "gateway_cache_errors_total")
    if lookups < lim.min_requests and not errors:
        return []
    hit = by.get("hit", 0.0) / lookups if lookups else 0.0
    err = (by.get("error", 0.0) / lookups) if lookups else 1.0
    ev = [Evidence('gateway_cache_requests_total{result="hit"} / lookups', hit, None, "%"),
          Evidence("gateway_cache_errors_total increase", errors, 0)]
    if errors > 0 or err > 0.01:
        return [Finding(WARNING, "cache", "gateway", f"gateway: response cache failing ({errors:.0f} errors; hit rate {hit:.0%})", ev,
                        "Redis behind the cache is down or slower than GATEWAY_CACHE_TIMEOUT_MS: answers are computed "
                        "without it (more load on retrieval and ranking). Check Redis (latency, memory) and the redis breaker.",
                        data={"hit_rate": hit}, score=errors)]
    return [Finding(INFO, "cache", "gateway", f"gateway: response cache hit rate {hit:.0%} of {lookups:.0f} lookups", ev,
                    "A low hit rate with repeated users: GATEWAY_CACHE_TTL_S (events invalidate a user's answers anyway).",
                    data={"hit_rate": hit})]


# -- features: missing and stale ----------------------------------------------------------------

def _view_widths() -> dict[str, tuple[str, int]]:
    from feature_store.repo.definitions import FEATURE_VIEWS

    return {view: (entity, len(feats)) for view, (entity, _, feats) in FEATURE_VIEWS.items()}


def rule_missing_features(w: Window, lim: Limits, extra: Extra) -> list[Finding]:
    out = []
    widths = _view_widths()
    for comp in ("retrieval", "ranking", "gateway"):
        missing = w.increase_by(comp, "recsys_missing_features_total", "feature_view")
        if not missing:
            continue
        svc = comp if comp in SERVICES else None
        calls = (w.histogram(svc, "recsys_grpc_server_handling_seconds", method=METHOD[svc]).count if svc
                 else answers(w))
        if calls < lim.min_requests:
            continue
        for view, n in sorted(missing.items()):
            if n <= 0 or view not in widths:
                continue
            entity, width = widths[view]
            rows = calls * (lim.num_candidates if entity == "item" else 1)
            share = min(1.0, n / (rows * width))
            if share < lim.missing_warn:
                continue
            out.append(Finding(WARNING, "missing_features", comp,
                               f"{comp}: {share:.0%} of {view} feature values missing online (defaults served)",
                               [Evidence(f'recsys_missing_features_total{{feature_view="{view}"}} / (reads x features)', share,
                                         lim.missing_warn, "%")],
                               f"Rows absent from the online store: not materialised (`make materialize`), expired "
                               f"(FEAST_ENFORCE_TTL), another Feast project / Redis (FEAST_PROJECT, REDIS_URL), or unknown "
                               f"{entity}s (cold start is expected to default).", data={"share": share, "view": view},
                               score=share * 10))
    return out


def _age_finding(what: str, metric: str, age: float, lim: Limits, comp: str, remedy: str) -> Finding:
    sev = _sev(age, lim.feature_age_warn_s, lim.feature_age_crit_s) or INFO
    hours = age / 3600
    title = (f"{comp}: {what} is {hours:,.1f} h old" if sev != INFO else f"{comp}: {what} {hours:,.1f} h old (fresh)")
    return Finding(sev, "stale_features", comp, title, [Evidence(f"time() - {metric}", age, lim.feature_age_warn_s, "s")],
                   remedy if sev != INFO else "Within the age limit.", data={"age_s": age}, score=age / lim.feature_age_warn_s)


# (timestamp gauge, what it dates, what to do when it is old)
STALENESS = (
    ("recsys_feature_snapshot_published_timestamp_seconds", "the item feature snapshot served",
     "No new item snapshot since: the materialisation job has not run (`make materialize`, the chart's offline Job / "
     "its schedule), or a newer snapshot failed to load (the service log: 'item feature snapshot ... could not be "
     "loaded'; recsys_feature_item_table_refreshes_total{outcome=\"error\"})."),
    ("recsys_feature_materialized_until_timestamp_seconds", "the last materialisation (its end date)",
     "The online store holds offline rows only up to that date: run the materialisation up to now (`make "
     "materialize`; feature_store.store.materialize with end=None) and check the job's schedule; a backfill with an "
     "old end date leaves this behind."),
)


def rule_stale_features(w: Window, lim: Limits, extra: Extra) -> list[Finding]:
    now = extra.now if extra.now is not None else w.last.t
    out = []
    for comp in ("ranking", "gateway", "retrieval"):
        dated = False
        for metric, what, remedy in STALENESS:
            stamps = w.gauges(comp, metric)
            if stamps:
                dated = True
                out.append(_age_finding(what, metric, now - min(stamps.values()), lim, comp, remedy))
        rows = w.histograms_by(comp, "recsys_feature_row_age_seconds", "feature_view")
        parts = [(v, h.quantile(0.5)) for v, h in rows.items() if h.count]
        if parts:
            text = ", ".join(f"{v} p50 {_age_text(q)}" for v, q in parts if q is not None)
            out.append(Finding(INFO, "stale_features", comp, f"{comp}: age of the user feature rows read: {text}",
                               [Evidence("recsys_feature_row_age_seconds p50 by feature_view", text)],
                               "Batch views are as old as their last offline row (ml-100k: 1998); pushed views "
                               "(user_context, user_seen) are as fresh as the user's last event. FEAST_ENFORCE_TTL=true "
                               "serves rows past their view's TTL as missing.", data={v: q for v, q in parts}))
        if dated or parts:
            break  # one component reports (ranking holds the item table; in-process: the gateway)
    return out


def _age_text(seconds: float) -> str:
    if seconds >= 2 * 86400 * 365:
        return f">{seconds / 86400 / 365:.0f} y" if seconds < 3650 * 86400 else "> 10 y"
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.0f} d"
    if seconds >= 7200:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds:.0f} s"


# -- the events loop ----------------------------------------------------------------------------

def rule_events(w: Window, lim: Limits, extra: Extra) -> list[Finding]:
    accepted = w.increase("gateway", "gateway_events_total", outcome="accepted")
    ev: list[Evidence] = [Evidence('gateway_events_total{outcome="accepted"} increase', accepted)]
    lag_s: float | None = None
    entries: float | None = None
    freshness_p99 = None
    applied = None
    if w.ok("events"):
        lag_s = max(w.gauges("events", "recsys_events_lag_seconds").values(), default=None)
        entries = max(w.gauges("events", "recsys_events_lag_entries").values(), default=None)
        applied = w.increase("events", "recsys_events_applied_total")
        freshness_p99 = w.histogram("events", "recsys_events_freshness_seconds").quantile(0.99)
        ev += [Evidence("recsys_events_lag_seconds", lag_s, lim.lag_warn_s, "s"),
               Evidence("recsys_events_applied_total increase", applied)]
        if freshness_p99 is not None:
            ev.append(Evidence("recsys_events_freshness_seconds p99", freshness_p99, lim.freshness_p99_warn_s, "s"))
    if extra.stream_lag_seconds is not None:  # read from the stream itself: holds while the consumer is down
        lag_s = max(lag_s or 0.0, extra.stream_lag_seconds)
        entries = max(entries or 0.0, float(extra.stream_lag_entries or 0))
        ev.append(Evidence("stream: age of the oldest entry not applied (XINFO GROUPS / XPENDING)", extra.stream_lag_seconds,
                           lim.lag_warn_s, "s"))
        ev.append(Evidence("stream: entries not delivered (XINFO GROUPS lag)", extra.stream_lag_entries))
    if not w.present("events") and extra.stream_lag_seconds is None and accepted <= 0:
        return []
    down = w.present("events") and not w.ok("events")
    remedy = ("Start / restart the consumer (`make up` starts it; compose: the events service); it resumes from the "
              "stream. Behind but running: one consumer applies ~2,400 events/s here - run a second consumer in the "
              "group (EVENTS_CONSUMER_NAME differs), raise EVENTS_BATCH_SIZE, or give Redis / the consumer their own cores.")
    if down and accepted > 0:
        title = f"events: consumer not answering while the gateway accepted {accepted:.0f} events in the window"
        if lag_s is not None:
            title += f" (oldest unapplied {lag_s:.1f} s old)"
        return [Finding(CRITICAL, "events_lag", "events", title, ev, remedy,
                        data={"lag_seconds": lag_s, "lag_entries": entries, "accepted": accepted}, score=50.0 + (lag_s or 0))]
    sev = _sev(lag_s, lim.lag_warn_s, lim.lag_crit_s) if lag_s is not None else None
    if sev is None and freshness_p99 is not None and freshness_p99 >= lim.freshness_p99_warn_s:
        sev = WARNING
    data = {"lag_seconds": lag_s, "lag_entries": entries, "accepted": accepted, "freshness_p99_s": freshness_p99}
    if sev is not None:
        fresh = f", freshness p99 {freshness_p99:.2f} s" if freshness_p99 is not None else ""
        return [Finding(sev, "events_lag", "events", f"events: consumer behind - oldest unapplied event {lag_s or 0:.1f} s old, "
                                                     f"{entries or 0:.0f} entries not delivered{fresh}", ev, remedy,
                        data=data, score=(lag_s or 0) / lim.lag_warn_s)]
    if w.ok("events") or extra.stream_lag_seconds is not None:
        fresh = f"freshness p99 {freshness_p99 * 1000:.0f} ms" if freshness_p99 is not None else "no events applied"
        return [Finding(INFO, "events_lag", "events", f"events: caught up (lag {lag_s or 0:.1f} s, {fresh})", ev,
                        "Within target.", data=data)]
    return []


# -- models -------------------------------------------------------------------------------------

def version_created(version: str) -> datetime | None:
    """The creation time in a bundle version ``YYYYMMDDTHHMMSSZ-<hex>`` (models/pipeline.py)."""
    try:
        return datetime.strptime(version.split("-", 1)[0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None


def served_versions(w: Window) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for labels, v in w.gauges("gateway", "gateway_model_info").items():
        if v >= 1.0:
            out.setdefault("gateway", set()).add(dict(labels).get("version", ""))
    for comp in ("retrieval", "ranking", "gateway"):
        for labels, v in w.gauges(comp, "recsys_model_info").items():
            d = dict(labels)
            if v >= 1.0:
                svc = d.get("service", comp)
                out.setdefault(svc if comp != "gateway" or svc in SERVICES else comp, set()).add(d.get("version", ""))
    return out


def rule_models(w: Window, lim: Limits, extra: Extra) -> list[Finding]:
    versions = served_versions(w)
    gw = versions.get("gateway", set())
    out = []
    if gw:
        for svc in SERVICES:
            theirs = versions.get(svc)
            if theirs and theirs != gw:
                out.append(Finding(WARNING, "model_skew", svc, f"{svc}: serves bundle {', '.join(sorted(theirs))}, the gateway "
                                                               f"{', '.join(sorted(gw))}",
                                   [Evidence(f'recsys_model_info{{service="{svc}"}}', ", ".join(sorted(theirs)), ", ".join(sorted(gw)))],
                                   f"A switch in progress lasts seconds (*_RELOAD_POLL_S, GATEWAY_PIN_WAIT_S); if it persists, {svc} "
                                   f"refused the new bundle (its /status on the metrics port, recsys_bundle_reloads_total"
                                   f"{{outcome=\"refused\"}}, its log) or runs from another ARTIFACTS_DIR.", score=5.0))
    now = datetime.fromtimestamp(extra.now if extra.now is not None else w.last.t, UTC)
    newest = None
    for vs in versions.values():
        for v in vs:
            created = version_created(v)
            if created is not None and (newest is None or created > newest[0]):
                newest = (created, v)
    if newest is not None:
        days = (now - newest[0]).total_seconds() / 86400
        sev = WARNING if days >= lim.model_age_warn_days else INFO
        out.append(Finding(sev, "model_age", "gateway" if gw else "ranking",
                           f"model: bundle {newest[1]} is {days:.1f} days old" + ("" if sev == WARNING else " (fresh)"),
                           [Evidence("now - the bundle version's creation time", days, lim.model_age_warn_days, "days")],
                           "Retrain and publish (`make artifacts`; the chart's offline Job): the services follow `current`."
                           if sev == WARNING else "Within the age limit.", data={"age_days": days, "version": newest[1]},
                           score=days / lim.model_age_warn_days))
    return out


# -- GC pauses ----------------------------------------------------------------------------------

def _max_bound(h: Histogram) -> float | None:
    """The upper bound of the highest bucket that received an observation."""
    prev = 0.0
    for bound, cum in h.buckets:
        if cum >= h.count and h.count > 0:
            return bound if not math.isinf(bound) else prev
        prev = bound
    return None


def rule_gc(w: Window, lim: Limits, extra: Extra) -> list[Finding]:
    out = []
    for comp in ("gateway", "retrieval", "ranking", "events"):
        h = w.histogram(comp, "python_gc_pause_seconds")
        if not h.count:
            continue
        share = h.sum / w.seconds
        longest = _max_bound(h) or 0.0
        p99 = h.quantile(0.99) or 0.0
        over = h.share_above(lim.gc_pause_warn_s) or 0.0
        ev = [Evidence("python_gc_pause_seconds sum / window", share, lim.gc_share_warn, "%"),
              Evidence("python_gc_pause_seconds p99", p99 * 1000, None, "ms"),
              Evidence("longest pause at most (bucket bound)", longest * 1000, lim.gc_pause_warn_s * 1000, "ms"),
              Evidence("collections in the window", h.count)]
        if share >= lim.gc_share_warn or over > 0:
            young = longest < 0.005
            remedy = (f"Many short young collections ({h.count / w.seconds:,.0f}/s): the allocation rate of a busy process. "
                      "Raise the generation-0 threshold (gc.set_threshold(50_000, 20, 20) after warm-up) or allocate less "
                      "per request; at saturation, scale out (cpu_saturation)." if young else
                      "Full collections over many live objects: the services gc.freeze() after warm-up, so a growth of "
                      "long-lived objects since (a cache, a leak: process_resident_memory_bytes) does this. Call "
                      "gc.freeze() after loading, find the growth; python_gc_pause_seconds{generation=\"2\"} shows them.")
            out.append(Finding(WARNING, "gc_pauses", comp, f"{comp}: GC pauses {share:.1%} of the time, longest up to "
                                                          f"{longest * 1000:.1f} ms", ev, remedy,
                               data={"share": share, "p99_s": p99, "per_s": h.count / w.seconds},
                               score=share * 100 + over * 10))
    return out


# -- CPU and replicas ---------------------------------------------------------------------------

def rule_cpu(w: Window, lim: Limits, extra: Extra) -> list[Finding]:
    per: dict[str, list[float]] = {}
    for comp in ("gateway", "retrieval", "ranking", "events"):
        rates = [v / w.seconds for v in w.series_increase(comp, "process_cpu_seconds_total").values()]
        if rates:
            per[comp] = rates
    if not per:
        return []
    out = []
    stack = sum(sum(r) for r in per.values())
    breakdown = ", ".join(f"{c} {sum(r):.2f}" for c, r in sorted(per.items(), key=lambda x: -sum(x[1])))
    for comp, rates in per.items():
        # one process is one event loop under the GIL: it saturates at one core, whatever the host has
        busiest = max(rates)
        sev = _sev(busiest, lim.cpu_target, lim.cpu_crit)
        if sev is None or comp == "events":
            continue
        replicas = max(len(rates) + 1, math.ceil(sum(rates) / lim.cpu_target))
        out.append(Finding(sev, "cpu_saturation", comp,
                           f"{comp}: one process at {busiest:.2f} of its 1 core - {replicas} replicas to stay under "
                           f"{lim.cpu_target:.0%}", [Evidence(f"rate(process_cpu_seconds_total) of {comp}", busiest, lim.cpu_target, "cores"),
                                                    Evidence("replicas now", len(rates))],
                           f"A {comp} process runs one CPU-bound request at a time (one event loop): run {replicas} replicas "
                           f"(compose --scale {comp}={replicas}, the chart's replicas / HPA) on cores that are free"
                           + (f", and size GATEWAY_{comp.upper()}_MAX_IN_FLIGHT at about 4 x {replicas} / gateways."
                              if comp in SERVICES else "."), data={"replicas": replicas, "cores_used": sum(rates)},
                           score=busiest * 10))
    busy = w.host_busy()
    util = stack / lim.cores
    demand = stack
    sev = _sev(util, lim.cpu_target, lim.cpu_crit)
    if busy is not None and busy > util and stack >= 0.5 * busy * lim.cores:
        # the stack is most of a busy host: what else runs there (a load generator, Redis) competes for its cores
        util, demand = busy, busy * lim.cores
        sev = _sev(util, lim.cpu_target, lim.cpu_crit)
    ev = [Evidence("sum of rate(process_cpu_seconds_total) over the stack", stack, None, "cores"),
          Evidence("per process (cores)", breakdown), Evidence("cores", lim.cores)]
    if busy is not None:
        ev.append(Evidence("host CPU busy (/proc/stat)", busy, lim.cpu_target, "%"))
    if sev is None:
        busy_text = f"host CPU {busy:.0%} busy" if busy is not None else "host CPU not measured"
        out.append(Finding(INFO, "cpu_saturation", "host", f"host: the stack uses {stack:.2f} of {lim.cores} cores, {busy_text} "
                                                           f"({breakdown})", ev,
                           "Within target." if busy is None or busy < lim.cpu_target else
                           "Within target for the stack; other processes keep the host busy (they compete for its cores).",
                           data={"stack_cores": stack, "host_busy": busy, "per_process": {c: sum(r) for c, r in per.items()}}))
        return out
    copies = max(2, math.ceil(demand / (lim.cpu_target * lim.cores)))
    cores_needed = math.ceil(demand / lim.cpu_target)
    out.append(Finding(sev, "cpu_saturation", "host",
                       f"host: CPU {util:.0%} busy on {lim.cores} cores (stack {stack:.2f} cores: {breakdown}) - "
                       f"{copies} replicas of the stack (or {cores_needed} cores) to stay under {lim.cpu_target:.0%}", ev,
                       f"The machine is the bottleneck: every process queues for the same cores (latency, shedding and "
                       f"fallbacks follow). Spread the stack over {copies} hosts of {lim.cores} cores (gateway, retrieval, ranking "
                       f"replicas behind dns:/// names; GATEWAY_*_MAX_IN_FLIGHT about 4 x replicas / gateways), or give it "
                       f"{cores_needed} cores. Measured demand under saturation is a lower bound: check again after scaling.",
                       data={"replicas": copies, "cores_needed": cores_needed, "stack_cores": stack, "host_busy": busy,
                             "per_process": {c: sum(r) for c, r in per.items()}}, score=util * 10))
    return out


RULES: tuple[Rule, ...] = (rule_unreachable, rule_breakers, rule_fallbacks, rule_latency, rule_bulkheads, rule_cpu,
                           rule_events, rule_stale_features, rule_missing_features, rule_models, rule_gc, rule_cache)


def evaluate(w: Window, lim: Limits, extra: Extra | None = None) -> list[Finding]:
    from architect.diagnose.findings import ordered

    extra = extra or Extra()
    findings: list[Finding] = []
    for rule in RULES:
        findings.extend(rule(w, lim, extra))
    return ordered(findings)
