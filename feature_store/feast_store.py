"""Settings -> Feast: the ``RepoConfig`` built in code and the ``feast.FeatureStore`` on it.

No templated ``feature_store.yaml``: registry file under ``settings.data_dir``, the online
store of the configured backend (``FEAST_ONLINE_TYPE``, see :mod:`feature_store.backends`:
Redis at ``REDIS_URL``, or Feast's embedded SQLite ``data_dir/online.db``), file (parquet)
offline store. This module sits below both :mod:`feature_store.reader` and
:mod:`feature_store.store`, which is what keeps them free of an import cycle. Feast is imported
when a store is built, never at import.
"""

from __future__ import annotations

from pathlib import Path

from common.settings import FeatureStoreSettings
from feature_store.backends import backend_class


def repo_config(settings: FeatureStoreSettings):
    from feast.repo_config import RegistryConfig, RepoConfig

    data_dir = Path(settings.data_dir).resolve()
    return RepoConfig(
        project=settings.project,
        provider="local",
        registry=RegistryConfig(path=str(data_dir / "registry.db"), cache_ttl_seconds=60),
        online_store=backend_class(settings).feast_online_config(settings, data_dir),
        offline_store={"type": "file"},
        repo_path=Path(settings.repo_path).resolve(),
        entity_key_serialization_version=3,
    )


def feature_store(settings: FeatureStoreSettings):
    """A ``feast.FeatureStore`` for these settings (creates ``data_dir`` if needed)."""
    from feast import FeatureStore

    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    return FeatureStore(config=repo_config(settings))
