"""Events consumer settings (env prefix ``EVENTS_``), read once by ``python -m services.events``.

``REDIS_URL``, ``ARTIFACTS_DIR`` and the ``FEAST_*`` variables are read through the shared
classes of :mod:`common.settings` (:func:`load_settings`).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.realtime import EVENT_TYPES
from common.settings import ArtifactSettings, FeatureStoreSettings

DEFAULT_WEIGHTS = "view=1,click=1,add_to_cart=2,purchase=4,rating=1,impression=0"


def _types(value: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(t.strip() for t in value.split(",") if t.strip()))
    unknown = [t for t in names if t not in EVENT_TYPES]
    if unknown:
        raise ValueError(f"unknown event types {unknown} (known: {', '.join(EVENT_TYPES)})")
    return names


def _weights(value: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in (p.strip() for p in value.split(",")):
        if not part:
            continue
        name, sep, w = part.partition("=")
        if not sep:
            raise ValueError(f"popularity weight {part!r} is not type=weight")
        _types(name)
        try:
            out[name.strip()] = float(w)
        except ValueError:
            raise ValueError(f"popularity weight of {name.strip()} is not a number: {w!r}") from None
        if out[name.strip()] < 0:
            raise ValueError(f"popularity weight of {name.strip()} is negative")
    return out


class EventsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EVENTS_", extra="ignore", frozen=True)

    consumer_name: str | None = Field(
        None, description="This consumer's name in the stream's consumer group; unset = the host name "
                          "(unique per container). Two running consumers must not share a name.")
    batch_size: int = Field(500, ge=1, le=10000, description="Most stream entries read and applied as one batch.")
    block_ms: int = Field(1000, ge=1, le=60000, description="How long one read waits for new entries (also the longest SIGTERM waits).")
    seen_types: str = Field("click,add_to_cart,purchase,rating",
                            description="Event types that put the item in the user's seen set (user_seen: never recommended again).")
    recent_types: str = Field("view,click,add_to_cart,purchase,rating",
                              description="Event types that count as interactions: user_context recent items and counts, co-visitation.")
    popularity_weights: str = Field(DEFAULT_WEIGHTS, description="type=weight pairs added to the live popularity of the item (unlisted types: 0).")
    popularity_half_life_s: float = Field(21600.0, gt=0, description="Half-life of the live popularity's time decay.")
    covisit_window_s: float = Field(600.0, ge=0, description="Two items a user interacted with this close in time are co-visited (as models/covisit.py offline).")
    covisit_max_neighbors: int = Field(100, ge=1, description="Neighbours kept per item in the live co-visitation ZSETs (highest counts).")
    nice: int = Field(0, ge=0, le=19, description="Raise the consumer's CPU niceness by this much at start-up (0 = unchanged): on a host shared with the serving path, applying events then yields the CPU to requests and lag absorbs the difference.")
    covisit_max_partners: int = Field(5, ge=0, le=20, description="An event is paired with at most this many of the user's most recent other items within the window (each pair is 2 ZINCRBYs in Redis).")
    max_deliveries: int = Field(5, ge=1, description="An entry delivered more often than this goes to the dead letter stream.")
    claim_idle_ms: int = Field(30000, ge=1000, description="Pending entries idle this long (a crashed consumer's) are claimed by this one.")
    stream_retention_s: float = Field(7 * 86400.0, gt=0, description="Acknowledged stream entries older than this are trimmed (never an unacknowledged one); run `export` more often.")
    user_state_ttl_s: int = Field(30 * 86400, ge=86400, description="Idle time after which a user's recent / seen state keys expire (their Feast rows keep the items).")
    metrics_host: str = Field("127.0.0.1", description="Interface of the consumer's /metrics, /healthz and /readyz (0.0.0.0 in containers).")
    metrics_port: int = Field(9103, ge=0, le=65535, description="Port of the consumer's /metrics, /healthz and /readyz.")
    log_level: str = Field("INFO", description="Log level of the events consumer.")

    @field_validator("seen_types", "recent_types")
    @classmethod
    def _check_types(cls, v: str) -> str:
        _types(v)
        return v

    @field_validator("popularity_weights")
    @classmethod
    def _check_weights(cls, v: str) -> str:
        _weights(v)
        return v

    @property
    def seen_type_set(self) -> frozenset[str]:
        return frozenset(_types(self.seen_types))

    @property
    def recent_type_set(self) -> frozenset[str]:
        return frozenset(_types(self.recent_types))

    @property
    def weights(self) -> dict[str, float]:
        w = {t: 0.0 for t in EVENT_TYPES}
        w.update(_weights(self.popularity_weights))
        return w

    def resolved_consumer_name(self) -> str:
        return self.consumer_name or socket.gethostname()


@dataclass(frozen=True)
class Settings:
    """Everything the consumer reads: its own settings and the shared ones."""

    events: EventsSettings
    feast: FeatureStoreSettings  # FEAST_* and REDIS_URL
    artifacts: ArtifactSettings  # ARTIFACTS_DIR


def load_settings() -> Settings:
    return Settings(EventsSettings(), FeatureStoreSettings(), ArtifactSettings())
