"""Typed settings shared by every component.

Each service has its own settings class (``services/<name>/settings.py``) with its own env
prefix (``RETRIEVAL_``, ``RANKING_``, ``GATEWAY_``); the values that several components must
agree on live here and are read from un-prefixed variables (``REDIS_URL``, ``ARTIFACTS_DIR``)
or the ``FEAST_`` prefix. Settings are read once, at start-up, by the process entry point and
passed down; nothing here reads the environment at import time.
Every variable is documented in ``.env.example`` and README (checked by tests/common/test_config_doc.py).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class Base(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True)


class FeatureStoreSettings(Base):
    """Where Feast keeps its registry, offline parquet and (embedded) online store."""

    model_config = SettingsConfigDict(env_prefix="FEAST_", extra="ignore", frozen=True)

    project: str = Field("recsys", description="Feast project name (part of every online key).")
    repo_path: Path = Field(REPO_ROOT / "feature_store" / "repo", description="Feast repo (feature definitions).")
    data_dir: Path = Field(REPO_ROOT / "data" / "feast", description="Feast registry and the embedded SQLite online store.")
    offline_dir: Path = Field(REPO_ROOT / "data" / "features", description="Offline parquet sources written by the pipeline.")
    enforce_ttl: bool = Field(
        False,
        description=(
            "Serving: treat online rows older than their feature view's TTL as missing (Feast 0.67's SDK does not). "
            "Off for the replayed 1998 MovieLens history, whose pushed context would all be expired; turn on for live data."
        ),
    )
    # Checked when the store is built (feature_store.backends), not here: a pydantic error is a
    # multi-line traceback, an unknown type must fail with one line that names the variable.
    online_type: str | None = Field(
        None,
        description="Feast online store backend: `redis` or `sqlite`; unset = `redis` when REDIS_URL is set, else `sqlite`.",
    )
    redis_url: str | None = Field(
        None,
        validation_alias=AliasChoices("REDIS_URL"),
        description="Redis for the Feast online store and the response cache: `redis://host:port/db`, a Redis Cluster `redis+cluster://h1:p1,h2:p2` or Sentinel `redis+sentinel://h1:p1,h2:p2/<master>/db` (`rediss` variants: TLS); unset = embedded SQLite online store.",
    )


    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, v: str | None) -> str | None:
        return check_redis_url(v)


def check_redis_url(v: str | None) -> str | None:
    """A ``REDIS_URL`` that :mod:`common.redis_client` can connect to, refused at start-up otherwise."""
    if v:
        from common.redis_client import parse_redis_url

        parse_redis_url(v)  # ValueError naming REDIS_URL and what is wrong
    return v or None


class ArtifactSettings(Base):
    artifacts_dir: Path = Field(
        REPO_ROOT / "artifacts" / "current",
        validation_alias=AliasChoices("ARTIFACTS_DIR"),
        description="Artifact bundle to serve (a version folder or the `current` link).",
    )
