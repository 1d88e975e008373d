"""The requirements a design is made from: a typed, documented schema (``requirements.yaml``).

Every field is documented here (``Field(description=...)``) and in the example files under
``docs/designs/``. :func:`load` turns a YAML file into :class:`Requirements` or raises
:class:`RequirementsError` whose message names each offending field by its dotted path
(``traffic.peak_qps: ...``); the CLI prints it and exits 2. Besides types and ranges, targets that
contradict each other are refused (a p99 below the p50, an average above the peak, more results
than candidates, a freshness the events loop cannot physically give).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class RequirementsError(ValueError):
    """The requirements file is unreadable or invalid; the message names every bad field."""


class _Strict(BaseModel):
    # strict: "100" is not a number, and an unknown key is a typo, not a silent no-op
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Traffic(_Strict):
    peak_qps: float = Field(gt=0, description="/recommend requests per second at the daily peak.")
    average_qps: float = Field(gt=0, description="Requests per second averaged over a day.")
    burst_factor: float = Field(1.5, ge=1, le=20, description="Short bursts above the peak (x peak), e.g. a push notification.")
    burst_seconds: float = Field(60, gt=0, description="How long a burst lasts; shorter than an autoscaler reacts (~60-120 s).")


class Latency(_Strict):
    p50_ms: float = Field(gt=0, description="Target median latency of /recommend, measured at the gateway.")
    p99_ms: float = Field(gt=0, description="Target p99 latency of /recommend; the gateway's request deadline is derived from it.")


class Catalog(_Strict):
    items: int = Field(gt=0, description="Items that can be recommended.")
    embedding_dim: int = Field(64, gt=0, le=4096, description="Dimension of the two-tower item / query embeddings.")
    features_per_item: int = Field(16, ge=0, le=10000, description="Ranking features per item (online store).")
    freshness_s: float = Field(3600, gt=0, description="A new or changed item must be recommendable within this many seconds.")
    recall_target: float = Field(0.95, gt=0, le=1, description="ANN recall@100 against exact search that the index must reach.")


class Users(_Strict):
    total: int = Field(gt=0, description="Known users (rows in the online store).")
    unknown_share: float = Field(0.1, ge=0, le=1, description="Share of requests from users with no history (cold start).")
    features_per_user: int = Field(8, ge=0, le=10000, description="Features per user (online store).")


class Request(_Strict):
    k: int = Field(10, gt=0, le=1000, description="Items per answer.")
    candidates: int = Field(300, gt=0, le=5000, description="Candidates retrieved and ranked per request.")


class Events(_Strict):
    peak_per_second: float = Field(0, ge=0, description="User events (clicks, views...) per second at peak; 0 = no real-time loop.")
    freshness_s: float = Field(5, gt=0, description="An event must change the user's next answers within this many seconds.")
    retention_hours: float = Field(24, gt=0, description="How long the event stream keeps entries (replay, offline export).")


class Cache(_Strict):
    expected_hit_rate: float = Field(0.0, ge=0, lt=1, description="Share of requests a response cache would answer (repeat views within the TTL).")


class Availability(_Strict):
    target: float = Field(0.999, ge=0.9, lt=1, description="Share of requests answered (a fallback answer counts) per month.")


class Infrastructure(_Strict):
    kubernetes: bool = Field(False, description="A Kubernetes cluster is available (Helm chart, HPA).")
    redis: Literal["none", "standalone", "sentinel", "cluster"] = Field("none", description="Redis already run: none, standalone, sentinel or cluster.")
    kafka: bool = Field(False, description="Kafka is already run (the events stream could live there).")
    gpus: bool = Field(False, description="GPUs are available for serving.")
    cores_per_node: int = Field(8, gt=0, le=512, description="Cores of one machine / node the services run on.")
    memory_gib_per_node: float = Field(32, gt=0, description="Memory of one node, GiB.")
    shared_with_loadgen: bool = Field(False, description="The load generator runs on the same cores (this machine's own benchmark setup).")


class Cost(_Strict):
    max_cores: float | None = Field(None, gt=0, description="Most cores the serving tier may use; null = no limit.")
    max_redis_gib: float | None = Field(None, gt=0, description="Most Redis memory, GiB; null = no limit.")


class Requirements(_Strict):
    name: str = Field(min_length=1, max_length=80, description="Short name of the system (the document's title).")
    description: str = Field("", max_length=2000, description="One paragraph: what is recommended, to whom, where.")
    traffic: Traffic
    latency: Latency
    catalog: Catalog
    users: Users
    request: Request = Request()
    events: Events = Events()
    cache: Cache = Cache()
    availability: Availability = Availability()
    infrastructure: Infrastructure = Infrastructure()
    cost: Cost = Cost()

    @model_validator(mode="after")
    def _consistent(self) -> Requirements:
        problems = []
        if self.traffic.average_qps > self.traffic.peak_qps:
            problems.append(("traffic.average_qps", f"{self.traffic.average_qps:g} is above traffic.peak_qps "
                             f"{self.traffic.peak_qps:g}"))
        if self.latency.p99_ms < self.latency.p50_ms:
            problems.append(("latency.p99_ms", f"{self.latency.p99_ms:g} is below latency.p50_ms {self.latency.p50_ms:g}"))
        if self.request.k > self.request.candidates:
            problems.append(("request.k", f"{self.request.k} is more than request.candidates {self.request.candidates}"))
        if self.request.candidates > self.catalog.items:
            problems.append(("request.candidates", f"{self.request.candidates} is more than catalog.items "
                             f"{self.catalog.items}"))
        if self.events.freshness_s < 0.05 and self.events.peak_per_second > 0:
            problems.append(("events.freshness_s", f"{self.events.freshness_s:g} s: an event cannot be applied "
                             "faster than one stream read + apply (~10-30 ms measured); 0.05 s is the floor"))
        if problems:
            raise ValueError("; ".join(f"{f}: {m}" for f, m in problems))
        return self

    @property
    def design_qps(self) -> float:
        """What the serving tier must carry without autoscaling: the peak times the burst factor."""
        return self.traffic.peak_qps * self.traffic.burst_factor

    @property
    def diurnal_peak_ratio(self) -> float:
        return self.traffic.peak_qps / self.traffic.average_qps


def _dotted(error: dict) -> str:
    return ".".join(str(p) for p in error["loc"]) or "(top level)"


def parse(data: object) -> Requirements:
    try:
        return Requirements.model_validate(data)
    except ValidationError as exc:
        lines = []
        for e in exc.errors():
            msg = e["msg"].removeprefix("Value error, ")
            if e["type"] == "missing":
                lines.append(f"{_dotted(e)}: required field is missing")
            elif e["type"] == "value_error" and not e["loc"]:
                lines.extend(msg.split("; "))
            else:
                lines.append(f"{_dotted(e)}: {msg} (got {e.get('input')!r})")
        raise RequirementsError("\n".join(lines)) from None


def load(path: Path) -> Requirements:
    import yaml

    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise RequirementsError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RequirementsError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise RequirementsError(f"{path}: expected a mapping of sections (traffic, latency, catalog, users, ...)")
    return parse(data)
