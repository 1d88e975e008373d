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
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from common.settings import FeatureStoreSettings
from feature_store.backends.redis import redis_connection_string
from feature_store.feast_store import feature_store, repo_config
from feature_store.reader import publish_item_snapshot
from feature_store.repo.definitions import FEATURE_VIEWS, build_definitions

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["MATERIALIZE_START", "MaterializeReport", "apply", "feature_store", "materialize", "materialize_batched",
           "redis_connection_string", "repo_config"]

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
    publish_item_snapshot(settings, store=store, views=views, materialized_until=end)  # the online reader's hook
    return store


@dataclass
class ViewWrite:
    view: str
    rows: int
    seconds: float


@dataclass
class MaterializeReport:
    views: list[ViewWrite]
    snapshot_version: str | None
    snapshot_seconds: float
    seconds: float

    @property
    def rows(self) -> int:
        return sum(v.rows for v in self.views)


def latest_rows(path: Path, join_key: str, end: datetime) -> pd.DataFrame:
    """The latest row per entity with ``event_timestamp <= end`` (what ``materialize`` selects)."""
    import pandas as pd

    df = pd.read_parquet(path)
    df = df[df["event_timestamp"] <= pd.Timestamp(end)]
    order = ["event_timestamp", "created"] if "created" in df.columns else ["event_timestamp"]
    df = df.sort_values([join_key, *order], kind="stable")
    return df.drop_duplicates(join_key, keep="last").reset_index(drop=True)


def materialize_batched(
    settings: FeatureStoreSettings,
    *,
    batch_rows: int = 50_000,
    end: datetime | None = None,
    views: list[str] | None = None,
    store=None,
    progress: Callable[[str, int, int], None] | None = None,
) -> MaterializeReport:
    """:func:`materialize` for large catalogs: the same rows (the latest per entity up to
    ``end``), written through Feast's own write path (``FeatureStore.write_to_online_store``: the
    online layout is Feast's) in batches of ``batch_rows``, so memory is bounded by a batch's
    protobufs rather than the whole view's, and progress is visible (``progress(view, done,
    total)`` after each batch). Then the item snapshot is published, as :func:`materialize` does."""
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
    store = store or feature_store(settings)
    end = end or datetime.now(UTC)
    offline = Path(settings.offline_dir)
    t_start = time.perf_counter()
    written: list[ViewWrite] = []
    for view, (entity, fname, _features) in FEATURE_VIEWS.items():
        if views is not None and view not in views:
            continue
        t = time.perf_counter()
        df = latest_rows(offline / fname, f"{entity}_id", end)
        total = len(df)
        if progress is not None:
            progress(view, 0, total)
        for start in range(0, total, batch_rows):
            store.write_to_online_store(view, df.iloc[start: start + batch_rows])
            if progress is not None:
                progress(view, min(start + batch_rows, total), total)
        written.append(ViewWrite(view, total, time.perf_counter() - t))
        log.info("wrote %d %s rows in %.1fs", total, view, written[-1].seconds)
    t = time.perf_counter()
    version = publish_item_snapshot(settings, store=store, views=views, materialized_until=end)
    return MaterializeReport(written, version, time.perf_counter() - t, time.perf_counter() - t_start)
