"""The decisions of a design: serving mode, index, sizes, budgets, cache TTL, settings.

:func:`make` applies the rules below to :mod:`architect.design.model`'s figures; each decision
keeps its rationale and the alternatives it rejected, with their numbers.

* **Serving mode**: ``online`` unless it cannot meet the p99 target or the core budget and a
  mode that precomputes more can (``hybrid``: candidates precomputed, ranking online;
  ``precomputed``: both, the real-time filters still applied at read). Precomputed candidates are
  only as fresh as the batch, so a mode that precomputes is refused when the catalog must be
  fresher than one batch over every user allows.
* **Deadlines**: the request deadline is the p99 target; retrieval and ranking each get 40 % of
  it (the gateway's defaults relate the same way: 40 / 40 of 100 ms).
* **Cache TTL**: events invalidate a user's cached answers at once (generation bump), so the TTL
  only bounds catalog and other users' changes: at most ``catalog.freshness_s``, at most 300 s,
  and 0 (off) when no hits are expected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from architect.design import model
from architect.design.model import Q
from architect.design.profile import Profile
from architect.design.requirements import Requirements, RequirementsError


@dataclass
class Design:
    req: Requirements
    profile: Profile
    mode: str
    mode_why: str
    rejected_modes: list[tuple[str, str]]
    index: model.IndexChoice
    costs: model.Costs
    all_costs: dict[str, model.Costs]
    services: list[model.ServiceSize]
    redis: model.RedisSize
    consumers: Q | None
    latency: dict[str, Q]
    cache_ttl_s: int
    deadlines: dict[str, float]
    total_cores: float
    warnings: list[str]


def _batch_hours(req: Requirements, profile: Profile, cores: float) -> float:
    """One batch over every known user on one node (the measured rate is for 2 cores)."""
    return req.users.total / (profile.v("scale.batch_users_per_s") * cores / 2) / 3600


def make(req: Requirements, profile: Profile) -> Design:
    index = model.choose_index(req, profile)
    modes = {name: model.with_cache(c, req, profile) for name, c in model.mode_costs(req, profile, index).items()}
    ttl = 0 if req.cache.expected_hit_rate <= 0 else int(min(req.catalog.freshness_s, 300))
    warnings: list[str] = []

    evaluated = {}
    for name, costs in modes.items():
        lat = model.latency(costs, req, profile, index)
        services = model.size_services(costs, req, profile, index)
        cores = sum(s.replicas * s.cores_per_replica for s in services)
        evaluated[name] = (costs, lat, services, cores)

    floor = min(v[1]["= p99"].value for v in evaluated.values())
    if floor > req.latency.p99_ms:
        raise RequirementsError(f"latency.p99_ms: {req.latency.p99_ms:g} ms is below what any serving mode measured here "
                                f"can give ({floor:.1f} ms expected at best); raise it or reduce request.candidates")

    rejected: list[tuple[str, str]] = []
    chosen, why = None, ""
    for name in ("online", "hybrid", "precomputed"):
        costs, lat, services, cores = evaluated[name]
        problems = []
        if lat["= p99"].value > req.latency.p99_ms:
            problems.append(f"expected p99 {lat['= p99'].value:.1f} ms > target {req.latency.p99_ms:g} ms")
        if req.cost.max_cores is not None and cores > req.cost.max_cores:
            problems.append(f"{cores:.0f} cores > the budget of {req.cost.max_cores:g}")
        if name != "online":
            hours = _batch_hours(req, profile, req.infrastructure.cores_per_node)
            if hours * 3600 > req.catalog.freshness_s:
                problems.append(f"one batch over {req.users.total:,} users takes ~{hours:.1f} h on one "
                                f"{req.infrastructure.cores_per_node}-core node ({profile['scale.batch_users_per_s'].cite()}"
                                f" x cores / 2; > catalog.freshness_s {req.catalog.freshness_s:g} s)")
        summary = f"{costs.total:.2f} CPU ms per answer, {cores:.0f} cores, expected p99 {lat['= p99'].value:.1f} ms"
        if chosen is None and not problems:
            chosen = name
            why = summary
        else:
            rejected.append((name, "; ".join(problems) if problems else
                             f"{summary}: works, but {chosen} already meets every target and keeps candidates real-time"
                             if chosen == "online" else f"{summary}: works, but {chosen} meets every target with less precomputation"))
    if chosen is None:
        chosen = min(evaluated, key=lambda n: evaluated[n][3])
        costs, lat, services, cores = evaluated[chosen]
        why = f"no mode meets every target; {chosen} comes closest ({cores:.0f} cores, p99 {lat['= p99'].value:.1f} ms)"
        warnings.append(f"No serving mode meets every target: {why}. See the rejected modes.")

    costs, lat, services, cores = evaluated[chosen]
    redis = model.size_redis(costs, req, profile, chosen, ttl)
    consumers = None
    if req.events.peak_per_second > 0:
        per = profile.v("events.consumer_events_per_s") * model.CONSUMER_UTILISATION
        n = math.ceil(req.events.peak_per_second / per)
        consumers = Q(n, "consumers", f"{req.events.peak_per_second:,.0f} events/s / ({profile.v('events.consumer_events_per_s'):,.0f} "
                                      f"[{profile['events.consumer_events_per_s'].cite()}] x {model.CONSUMER_UTILISATION:.0%})")
        if n > 1:
            warnings.append(f"{n} events consumers: one stream is one Redis slot and one group; beyond one consumer "
                            "partition the stream by user (not built here), or move it to Kafka"
                            + (" (already run here)" if req.infrastructure.kafka else ""))
        if req.events.freshness_s * 1000 < profile.v("events.apply_ms"):
            warnings.append(f"events.freshness_s {req.events.freshness_s:g} s is below the measured apply time "
                            f"({profile.v('events.apply_ms'):.0f} ms)")
    if req.cost.max_redis_gib is not None and redis.memory_gib.value > req.cost.max_redis_gib:
        warnings.append(f"Redis needs {redis.memory_gib.fmt()} > the budget of {req.cost.max_redis_gib:g} GiB")
    if req.infrastructure.gpus:
        warnings.append("GPUs are available but not used: the towers and the ranker are small MLPs whose CPU cost per "
                        "answer is below a millisecond; a GPU pays off for large rankers batched across requests")
    total = cores + redis.cpu_cores.value + (consumers.value if consumers else 0)
    p99 = req.latency.p99_ms
    deadlines = {"request": p99, "retrieval": round(0.4 * p99, 1), "ranking": round(0.4 * p99, 1)}
    return Design(req, profile, chosen, why, rejected, index, costs, modes, services, redis, consumers, lat,
                  ttl, deadlines, total, warnings)


def this_machine_saturation(req: Requirements, profile: Profile) -> Q:
    """The whole stack on one machine of ``infrastructure.cores_per_node`` cores (cache, mode: as
    the design chooses online): what ``benchmarks capacity`` measures as its saturation."""
    index = model.choose_index(req, profile)
    costs = model.with_cache(model.online_costs(req, profile, index), req, profile)
    loadgen = profile.v("saturation.loadgen_ms") if req.infrastructure.shared_with_loadgen else 0.0
    return model.saturation_rps(costs, req.infrastructure.cores_per_node, profile, loadgen)
