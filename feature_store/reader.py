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
* **where the rows come from**: one backend per Feast online store, chosen by
  ``FEAST_ONLINE_TYPE`` (:mod:`feature_store.backends`: ``redis``, the default with
  ``REDIS_URL``; ``sqlite``, Feast's embedded store, the default without). A backend returns
  raw rows in Feast's layout; everything below (decoding, defaults, TTL, the item table) is
  this module's and the same for every store.

Semantics match the SDK exactly (guarded by ``tests/feature_store/test_reader_contract.py``):
where the SDK returns ``None`` the reader returns the feature's default (0, 0.0, "", zeros or
an empty array; per-ref overrides via ``defaults=``), lists the ref in ``UserFeatures.missing``
/ flags the item in ``ItemFeatures.missing``, and increments
``recsys_missing_features_total{feature_view}`` by the number of defaulted values. Feast 0.67
does **not** apply TTLs on online reads (see :mod:`feature_store.online_layout`); the reader
mirrors that by default, and ``enforce_ttl=True`` treats rows older than their view's TTL
(``user_context``: 1 day) as missing instead.

Feature age (:class:`FeatureReaderMetrics`): ``recsys_feature_snapshot_published_timestamp_seconds``
(when the served item snapshot was published), ``recsys_feature_materialized_until_timestamp_seconds``
(the end date of the materialisation it packs; both set when a table is swapped in, from the
snapshot's header) and ``recsys_feature_row_age_seconds{feature_view}`` (now minus the Feast event
time of each user row read). ``python -m architect diagnose`` turns them into staleness findings.

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

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from feature_store.backends import OnlineBackend, backend_class
from feature_store.feast_store import feature_store
from feature_store.item_table import ItemTable, build_item_table, pack_table, unpack_table
from feature_store.online_layout import Layout, LayoutError, ValueDecoder, default_for

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from common.settings import FeatureStoreSettings

log = logging.getLogger(__name__)


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
        from prometheus_client import REGISTRY, Counter, Gauge, Histogram

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
        # Feature age, exported as timestamps (age = time() - value; Prometheus's "timestamps, not
        # time since": a gauge set once stays right as time passes). NaN: not known. Several
        # gateway workers: the oldest one served (livemin).
        self.snapshot_published = Gauge(
            "recsys_feature_snapshot_published_timestamp_seconds",
            "When the item feature snapshot being served was published (epoch s; a table built by scanning "
            "Feast's rows: when the scan ran).", registry=registry, multiprocess_mode="livemin")
        self.materialized_until = Gauge(
            "recsys_feature_materialized_until_timestamp_seconds",
            "End date of the materialisation whose item snapshot is being served (Feast copied the offline rows "
            "with event_timestamp <= this; epoch s, NaN when the snapshot does not say).",
            registry=registry, multiprocess_mode="livemin")
        self.snapshot_published.set(float("nan"))
        self.materialized_until.set(float("nan"))
        self.row_age = Histogram(
            "recsys_feature_row_age_seconds",
            "Age (now - the row's Feast event timestamp) of each user feature row read, per view; a view "
            "without a row for the user is not observed.", ["feature_view"], registry=registry,
            buckets=ROW_AGE_BUCKETS)

    def table_loaded(self, table: ItemTable, loaded_at: float) -> None:
        """The item table now served: its publish time (else the version's time prefix, else
        ``loaded_at`` for a scanned table) and its materialisation's end date."""
        published = table.published_at if table.published_at is not None else version_time(table.version)
        self.snapshot_published.set(published if published is not None else loaded_at)
        until = table.materialized_until
        self.materialized_until.set(float(until) if until is not None else float("nan"))


# 1 s .. 10 years: pushed rows are seconds old, materialised ones hours to years (ml-100k: 1998)
ROW_AGE_BUCKETS = (1, 10, 60, 600, 3600, 6 * 3600, 86400, 7 * 86400, 30 * 86400, 365 * 86400, 3650 * 86400)


def version_time(version: str | None) -> float | None:
    """Epoch seconds of a snapshot version ``<time_ns>-<hex>`` (None: another form)."""
    head = (version or "").partition("-")[0]
    return int(head) / 1e9 if head.isdigit() and len(head) >= 18 else None


# ---------------------------------------------------------------------------------------------
# the reader


class OnlineFeatureReader:
    """One reader over either backend; see the module docstring."""

    def __init__(
        self,
        layout: Layout,
        backend: OnlineBackend,
        *,
        metrics: FeatureReaderMetrics,
        enforce_ttl: bool = False,
        defaults: dict[str, Any] | None = None,
        clock: Callable[[], float] = time.time,
        background_refresh: bool = False,
        items: bool = True,
    ) -> None:
        self.layout = layout
        self.backend = backend
        self.metrics = metrics
        self.enforce_ttl = enforce_ttl
        self.clock = clock
        self._decoder = ValueDecoder()
        self._user_views = layout.views_of("user")
        self._item_views = layout.views_of("item")
        unknown = set(defaults or {}) - {f.ref for v in layout.views.values() for f in v.features}
        if unknown:
            raise ValueError(f"defaults given for unknown feature refs: {sorted(unknown)}")
        self._defaults = dict(defaults or {})
        self._missing_counter = {v: metrics.missing.labels(feature_view=v) for v in layout.views}
        self._row_age = {v.name: metrics.row_age.labels(feature_view=v.name) for v in layout.views_of("user")}
        self.background_refresh = background_refresh
        self.items = items  # False: users only, no item table in memory (retrieval reads no item rows)
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
        now = self.clock()
        values: dict[str, Any] = {}
        missing: set[str] = set()
        event_ts: dict[str, float | None] = {}
        dec = self._decoder
        event_time = self.backend.event_ts  # each store keeps event times its own way
        row_age = self._row_age
        for v in self._user_views:
            ts_raw, vals = raw[v.name]
            ts = event_time(ts_raw)
            event_ts[v.name] = ts
            if ts is not None:
                row_age[v.name].observe(max(0.0, now - ts))
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
        if not self.items:
            raise RuntimeError("this reader was built with items=False: it holds no item table")
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
            self.metrics.table_loaded(new, time.time())
            self.metrics.item_refreshes.labels(source=source, outcome="ok").inc()
            self.metrics.item_rows.set(new.n)
            self.metrics.item_refresh_seconds.set(time.perf_counter() - t0)
            return new

    def scan_item_table(self, version: str | None = None) -> ItemTable:
        """Build the item table from Feast's item rows (what publish_item_snapshot packs)."""
        dec = self._decoder
        event_time = self.backend.event_ts
        specs = {v.name: v for v in self._item_views}

        def rows():
            for item_id, view, ts_raw, vals in self.backend.scan_items():
                v = specs[view]
                if ts_raw is None and all(x is None for x in vals):
                    continue  # the entity has no row of this view
                ts = event_time(ts_raw)
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


def _open_backend(settings: FeatureStoreSettings, store, layout: Layout, socket_timeout: float = 1.0) -> OnlineBackend:
    return backend_class(settings).open(settings, store, layout, socket_timeout)


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
    items: bool = True,
) -> OnlineFeatureReader:
    """A reader over the configured online store (``FEAST_ONLINE_TYPE``; unset: Redis when
    ``REDIS_URL`` is set, else SQLite), item table loaded. An unknown type raises
    :class:`~feature_store.backends.OnlineStoreConfigError` before anything is opened.

    ``store``: an existing ``feast.FeatureStore`` (else one is built from ``settings``).
    ``metrics`` / ``registry``: where the counters live (default: prometheus_client's registry).
    ``defaults``: per-ref default overrides, e.g. ``{"user_aggregates:genre_affinity": np.zeros(G)}``.
    ``socket_timeout``: seconds a Redis call may take before it raises (fail fast, degrade).
    ``background_refresh``: load a new item snapshot on a helper thread (large catalogs).
    ``items=False``: user rows only, no item table loaded (~220 MB for 1M items).
    """
    if store is None:
        store = feature_store(settings)
    layout = _layout_from_store(store, settings.project)
    backend = _open_backend(settings, store, layout, socket_timeout)
    try:
        reader = OnlineFeatureReader(layout, backend, metrics=metrics or FeatureReaderMetrics(registry),
                                     enforce_ttl=enforce_ttl, defaults=defaults, clock=clock,
                                     background_refresh=background_refresh, items=items)
        if items:
            reader.refresh()
    except BaseException:
        backend.close()
        raise
    return reader


def publish_item_snapshot(settings: FeatureStoreSettings, store=None, views: list[str] | None = None,
                          materialized_until: datetime | None = None) -> str | None:
    """Post-materialise hook: pack Feast's item rows into one snapshot and switch readers to it.

    Called at the end of ``feature_store.store.materialize``. Returns the new snapshot version
    (``None`` when ``views`` names no item view, so nothing changed for items).
    ``materialized_until``: the end date of that materialisation, recorded in the snapshot with
    its publish time (readers export both: ``recsys_feature_*_timestamp_seconds``).
    """
    if store is None:
        store = feature_store(settings)
    layout = _layout_from_store(store, settings.project)
    if views is not None and not {v.name for v in layout.views_of("item")} & set(views):
        return None
    backend = _open_backend(settings, store, layout, socket_timeout=60.0)
    try:
        from prometheus_client import CollectorRegistry

        reader = OnlineFeatureReader(layout, backend, metrics=FeatureReaderMetrics(CollectorRegistry()))
        version = f"{time.time_ns()}-{uuid.uuid4().hex[:8]}"
        t0 = time.perf_counter()
        table = reader.scan_item_table(version=version)
        table.published_at = time.time()
        table.materialized_until = materialized_until.timestamp() if materialized_until is not None else None
        blob = pack_table(table)
        backend.publish_snapshot(blob, version)
        log.info("published item feature snapshot %s: %d items, %.1f MB in %.2fs",
                 version, table.n, len(blob) / 1e6, time.perf_counter() - t0)
        return version
    finally:
        backend.close()
