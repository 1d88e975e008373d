"""Feast's Redis online store, read directly (``FEAST_ONLINE_TYPE=redis``, the default when
``REDIS_URL`` is set). Layout: :mod:`feature_store.online_layout`.

A user is one pipelined ``HMGET`` of the user's hash plus a ``GET`` of the item snapshot
pointer (on a Redis Cluster the ``HMGET`` alone; the pointer at most once a second); the item snapshot is stored in parts of ``SNAPSHOT_PART_BYTES`` under versioned keys,
and a replaced one stays readable for ``SNAPSHOT_OLD_TTL_S`` so that a slow loader finishes.
Every ``REDIS_URL`` form of :mod:`common.redis_client` works (one server, cluster, Sentinel);
redis-py is imported when a backend is opened, not at import.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from common.redis_client import feast_online_store, is_cluster, sync_client
from feature_store.backends.base import OnlineBackend
from feature_store.online_layout import Layout, ValueDecoder, ViewSpec

if TYPE_CHECKING:
    from common.settings import FeatureStoreSettings

SNAPSHOT_PART_BYTES = 4 << 20  # Redis value size of one snapshot part (a reply is one GIL-held copy)
SNAPSHOT_OLD_TTL_S = 600        # a replaced snapshot stays readable this long for slow loaders
# A snapshot load reads ~150 MB for 1M items (4 MB parts): far above the serving socket timeout
# (1 s), so it goes through a client of its own with this timeout per part.
SNAPSHOT_READ_TIMEOUT_S = 60.0


def redis_connection_string(url: str) -> str:
    """``REDIS_URL`` -> Feast's connection string (``host:port,db=N[,password=...,ssl=true]``;
    for a cluster ``h1:p1,h2:p2,skip_full_coverage_check=true``); see :mod:`common.redis_client`."""
    return feast_online_store(url)["connection_string"]


def _snapshot_keys(project: str) -> tuple[str, str]:
    """(pointer, base) of the item snapshot: one hash tag for the pointer and every part, so the
    switch and the expiry of the replaced parts are one transaction on a Redis Cluster too (all of
    a snapshot lives on one node: a load is ~150 MB from one node at 1M items)."""
    base = "{" + project + ":fsreader:items}"
    return f"{base}:current", base


class RedisBackend(OnlineBackend):
    """Feast's Redis layout: one hash per entity key, field per feature (see online_layout)."""

    type = "redis"

    @classmethod
    def feast_online_config(cls, settings: FeatureStoreSettings, data_dir: Path):
        from feast.infra.online_stores.redis import RedisOnlineStoreConfig

        return RedisOnlineStoreConfig(**feast_online_store(settings.redis_url))

    @classmethod
    def open(cls, settings: FeatureStoreSettings, store, layout: Layout, socket_timeout: float) -> RedisBackend:
        # a serving read must fail fast (the services degrade to defaults), not hang
        client = sync_client(settings.redis_url, socket_timeout=socket_timeout)
        bulk = sync_client(settings.redis_url, socket_timeout=max(socket_timeout, SNAPSHOT_READ_TIMEOUT_S),
                           connect_timeout=socket_timeout)
        return cls(layout, client, bulk_client=bulk)

    def __init__(self, layout: Layout, client, version_max_age_s: float = 1.0, bulk_client=None) -> None:
        self._timestamp = ValueDecoder().timestamp  # event times are serialised Timestamp protos
        self.layout = layout
        self.client = client
        self.bulk_client = bulk_client if bulk_client is not None else client  # snapshot parts
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
        self._cluster = is_cluster(client)

    def read_user(self, user_id: int):
        """One round trip: the user's hash (profile + aggregates + pushed context) and, on one
        server, the item snapshot version, which the next ``item_features`` call then reuses. On a
        Redis Cluster the pointer lives on another node: the user is one ``HMGET`` and the pointer
        is read at most once per ``version_max_age_s`` (:meth:`snapshot_version`)."""
        key = self._user_prefix + struct.pack("<q", user_id) + self._project
        if self._cluster:
            raw = self.client.execute_command("HMGET", key, *self._user_fields)
        else:
            with self.client.pipeline(transaction=False) as pipe:
                pipe.execute_command("HMGET", key, *self._user_fields)
                pipe.execute_command("GET", self._pointer)
                raw, version = pipe.execute()
            self._seen = (time.monotonic(), version)
        return {v.name: (raw[stop], raw[start:stop]) for v, start, stop in self._user_slices}

    def event_ts(self, raw: bytes | None) -> float | None:
        return self._timestamp(raw)

    def snapshot_version(self) -> str | None:
        """The version read with the last user (used once, if at most ``version_max_age_s`` old),
        else one ``GET``; on a cluster the last ``GET`` is reused for ``version_max_age_s``
        (a new snapshot is seen up to that much later, and costs no round trip per request)."""
        seen = self._seen
        if not self._cluster:
            self._seen = None
        if seen is not None and time.monotonic() - seen[0] <= self.version_max_age_s:
            cur = seen[1]
        else:
            cur = self.client.execute_command("GET", self._pointer)
            if self._cluster:
                self._seen = (time.monotonic(), cur)
        return cur.decode() if cur is not None else None

    def load_snapshot(self, version: str) -> bytes | memoryview | None:
        bulk = self.bulk_client
        meta = bulk.get(f"{self._base}:{version}:meta")
        if meta is None:
            return None
        info = json.loads(meta)
        # One part per call (each read bounded), copied part by part into a buffer that is not
        # zeroed first: a join of the whole 150 MB (1M items), or a zero-filled buffer of it, held
        # the GIL, and so every serving thread, 50-130 ms at once.
        total = info.get("bytes")
        out = np.empty(int(total), np.uint8) if total is not None else None
        chunks, at = [], 0
        for i in range(info["parts"]):
            chunk = bulk.get(f"{self._base}:{version}:{i}")
            if chunk is None:
                return None
            if out is None:
                chunks.append(chunk)
                continue
            if at + len(chunk) > out.size:
                return None  # parts of another publish under this version: not this snapshot
            out[at: at + len(chunk)] = np.frombuffer(chunk, np.uint8)
            at += len(chunk)
            del chunk
        if out is None:
            return b"".join(chunks)
        return memoryview(out) if at == out.size else None

    def publish_snapshot(self, blob: bytes, version: str) -> None:
        parts = [blob[i: i + SNAPSHOT_PART_BYTES] for i in range(0, len(blob), SNAPSHOT_PART_BYTES)] or [b""]
        old = self.client.get(self._pointer)
        with self.client.pipeline(transaction=False) as pipe:
            for i, part in enumerate(parts):
                pipe.set(f"{self._base}:{version}:{i}", part)
            pipe.set(f"{self._base}:{version}:meta", json.dumps({"parts": len(parts), "bytes": len(blob)}))
            pipe.execute()
        # switch only once every part is written; keep the replaced snapshot readable for a while
        # (its keys are named by its meta: no SCAN, which on a cluster would visit every node)
        stale: list[str] = []
        if old is not None and old.decode() != version:
            old_base = f"{self._base}:{old.decode()}"
            old_meta = self.client.get(f"{old_base}:meta")
            n_old = json.loads(old_meta)["parts"] if old_meta is not None else 0
            stale = [f"{old_base}:{i}" for i in range(n_old)] + [f"{old_base}:meta"]
        with self.client.pipeline(transaction=True) as pipe:  # one hash tag: a transaction on a cluster too
            pipe.set(self._pointer, version)
            for k in stale:
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
        if self.bulk_client is not self.client:
            self.bulk_client.close()


def _glob_escape(b: bytes) -> bytes:
    out = bytearray()
    for ch in b:
        if ch in b"*?[]\\":
            out += b"\\"
        out.append(ch)
    return bytes(out)
