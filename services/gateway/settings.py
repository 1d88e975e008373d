"""Gateway settings (env prefix ``GATEWAY_``), read once by ``python -m services.gateway``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.settings import REPO_ROOT, check_redis_url

MODES = ("grpc", "inprocess")
SERVING_MODES = ("online", "precomputed", "hybrid")
# Set (with PROMETHEUS_MULTIPROC_DIR, to the same directory) by ``python -m services.gateway`` for
# several workers. PROMETHEUS_MULTIPROC_DIR alone does not say so: importing feast sets it. Not a
# setting (no GATEWAY_ prefix): the entry point's message to its workers.
OWN_METRICS_DIR = "RECSYS_GATEWAY_METRICS_DIR"

# Tokens that ship in examples and tutorials: never a secret outside a dev setup.
PLACEHOLDER_TOKENS = frozenset({"changeme", "change-me", "change_me", "secret", "password", "admin", "token",
                                "test", "dev", "default", "example", "letmein", "xxx"})


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore", frozen=True)

    mode: str = Field(
        "grpc",
        description="`grpc`: retrieval and ranking are the gRPC services at GATEWAY_RETRIEVAL_ADDR / GATEWAY_RANKING_ADDR; "
                    "`inprocess`: the same pipelines run inside each gateway worker (reading the RETRIEVAL_* / RANKING_* / FEAST_* settings).",
    )
    workers: int = Field(
        0, ge=0,
        description="uvicorn worker processes; 0 = 1 in `grpc` mode (the gateway only waits on I/O), the CPU count in "
                    "`inprocess` mode (each worker runs the CPU-bound pipelines on its event loop: one core each) and with "
                    "GATEWAY_SERVING_MODE=precomputed (the gateway itself does the work: HTTP, one Redis read, the filters).",
    )

    serving_mode: str = Field(
        "online",
        description="Which path answers /recommend: `online` (retrieval + ranking per request), `precomputed` (the user's list "
                    "written by `python -m services.precompute`, after the real-time filters: no retrieval, no ranking), "
                    "`hybrid` (that list re-ranked by ranking with the request's context: no retrieval). Both others fall "
                    "back to `online` for a missing, expired, other-version or too-short list. Needs REDIS_URL.",
    )
    precomputed_timeout_ms: float = Field(
        50.0, gt=0,
        description="`precomputed` / `hybrid`: budget of the list read (one Redis round trip). Longer than the cache's: "
                    "it is the answer, and at saturation a busy event loop, not Redis, makes a read late (with 10 ms, "
                    "a quarter of the reads timed out at 32 connections and went online, the costly path).",
    )
    precomputed_max_age_s: float = Field(
        86400.0, gt=0,
        description="`precomputed` / `hybrid`: a precomputed list computed longer ago than this is not used (the answer "
                    "is computed online, counted as `expired`).",
    )

    host: str = Field("127.0.0.1", description="Interface the gateway binds (0.0.0.0 in containers).")
    port: int = Field(8000, ge=0, le=65535, description="HTTP port of the gateway.")
    retrieval_addr: str = Field("127.0.0.1:50051", description="gRPC target of the retrieval service: `host:port`, `dns:///name:port` (every address the name resolves to: compose `--scale`, a Kubernetes headless Service) or `ipv4:a:p,b:p`; calls are balanced over its replicas (GATEWAY_GRPC_LB_POLICY).")
    ranking_addr: str = Field("127.0.0.1:50052", description="gRPC target of the ranking service (same forms as GATEWAY_RETRIEVAL_ADDR).")
    grpc_lb_policy: Literal["round_robin", "pick_first"] = Field("round_robin", description="gRPC client-side load balancing over the replicas a service address resolves to: `round_robin` spreads calls over every healthy replica, `pick_first` sends all to one.")
    grpc_health_check: bool = Field(True, description="Keep a replica in the rotation only while its gRPC health service (`grpc.health.v1`, service \"\") reports SERVING: a loading, draining or dead replica gets no calls.")
    grpc_retry_unavailable: bool = Field(True, description="Retry a retrieval / ranking call once on another replica when it fails with UNAVAILABLE (a replica killed a moment ago), within the call's deadline and gRPC's retry throttling.")
    request_timeout_ms: float = Field(100.0, gt=0, description="Deadline of a whole /recommend request.")
    retrieval_timeout_ms: float = Field(40.0, gt=0, description="Budget of the retrieval call (capped by what is left of the request deadline).")
    ranking_timeout_ms: float = Field(40.0, gt=0, description="Budget of the ranking call (capped by what is left of the request deadline).")
    cache_timeout_ms: float = Field(10.0, gt=0, description="Budget of each response-cache read or write.")
    num_candidates: int = Field(300, ge=1, le=2000, description="Candidates asked from retrieval and sent to ranking.")
    cache_ttl_s: int = Field(60, ge=0, description="Response cache TTL in seconds; 0 disables the cache.")
    stale_ttl_s: int = Field(3600, ge=0, description="How long a user's last good answer is kept for the `cached` fallback rung (0: no such rung); needs the response cache on.")
    pipeline_config: Path | None = Field(None, description="The component pipeline file whose [fallback] ladder the gateway follows; unset = services/pipeline.toml.")
    cache_max_entries: int = Field(10000, ge=1, description="Size of the in-process cache used when REDIS_URL is unset.")
    max_body_bytes: int = Field(16384, ge=256, description="Largest accepted POST body (/recommend, /debug/explain); /events has GATEWAY_MAX_EVENTS_BODY_BYTES.")
    max_events_body_bytes: int = Field(262144, ge=256, description="Largest accepted POST /events body (413 above it).")
    max_events_per_batch: int = Field(500, ge=1, description="Most events accepted in one POST /events batch (422 above it).")
    event_max_future_s: float = Field(300.0, ge=0, description="How far in the future an event's `ts` may be (clock skew) before the batch is refused with 422.")
    event_dedup_ttl_s: int = Field(86400, ge=1, description="How long an accepted event_id is remembered: a replay within this window is counted as a duplicate, not appended again.")
    events_timeout_ms: float = Field(500.0, gt=0, description="Socket timeout of the gateway's Redis calls for /events (the ingest script) and the exposure log writes; above it /events answers 503.")
    exposure_sample_rate: float = Field(1.0, ge=0, le=1, description="Share of /recommend answers written to the exposure log (needs REDIS_URL); 0 = none.")
    exposure_queue_size: int = Field(10000, ge=1, description="Exposure records waiting to be written; when full, new ones are dropped (counted), never waited for.")
    exposure_maxlen: int = Field(1000000, ge=1, description="Approximate length the exposure stream is trimmed to (XADD MAXLEN ~).")
    max_exclude_ids: int = Field(1000, ge=0, description="Most exclude_item_ids accepted in one request.")
    retrieval_max_in_flight: int = Field(4, ge=1, description="Most retrieval calls in flight at once from this gateway process (bulkhead), shared by all retrieval replicas behind the address; the rest wait in the gateway within their request deadline. Scale it with the replicas: about 4 x retrieval replicas / gateway replicas.")
    ranking_max_in_flight: int = Field(4, ge=1, description="Most ranking calls in flight at once from this gateway process (bulkhead), shared by all ranking replicas behind the address; the rest wait in the gateway within their request deadline. Scale it with the replicas: about 4 x ranking replicas / gateway replicas.")
    breaker_failure_rate: float = Field(0.5, gt=0, le=1, description="Share of failed calls in the breaker's window that opens a dependency's circuit breaker.")
    breaker_window: int = Field(20, ge=1, description="Number of most recent calls the breaker's failure rate is computed over.")
    breaker_min_calls: int = Field(5, ge=1, description="Calls the window must hold before the failure rate can open the breaker (a dead dependency costs this many failed calls).")
    breaker_reset_s: float = Field(2.0, gt=0, description="Seconds an open breaker waits before letting one probe through (half-open).")
    reload_poll_s: float = Field(1.0, ge=0, description="How often ARTIFACTS_DIR's root is checked: a new `current` (its catalog; requests are pinned to it from then on) and rollout.json (the canary); 0 = only on POST /admin/reload.")
    pin_wait_s: float = Field(30.0, ge=0, description="After `current` (or a canary) moves, how long the gateway waits for retrieval and ranking to report the new version loaded (gRPC health `<service>/<version>`) before it pins requests to it anyway.")
    readiness_timeout_ms: float = Field(500.0, gt=0, description="Timeout of the gRPC health checks behind /readyz.")
    redis_url: str | None = Field(
        None,
        validation_alias=AliasChoices("REDIS_URL"),
        description="Redis for the Feast online store, the response cache, the event stream (POST /events) and the exposure log (any REDIS_URL form: one server, `redis+cluster://`, `redis+sentinel://`); unset = embedded SQLite online store, in-process cache, no /events.",
    )
    artifacts_dir: Path = Field(
        REPO_ROOT / "artifacts" / "current",
        validation_alias=AliasChoices("ARTIFACTS_DIR"),
        description="Artifact bundle to serve (a version folder or the `current` link).",
    )

    environment: Literal["dev", "prod"] = Field("prod", description="`dev` allows a placeholder GATEWAY_ADMIN_TOKEN (make up, tests); anything else refuses one.")
    admin_token: SecretStr | None = Field(None, description="Bearer token of the admin endpoints (/debug/explain, /admin/reload); unset = those endpoints are disabled (404). At least 16 characters, no placeholder, outside dev.")

    @model_validator(mode="after")
    def _no_placeholder_admin_token(self) -> GatewaySettings:
        token = self.admin_token.get_secret_value() if self.admin_token is not None else None
        if token is None or self.environment == "dev":
            return self
        if token.strip().lower() in PLACEHOLDER_TOKENS or len(token) < 16:
            raise ValueError("GATEWAY_ADMIN_TOKEN looks like a placeholder (a known default or under 16 "
                             "characters): set a real secret, e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`, "
                             "or GATEWAY_ENVIRONMENT=dev")
        return self

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, v: str | None) -> str | None:
        return check_redis_url(v)

    @field_validator("mode")
    @classmethod
    def _known_mode(cls, value: str) -> str:
        # a plain str, not a Literal: the error then names the variable and the choices in one line
        if value not in MODES:
            raise ValueError(f"GATEWAY_MODE must be one of {', '.join(MODES)}; got {value!r}")
        return value

    @field_validator("serving_mode")
    @classmethod
    def _known_serving_mode(cls, value: str) -> str:
        if value not in SERVING_MODES:
            raise ValueError(f"GATEWAY_SERVING_MODE must be one of {', '.join(SERVING_MODES)}; got {value!r}")
        return value

    @model_validator(mode="after")
    def _precomputed_needs_redis(self) -> GatewaySettings:
        if self.serving_mode != "online" and not self.redis_url:
            raise ValueError(f"GATEWAY_SERVING_MODE={self.serving_mode} needs REDIS_URL: the precomputed lists and the "
                             "users' seen and recent items are read from Redis")
        return self

    @property
    def inprocess(self) -> bool:
        return self.mode == "inprocess"

    @property
    def worker_count(self) -> int:
        if self.workers:
            return self.workers
        return (os.cpu_count() or 1) if self.inprocess or self.serving_mode == "precomputed" else 1

    @model_validator(mode="after")
    def _min_calls_fit_the_window(self) -> GatewaySettings:
        if self.breaker_min_calls > self.breaker_window:
            raise ValueError(f"GATEWAY_BREAKER_MIN_CALLS ({self.breaker_min_calls}) must not exceed "
                             f"GATEWAY_BREAKER_WINDOW ({self.breaker_window})")
        return self
