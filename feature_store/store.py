"""The feature store jobs: ``apply`` registers the definitions, ``materialize`` copies the latest
offline rows of every view into the online store and then runs the online reader's
post-materialise hook (:func:`feature_store.reader.publish_item_snapshot`).

Feature definitions come from :mod:`feature_store.repo.definitions` with absolute FileSource
paths under ``settings.offline_dir``; the ``feast.FeatureStore`` itself is built by
:mod:`feature_store.feast_store` (re-exported here: ``store.feature_store``,
``store.repo_config`` are what callers have always imported). Both jobs are plain functions so
that other steps can wrap or extend them.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

from common.settings import FeatureStoreSettings
from feature_store.backends.redis import redis_connection_string
from feature_store.feast_store import feature_store, repo_config
from feature_store.reader import publish_item_snapshot
from feature_store.repo.definitions import FEATURE_VIEWS, build_definitions

__all__ = ["MATERIALIZE_START", "apply", "feature_store", "materialize", "redis_connection_string", "repo_config"]

log = logging.getLogger(__name__)

# The MovieLens ratings are from 1997-98; materialise everything from well before that.
MATERIALIZE_START = datetime(1990, 1, 1, tzinfo=UTC)


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
    publish_item_snapshot(settings, store=store, views=views)  # post-materialise hook of the online reader
    return store
