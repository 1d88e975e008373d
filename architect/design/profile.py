"""The measured costs a design is sized from, each with where it was measured (file and field).

A profile is a JSON file of *figures* — ``{"value", "unit", "source", "field", "note"}`` — built
from benchmark output, never typed in by hand:

* ``bench-results/capacity.json`` (``python -m benchmarks capacity``): CPU per full answer, per
  cache hit and per event of every process, Redis calls per answer / hit / event, Redis bytes per
  user row, item row and cache entry, RSS, the saturation throughput of this machine's stack;
* the 1M-item catalog's figures (``python -m benchmarks scale`` -> ``bench-results/scale.json``,
  the run recorded in docs/architecture.md "Trade-offs") and the ANN sweep (``make
  artifacts-scale``, README "Measured performance"; ../shared/notes/measured-costs.md for the
  index types the sweep did not serve), copied here with their source because that run takes
  an hour and is not repeated per design.

``architect/profiles/reference.json`` is this project's 2-core machine, committed so that the
example designs in docs/designs/ regenerate the same on any checkout. ``python -m architect
design --profile-from bench-results/capacity.json --write-profile architect/profiles/reference.json``
refreshes it from a new run (the ``make profile`` target).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from common.settings import REPO_ROOT

REFERENCE = REPO_ROOT / "architect" / "profiles" / "reference.json"
CAPACITY = "bench-results/capacity.json"


@dataclass(frozen=True)
class Figure:
    value: float
    unit: str
    source: str
    field: str
    note: str = ""

    def cite(self) -> str:
        return f"`{self.source}` → `{self.field}`"


# The 1M-item run (2026-12-03, 2 vCPU, recorded in docs/architecture.md "Trade-offs" from
# bench-results/scale.json) and the ANN figures; re-measure with `python -m benchmarks scale`.
SCALE_SOURCE = "bench-results/scale.json (2026-12-03; docs/architecture.md, Trade-offs)"
SWEEP_SOURCE = "make artifacts-scale sweep (README.md, Measured performance)"
NOTES_SOURCE = "../shared/notes/measured-costs.md (2026-11-23)"
STATIC: dict[str, Figure] = {
    "scale.items": Figure(1_000_000, "items", SCALE_SOURCE, "items"),
    "scale.candidates": Figure(500, "candidates", SCALE_SOURCE, "GATEWAY_NUM_CANDIDATES"),
    "scale.retrieval_ms": Figure(5.2, "CPU ms/answer", SCALE_SOURCE, "grpc.online.retrieval handling",
                                 "features 1.0, two_tower 1.6, item_to_item 1.7, filters 0.4, merge 0.6"),
    "scale.ranking_ms": Figure(2.8, "CPU ms/answer", SCALE_SOURCE, "grpc.online.ranking handling",
                               "features 1.6, score 0.85"),
    "scale.gateway_ms": Figure(1.5, "CPU ms/answer", SCALE_SOURCE, "grpc.online cpu_ms_per_answer - handling",
                               "9.5 ms per full answer in all, less the services' 8.0"),
    "scale.precomputed_ms": Figure(1.03, "CPU ms/answer", SCALE_SOURCE, "grpc.precomputed.cpu_ms_per_answer"),
    "scale.hop_ms_500": Figure(2.4, "ms", SCALE_SOURCE, "grpc.online per-hop cost",
                               "each gRPC hop with 500 candidates, one client at a time"),
    "redis.rtt_ms": Figure(0.2, "ms", "bench-results/cluster.json (2026-12-03 smoke, docs/architecture.md Scaling out)",
                           "single.*.p50_ms", "one call to one Redis server over loopback: p50 0.17-0.35 ms"),
    "scale.online_p50_ms": Figure(15.7, "ms", SCALE_SOURCE, "grpc.online.p50_ms"),
    "scale.online_p99_ms": Figure(28.4, "ms", SCALE_SOURCE, "grpc.online.p99_ms"),
    "scale.precomputed_p99_ms": Figure(4.3, "ms", SCALE_SOURCE, "grpc.precomputed.p99_ms"),
    "scale.rss_gateway_mib": Figure(506, "MiB", SCALE_SOURCE, "grpc.online.rss.gateway"),
    "scale.rss_retrieval_mib": Figure(746, "MiB", SCALE_SOURCE, "grpc.online.rss.retrieval"),
    "scale.rss_ranking_mib": Figure(658, "MiB", SCALE_SOURCE, "grpc.online.rss.ranking"),
    "scale.item_table_mib": Figure(165, "MiB", SCALE_SOURCE, "snapshot.table_mib", "ranking's in-process item table, 1M items"),
    "scale.redis_bytes_per_item": Figure(1030, "B/item", "docs/architecture.md (make artifacts-scale)",
                                         "used_memory 979 MiB / 1M items", "Feast hash of two views + the snapshot"),
    "scale.precomputed_list_bytes": Figure(6600, "B/user", SCALE_SOURCE, "precomputed.bytes_per_list", "500 items"),
    "scale.batch_users_per_s": Figure(138, "users/s", SCALE_SOURCE, "precompute.users_per_s",
                                      "services.precompute on 2 cores: 943 users in 6.8 s of compute"),
    "events.apply_ms": Figure(30, "ms", "README.md (Real-time events)", "freshness p99",
                              "202 -> the next answer without the clicked item, 10-30 ms"),
    "events.consumer_events_per_s": Figure(2400, "events/s", "bench-results/events.json", "ingestion.applied_per_s",
                                           "one consumer process (deploy/helm values.yaml)"),
}
# recall@100 vs exact, search latency at k = 500 and bytes per item of each index type at 1M x 64
SWEEP: list[dict] = [
    {"index": "Flat (exact)", "items": 1_000_000, "recall": 1.0, "p50_ms": 10.1, "bytes_per_item": 256,
     "source": SWEEP_SOURCE, "field": "exact search p50"},
    {"index": "IVF4096,Flat nprobe 48", "items": 1_000_000, "recall": 0.954, "p50_ms": 0.41, "bytes_per_item": 264,
     "source": SWEEP_SOURCE, "field": "chosen point: recall@100 0.954, p50 0.41 ms"},
    {"index": "HNSW32 efSearch 128", "items": 1_000_000, "recall": 0.993, "p50_ms": 1.19, "bytes_per_item": 520,
     "source": NOTES_SOURCE, "field": "FAISS HNSW32 efSearch 128 (recall: ml-100k bundle, README)",
     "note": "recall measured on the ml-100k embeddings; memory ~520 MB per 1M x 64"},
    {"index": "IVF4096,PQ32x8 nprobe 16", "items": 1_000_000, "recall": None, "p50_ms": 0.24, "bytes_per_item": 40,
     "source": NOTES_SOURCE, "field": "FAISS IVF4096,PQ32x8 nprobe 16 (39 MB)",
     "note": "recall not measured on trained embeddings: measure before relying on it"},
]


def _get(data: dict, path: str):
    value = data
    for part in path.split("."):
        value = value[part]
    return value


def from_capacity(capacity: dict, source: str = CAPACITY) -> dict[str, Figure]:
    """The per-request figures of one ``benchmarks capacity`` run."""
    def f(path: str, unit: str, note: str = "") -> Figure:
        return Figure(float(_get(capacity, path)), unit, source, path, note)

    figures = {
        "base.cores": f("cores", "cores"),
        "base.items": f("items", "items"),
        "base.users": f("users", "users"),
        "base.candidates": f("num_candidates", "candidates"),
        "base.k": f("k", "items"),
        "base.p50_ms": f("cost.p50_ms", "ms"),
        "base.p99_ms": f("cost.p99_ms", "ms"),
        "base.retrieval_server_ms": f("cost.stage_ms.retrieval.server:Retrieve", "ms"),
        "base.ranking_server_ms": f("cost.stage_ms.ranking.server:Rank", "ms"),
        "saturation.rps_full": f("saturation.rps_full_answers", "answers/s"),
        "saturation.loadgen_ms": f("saturation.cpu_ms_per_request.loadgen", "CPU ms/request",
                                   "the load generator's own CPU per request, on the same cores"),
        "hit.redis_calls": f("cache_hit.redis_calls_per_request", "calls/hit"),
        "answer.redis_calls": f("cost.redis_calls_per_request", "calls/answer"),
        "event.redis_calls": f("events.redis_calls_per_event", "calls/event"),
        "mem.user_row_bytes": f("memory.user_row_bytes", "B/user"),
        "mem.item_row_bytes": f("memory.item_row_bytes", "B/item"),
        "mem.cache_entry_bytes": f("memory.cache_entry_bytes", "B/entry"),
    }
    for proc in ("gateway", "retrieval", "ranking", "redis"):
        figures[f"answer.{proc}_ms"] = f(f"cpu_linear.{proc}.marginal_ms", "CPU ms/answer",
                                         "marginal: the slope of the process's cores over answers/s (two open-loop rates)")
        figures[f"fixed.{proc}_cores"] = f(f"cpu_linear.{proc}.fixed_cores", "cores",
                                           "what serving at all costs the process (pollers, timers), any load")
    for proc in ("gateway-cache", "redis"):
        figures[f"hit.{proc.split('-')[0]}_ms"] = f(f"cache_hit.cpu_ms_per_request.{proc}", "CPU ms/hit")
    for proc, name in (("gateway", "gateway"), ("events", "consumer"), ("redis", "redis")):
        figures[f"event.{name}_ms"] = f(f"events.cpu_ms_per_event.{proc}", "CPU ms/event")
    for proc in ("gateway", "retrieval", "ranking", "events"):
        figures[f"rss.{proc}_mib"] = f(f"memory.rss_mib.{proc}", "MiB")
    return figures


@dataclass(frozen=True)
class Profile:
    name: str
    figures: dict[str, Figure]
    sweep: list[dict]

    def __getitem__(self, key: str) -> Figure:
        return self.figures[key]

    def v(self, key: str) -> float:
        return self.figures[key].value

    def to_json(self) -> dict:
        return {"name": self.name, "figures": {k: f.__dict__ for k, f in sorted(self.figures.items())},
                "sweep": self.sweep}

    @classmethod
    def from_json(cls, data: dict) -> Profile:
        return cls(data["name"], {k: Figure(**v) for k, v in data["figures"].items()}, data["sweep"])


def build(capacity_path: Path, name: str = "reference") -> Profile:
    capacity = json.loads(Path(capacity_path).read_text())
    try:
        source = str(Path(capacity_path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        source = str(capacity_path)
    return Profile(name, {**STATIC, **from_capacity(capacity, source)}, SWEEP)


def load(path: Path = REFERENCE) -> Profile:
    return Profile.from_json(json.loads(Path(path).read_text()))


def write(profile: Profile, path: Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(profile.to_json(), indent=2) + "\n")
