"""Requirements + a measured profile -> decisions and sizing, every number with its origin.

Each computed quantity is a :class:`Q`: a value, its unit and ``why`` — the formula with the
measured figures it used (cited by file and field, :mod:`architect.design.profile`) or the stated
assumption (:data:`ASSUMPTIONS`). The document (:mod:`architect.design.render`) prints them as
they are; nothing in it is computed elsewhere.

The cost model, in short:

* CPU per full answer, per service, is linear in the candidates C through two measured points:
  the ml-100k stack (``benchmarks capacity``, C = 300) and the 1M-item stack (``benchmarks
  scale``, C = 500); retrieval's ANN search is taken out of both and put back for the chosen
  index at the requested catalog size (the sweep's latency, scaled by size and dimension).
* A process's CPU is ``fixed + marginal x answers/s`` (``benchmarks capacity`` fits the line
  through two open-loop rates: pollers and timers cost the fixed part at any load, which is why
  CPU per answer falls with load). A service process computes one request at a time (CPU-bound,
  one core each, docs/architecture.md), so a replica carries ``(u - fixed) / marginal`` answers/s
  at utilisation u, sized at :data:`TARGET_UTILISATION`, plus one spare (N+1).
* Saturation of a whole machine (the check against this machine's own measurement) is the
  smaller of ``(cores - the processes' fixed cores) / their marginal CPU per answer`` (the load
  generator's included when it shares the cores) and the busiest single process at one core.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from architect.design.profile import Profile
from architect.design.requirements import Requirements, RequirementsError

TARGET_UTILISATION = 0.6
REDIS_CORE_BUDGET = 0.6  # of Redis' one command thread, before sharding into a cluster
CONSUMER_UTILISATION = 0.6
EXACT_MAX_ITEMS = 50_000
STREAM_ENTRY_BYTES = 250
AUTOSCALER_REACTION_S = 120  # HPA: metrics scrape + stabilisation + pod start-up; not measured here: assumed
ASSUMPTIONS = {
    "utilisation": f"replicas are sized to run at {TARGET_UTILISATION:.0%} CPU at the design peak: queueing "
                   "stays below one service time (M/M/1 at 60 %: mean wait 1.5 x service), so the p99 holds",
    "n_plus_1": "one spare replica per service (N+1): a node loss or a rolling update keeps the peak",
    "linear_candidates": "CPU per answer is linear in the candidates between the two measured points "
                         "(C = 300 on ml-100k, C = 500 on the 1M catalog); outside them it is extrapolated",
    "unknown_users": "unknown users take the same path (two-tower with default features, popular backfill): "
                     "counted at the full answer's cost",
    "ann_scaling": "ANN search time scales with the catalog as: exact ∝ N, IVF ∝ √N (nlist ∝ √N, same "
                   "nprobe share), HNSW ∝ log N; and ∝ the embedding dimension / 64",
    "features": "a Feast row's bytes scale with the number of features (the measured row / its fields)",
    "cache_entries": "distinct cached answers ≈ the users seen within one TTL at the average rate, capped at all users",
    "redis_thread": f"one Redis primary executes commands on one thread: above {REDIS_CORE_BUDGET:.0%} of a core "
                    "the design shards into a Redis Cluster",
    "tail": "p99 / p50 of a design = the measured ratio of this stack at low load (base.p99_ms / base.p50_ms)",
    "autoscaler": f"an autoscaler (HPA on CPU) adds replicas within ~{AUTOSCALER_REACTION_S} s: the minimum carries "
                  "the average load, or the bursts when they are shorter than that",
    "hops": "two gRPC hops; a hop with C candidates costs what the 1M run measured per hop, scaled by C / 500",
    "exact_below": f"below {EXACT_MAX_ITEMS:,} items exact search is as fast as ANN with recall 1.0 (README, Measured "
                   "performance: the ml-100k bundle serves exact search)",
}


@dataclass(frozen=True)
class Q:
    value: float
    unit: str
    why: str

    def fmt(self, digits: int = 2) -> str:
        v = self.value
        text = f"{v:,.0f}" if abs(v) >= 100 or float(v).is_integer() else f"{v:,.{digits}f}"
        return f"{text} {self.unit}".strip()


def _lin(x0: float, y0: float, x1: float, y1: float, x: float) -> float:
    slope = (y1 - y0) / (x1 - x0) if x1 != x0 else 0.0
    return max(0.0, y0 + max(slope, 0.0) * (x - x0))


@dataclass
class IndexChoice:
    name: str
    search_ms: Q
    memory_mib: Q
    recall: float | None
    rejected: list[tuple[str, str]] = field(default_factory=list)


def _scale_ann(row: dict, items: int, dim: int) -> float:
    ratio = items / row["items"]
    name = row["index"]
    if name.startswith("Flat"):
        f = ratio
    elif name.startswith("IVF"):
        f = math.sqrt(ratio)
    else:
        f = math.log(max(items, 2)) / math.log(row["items"])
    return row["p50_ms"] * f * dim / 64


def choose_index(req: Requirements, profile: Profile) -> IndexChoice:
    n, dim, target = req.catalog.items, req.catalog.embedding_dim, req.catalog.recall_target
    mem_budget_mib = req.infrastructure.memory_gib_per_node * 1024 * 0.5
    flat = profile.sweep[0]
    flat_ms = _scale_ann(flat, n, dim)
    flat_mib = n * dim * 4 / 2**20
    src = f"`{flat['source']}` → `{flat['field']}`"
    if n <= EXACT_MAX_ITEMS:
        return IndexChoice("Flat (exact)", Q(flat_ms, "ms", f"{flat['p50_ms']} ms at 1M x 64 ({src}) x {n:,}/1M x {dim}/64"),
                           Q(flat_mib, "MiB", f"{n:,} x {dim} x 4 B"), 1.0,
                           [("ANN (IVF / HNSW)", f"below {EXACT_MAX_ITEMS:,} items exact search costs "
                                                  f"{flat_ms:.2f} ms with recall 1.0: nothing to gain "
                                                  f"({ASSUMPTIONS['exact_below']})")])
    rejected, best = [], None
    for row in profile.sweep:
        ms = _scale_ann(row, n, dim)
        mib = n * row["bytes_per_item"] * dim / 64 / 2**20
        cite = f"`{row['source']}` → `{row['field']}`"
        if row["recall"] is None:
            rejected.append((row["index"], f"recall not measured on trained embeddings ({cite}); {ms:.2f} ms, {mib:,.0f} MiB"))
            continue
        if row["recall"] < target:
            rejected.append((row["index"], f"recall@100 {row['recall']} < target {target} ({cite})"))
            continue
        if mib > mem_budget_mib:
            rejected.append((row["index"], f"{mib:,.0f} MiB > half a node ({mem_budget_mib:,.0f} MiB)"))
            continue
        cand = IndexChoice(row["index"], Q(ms, "ms", f"{row['p50_ms']} ms at {row['items']:,} x 64 ({cite}), scaled to "
                                                        f"{n:,} x {dim} ({ASSUMPTIONS['ann_scaling']})"),
                           Q(mib, "MiB", f"{n:,} x {row['bytes_per_item']} B x {dim}/64"), row["recall"])
        if best is None or ms < best.search_ms.value:
            if best is not None:
                rejected.append((best.name, f"slower: {best.search_ms.value:.2f} ms vs {ms:.2f} ms"))
            best = cand
        else:
            rejected.append((row["index"], f"slower: {ms:.2f} ms vs {best.search_ms.value:.2f} ms"))
    if best is None:
        raise RequirementsError(f"catalog.recall_target: no measured index reaches recall {target} within half a "
                                f"node's memory ({mem_budget_mib:,.0f} MiB) for {n:,} items")
    best.rejected = rejected
    return best


@dataclass
class Costs:
    """CPU ms per answer of each process for one serving mode, with the reasoning."""
    mode: str
    per_answer: dict[str, Q]

    @property
    def total(self) -> float:
        return sum(q.value for q in self.per_answer.values())


def online_costs(req: Requirements, profile: Profile, index: IndexChoice) -> Costs:
    p = profile
    c0, c1, c = p.v("base.candidates"), p.v("scale.candidates"), req.request.candidates
    flat0 = _scale_ann(p.sweep[0], int(p.v("base.items")), 64)
    ivf1 = p.sweep[1]["p50_ms"]
    r0 = p.v("answer.retrieval_ms") - flat0
    r1 = p.v("scale.retrieval_ms") - ivf1
    retrieval = _lin(c0, r0, c1, r1, c) + index.search_ms.value
    ranking = _lin(c0, p.v("answer.ranking_ms"), c1, p.v("scale.ranking_ms"), c)
    gateway = _lin(c0, p.v("answer.gateway_ms"), c1, p.v("scale.gateway_ms"), c)
    redis = p.v("answer.redis_ms")
    lin = f"linear in C through ({c0:.0f}, {{a}}) and ({c1:.0f}, {{b}}) at C = {c}"
    return Costs("online", {
        "gateway": Q(gateway, "CPU ms", lin.format(a=f"{p.v('answer.gateway_ms'):.2f} [{p['answer.gateway_ms'].cite()}]",
                                                   b=f"{p.v('scale.gateway_ms'):.2f} [{p['scale.gateway_ms'].cite()}]")),
        "retrieval": Q(retrieval, "CPU ms", lin.format(a=f"{p.v('answer.retrieval_ms'):.2f} [{p['answer.retrieval_ms'].cite()}] "
                                                          f"- exact search {flat0:.2f}",
                                                        b=f"{p.v('scale.retrieval_ms'):.2f} [{p['scale.retrieval_ms'].cite()}] "
                                                          f"- IVF {ivf1}") + f", + {index.name} {index.search_ms.value:.2f} ms"),
        "ranking": Q(ranking, "CPU ms", lin.format(a=f"{p.v('answer.ranking_ms'):.2f} [{p['answer.ranking_ms'].cite()}]",
                                                   b=f"{p.v('scale.ranking_ms'):.2f} [{p['scale.ranking_ms'].cite()}]")),
        "redis": Q(redis, "CPU ms", f"{p['answer.redis_ms'].cite()} (per answer, independent of C: one HMGET per user, "
                                    "items from the in-process snapshot)"),
    })


def mode_costs(req: Requirements, profile: Profile, index: IndexChoice) -> dict[str, Costs]:
    """Online, hybrid (precomputed candidates, online ranking) and precomputed, per answer of a
    known user; unknown users are online in every mode."""
    p, u = profile, req.users.unknown_share
    online = online_costs(req, profile, index)

    def mix(known: float, proc: str) -> float:
        return (1 - u) * known + u * online.per_answer[proc].value

    # hybrid: a known user's candidates come from the precomputed list (one Redis read in the
    # gateway in place of the retrieval call), ranking scores them online as usual
    hybrid = Costs("hybrid", {
        "gateway": Q(online.per_answer["gateway"].value, "CPU ms",
                     "as online (the list read replaces the retrieval call; assumed equal)"),
        "retrieval": Q(u * online.per_answer["retrieval"].value, "CPU ms", f"unknown users only ({u:.0%})"),
        "ranking": online.per_answer["ranking"],
        "redis": online.per_answer["redis"],
    })
    pre = Costs("precomputed", {
        "gateway": Q(mix(p.v("scale.precomputed_ms"), "gateway"), "CPU ms",
                     f"{1 - u:.0%} known x {p.v('scale.precomputed_ms')} [{p['scale.precomputed_ms'].cite()}] + unknown online"),
        "retrieval": Q(u * online.per_answer["retrieval"].value, "CPU ms", f"unknown users only ({u:.0%})"),
        "ranking": Q(u * online.per_answer["ranking"].value, "CPU ms", f"unknown users only ({u:.0%})"),
        "redis": online.per_answer["redis"],
    })
    return {"online": online, "hybrid": hybrid, "precomputed": pre}


def with_cache(costs: Costs, req: Requirements, profile: Profile) -> Costs:
    h = req.cache.expected_hit_rate
    if h <= 0:
        return costs
    out = {}
    for proc, q in costs.per_answer.items():
        hit = profile.v("hit.gateway_ms") if proc == "gateway" else profile.v("hit.redis_ms") if proc == "redis" else 0.0
        out[proc] = Q((1 - h) * q.value + h * hit, q.unit,
                      f"{1 - h:.0%} misses x {q.value:.2f} + {h:.0%} hits x {hit:.2f} "
                      f"[{profile['hit.gateway_ms' if proc == 'gateway' else 'hit.redis_ms'].cite()}]")
    return Costs(costs.mode, out)


def fixed_cores(profile: Profile, proc: str) -> float:
    """What one process of ``proc`` burns serving at any load (its pollers and timers)."""
    key = f"fixed.{proc}_cores"
    return max(0.0, profile.v(key)) if key in profile.figures else 0.0


def saturation_rps(costs: Costs, cores: float, profile: Profile, loadgen_ms: float = 0.0) -> Q:
    """Answers/s one machine of ``cores`` carries at 100 % CPU, one process of each service on it:
    ``(cores - fixed) / marginal`` summed over the processes, and no single-process service above
    its one core."""
    fixed = sum(fixed_cores(profile, p) for p in costs.per_answer)
    total = costs.total + loadgen_ms
    by_cores = 1000.0 * (cores - fixed) / total
    by_proc = {p: 1000.0 * (1 - fixed_cores(profile, p)) / q.value for p, q in costs.per_answer.items() if q.value > 0}
    busiest = min(by_proc, key=by_proc.get)
    lg = f" + load generator {loadgen_ms:.2f}" if loadgen_ms else ""
    if by_cores <= by_proc[busiest]:
        return Q(by_cores, "answers/s", f"({cores:g} cores - {fixed:.2f} fixed) x 1000 / ({costs.total:.2f}{lg}) "
                                        "marginal CPU ms per answer")
    return Q(by_proc[busiest], "answers/s", f"{busiest} saturates its one core first: 1000 x (1 - "
                                            f"{fixed_cores(profile, busiest):.2f}) / {costs.per_answer[busiest].value:.2f} ms")


@dataclass
class ServiceSize:
    name: str
    replicas: int
    cores_per_replica: float
    memory_mib: Q
    why: str
    min_replicas: int = 0  # what must always run (the autoscaler adds up to ``replicas``)
    min_why: str = ""


def size_services(costs: Costs, req: Requirements, profile: Profile, index: IndexChoice) -> list[ServiceSize]:
    qps = req.design_qps
    min_replicas = 2 if req.availability.target >= 0.999 else 1
    p = profile
    item_scale = req.catalog.items / p.v("scale.items")
    mem = {
        "gateway": Q(p.v("rss.gateway_mib"), "MiB", p["rss.gateway_mib"].cite()),
        "retrieval": Q(p.v("rss.retrieval_mib") + index.memory_mib.value, "MiB",
                       f"{p['rss.retrieval_mib'].cite()} + the index {index.memory_mib.fmt()}"),
        "ranking": Q(p.v("rss.ranking_mib") + p.v("scale.item_table_mib") * item_scale * req.catalog.features_per_item / 16,
                     "MiB", f"{p['rss.ranking_mib'].cite()} + item table {p.v('scale.item_table_mib')} MiB per 1M items x 16 "
                            f"features [{p['scale.item_table_mib'].cite()}], scaled"),
    }
    out = []
    for name in ("gateway", "retrieval", "ranking"):
        ms = costs.per_answer[name].value
        if ms <= 0:
            continue
        busy = qps * ms / 1000.0
        fixed = fixed_cores(p, name)
        # each replica carries (TARGET_UTILISATION - its fixed cores) / marginal answers/s
        needed = math.ceil(busy / (TARGET_UTILISATION - fixed))
        n = max(min_replicas, needed + 1)
        # a replica is one process: at most one core; a small service gets a fraction, still with
        # its peak share at TARGET_UTILISATION when one replica is gone
        core = min(1.0, max(0.1, math.ceil((busy / (n - 1 if n > 1 else 1) + fixed) / TARGET_UTILISATION * 20) / 20))
        # the autoscaler follows the diurnal curve, but not a burst shorter than it reacts
        base_qps = req.traffic.average_qps * (req.traffic.burst_factor if req.traffic.burst_seconds < AUTOSCALER_REACTION_S
                                              else 1.0)
        n_min = min(n, max(min_replicas, math.ceil(base_qps * ms / 1000.0 / (TARGET_UTILISATION - fixed)) + 1))
        min_why = (f"average {req.traffic.average_qps:,.0f}/s" + (f" x burst {req.traffic.burst_factor:g} (bursts of "
                   f"{req.traffic.burst_seconds:g} s are shorter than an autoscaler reacts, ~{AUTOSCALER_REACTION_S} s)"
                   if req.traffic.burst_seconds < AUTOSCALER_REACTION_S else "") + " + 1 spare")
        out.append(ServiceSize(name, n, core, mem[name],
                               f"{qps:,.0f} answers/s (peak x burst) x {ms:.2f} ms = {busy:.2f} cores busy; "
                               f"/ ({TARGET_UTILISATION:.0%} - {fixed:.2f} fixed per replica [{p[f'fixed.{name}_cores'].cite()}])"
                               f" = {needed} replica(s) of ≤ 1 core + 1 spare"
                               + (f" (at least {min_replicas} for {req.availability.target:.1%})" if n > needed + 1 else "")
                               + f"; {core:g} core each carries the peak with one replica gone", n_min, min_why))
    return out


@dataclass
class RedisSize:
    shape: str
    shards: int
    memory_gib: Q
    ops_per_s: Q
    cpu_cores: Q
    parts: list[tuple[str, Q]]


def size_redis(costs: Costs, req: Requirements, profile: Profile, mode: str, cache_ttl_s: int) -> RedisSize:
    p = profile
    h = req.cache.expected_hit_rate
    qps = req.design_qps
    base_user_fields, base_item_fields = 11, 6  # feature_store/repo/definitions.py FEATURE_VIEWS
    user_row = p.v("mem.user_row_bytes") * max(req.users.features_per_user, 1) / base_user_fields
    item_row = p.v("mem.item_row_bytes") * max(req.catalog.features_per_item, 1) / base_item_fields
    snapshot = req.catalog.items * req.catalog.features_per_item * 4
    entries = min(req.users.total, req.traffic.average_qps * cache_ttl_s) if cache_ttl_s else 0
    stream = req.events.peak_per_second / req.diurnal_peak_ratio * req.events.retention_hours * 3600 * STREAM_ENTRY_BYTES
    pre = req.users.total * p.v("scale.precomputed_list_bytes") * req.request.candidates / 500 if mode != "online" else 0
    parts = [
        ("user rows", Q(req.users.total * user_row / 2**30, "GiB", f"{req.users.total:,} x {user_row:,.0f} B "
                        f"({p['mem.user_row_bytes'].cite()}, scaled to {req.users.features_per_user} features)")),
        ("item rows", Q(req.catalog.items * item_row / 2**30, "GiB", f"{req.catalog.items:,} x {item_row:,.0f} B "
                        f"({p['mem.item_row_bytes'].cite()}, scaled to {req.catalog.features_per_item} features)")),
        ("item snapshot", Q(snapshot / 2**30, "GiB", f"{req.catalog.items:,} x {req.catalog.features_per_item} x 4 B")),
        ("response cache", Q(entries * p.v("mem.cache_entry_bytes") / 2**30, "GiB",
                             f"{entries:,.0f} entries x {p.v('mem.cache_entry_bytes'):,.0f} B ({p['mem.cache_entry_bytes'].cite()}; "
                             f"{ASSUMPTIONS['cache_entries']})")),
        ("event stream", Q(stream / 2**30, "GiB", f"average {req.events.peak_per_second / req.diurnal_peak_ratio:,.0f} "
                           f"events/s x {req.events.retention_hours:g} h x {STREAM_ENTRY_BYTES} B (assumed entry size)")),
    ]
    if pre:
        parts.append(("precomputed lists", Q(pre / 2**30, "GiB", f"{req.users.total:,} x {p.v('scale.precomputed_list_bytes'):,.0f} B "
                                             f"x C/500 ({p['scale.precomputed_list_bytes'].cite()})")))
    total = sum(q.value for _, q in parts) * 1.3
    ops = qps * ((1 - h) * p.v("answer.redis_calls") + h * p.v("hit.redis_calls")) + \
        req.events.peak_per_second * p.v("event.redis_calls")
    cpu = qps * costs.per_answer["redis"].value / 1000 + req.events.peak_per_second * p.v("event.redis_ms") / 1000
    shards = max(1, math.ceil(cpu / REDIS_CORE_BUDGET), math.ceil(total / (req.infrastructure.memory_gib_per_node * 0.5)))
    if shards > 1 or req.infrastructure.redis == "cluster":
        shape = "cluster"
        shards = max(shards, 3)
    elif req.availability.target >= 0.999:
        shape = "sentinel"
    else:
        shape = "standalone"
    return RedisSize(
        shape, shards,
        Q(total, "GiB", "sum of the parts x 1.3 (allocator fragmentation and the replication / AOF rewrite buffers)"),
        Q(ops, "commands/s", f"{qps:,.0f} answers/s x ({1 - h:.0%} x {p.v('answer.redis_calls')} "
                             f"[{p['answer.redis_calls'].cite()}] + {h:.0%} x {p.v('hit.redis_calls')} "
                             f"[{p['hit.redis_calls'].cite()}]) + {req.events.peak_per_second:,.0f} events/s x "
                             f"{p.v('event.redis_calls')} [{p['event.redis_calls'].cite()}]"),
        Q(cpu, "cores", f"{qps:,.0f} x {costs.per_answer['redis'].value:.3f} ms + events x {p.v('event.redis_ms'):.3f} ms "
                        f"[{p['event.redis_ms'].cite()}]"),
        parts)


def latency(costs: Costs, req: Requirements, profile: Profile, index: IndexChoice) -> dict[str, Q]:
    """Expected p50 per stage at low load (CPU-bound stages: latency ≈ their CPU), and the p99."""
    p = profile
    hop = 2 * p.v("scale.hop_ms_500") * req.request.candidates / 500 if costs.mode != "precomputed" else 0.0
    stages = {
        "gateway (HTTP, cache, assembly)": Q(costs.per_answer["gateway"].value, "ms", "its CPU per answer"),
        "retrieval (features, ANN, sources, filters)": Q(costs.per_answer["retrieval"].value, "ms", "its CPU per answer"),
        "ranking (features, scorer)": Q(costs.per_answer["ranking"].value, "ms", "its CPU per answer"),
        "gRPC hops": Q(hop, "ms", f"2 x {p.v('scale.hop_ms_500')} ms [{p['scale.hop_ms_500'].cite()}] x C/500 "
                                  f"({ASSUMPTIONS['hops']})"),
        "Redis round trips": Q(p.v("redis.rtt_ms") * 3, "ms", f"3 sequential round trips x {p.v('redis.rtt_ms')} ms "
                               f"[{p['redis.rtt_ms'].cite()}] (loopback; add the network RTT)"),
    }
    p50 = sum(q.value for q in stages.values())
    ratio = p.v("base.p99_ms") / p.v("base.p50_ms")
    stages["= p50"] = Q(p50, "ms", "sum of the stages")
    stages["= p99"] = Q(p50 * ratio, "ms", f"p50 x {ratio:.2f} ({p['base.p99_ms'].cite()} / {p['base.p50_ms'].cite()})")
    return stages
