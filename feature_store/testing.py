"""A private Feast project over the pipeline's offline parquet, for tests and benchmarks.

Feast 0.67's local materialisation of the full offline history (49k rows per user view) takes
~40 s here, nearly all of it dask tokenising the array-valued columns. Materialisation keeps only
the latest row per entity, so :func:`latest_rows_copy` writes exactly those rows (latest
``event_timestamp``, then latest ``created``) to a scratch folder first: the online store ends up
with the same rows, in a few seconds. Nothing is synthesised; a missing source fails clearly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common.settings import FeatureStoreSettings


class OfflineDataMissing(FileNotFoundError):
    """The pipeline's parquet under ``data/features/`` is not there."""


def latest_rows_copy(src: Path, dst: Path) -> Path:
    """Copy every view's parquet from ``src`` to ``dst``, keeping the latest row per entity."""
    import pandas as pd

    from feature_store.repo.definitions import ENTITY_JOIN_KEYS, FEATURE_VIEWS

    src, dst = Path(src), Path(dst)
    missing = [f for _, f, _ in FEATURE_VIEWS.values() if not (src / f).is_file()]
    if missing:
        raise OfflineDataMissing(
            f"offline feature parquet missing in {src}: {', '.join(missing)} "
            "(the pipeline writes them: run `make artifacts`, which `make test` does first)")
    dst.mkdir(parents=True, exist_ok=True)
    for entity, fname, _ in FEATURE_VIEWS.values():
        key = ENTITY_JOIN_KEYS[entity]
        df = pd.read_parquet(src / fname)
        df = df.sort_values(["event_timestamp", "created"], kind="stable").groupby(key, sort=False).tail(1)
        df.reset_index(drop=True).to_parquet(dst / fname)
    return dst


@dataclass
class PrivateFeast:
    settings: FeatureStoreSettings
    store: object  # feast.FeatureStore


def private_feast(workdir: Path, redis_url: str | None, project: str = "recsys",
                  offline_dir: Path | None = None) -> PrivateFeast:
    """``feast apply`` + materialise (with the reader's snapshot hook) into a private registry.

    ``redis_url=None``: Feast's embedded SQLite store under ``workdir``.
    """
    from feature_store import store as fs

    src = Path(offline_dir) if offline_dir else FeatureStoreSettings().offline_dir
    offline = latest_rows_copy(src, Path(workdir) / "features")
    settings = FeatureStoreSettings(redis_url=redis_url, data_dir=Path(workdir) / "feast",
                                    offline_dir=offline, project=project)
    store = fs.apply(settings)
    fs.materialize(settings, store=store)
    return PrivateFeast(settings=settings, store=store)
