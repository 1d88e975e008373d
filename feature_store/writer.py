"""The fast online writer: user rows written straight into Feast 0.67's Redis online layout.

``FeatureStore.push`` costs ~8 ms per row here (DataFrame -> Arrow -> per-value protobuf
conversion -> a read-then-write round trip per batch); the events consumer
(``services.events``) rewrites the ``user_context`` and ``user_seen`` rows of every user an
event batch touched and must sustain thousands of events a second, so it writes the rows itself,
in the layout :mod:`feature_store.online_layout` describes: Redis key
``Layout.redis_key("user", uid)``, field ``FeatureSpec.redis_field`` -> serialised
``feast.types.Value`` (Feast's own generated class; ``int64_list_val`` for ``Array(Int64)``,
``int64_val`` for ``Int64``, ...), field ``_ts:<view>`` -> serialised
``google.protobuf.Timestamp`` of the row's event time (microseconds, as Feast's
``Timestamp.FromDatetime`` of a pandas timestamp gives).

Differences from Feast's writer, on purpose: the row is written whatever the stored event time
(the caller passes ``max(stored, new)`` after reading the row, see :meth:`UserRowWriter.read`);
no key TTL (the repo's Redis online store config sets none).

**Version-coupled** like the reader: ``tests/feature_store/test_writer_contract.py`` checks on a
real Redis that the bytes equal what ``store.push`` / ``write_to_online_store`` write for the same
values and that Feast's SDK and :mod:`feature_store.reader` read the rows back exactly. Nothing
here imports Feast at module import; :meth:`UserRowWriter.from_feature_views` does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from feature_store.online_layout import Layout, LayoutError, ValueDecoder, ViewSpec


@dataclass(frozen=True)
class UserRow:
    """One row of one user view: feature name -> value, event time in epoch seconds."""

    user_id: int
    view: str
    values: Mapping[str, Any]
    event_ts: float


def _value_field(dtype) -> str:
    """Feast type -> the ``Value`` oneof field Feast serialises it into (``INT64_LIST`` ->
    ``int64_list_val``)."""
    return dtype.to_value_type().name.lower() + "_val"


def timestamp_parts(ts: float) -> tuple[int, int]:
    """Epoch seconds -> (seconds, nanos) at microsecond resolution (what Feast stores for a
    pandas / datetime event time)."""
    us = round(float(ts) * 1_000_000)
    seconds, us = divmod(us, 1_000_000)
    return int(seconds), int(us) * 1000


class UserRowWriter:
    """Encodes and writes rows of the user views in Feast's Redis layout."""

    def __init__(self, layout: Layout, value_fields: Mapping[str, str]) -> None:
        from feast.protos.feast.types.Value_pb2 import Value
        from google.protobuf.timestamp_pb2 import Timestamp

        self.layout = layout
        self._Value = Value
        self._Timestamp = Timestamp
        self._decoder = ValueDecoder()
        self.views: dict[str, ViewSpec] = {v.name: v for v in layout.views_of("user")}
        known = set(Value.DESCRIPTOR.fields_by_name)
        self._fields: dict[str, str] = {}  # ref -> Value field
        for v in self.views.values():
            for spec in v.features:
                name = value_fields.get(spec.ref)
                if name is None or name not in known:
                    raise LayoutError(f"{spec.ref}: no Feast Value field for it ({name!r})")
                self._fields[spec.ref] = name

    @classmethod
    def from_feature_views(cls, feature_views, project: str,
                           entity_key_serialization_version: int = 3) -> UserRowWriter:
        from feature_store.online_layout import layout_from_feature_views

        layout = layout_from_feature_views(feature_views, project, entity_key_serialization_version)
        fields = {f"{fv.name}:{f.name}": _value_field(f.dtype) for fv in feature_views for f in fv.features}
        return cls(layout, fields)

    @classmethod
    def from_store(cls, store, project: str) -> UserRowWriter:
        """From a ``feast.FeatureStore``'s registry (as the reader builds its layout)."""
        views = store.list_feature_views()
        if not views:
            raise LayoutError(f"the Feast registry of project {project!r} has no feature views (run `make feature-apply`)")
        return cls.from_feature_views(views, project, store.config.entity_key_serialization_version)

    # -- encoding ----------------------------------------------------------------------------
    def encode_value(self, ref: str, x: Any) -> bytes:
        field = self._fields[ref]
        v = self._Value()
        if field.endswith("_list_val"):
            lst = getattr(v, field)
            lst.SetInParent()  # an empty list is a present, empty value (as Feast writes it)
            vals = np.asarray(x).reshape(-1).tolist() if x is not None else []
            lst.val.extend(vals)
        elif field in ("int64_val", "int32_val", "unix_timestamp_val"):
            setattr(v, field, int(x))
        elif field in ("float_val", "double_val"):
            setattr(v, field, float(x))
        elif field == "bool_val":
            v.bool_val = bool(x)
        else:
            setattr(v, field, x)
        return v.SerializeToString()

    def encode_timestamp(self, ts: float) -> bytes:
        seconds, nanos = timestamp_parts(ts)
        return self._Timestamp(seconds=seconds, nanos=nanos).SerializeToString()

    def encode(self, row: UserRow) -> tuple[bytes, dict[bytes, bytes]]:
        """(Redis key, {field: bytes}) of one row; every feature of the view must be given."""
        view = self.views.get(row.view)
        if view is None:
            raise KeyError(f"{row.view!r} is not a user feature view ({sorted(self.views)})")
        missing = [s.name for s in view.features if s.name not in row.values]
        if missing:
            raise KeyError(f"{row.view}: no value for {', '.join(missing)}")
        mapping = {view.ts_field: self.encode_timestamp(row.event_ts)}
        for spec in view.features:
            mapping[spec.redis_field] = self.encode_value(spec.ref, row.values[spec.name])
        return self.layout.redis_key("user", int(row.user_id)), mapping

    # -- I/O ---------------------------------------------------------------------------------
    def write(self, client, rows: Iterable[UserRow]) -> int:
        """``HSET`` every row; ``client`` is a redis-py client (one pipeline, executed here) or a
        pipeline (queued, the caller executes). Returns the number of rows."""
        from redis.client import Pipeline
        from redis.cluster import ClusterPipeline

        own = not isinstance(client, (Pipeline, ClusterPipeline))
        pipe = client.pipeline(transaction=False) if own else client
        n = 0
        for row in rows:
            key, mapping = self.encode(row)
            pipe.hset(key, mapping=mapping)
            n += 1
        if own:
            pipe.execute()
        return n

    def read(self, client, user_ids: Sequence[int], views: Sequence[str]
             ) -> list[dict[str, tuple[dict[str, Any] | None, float | None]]]:
        """Per user: view -> (feature values or None when the row is absent, event time or None).
        One pipelined ``HMGET`` per user."""
        specs = [self.views[v] for v in views]
        fields = self.fields_of(views)
        with client.pipeline(transaction=False) as pipe:
            for uid in user_ids:
                pipe.hmget(self.layout.redis_key("user", int(uid)), fields)
            replies = pipe.execute()
        return [self.decode(reply, specs) for reply in replies]

    def decode(self, raw: Sequence[bytes | None], specs: Sequence[ViewSpec]):
        """An ``HMGET`` reply over ``specs``' fields (features then ts, per view) -> as :meth:`read`."""
        out = {}
        pos = 0
        for v in specs:
            n = len(v.features)
            vals, ts_raw = raw[pos: pos + n], raw[pos + n]
            pos += n + 1
            if ts_raw is None and all(x is None for x in vals):
                out[v.name] = (None, None)
                continue
            out[v.name] = ({s.name: self._decoder.value(x, s) for s, x in zip(v.features, vals, strict=True)},
                           self._decoder.timestamp(ts_raw))
        return out

    def fields_of(self, views: Sequence[str]) -> list[bytes]:
        """The hash fields :meth:`decode` expects, in order."""
        out: list[bytes] = []
        for name in views:
            v = self.views[name]
            out += [f.redis_field for f in v.features] + [v.ts_field]
        return out
