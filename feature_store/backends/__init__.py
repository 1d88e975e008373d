"""Online-store backends of the feature reader, one module per store behind
:class:`~feature_store.backends.base.OnlineBackend` (Feast's ``infra/online_stores`` pattern).

``FEAST_ONLINE_TYPE`` (``FeatureStoreSettings.online_type``) names the store; unset, it is
``redis`` when ``REDIS_URL`` is set and ``sqlite`` (Feast's embedded store) otherwise. The same
choice makes Feast write there (``feature_store.feast_store.repo_config``) and the reader read
there (``feature_store.reader.build_reader``), so the two cannot disagree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from feature_store.backends.base import OnlineBackend, OnlineStoreConfigError
from feature_store.backends.redis import RedisBackend
from feature_store.backends.sqlite import SqliteBackend

if TYPE_CHECKING:
    from common.settings import FeatureStoreSettings

# FEAST_ONLINE_TYPE value -> backend class (a new store: a module with an OnlineBackend, one entry)
BACKENDS: dict[str, type[OnlineBackend]] = {b.type: b for b in (RedisBackend, SqliteBackend)}

__all__ = ["BACKENDS", "OnlineBackend", "OnlineStoreConfigError", "RedisBackend", "SqliteBackend",
           "backend_class", "online_store_type"]


def online_store_type(settings: FeatureStoreSettings) -> str:
    """The configured store type. Raises :class:`OnlineStoreConfigError` (one line naming the
    variable) for an unknown type, or ``redis`` without ``REDIS_URL``: callers check this at
    start-up, before anything is opened."""
    kind = settings.online_type or ("redis" if settings.redis_url else "sqlite")  # "" = unset
    if kind not in BACKENDS:
        raise OnlineStoreConfigError(f"FEAST_ONLINE_TYPE={kind!r} is not a known online store type "
                                     f"(one of: {', '.join(sorted(BACKENDS))})")
    if kind == "redis" and not settings.redis_url:
        raise OnlineStoreConfigError("FEAST_ONLINE_TYPE=redis needs REDIS_URL (redis://host:port/db)")
    return kind


def backend_class(settings: FeatureStoreSettings) -> type[OnlineBackend]:
    """The backend class of the configured store (validated by :func:`online_store_type`)."""
    return BACKENDS[online_store_type(settings)]
