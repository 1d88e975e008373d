"""Ranking settings (env prefix ``RANKING_``), read once by ``python -m services.ranking``."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class RankingSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RANKING_", extra="ignore", frozen=True)

    host: str = Field("127.0.0.1", description="Interface the ranking gRPC server binds (0.0.0.0 in containers).")
    port: int = Field(50052, ge=0, le=65535, description="gRPC port of the ranking service.")
    metrics_host: str = Field("127.0.0.1", description="Interface of the ranking Prometheus endpoint.")
    metrics_port: int = Field(9102, ge=0, le=65535, description="Prometheus /metrics port of the ranking service.")
    max_connection_age_s: float = Field(60.0, ge=0, description="Close each client connection after this long (gracefully, in-flight calls finish), so clients resolve the service name again and spread over replicas added since; 0 = never.")
    grace_period_s: float = Field(5.0, ge=0, description="SIGTERM: seconds in-flight ranking calls get to finish.")
    max_candidates: int = Field(2000, ge=1, description="Most candidates a Rank call may carry (INVALID_ARGUMENT above).")
    pipeline_config: Path | None = Field(None, description="The component pipeline (its [ranking] scorer); unset = services/pipeline.toml.")
    warmup_requests: int = Field(50, ge=0, description="In-process warm-up calls before the service reports SERVING.")
    keep_previous_s: float = Field(30.0, ge=0, description="After a switch, how long a replaced arm (bundle version x pipeline) stays loaded to rank requests retrieved with it (RankRequest.model_version).")
    shadow_queue_size: int = Field(64, ge=1, description="Answered Rank calls waiting for the shadow ranker (`python -m models shadow VERSION`); when full, new ones are dropped (counted), never waited for.")
    shadow_sample_rate: float = Field(1.0, ge=0, le=1, description="Share of answered Rank calls offered to the shadow ranker.")
    reload_poll_s: float = Field(1.0, ge=0, description="How often the artifacts root is checked (the `current` link, rollout.json: canary, shadow): a new arm is loaded, verified, warmed and swapped in without a restart (SIGHUP: check now); 0 = on SIGHUP only.")
    log_level: str = Field("INFO", description="Log level of the ranking service.")
