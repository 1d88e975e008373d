"""Feast objects (entities, sources, feature views) for the ``recsys`` project.

The objects are built by :func:`build_definitions` from the offline parquet folder instead of
living at module level: the FileSource paths are then absolute paths resolved from
``FeatureStoreSettings.offline_dir`` (works from any cwd and inside a container) and importing
this module has no side effects. ``feature_store.store.apply`` registers them.

:data:`FEATURE_VIEWS` is the plain-Python schema (view -> [(feature, Feast type name)]); it is
what docs/contracts.md describes, and the pipeline and the online reader can use it without
constructing Feast objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

PROJECT = "recsys"
PUSH_SOURCE = "user_context_push"
USER_CONTEXT_TTL = timedelta(days=1)  # real-time context: short-lived
N_RECENT = 20  # user_context:recent_item_ids holds at most this many ids, most recent first

# view -> (entity, parquet file, [(feature, type)]); type names: Float32, Int64, String,
# Array(Float32), Array(Int64).
FEATURE_VIEWS: dict[str, tuple[str, str, list[tuple[str, str]]]] = {
    "user_profile": ("user", "user_profile.parquet", [
        ("age", "Float32"), ("age_bucket", "Int64"), ("gender", "Int64"), ("occupation", "Int64"),
    ]),
    "user_aggregates": ("user", "user_aggregates.parquet", [
        ("n_interactions", "Float32"), ("mean_rating", "Float32"), ("genre_affinity", "Array(Float32)"),
    ]),
    "item_profile": ("item", "item_profile.parquet", [
        ("year", "Float32"), ("genres", "Array(Float32)"), ("title", "String"),
    ]),
    "item_aggregates": ("item", "item_aggregates.parquet", [
        ("popularity", "Float32"), ("n_ratings", "Float32"), ("mean_rating", "Float32"),
    ]),
    "user_context": ("user", "user_context.parquet", [
        ("recent_item_ids", "Array(Int64)"), ("recent_count_1h", "Int64"), ("recent_count_24h", "Int64"),
    ]),
    # Serving-only (a filter, not a model input): every item the user has interacted with, so that
    # retrieval never recommends them again. One row per user, stamped at their last interaction.
    "user_seen": ("user", "user_seen.parquet", [
        ("seen_item_ids", "Array(Int64)"),
    ]),
}
ENTITY_JOIN_KEYS = {"user": "user_id", "item": "item_id"}


def feature_views_schema() -> dict[str, dict]:
    """:data:`FEATURE_VIEWS` as JSON (recorded in the bundle manifest: the features it was built on)."""
    return {view: {"entity": entity, "source": fname, "features": [[n, t] for n, t in feats]}
            for view, (entity, fname, feats) in FEATURE_VIEWS.items()}


def feature_refs(view: str) -> list[str]:
    """``["view:feature", ...]`` for one feature view, in schema order."""
    return [f"{view}:{name}" for name, _ in FEATURE_VIEWS[view][2]]


@dataclass(frozen=True)
class Definitions:
    entities: list
    feature_views: list
    push_sources: list

    def objects(self) -> list:
        return [*self.entities, *self.push_sources, *self.feature_views]


def _feast_type(name: str):
    from feast.types import Array, Float32, Int64, String

    scalars = {"Float32": Float32, "Int64": Int64, "String": String}
    if name.startswith("Array(") and name.endswith(")"):
        return Array(scalars[name[6:-1]])
    return scalars[name]


def build_definitions(offline_dir: Path) -> Definitions:
    """Entities, sources and feature views, with FileSources under ``offline_dir`` (absolute)."""
    from feast import Entity, FeatureView, Field, FileSource, PushSource, ValueType

    offline_dir = Path(offline_dir).resolve()
    entities = {
        "user": Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64,
                       description="A MovieLens user (integer id)."),
        "item": Entity(name="item", join_keys=["item_id"], value_type=ValueType.INT64,
                       description="A MovieLens movie (integer id)."),
    }

    def file_source(view: str, fname: str) -> FileSource:
        return FileSource(
            name=f"{view}_source",
            path=str(offline_dir / fname),
            timestamp_field="event_timestamp",
            created_timestamp_column="created",
        )

    views = []
    push_sources = []
    for view, (entity, fname, features) in FEATURE_VIEWS.items():
        source = file_source(view, fname)
        ttl = timedelta(0)  # batch views never expire (the ratings are from 1997-98)
        if view == "user_context":
            source = PushSource(name=PUSH_SOURCE, batch_source=source)
            push_sources.append(source)
            ttl = USER_CONTEXT_TTL
        views.append(FeatureView(
            name=view,
            entities=[entities[entity]],
            ttl=ttl,
            schema=[Field(name=n, dtype=_feast_type(t)) for n, t in features],
            source=source,
            online=True,
        ))
    return Definitions(entities=list(entities.values()), feature_views=views, push_sources=push_sources)
