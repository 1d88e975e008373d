"""Retrieval settings (env prefix ``RETRIEVAL_``), read once by ``python -m services.retrieval``."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class RetrievalSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RETRIEVAL_", extra="ignore", frozen=True)

    host: str = Field("127.0.0.1", description="Interface the retrieval gRPC server binds (0.0.0.0 in containers).")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port of the retrieval service.")
    metrics_host: str = Field("127.0.0.1", description="Interface of the retrieval Prometheus endpoint.")
    metrics_port: int = Field(9101, ge=0, le=65535, description="Prometheus /metrics port of the retrieval service.")
    max_connection_age_s: float = Field(60.0, ge=0, description="Close each client connection after this long (gracefully, in-flight calls finish), so clients resolve the service name again and spread over replicas added since; 0 = never.")
    grace_period_s: float = Field(5.0, ge=0, description="SIGTERM: seconds in-flight retrieval calls get to finish.")
    max_k: int = Field(1000, ge=1, description="Largest k a Retrieve call may ask for (INVALID_ARGUMENT above).")
    max_exclude_ids: int = Field(5000, ge=0, description="Most exclude_item_ids accepted in one Retrieve call.")
    max_context_items: int = Field(100, ge=0, description="Most context.recent_item_ids accepted in one Retrieve call.")
    pipeline_config: Path | None = Field(None, description="The component pipeline (sources, quotas, filters; two_tower's nprobe / ef_search); unset = services/pipeline.toml.")
    warmup_requests: int = Field(50, ge=0, description="In-process warm-up calls before the service reports SERVING.")
    reload_poll_s: float = Field(1.0, ge=0, description="How often the artifacts root is checked (the `current` link, rollout.json: canary, shadow): a new arm is loaded, verified, warmed and swapped in without a restart (SIGHUP: check now); 0 = on SIGHUP only.")
    keep_previous_s: float = Field(30.0, ge=0, description="After a switch, how long a replaced arm (bundle version x pipeline) stays loaded for requests the gateway pinned to it (RetrieveRequest.model_version).")
    log_level: str = Field("INFO", description="Log level of the retrieval service.")
