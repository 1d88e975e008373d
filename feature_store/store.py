"""Build a Feast ``FeatureStore`` from :class:`common.settings.FeatureStoreSettings`.

The ``RepoConfig`` is built in code (no templated ``feature_store.yaml``): registry file under
``settings.data_dir``, the Redis online store when ``REDIS_URL`` is set and Feast's embedded
SQLite store (``data_dir/online.db``) otherwise, file (parquet) offline store. Feature
definitions come from :mod:`feature_store.repo.definitions` with absolute FileSource paths under
``settings.offline_dir``.

``apply`` registers the definitions; ``materialize`` copies the latest offline rows of every
view into the online store. Both are plain functions so that other steps (the online reader's
post-materialise hook) can wrap or extend them.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from common.settings import FeatureStoreSettings
from feature_store.repo.definitions import FEATURE_VIEWS, build_definitions

log = logging.getLogger(__name__)

# The MovieLens ratings are from 1997-98; materialise everything from well before that.
MATERIALIZE_START = datetime(1990, 1, 1, tzinfo=UTC)


def redis_connection_string(url: str) -> str:
    """``redis://[:password@]host:port/db`` -> Feast's ``host:port,db=N[,password=...,ssl=true]``."""
    u = urlparse(url)
    if u.scheme not in ("redis", "rediss"):
        raise ValueError(f"REDIS_URL must start with redis:// or rediss://, got {url!r}")
    host = u.hostname or "localhost"
    parts = [f"{host}:{u.port or 6379}"]
    db = (u.path or "/").lstrip("/") or parse_qs(u.query).get("db", ["0"])[0]
    parts.append(f"db={int(db)}")
    if u.username and u.password:
        parts.append(f"username={u.username}")
    if u.password:
        parts.append(f"password={u.password}")
    if u.scheme == "rediss":
        parts.append("ssl=true")
    return ",".join(parts)


def repo_config(settings: FeatureStoreSettings):
    from feast.infra.online_stores.redis import RedisOnlineStoreConfig
    from feast.infra.online_stores.sqlite import SqliteOnlineStoreConfig
    from feast.repo_config import RegistryConfig, RepoConfig

    data_dir = Path(settings.data_dir).resolve()
    if settings.redis_url:
        online = RedisOnlineStoreConfig(connection_string=redis_connection_string(settings.redis_url))
    else:
        online = SqliteOnlineStoreConfig(path=str(data_dir / "online.db"))
    return RepoConfig(
        project=settings.project,
        provider="local",
        registry=RegistryConfig(path=str(data_dir / "registry.db"), cache_ttl_seconds=60),
        online_store=online,
        offline_store={"type": "file"},
        repo_path=Path(settings.repo_path).resolve(),
        entity_key_serialization_version=3,
    )


def feature_store(settings: FeatureStoreSettings):
    """A ``feast.FeatureStore`` for these settings (creates ``data_dir`` if needed)."""
    from feast import FeatureStore

    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    return FeatureStore(config=repo_config(settings))


def apply(settings: FeatureStoreSettings, store=None):
    """Register entities, the push source and the feature views (idempotent)."""
    store = store or feature_store(settings)
    defs = build_definitions(Path(settings.offline_dir))
    missing = [f for _, f, _ in FEATURE_VIEWS.values() if not (Path(settings.offline_dir) / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"offline sources missing in {settings.offline_dir}: {', '.join(missing)} (run `python -m models run`)"
        )
    store.apply(defs.objects())
    return store


def materialize(
    settings: FeatureStoreSettings,
    end: datetime | None = None,
    views: list[str] | None = None,
    store=None,
):
    """Load the latest row per entity of every view (or ``views``) into the online store."""
    store = store or feature_store(settings)
    end = end or datetime.now(UTC)
    store.materialize(start_date=MATERIALIZE_START, end_date=end, feature_views=views)
    from feature_store.reader import publish_item_snapshot  # post-materialise hook of the online reader
    publish_item_snapshot(settings, store=store, views=views)
    return store
