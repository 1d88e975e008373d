"""What several real-process tests do alike: a private Feast project in a database of the
session's Redis, a /recommend that must answer 200, and waiting for a clicked item to leave an
answer."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis

from feature_store.testing import private_feast


@dataclass
class FeastDb:
    url: str
    client: redis.Redis
    env: dict[str, str]  # FEAST_DATA_DIR / FEAST_OFFLINE_DIR of the private project


@contextmanager
def feast_db(redis_url: str, db: int, work: Path) -> Iterator[FeastDb]:
    """Database ``db`` of the session's Redis, emptied, with a private Feast project materialised
    into it (feature_store.testing); emptied again afterwards."""
    url = f"{redis_url.rsplit('/', 1)[0]}/{db}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        feast = private_feast(work, url)
        yield FeastDb(url, client, {"FEAST_DATA_DIR": str(feast.settings.data_dir),
                                    "FEAST_OFFLINE_DIR": str(feast.settings.offline_dir)})
    finally:
        client.flushdb()
        client.close()


def recommend(client: httpx.Client, user: str, k: int = 10) -> dict:
    r = client.get("/recommend", params={"user_id": user, "k": k})
    assert r.status_code == 200, r.text
    return r.json()


def wait_item_gone(client: httpx.Client, user: str, item: int, timeout: float = 5.0) -> tuple[dict, float]:
    """The first answer for ``user`` without ``item`` and the seconds it took to come."""
    t0 = time.perf_counter()
    while True:
        body = recommend(client, user)
        if all(i["item_id"] != item for i in body["items"]):
            return body, time.perf_counter() - t0
        assert time.perf_counter() - t0 < timeout, f"item {item} still in {user}'s answer after {timeout}s: {body}"
        time.sleep(0.01)
