"""Feast's embedded SQLite online store, read directly (``FEAST_ONLINE_TYPE=sqlite``, the
default without ``REDIS_URL``). Layout: :mod:`feature_store.online_layout`.

A user is one ``UNION ALL`` query over the user views' tables; the item snapshot lives in a
``<project>__fsreader`` table next to Feast's, and ``PRAGMA data_version`` tells a reader
whether another connection committed since its last look (no query when nothing changed).
"""

from __future__ import annotations

import os
import sqlite3
import struct
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from feature_store.backends.base import OnlineBackend
from feature_store.online_layout import Layout, LayoutError

if TYPE_CHECKING:
    from common.settings import FeatureStoreSettings


def parse_sqlite_ts(value) -> float | None:
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


class SqliteBackend(OnlineBackend):
    """Feast's embedded SQLite layout: table ``<project>_<view>``, one row per (entity, feature)."""

    type = "sqlite"

    @classmethod
    def feast_online_config(cls, settings: FeatureStoreSettings, data_dir: Path):
        from feast.infra.online_stores.sqlite import SqliteOnlineStoreConfig

        return SqliteOnlineStoreConfig(path=str(data_dir / "online.db"))

    @classmethod
    def open(cls, settings: FeatureStoreSettings, store, layout: Layout, socket_timeout: float) -> SqliteBackend:
        from feast.infra.online_stores.sqlite import SqliteOnlineStore

        return cls(layout, SqliteOnlineStore._get_db_path(store.config))

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

    def event_ts(self, raw) -> float | None:
        return parse_sqlite_ts(raw)

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
