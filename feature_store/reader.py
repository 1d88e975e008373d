"""The fast online feature reader: Feast's own online layout, read directly.

Feast's SDK (``FeatureStore.get_online_features``) costs 46-89 ms for 1 user + 500 items here,
almost all of it per-value protobuf conversion in Python. The services need the same values in
well under a millisecond, so this module reads the rows Feast wrote, itself:

* **users** (``user_profile``, ``user_aggregates``, ``user_context``): every view of an entity
  lives in one Redis hash, so a user is **one** ``HMGET`` (profile + aggregates + pushed context
  in a single round trip), ~13 small protobufs decoded. A ``store.push("user_context_push", df)``
  is therefore visible on the very next call: there is no cache on the user path.
* **items** (``item_profile``, ``item_aggregates``): served from an in-process columnar table
  (:mod:`feature_store.item_table`): ``searchsorted`` + a NumPy gather per feature. The table is
  a snapshot of Feast's item rows published by :func:`publish_item_snapshot`, the
  post-materialise hook called at the end of ``feature_store.store.materialize``. Each
  ``item_features`` call checks the current snapshot version and swaps in the new table when it
  changed. Redis: the version is read in the same pipeline as the user's hash, so a request
  (user, then items) is one round trip; an ``item_features`` call without a user read in the
  last second does its own ``GET``. SQLite: ``PRAGMA data_version``, which only touches the
  database when another connection committed. If no snapshot was ever
  published (Feast materialised by other means), the reader builds the table by scanning
  Feast's item rows at start-up and warns that it cannot see later item updates.
* **SQLite** (Feast's embedded store, the default without ``REDIS_URL``): the same reader over
  Feast's ``<project>_<view>`` tables; users with one ``UNION ALL`` query.

Semantics match the SDK exactly (guarded by ``tests/feature_store/test_reader_contract.py``):
where the SDK returns ``None`` the reader returns the feature's default (0, 0.0, "", zeros or
an empty array; per-ref overrides via ``defaults=``), lists the ref in ``UserFeatures.missing``
/ flags the item in ``ItemFeatures.missing``, and increments
``recsys_missing_features_total{feature_view}`` by the number of defaulted values. Feast 0.67
does **not** apply TTLs on online reads (see :mod:`feature_store.online_layout`); the reader
mirrors that by default, and ``enforce_ttl=True`` treats rows older than their view's TTL
(``user_context``: 1 day) as missing instead.

The layout is **version-coupled to feast==0.67.0** (pinned in requirements/serving.txt); the
contract test fails when a Feast upgrade changes it. Feature definitions (views, features,
types, TTLs) come from the Feast registry at start-up, not from a second hand-written list.

Redis client: redis-py's synchronous client with the hiredis parser. The services are
CPU-bound single processes: a sub-millisecond loopback round trip does not pay for an event
loop hop, and the sync client is also callable from executor threads (its pool is
thread-safe). Nothing here imports Feast or torch at module import; :func:`build_reader`
imports Feast once, at start-up, to read the registry.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from feature_store.item_table import ItemTable, build_item_table, pack_table, unpack_table
from feature_store.online_layout import Layout, LayoutError, ValueDecoder, ViewSpec, default_for

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from common.settings import FeatureStoreSettings

log = logging.getLogger(__name__)

SNAPSHOT_PART_BYTES = 16 << 20  # Redis value size of one snapshot part
SNAPSHOT_OLD_TTL_S = 600        # a replaced snapshot stays readable this long for slow loaders


# ---------------------------------------------------------------------------------------------
# results, metrics, protocol


@dataclass
class UserFeatures:
    user_id: int
    values: dict[str, Any]                 # "view:feature" -> value (default when missing)
    missing: set[str]                      # refs that got their default
    event_ts: dict[str, float | None] = field(default_factory=dict)  # view -> epoch s (None: no row)


@dataclass
class ItemFeatures:
    item_ids: np.ndarray                   # int64 [N], as asked
    values: dict[str, np.ndarray]          # ref -> [N] / [N, d] (float32, int64, object for strings)
    missing: np.ndarray                    # bool [N]: some feature of the item got its default
    missing_by_view: dict[str, np.ndarray] = field(default_factory=dict)  # view -> bool [N]


class FeatureReader(Protocol):
    def user_features(self, user_id: int) -> UserFeatures: ...
    def item_features(self, item_ids: np.ndarray) -> ItemFeatures: ...
    def close(self) -> None: ...


class FeatureReaderMetrics:
    """The reader's Prometheus metrics, registered in the caller's registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client import REGISTRY, Counter, Gauge

        registry = REGISTRY if registry is None else registry
        self.missing = Counter(
            "recsys_missing_features_total",
            "Feature values that were missing (or expired) online and got their default.",
            ["feature_view"], registry=registry)
        self.item_refreshes = Counter(
            "recsys_feature_item_table_refreshes_total",
            "Item feature table loads, by how (snapshot or scan) and outcome.",
            ["source", "outcome"], registry=registry)
        self.item_rows = Gauge(
            "recsys_feature_item_table_items", "Items in the in-process item feature table.",
            registry=registry)
        self.item_refresh_seconds = Gauge(
            "recsys_feature_item_table_refresh_seconds", "Duration of the last item table load.",
            registry=registry)


# ---------------------------------------------------------------------------------------------
# backends: where the raw rows come from


class _Backend(Protocol):
    def read_user(self, user_id: int) -> dict[str, tuple[bytes | None, list[bytes | None]]]: ...
    def snapshot_version(self) -> str | None: ...
    def load_snapshot(self, version: str) -> bytes | None: ...
    def publish_snapshot(self, blob: bytes, version: str) -> None: ...
    def scan_items(self) -> Iterator[tuple[int, str, bytes | None, list[bytes | None]]]: ...
    def close(self) -> None: ...


def _snapshot_keys(project: str) -> tuple[str, str]:
    base = f"{project}:fsreader:items"
    return f"{base}:current", base


class RedisBackend:
    """Feast's Redis layout: one hash per entity key, field per feature (see online_layout)."""

    def __init__(self, layout: Layout, client, version_max_age_s: float = 1.0) -> None:
        self.layout = layout
        self.client = client
        self.version_max_age_s = version_max_age_s
        self._seen: tuple[float, bytes | None] | None = None  # snapshot version read with the last user
        self._user_views = layout.views_of("user")
        self._user_prefix = layout.entity_prefix("user")
        self._project = layout.project.encode("utf8")
        self._user_fields: list[bytes] = []
        self._user_slices: list[tuple[ViewSpec, int, int]] = []  # view, start, stop (ts at stop)
        for v in self._user_views:
            start = len(self._user_fields)
            self._user_fields += [f.redis_field for f in v.features]
            self._user_slices.append((v, start, len(self._user_fields)))
            self._user_fields.append(v.ts_field)
        self._item_views = layout.views_of("item")
        self._pointer, self._base = _snapshot_keys(layout.project)

    def read_user(self, user_id: int):
        """One round trip: the user's hash (profile + aggregates + pushed context) and the item
        snapshot version, which the next ``item_features`` call of the request then reuses."""
        key = self._user_prefix + struct.pack("<q", user_id) + self._project
        with self.client.pipeline(transaction=False) as pipe:
            pipe.execute_command("HMGET", key, *self._user_fields)
            pipe.execute_command("GET", self._pointer)
            raw, version = pipe.execute()
        self._seen = (time.monotonic(), version)
        return {v.name: (raw[stop], raw[start:stop]) for v, start, stop in self._user_slices}

    def snapshot_version(self) -> str | None:
        """The version read with the last user (used once, if at most ``version_max_age_s`` old),
        else one ``GET``."""
        seen, self._seen = self._seen, None
        if seen is not None and time.monotonic() - seen[0] <= self.version_max_age_s:
            cur = seen[1]
        else:
            cur = self.client.execute_command("GET", self._pointer)
        return cur.decode() if cur is not None else None

    def load_snapshot(self, version: str) -> bytes | None:
        meta = self.client.get(f"{self._base}:{version}:meta")
        if meta is None:
            return None
        parts = json.loads(meta)["parts"]
        with self.client.pipeline(transaction=False) as pipe:
            for i in range(parts):
                pipe.get(f"{self._base}:{version}:{i}")
            chunks = pipe.execute()
        if any(c is None for c in chunks):
            return None
        return b"".join(chunks)

    def publish_snapshot(self, blob: bytes, version: str) -> None:
        parts = [blob[i: i + SNAPSHOT_PART_BYTES] for i in range(0, len(blob), SNAPSHOT_PART_BYTES)] or [b""]
        old = self.client.get(self._pointer)
        with self.client.pipeline(transaction=False) as pipe:
            for i, part in enumerate(parts):
                pipe.set(f"{self._base}:{version}:{i}", part)
            pipe.set(f"{self._base}:{version}:meta", json.dumps({"parts": len(parts), "bytes": len(blob)}))
            pipe.execute()
        # switch only once every part is written; keep the replaced snapshot readable for a while
        with self.client.pipeline(transaction=True) as pipe:
            pipe.set(self._pointer, version)
            if old is not None and old.decode() != version:
                for k in self.client.scan_iter(match=f"{self._base}:{old.decode()}:*", count=1000):
                    pipe.expire(k, SNAPSHOT_OLD_TTL_S)
            pipe.execute()

    def scan_items(self):
        prefix = self.layout.entity_prefix("item")
        pattern = _glob_escape(prefix) + b"*" + _glob_escape(self._project)
        keylen = len(prefix) + 8 + len(self._project)
        fields: list[bytes] = []
        slices = []
        for v in self._item_views:
            start = len(fields)
            fields += [f.redis_field for f in v.features]
            slices.append((v, start, len(fields)))
            fields.append(v.ts_field)
        batch: list[bytes] = []

        def flush():
            with self.client.pipeline(transaction=False) as pipe:
                for k in batch:
                    pipe.hmget(k, fields)
                replies = pipe.execute()
            for k, raw in zip(batch, replies, strict=True):
                (item_id,) = struct.unpack_from("<q", k, len(prefix))
                for v, start, stop in slices:
                    yield item_id, v.name, raw[stop], raw[start:stop]

        for k in self.client.scan_iter(match=pattern, count=5000):
            if len(k) != keylen or not k.startswith(prefix) or not k.endswith(self._project):
                continue
            batch.append(k)
            if len(batch) >= 2000:
                yield from flush()
                batch = []
        if batch:
            yield from flush()

    def close(self) -> None:
        self.client.close()


def _glob_escape(b: bytes) -> bytes:
    out = bytearray()
    for ch in b:
        if ch in b"*?[]\\":
            out += b"\\"
        out.append(ch)
    return bytes(out)


def _parse_sqlite_ts(value) -> float | None:
    """Feast stores event_ts as naive UTC (``datetime`` adapter -> ISO text)."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.timestamp()
    return float(value)


class SqliteBackend:
    """Feast's embedded SQLite layout: table ``<project>_<view>``, one row per (entity, feature)."""

    def __init__(self, layout: Layout, path: str) -> None:
        if not os.path.isfile(path):
            raise LayoutError(f"no Feast SQLite online store at {path} (run `make materialize`)")
        self.layout = layout
        self.path = path
        # autocommit: every SELECT sees the latest commit of Feast's writer connection
        self.conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        absent = [layout.sqlite_table(v) for v in layout.views if layout.sqlite_table(v) not in tables]
        if absent:
            raise LayoutError(f"{path} has no table {', '.join(absent)} (run `make feature-apply materialize`)")
        self._user_views = layout.views_of("user")
        self._user_prefix = layout.entity_prefix("user")
        self._user_sql = " UNION ALL ".join(
            f"SELECT {i}, feature_name, value, event_ts FROM {_quote(layout.sqlite_table(v.name))} WHERE entity_key = ?1"
            for i, v in enumerate(self._user_views))
        self._meta = _quote(f"{layout.project}__fsreader")
        self._data_version: int | None = None
        self._cached_version: str | None = None

    def read_user(self, user_id: int):
        key = self._user_prefix + struct.pack("<q", user_id)
        with self._lock:
            rows = self.conn.execute(self._user_sql, (key,)).fetchall()
        out = {}
        grouped: dict[int, list] = {}
        for i, name, val, ts in rows:
            grouped.setdefault(i, []).append((name, val, ts))
        for i, v in enumerate(self._user_views):
            got = grouped.get(i, [])
            by_name = {name: val for name, val, _ in got}
            out[v.name] = (got[-1][2] if got else None, [by_name.get(f.name) for f in v.features])
        return out

    def snapshot_version(self) -> str | None:
        with self._lock:
            (dv,) = self.conn.execute("PRAGMA data_version").fetchone()
            if dv == self._data_version:
                return self._cached_version
            try:
                row = self.conn.execute(f"SELECT value FROM {self._meta} WHERE key = 'current'").fetchone()
            except sqlite3.OperationalError:  # no snapshot was ever published
                row = None
            self._data_version, self._cached_version = dv, (row[0] if row else None)
            return self._cached_version

    def load_snapshot(self, version: str) -> bytes | None:
        with self._lock:
            row = self.conn.execute(f"SELECT value FROM {self._meta} WHERE key = ?", (f"blob:{version}",)).fetchone()
        return bytes(row[0]) if row else None

    def publish_snapshot(self, blob: bytes, version: str) -> None:
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                self.conn.execute(f"CREATE TABLE IF NOT EXISTS {self._meta} (key TEXT PRIMARY KEY, value BLOB)")
                self.conn.execute(f"DELETE FROM {self._meta} WHERE key LIKE 'blob:%'")
                self.conn.execute(f"INSERT INTO {self._meta} VALUES (?, ?)", (f"blob:{version}", blob))
                self.conn.execute(f"INSERT OR REPLACE INTO {self._meta} VALUES ('current', ?)", (version,))
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise

    def scan_items(self):
        prefix = self.layout.entity_prefix("item")
        for v in self.layout.views_of("item"):
            with self._lock:
                rows = self.conn.execute(
                    f"SELECT entity_key, feature_name, value, event_ts FROM {_quote(self.layout.sqlite_table(v.name))} "
                    "ORDER BY entity_key").fetchall()
            cur_key, ts, vals = None, None, {}
            for ek, name, val, ets in rows + [(None, None, None, None)]:
                if ek != cur_key:
                    if cur_key is not None and len(cur_key) == len(prefix) + 8 and cur_key.startswith(prefix):
                        (item_id,) = struct.unpack_from("<q", cur_key, len(prefix))
                        yield item_id, v.name, ts, [vals.get(f.name) for f in v.features]
                    cur_key, vals = ek, {}
                vals[name] = val
                ts = ets
        return

    def close(self) -> None:
        self.conn.close()


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


# ---------------------------------------------------------------------------------------------
# the reader


class OnlineFeatureReader:
    """One reader over either backend; see the module docstring."""

    def __init__(
        self,
        layout: Layout,
        backend: _Backend,
        *,
        metrics: FeatureReaderMetrics,
        enforce_ttl: bool = False,
        defaults: dict[str, Any] | None = None,
        clock: Callable[[], float] = time.time,
        background_refresh: bool = False,
    ) -> None:
        self.layout = layout
        self.backend = backend
        self.metrics = metrics
        self.enforce_ttl = enforce_ttl
        self.clock = clock
        self._decoder = ValueDecoder()
        self._sqlite = isinstance(backend, SqliteBackend)  # event_ts comes as SQLite values, not protos
        self._user_views = layout.views_of("user")
        self._item_views = layout.views_of("item")
        unknown = set(defaults or {}) - {f.ref for v in layout.views.values() for f in v.features}
        if unknown:
            raise ValueError(f"defaults given for unknown feature refs: {sorted(unknown)}")
        self._defaults = dict(defaults or {})
        self._missing_counter = {v: metrics.missing.labels(feature_view=v) for v in layout.views}
        self.background_refresh = background_refresh
        self._table: ItemTable | None = None
        self._failed_version: str | None = None
        self._refresh_lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._loader: threading.Thread | None = None

    # -- users ---------------------------------------------------------------------------------

    def _default(self, spec):
        d = self._defaults.get(spec.ref)
        if d is None:
            return default_for(spec)
        return d.copy() if isinstance(d, np.ndarray) else d

    def user_features(self, user_id: int) -> UserFeatures:
        uid = _as_int64(user_id)
        raw = self.backend.read_user(uid)
        now = self.clock() if self.enforce_ttl else 0.0
        values: dict[str, Any] = {}
        missing: set[str] = set()
        event_ts: dict[str, float | None] = {}
        dec = self._decoder
        for v in self._user_views:
            ts_raw, vals = raw[v.name]
            ts = _parse_sqlite_ts(ts_raw) if self._sqlite else dec.timestamp(ts_raw)
            event_ts[v.name] = ts
            expired = (self.enforce_ttl and v.ttl_seconds > 0 and ts is not None
                       and now - ts > v.ttl_seconds)
            n_missing = 0
            for spec, rv in zip(v.features, vals, strict=True):
                val = None if expired else dec.value(rv, spec)
                if val is None:
                    val = self._default(spec)
                    missing.add(spec.ref)
                    n_missing += 1
                values[spec.ref] = val
            if n_missing:
                self._missing_counter[v.name].inc(n_missing)
        return UserFeatures(user_id=uid, values=values, missing=missing, event_ts=event_ts)

    # -- items ---------------------------------------------------------------------------------

    @property
    def item_table(self) -> ItemTable | None:
        return self._table

    def refresh(self, force: bool = False) -> ItemTable:
        """Load the published item snapshot if it changed (or scan Feast's rows if there is none).

        When the version check itself fails (online store unreachable) and a table is loaded,
        the loaded table keeps serving: item features survive a Redis outage. With
        ``background_refresh`` a changed snapshot is loaded on a helper thread while the current
        table keeps serving (for large catalogs: 1M items take ~2 s to load here).
        """
        table = self._table
        try:
            version = self.backend.snapshot_version()
        except Exception:
            if table is None or force:
                raise
            self.metrics.item_refreshes.labels(source="version_check", outcome="error").inc()
            return table
        if not force and table is not None and (
                version is None or version == table.version or version == self._failed_version):
            return table
        if self.background_refresh and table is not None and not force:
            with self._refresh_lock:
                if self._loader is None or not self._loader.is_alive():
                    self._loader = threading.Thread(target=self._load, args=(version, False),
                                                    name="item-feature-refresh", daemon=True)
                    self._loader.start()
            return table
        return self._load(version, force)

    def _load(self, version: str | None, force: bool) -> ItemTable:
        with self._refresh_lock if not self.background_refresh else self._load_lock:
            table = self._table
            if table is not None and not force and (version is None or version == table.version):
                return table
            t0 = time.perf_counter()
            source = "snapshot"
            try:
                new = None
                if version is not None:
                    blob = self.backend.load_snapshot(version)
                    if blob is not None:
                        new = unpack_table(blob, self.layout)
                if new is None:
                    if table is not None:  # snapshot vanished mid-switch: keep serving, retry next call
                        self.metrics.item_refreshes.labels(source=source, outcome="retry").inc()
                        return table
                    source = "scan"
                    new = self.scan_item_table()
                    log.warning("no published item feature snapshot in the online store: built the item "
                                "table from Feast's rows; later item materialisations are seen only once "
                                "publish_item_snapshot runs (feature_store.store.materialize does)")
            except Exception:
                self.metrics.item_refreshes.labels(source=source, outcome="error").inc()
                if table is None:
                    raise
                self._failed_version = version  # not retried on every call; a newer publish is
                log.exception("item feature snapshot %s could not be loaded; serving %s", version, table.version)
                return table
            self._table = new
            self.metrics.item_refreshes.labels(source=source, outcome="ok").inc()
            self.metrics.item_rows.set(new.n)
            self.metrics.item_refresh_seconds.set(time.perf_counter() - t0)
            return new

    def scan_item_table(self, version: str | None = None) -> ItemTable:
        """Build the item table from Feast's item rows (what publish_item_snapshot packs)."""
        dec = self._decoder
        sqlite = self._sqlite
        specs = {v.name: v for v in self._item_views}

        def rows():
            for item_id, view, ts_raw, vals in self.backend.scan_items():
                v = specs[view]
                if ts_raw is None and all(x is None for x in vals):
                    continue  # the entity has no row of this view
                ts = _parse_sqlite_ts(ts_raw) if sqlite else dec.timestamp(ts_raw)
                yield item_id, view, ts, {s.name: dec.value(x, s) for s, x in zip(v.features, vals, strict=True)}

        return build_item_table(self.layout, rows(), version=version)

    def item_features(self, item_ids: np.ndarray) -> ItemFeatures:
        ids = _as_id_array(item_ids)
        table = self.refresh()
        rows = table.rows(ids)
        n = ids.shape[0]
        values: dict[str, np.ndarray] = {}
        missing = np.zeros(n, dtype=bool)
        by_view: dict[str, np.ndarray] = {}
        expired_rows = None
        now = self.clock() if self.enforce_ttl else 0.0
        for v in self._item_views:
            if self.enforce_ttl and v.ttl_seconds > 0:
                with np.errstate(invalid="ignore"):
                    expired_rows = (now - table.event_ts[v.name][rows]) > v.ttl_seconds
            else:
                expired_rows = None
            view_missing = np.zeros(n, dtype=bool)
            n_missing = 0
            for spec in v.features:
                arr = table.values[spec.ref][rows]
                absent = ~table.present[spec.ref][rows]
                if expired_rows is not None and expired_rows.any():
                    absent |= expired_rows
                    dflt = table.values[spec.ref][table.n]
                    if arr.dtype == object:  # an element may itself be an array: assign one by one
                        for i in np.flatnonzero(expired_rows):
                            arr[i] = dflt
                    else:
                        arr[expired_rows] = dflt
                if spec.ref in self._defaults and absent.any():
                    for i in np.flatnonzero(absent):
                        arr[i] = self._defaults[spec.ref]
                values[spec.ref] = arr
                view_missing |= absent
                n_missing += int(absent.sum())
            by_view[v.name] = view_missing
            missing |= view_missing
            if n_missing:
                self._missing_counter[v.name].inc(n_missing)
        return ItemFeatures(item_ids=ids, values=values, missing=missing, missing_by_view=by_view)

    def close(self) -> None:
        self.backend.close()


def _as_int64(x) -> int:
    if isinstance(x, bool) or not isinstance(x, int | np.integer):
        raise TypeError(f"user_id must be an integer, got {type(x).__name__}")
    x = int(x)
    if not -(2**63) <= x < 2**63:
        raise ValueError(f"user_id {x} is outside the int64 range")
    return x


def _as_id_array(item_ids) -> np.ndarray:
    arr = np.asarray(item_ids)
    if arr.ndim != 1:
        raise ValueError(f"item_ids must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        return arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"item_ids must be integers, got dtype {arr.dtype}")
    if arr.dtype.kind == "u" and arr.max() >= 2**63:
        raise ValueError("item_ids outside the int64 range")
    return arr.astype(np.int64, copy=False)


# ---------------------------------------------------------------------------------------------
# construction and the post-materialise hook


def _layout_from_store(store, project: str) -> Layout:
    from feature_store.online_layout import layout_from_feature_views

    views = store.list_feature_views()
    if not views:
        raise LayoutError(f"the Feast registry of project {project!r} has no feature views (run `make feature-apply`)")
    return layout_from_feature_views(views, project, store.config.entity_key_serialization_version)


def _backend_for(settings: FeatureStoreSettings, store, layout: Layout, socket_timeout: float = 1.0) -> _Backend:
    if settings.redis_url:
        import redis

        # a serving read must fail fast (the services degrade to defaults), not hang
        return RedisBackend(layout, redis.Redis.from_url(settings.redis_url, socket_timeout=socket_timeout,
                                                         socket_connect_timeout=socket_timeout))
    from feast.infra.online_stores.sqlite import SqliteOnlineStore

    return SqliteBackend(layout, SqliteOnlineStore._get_db_path(store.config))


def build_reader(
    settings: FeatureStoreSettings,
    *,
    store=None,
    metrics: FeatureReaderMetrics | None = None,
    registry: CollectorRegistry | None = None,
    enforce_ttl: bool = False,
    defaults: dict[str, Any] | None = None,
    clock: Callable[[], float] = time.time,
    socket_timeout: float = 1.0,
    background_refresh: bool = False,
) -> OnlineFeatureReader:
    """The Redis reader when ``settings.redis_url`` is set, else the SQLite one; item table loaded.

    ``store``: an existing ``feast.FeatureStore`` (else one is built from ``settings``).
    ``metrics`` / ``registry``: where the counters live (default: prometheus_client's registry).
    ``defaults``: per-ref default overrides, e.g. ``{"user_aggregates:genre_affinity": np.zeros(G)}``.
    ``socket_timeout``: seconds a Redis call may take before it raises (fail fast, degrade).
    ``background_refresh``: load a new item snapshot on a helper thread (large catalogs).
    """
    if store is None:
        from feature_store.store import feature_store

        store = feature_store(settings)
    layout = _layout_from_store(store, settings.project)
    backend = _backend_for(settings, store, layout, socket_timeout)
    try:
        reader = OnlineFeatureReader(layout, backend, metrics=metrics or FeatureReaderMetrics(registry),
                                     enforce_ttl=enforce_ttl, defaults=defaults, clock=clock,
                                     background_refresh=background_refresh)
        reader.refresh()
    except BaseException:
        backend.close()
        raise
    return reader


def publish_item_snapshot(settings: FeatureStoreSettings, store=None, views: list[str] | None = None) -> str | None:
    """Post-materialise hook: pack Feast's item rows into one snapshot and switch readers to it.

    Called at the end of ``feature_store.store.materialize``. Returns the new snapshot version
    (``None`` when ``views`` names no item view, so nothing changed for items).
    """
    if store is None:
        from feature_store.store import feature_store

        store = feature_store(settings)
    layout = _layout_from_store(store, settings.project)
    if views is not None and not {v.name for v in layout.views_of("item")} & set(views):
        return None
    backend = _backend_for(settings, store, layout, socket_timeout=60.0)
    try:
        from prometheus_client import CollectorRegistry

        reader = OnlineFeatureReader(layout, backend, metrics=FeatureReaderMetrics(CollectorRegistry()))
        version = f"{time.time_ns()}-{uuid.uuid4().hex[:8]}"
        t0 = time.perf_counter()
        table = reader.scan_item_table(version=version)
        blob = pack_table(table)
        backend.publish_snapshot(blob, version)
        log.info("published item feature snapshot %s: %d items, %.1f MB in %.2fs",
                 version, table.n, len(blob) / 1e6, time.perf_counter() - t0)
        return version
    finally:
        backend.close()
