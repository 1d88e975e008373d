"""Feast 0.67's online-store layout, read directly (Redis hashes and the embedded SQLite tables).

**Version-coupled.** Everything here mirrors private details of ``feast==0.67.0`` (pinned in
requirements/serving.txt). ``tests/feature_store/test_reader_contract.py`` proves, on a real
Redis and a real SQLite store, that :mod:`feature_store.reader` returns exactly what Feast's
SDK (``FeatureStore.get_online_features``) returns for the same entities; run it before
changing the Feast pin.

Layout (``feast/infra/online_stores/{redis,sqlite,helpers}.py``,
``feast/infra/key_encoding_utils.py``, entity key serialisation version 3):

* entity key bytes = ``<I n_keys=1> <I STRING=2> <I len> join_key utf8 <I INT64=4> <I 8> <q value>``
  (``serialize_entity_key``).
* **Redis**: one hash per entity key, Redis key = entity key bytes + project name (utf8). All
  views of an entity share the hash: field ``mmh3_32_le("<view>:<feature>")`` (4 bytes, Feast
  ``_mmh3``) holds the serialised ``feast.types.Value`` proto; field ``_ts:<view>`` holds the
  serialised ``google.protobuf.Timestamp`` of the row's event time. The writer keeps the newer
  event time (an older push is dropped).
* **SQLite**: one table per view, ``"<project>_<view>"``, one row per (entity_key, feature):
  ``entity_key BLOB, feature_name TEXT, value BLOB (Value proto), event_ts timestamp, ...``.
  The writer upserts without comparing event times.

What the SDK makes of it (``OnlineStore.get_online_features`` → ``_populate_response_from_feature_data``):
an entity without a row, or a feature without a value, comes back as ``None``. **TTL is not
applied on online reads** for either store: a batch/push row older than the view's ``ttl`` is
returned as it is (only the opt-in pre-computed FeatureService path marks
``OUTSIDE_MAX_AGE``, and even then it returns the value). TTL only bounds materialisation
windows and offline point-in-time joins. The reader mirrors this by default and offers
``enforce_ttl=True`` to treat rows older than their view's TTL as missing.

Nothing here imports Feast at module import (``import feast`` costs seconds and imports torch
when it is installed); :func:`layout_from_feature_views` imports Feast's own helpers at start-up
so that field hashes and key bytes come from Feast itself.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

FEAST_VERSION = "0.67.0"  # the version whose layout this module mirrors (see module docstring)
ENTITY_KEY_SERIALIZATION_VERSION = 3
_VALUE_TYPE_STRING = 2
_VALUE_TYPE_INT64 = 4

# Feast Value oneof field -> (python kind, numpy dtype for arrays)
_SCALAR_FIELDS = {
    "float_val": "float", "double_val": "float", "int32_val": "int", "int64_val": "int",
    "string_val": "str", "bool_val": "bool", "unix_timestamp_val": "int", "bytes_val": "bytes",
}
_LIST_FIELDS = {
    "float_list_val": np.float32, "double_list_val": np.float64, "int32_list_val": np.int32,
    "int64_list_val": np.int64, "bool_list_val": np.bool_, "unix_timestamp_list_val": np.int64,
    "string_list_val": object, "bytes_list_val": object,
}


class LayoutError(RuntimeError):
    """The Feast definitions cannot be read with this layout (unsupported type or key)."""


@dataclass(frozen=True)
class FeatureSpec:
    view: str
    name: str
    ref: str             # "<view>:<feature>"
    kind: str            # "float" | "int" | "str" | "bool" | "array"
    array_dtype: Any     # numpy dtype of an array feature (None for scalars)
    redis_field: bytes   # Feast _mmh3("<view>:<feature>")


@dataclass(frozen=True)
class ViewSpec:
    name: str
    entity: str
    join_key: str
    ttl_seconds: float   # 0 = never expires (Feast's ttl=0 / None)
    features: tuple[FeatureSpec, ...]
    ts_field: bytes      # b"_ts:<view>"

    @property
    def refs(self) -> list[str]:
        return [f.ref for f in self.features]


@dataclass(frozen=True)
class Layout:
    """The online layout of one Feast project: views grouped by entity, key encoders."""

    project: str
    views: dict[str, ViewSpec]
    join_keys: dict[str, str] = field(default_factory=dict)  # entity -> join key

    def views_of(self, entity: str) -> list[ViewSpec]:
        return [v for v in self.views.values() if v.entity == entity]

    def entity_prefix(self, entity: str) -> bytes:
        """Entity key bytes up to (not including) the INT64 value."""
        jk = self.join_keys[entity].encode("utf8")
        return struct.pack("<III", 1, _VALUE_TYPE_STRING, len(jk)) + jk + struct.pack(
            "<II", _VALUE_TYPE_INT64, 8)

    def entity_key(self, entity: str, value: int) -> bytes:
        """Feast ``serialize_entity_key`` (v3) for an INT64 join key."""
        return self.entity_prefix(entity) + struct.pack("<q", value)

    def redis_key(self, entity: str, value: int) -> bytes:
        """Feast ``_redis_key``: entity key bytes + project."""
        return self.entity_key(entity, value) + self.project.encode("utf8")

    def sqlite_table(self, view: str) -> str:
        """Feast ``_table_id`` (no online feature-view versioning)."""
        return f"{self.project}_{view}"


def _kind_of(dtype) -> tuple[str, Any]:
    """Feast type (``feast.types``) -> (kind, numpy dtype for arrays)."""
    from feast.types import Array, PrimitiveFeastType

    if isinstance(dtype, Array):
        base = dtype.base_type
        table = {
            PrimitiveFeastType.FLOAT32: np.float32, PrimitiveFeastType.FLOAT64: np.float64,
            PrimitiveFeastType.INT32: np.int32, PrimitiveFeastType.INT64: np.int64,
            PrimitiveFeastType.BOOL: np.bool_, PrimitiveFeastType.STRING: object,
        }
        if base not in table:
            raise LayoutError(f"unsupported Feast array type {dtype}")
        return "array", table[base]
    table = {
        PrimitiveFeastType.FLOAT32: "float", PrimitiveFeastType.FLOAT64: "float",
        PrimitiveFeastType.INT32: "int", PrimitiveFeastType.INT64: "int",
        PrimitiveFeastType.STRING: "str", PrimitiveFeastType.BOOL: "bool",
    }
    if dtype not in table:
        raise LayoutError(f"unsupported Feast type {dtype}")
    return table[dtype], None


def layout_from_feature_views(feature_views, project: str, entity_key_serialization_version: int = 3) -> Layout:
    """Build the layout from Feast ``FeatureView`` objects (from the registry at start-up).

    Field hashes are computed with Feast's own ``_mmh3`` and the key encoder is checked against
    Feast's ``serialize_entity_key`` once, so a layout change in Feast fails here loudly.
    """
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.infra.online_stores.helpers import _mmh3
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    if entity_key_serialization_version != ENTITY_KEY_SERIALIZATION_VERSION:
        raise LayoutError(f"entity_key_serialization_version {entity_key_serialization_version} is not supported (need 3)")
    views: dict[str, ViewSpec] = {}
    join_keys: dict[str, str] = {}
    for fv in sorted(feature_views, key=lambda v: v.name):
        if len(fv.entity_columns) != 1:
            raise LayoutError(f"feature view {fv.name}: only single-entity views are supported")
        col = fv.entity_columns[0]
        from feast.types import PrimitiveFeastType

        if col.dtype != PrimitiveFeastType.INT64:
            raise LayoutError(f"feature view {fv.name}: join key {col.name} must be Int64, is {col.dtype}")
        entity = fv.entities[0]
        if join_keys.setdefault(entity, col.name) != col.name:
            raise LayoutError(f"entity {entity} has two join keys")
        feats = []
        for f in fv.features:
            kind, adt = _kind_of(f.dtype)
            feats.append(FeatureSpec(view=fv.name, name=f.name, ref=f"{fv.name}:{f.name}", kind=kind,
                                     array_dtype=adt, redis_field=_mmh3(f"{fv.name}:{f.name}")))
        ttl = fv.ttl.total_seconds() if fv.ttl else 0.0
        views[fv.name] = ViewSpec(name=fv.name, entity=entity, join_key=col.name, ttl_seconds=ttl,
                                  features=tuple(feats), ts_field=f"_ts:{fv.name}".encode())
    layout = Layout(project=project, views=views, join_keys=join_keys)
    for entity, jk in join_keys.items():  # guard the hand-written key encoder against Feast's
        for probe in (0, 1, -7, 2**40 + 3):
            ours = layout.entity_key(entity, probe)
            theirs = serialize_entity_key(EntityKey(join_keys=[jk], entity_values=[Value(int64_val=probe)]),
                                          entity_key_serialization_version=3)
            if ours != theirs:
                raise LayoutError(f"Feast's entity key encoding changed (feast {FEAST_VERSION} expected)")
    return layout


class ValueDecoder:
    """Serialised Feast ``Value`` / ``Timestamp`` protos -> Python / NumPy values.

    Uses Feast's generated classes (upb C parser). Returns ``None`` for an absent or empty value,
    which is what the SDK's ``to_dict()`` shows for it.
    """

    def __init__(self) -> None:
        from feast.protos.feast.types.Value_pb2 import Value
        from google.protobuf.timestamp_pb2 import Timestamp

        self._value = Value
        self._ts = Timestamp

    def value(self, raw: bytes | None, spec: FeatureSpec) -> Any:
        if not raw:
            return None
        v = self._value.FromString(raw)
        which = v.WhichOneof("val")
        if which is None or which == "null_val":
            return None
        if which in _LIST_FIELDS:
            vals = getattr(v, which).val
            dtype = spec.array_dtype if spec.array_dtype is not None else _LIST_FIELDS[which]
            if dtype is object:
                return np.array(list(vals), dtype=object)
            return np.array(vals, dtype=dtype)
        if which not in _SCALAR_FIELDS:
            raise LayoutError(f"{spec.ref}: unsupported Feast value field {which}")
        x = getattr(v, which)
        if spec.kind == "float":
            return float(x)
        if spec.kind == "int":
            return int(x)
        return x

    def timestamp(self, raw: bytes | None) -> float | None:
        """Event time in epoch seconds (``None`` when absent)."""
        if not raw:
            return None
        t = self._ts.FromString(raw)
        return t.seconds + t.nanos / 1e9


def default_for(spec: FeatureSpec, length: int | None = None) -> Any:
    """The value a missing feature gets: 0 / 0.0 / "" / False / zeros(length) (empty if unknown)."""
    if spec.kind == "array":
        if spec.array_dtype is object:
            return np.array([""] * (length or 0), dtype=object)
        return np.zeros(length or 0, dtype=spec.array_dtype)
    return {"float": 0.0, "int": 0, "str": "", "bool": False}[spec.kind]
