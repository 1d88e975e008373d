"""A :class:`~architect.design.plan.Design` as a Markdown architecture document.

Only formatting here: every number comes from :mod:`architect.design.plan` / ``model`` with its
``why``; the measured figures used are listed at the end with their file and field.
"""

from __future__ import annotations

from architect.design import model
from architect.design.plan import Design

RUNGS = [
    ("ranking slow, down or its breaker open", "`ranking_unavailable`: retrieval's candidates in retrieval order"),
    ("retrieval slow, down or its breaker open", "`cached` (the user's last good answer) if there is one, else "
                                                 "`retrieval_unavailable`: the popular list, ranked"),
    ("both down", "`all_unavailable`: the bundle's popular list as is (always answers)"),
    ("Redis slow or down", "features fall back to the views' defaults (counted in recsys_missing_features_total); "
                           "cache and event log fail fast behind their breaker; answers stay 200"),
    ("one replica of a service dies", "leaves the rotation (gRPC health), the call in flight retried once on another: no fallback"),
    ("events consumer down", "events wait in the stream (acknowledged, not lost); answers stop reflecting clicks until it is back"),
    ("a bad bundle published", "refused at load (sha256, schema); the running one keeps serving"),
]
ALERTS = [
    ("RecommendLatencySLOBurn", "p99 of /recommend above the target, multi-window burn rate",
     "histogram_quantile(0.99, sum by (le) (rate(gateway_stage_latency_seconds_bucket{stage=\"total\"}[5m])))"),
    ("RecommendErrorBudgetBurn", "non-200 answers burning the availability budget (1 h and 6 h windows)",
     "sum(rate(gateway_requests_total{code!~\"2..\"}[1h])) / sum(rate(gateway_requests_total[1h]))"),
    ("FallbackRateHigh", "share of answers from a fallback rung above 5 %",
     "sum(rate(gateway_fallbacks_total[5m])) / sum(rate(gateway_requests_total[5m]))"),
    ("BreakerOpen", "a dependency's circuit breaker open for 1 min", "gateway_circuit_breaker_state > 0"),
    ("EventsConsumerLag", "oldest unapplied event older than the freshness target", "max(recsys_events_lag_seconds)"),
    ("FeatureStaleness", "the served snapshot's materialisation older than the catalog freshness",
     "time() - min(recsys_feature_materialized_until_timestamp_seconds) > <catalog.freshness_s>"),
    ("ModelVersionSkew", "services serving different bundle versions for over 10 min", "count(count by (version) (recsys_model_info)) > 1"),
    ("TargetDown", "a scrape target down (or a job with no target)", "up == 0 or absent(up{job=\"ranking\"})"),
]


def _table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def _diagram(d: Design) -> str:
    sizes = {s.name: s for s in d.services}

    def n(name: str) -> str:
        s = sizes.get(name)
        return f"x{s.replicas}" if s else "x0"

    redis = {"cluster": f"Redis Cluster, {d.redis.shards} primaries (+1 replica each)",
             "sentinel": "Redis primary + replica, 3 Sentinels", "standalone": "Redis (one server, AOF)"}[d.redis.shape]
    consumers = f"events consumer x{int(d.consumers.value)}" if d.consumers else "no events loop"
    lb = "Kubernetes Service / Ingress" if d.req.infrastructure.kubernetes else "HTTP load balancer"
    lines = [
        "```text",
        "                         clients",
        f"                            │  {lb}",
        "                            ▼",
        "                 ┌─────────────────────┐",
        f"                 │ gateway {n('gateway'):<12}│  /recommend, /events; cache TTL {d.cache_ttl_s} s",
        f"                 └──────────┬──────────┘  deadline {d.deadlines['request']:g} ms",
        "            gRPC round_robin │ (health-checked, one retry on UNAVAILABLE)",
        "              ┌──────────────┴──────────────┐",
        "              ▼                             ▼",
        "  ┌───────────────────────┐     ┌───────────────────────┐",
        f"  │ retrieval {n('retrieval'):<12}│     │ ranking {n('ranking'):<14}│",
        f"  │ {d.index.name[:21]:<21} │     │ {('ONNX scorer, ' + str(d.req.request.candidates) + ' cand.')[:21]:<21} │",
        "  └───────────┬───────────┘     └───────────┬───────────┘",
        "              └──────────────┬──────────────┘",
        "                             ▼",
        "        ┌───────────────────────────────────────────────┐",
        f"        │ {redis:<46}│ ◀── {consumers}",
        "        │ Feast rows · snapshot · cache · event stream  │",
        "        └───────────────────────────────────────────────┘",
        f"  offline: train → gate → bundle (volume / object store) → materialise; mode: {d.mode}",
        "```",
    ]
    return "\n".join(lines)


def _settings(d: Design) -> tuple[str, str]:
    r = d.req
    env = {
        "GATEWAY_SERVING_MODE": d.mode,
        "GATEWAY_NUM_CANDIDATES": str(r.request.candidates),
        "GATEWAY_REQUEST_TIMEOUT_MS": f"{d.deadlines['request']:g}",
        "GATEWAY_RETRIEVAL_TIMEOUT_MS": f"{d.deadlines['retrieval']:g}",
        "GATEWAY_RANKING_TIMEOUT_MS": f"{d.deadlines['ranking']:g}",
        "GATEWAY_CACHE_TTL_S": str(d.cache_ttl_s),
    }
    sizes = {s.name: s for s in d.services}
    g = sizes.get("gateway")
    for svc in ("retrieval", "ranking"):
        s = sizes.get(svc)
        if s and g:
            env[f"GATEWAY_{svc.upper()}_MAX_IN_FLIGHT"] = str(max(4, round(4 * s.replicas / g.replicas)))
    if d.redis.shape == "cluster":
        env["REDIS_URL"] = "redis+cluster://redis-0:6379,redis-1:6379,redis-2:6379"
    elif d.redis.shape == "sentinel":
        env["REDIS_URL"] = "redis+sentinel://sentinel-0:26379,sentinel-1:26379,sentinel-2:26379/primary/0"
    else:
        env["REDIS_URL"] = "redis://redis:6379/0"
    env_text = "\n".join(f"{k}={v}" for k, v in env.items())
    helm = ["config:"] + [f'  {k}: "{v}"' for k, v in env.items() if k != "REDIS_URL"]
    if d.redis.shape == "cluster":
        helm += ["redis:", "  mode: cluster", "  nodes: [redis-0:6379, redis-1:6379, redis-2:6379]"]
    else:
        helm += ["redis:", "  existingSecret: recsys-redis   # the whole REDIS_URL, with its password"]
    for s in d.services:
        helm += [f"{s.name}:", f"  replicas: {s.replicas}", "  autoscaling:", "    enabled: true",
                 f"    minReplicas: {s.min_replicas}", f"    maxReplicas: {s.replicas}",
                 "  resources:", f"    requests: {{cpu: \"{int(s.cores_per_replica * 1000)}m\", memory: \"{int(s.memory_mib.value)}Mi\"}}",
                 f"    limits: {{memory: \"{int(s.memory_mib.value * 1.5)}Mi\"}}"]
    if d.consumers:
        helm += ["events:", f"  replicas: {int(d.consumers.value)}"]
    return env_text, "\n".join(helm)


def render(d: Design) -> str:
    r, p = d.req, d.profile
    env_text, helm_text = _settings(d)
    out = [f"# Architecture: {r.name}", ""]
    out += ["_Generated by `python -m architect design` from the requirements file and the measured profile "
            f"`{p.name}`; every number below says where it came from. Do not edit: regenerate._", ""]
    if r.description:
        out += [r.description, ""]
    out += ["## Requirements", "", _table(["", "value"], [
        ["peak / average QPS", f"{r.traffic.peak_qps:,g} / {r.traffic.average_qps:,g} (diurnal peak ratio {r.diurnal_peak_ratio:.1f})"],
        ["bursts", f"x{r.traffic.burst_factor:g} for {r.traffic.burst_seconds:g} s → design peak {r.design_qps:,.0f} answers/s"],
        ["latency target", f"p50 {r.latency.p50_ms:g} ms, p99 {r.latency.p99_ms:g} ms"],
        ["catalog", f"{r.catalog.items:,} items, {r.catalog.features_per_item} features, embeddings {r.catalog.embedding_dim}-d, "
                    f"fresh within {r.catalog.freshness_s:g} s, recall ≥ {r.catalog.recall_target}"],
        ["users", f"{r.users.total:,} known, {r.users.unknown_share:.0%} of requests unknown, {r.users.features_per_user} features"],
        ["per request", f"k = {r.request.k}, {r.request.candidates} candidates"],
        ["events", f"{r.events.peak_per_second:,g}/s at peak, visible within {r.events.freshness_s:g} s"],
        ["cache", f"expected hit rate {r.cache.expected_hit_rate:.0%}"],
        ["availability", f"{r.availability.target:.3%}"],
        ["infrastructure", f"Kubernetes {'yes' if r.infrastructure.kubernetes else 'no'}, Redis {r.infrastructure.redis}, "
                           f"Kafka {'yes' if r.infrastructure.kafka else 'no'}, GPUs {'yes' if r.infrastructure.gpus else 'no'}, "
                           f"{r.infrastructure.cores_per_node} cores / {r.infrastructure.memory_gib_per_node:g} GiB per node"],
        ["budget", f"cores {r.cost.max_cores or 'no limit'}, Redis {r.cost.max_redis_gib or 'no limit'} GiB"],
    ]), ""]
    if d.warnings:
        out += ["## Warnings", ""] + [f"- {w}" for w in d.warnings] + [""]
    out += ["## What runs where", "", _diagram(d), ""]
    out += ["## Pipeline and serving mode", "",
            "Candidate sources (`services/pipeline.toml`): `two_tower` (the query tower + the index below, the rest of "
            "the candidates), `item_to_item` (co-visitation of the recent items, 15 % of them), `popular` (backfill "
            "for cold and thin users). Filters: `request_exclusions`, `recent_items`, `seen_items`. Scorer: "
            "`onnx_ranker` over user + item features. Fallback ladder: `retrieval_order` → `cached` → "
            "`popular_ranked` → `popular`.", "",
            f"**Serving mode: `{d.mode}`** — {d.mode_why}.", "",
            _table(["mode", "rejected because"], [[f"`{m}`", why] for m, why in d.rejected_modes]), ""]
    out += ["CPU per answer of each mode (ms; cache hits included):", "",
            _table(["mode", "gateway", "retrieval", "ranking", "redis", "total"],
                   [[m, *(f"{c.per_answer[k].value:.2f}" for k in ("gateway", "retrieval", "ranking", "redis")),
                     f"{c.total:.2f}"] for m, c in d.all_costs.items()]), ""]
    out += [f"## Index: {d.index.name}", "",
            f"Search {d.index.search_ms.fmt()} per query ({d.index.search_ms.why}); memory {d.index.memory_mib.fmt()} "
            f"({d.index.memory_mib.why}); recall@100 {d.index.recall}.", "",
            _table(["rejected", "why"], [[n, w] for n, w in d.index.rejected]) if d.index.rejected else "", ""]
    out += ["## Latency budget", "", _table(["stage", "expected", "from"],
                                            [[k, v.fmt(), v.why] for k, v in d.latency.items()]), "",
            f"Deadlines to configure: request {d.deadlines['request']:g} ms (the p99 target), retrieval "
            f"{d.deadlines['retrieval']:g} ms, ranking {d.deadlines['ranking']:g} ms (40 % each; a stage that exceeds its "
            "budget is answered by its fallback rung, not late).", ""]
    out += ["## Sizing", "", _table(["service", "replicas at peak", "always running", "cores each", "memory each", "why"],
                                    [[s.name, str(s.replicas), str(s.min_replicas), f"{s.cores_per_replica:g}",
                                      s.memory_mib.fmt(0), f"{s.why}; always running: {s.min_why}; memory: {s.memory_mib.why}"]
                                     for s in d.services]), ""]
    if d.consumers:
        out += [f"Events consumers: {d.consumers.fmt()} ({d.consumers.why}).", ""]
    out += [f"**Redis: {d.redis.shape}**" + (f", {d.redis.shards} primaries" if d.redis.shape == "cluster" else "")
            + f" — {d.redis.memory_gib.fmt()} ({d.redis.memory_gib.why}), {d.redis.ops_per_s.fmt()} "
              f"({d.redis.ops_per_s.why}), {d.redis.cpu_cores.fmt()} of command thread ({d.redis.cpu_cores.why}).", "",
            _table(["part", "memory", "from"], [[n, q.fmt(3), q.why] for n, q in d.redis.parts]), "",
            f"Response cache TTL: {d.cache_ttl_s} s (events invalidate a user's answers at once; the TTL bounds catalog "
            f"and other users' changes: ≤ catalog.freshness_s {r.catalog.freshness_s:g} s, ≤ 300 s, 0 when no hits are "
            "expected).", "",
            f"In all: **{d.total_cores:.1f} cores** (services at {model.TARGET_UTILISATION:.0%} plus spares, Redis, consumers).", ""]
    out += ["## Monitoring plan", "",
            f"SLOs: availability {r.availability.target:.3%} of /recommend answered 200 (fallbacks count as answered, "
            f"tracked apart); p99 ≤ {r.latency.p99_ms:g} ms; events visible within {r.events.freshness_s:g} s.", "",
            _table(["alert", "fires when", "expression (sketch)"], [[a, w, f"`{e}`"] for a, w, e in ALERTS]), "",
            "`python -m architect diagnose` against the running stack turns the same metrics into findings "
            "(docs/runbook.md).", ""]
    out += ["## Failure modes", "", _table(["failure", "what the client gets"], [list(x) for x in RUNGS]), ""]
    deploy = ("Kubernetes: the Helm chart `deploy/helm/recsys` with the values below (HPA between the two replica "
              "counts, PDBs, the gateway's channels on the headless Services)." if r.infrastructure.kubernetes else
              "No Kubernetes: one docker compose project per host (`docker compose up --scale retrieval=N --scale "
              "ranking=N`) behind a load balancer, or the same containers under systemd; no autoscaler, so run the "
              "peak replica counts.")
    out += ["## Settings", "", deploy, "", "Environment (`.env`, compose):", "", "```sh", env_text, "```", "",
            "Helm values (`deploy/helm/recsys`):", "", "```yaml", helm_text, "```", ""]
    used = sorted(p.figures.items())
    out += ["## Measured inputs and assumptions", "",
            _table(["figure", "value", "from"], [[k, f"{f.value:g} {f.unit}", f"{f.cite()}" + (f" — {f.note}" if f.note else "")]
                                                  for k, f in used]), "",
            "Assumptions:", ""] + [f"- **{k}**: {v}" for k, v in model.ASSUMPTIONS.items()] + [""]
    return "\n".join(out).replace("\n\n\n", "\n\n")
