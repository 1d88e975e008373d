"""Precompute job settings (env prefix ``PRECOMPUTE_``), read once by ``python -m services.precompute``.

``REDIS_URL`` (required: where the lists are written), ``ARTIFACTS_DIR`` and the ``FEAST_*``,
``RETRIEVAL_*`` and ``RANKING_*`` variables are read through the classes the services use.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class PrecomputeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PRECOMPUTE_", extra="ignore", frozen=True)

    top_n: int = Field(
        300, ge=1,
        description="Items stored per user (retrieved, then ranked, best first); the `precomputed` mode serves the first k "
                    "left after the real-time filters, `hybrid` re-ranks up to GATEWAY_NUM_CANDIDATES of them. At most "
                    "RETRIEVAL_MAX_K and RANKING_MAX_CANDIDATES.",
    )
    ttl_s: int = Field(
        604800, ge=0,
        description="Redis expiry of each precomputed list (`{u:<id>}:pre`); 0 = none. The gateway also refuses lists "
                    "older than GATEWAY_PRECOMPUTED_MAX_AGE_S, whatever their expiry.",
    )
    batch: int = Field(500, ge=1, description="Lists written per Redis pipeline (one round trip each).")
