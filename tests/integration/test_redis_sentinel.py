"""Sentinel failover on real processes: a primary, a replica and one Sentinel (quorum 1) on free
ports; clients built from ``redis+sentinel://.../primary/0`` (common.redis_client) write, the
primary is killed, Sentinel promotes the replica, and the same clients write again without a
restart: they ask Sentinel for the primary on reconnect.

What a failover costs is also shown: writes acknowledged by the old primary but not yet
replicated are lost (asynchronous replication); the test waits for the replica's offset first,
as a deployment would with ``WAIT 1`` on what must not be lost.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from common.net import free_port, port_in_use
from common.redis_client import async_client, feast_online_store, sync_client
from deploy.local import Stack

MASTER = "primary"


def _wait_port(stack: Stack, name: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not port_in_use(port):
        stack.check_alive([name])
        assert time.monotonic() < deadline, f"{name} did not listen on {port}"
        time.sleep(0.05)


@pytest.fixture()
def sentinel(tmp_path: Path) -> Iterator[tuple[Stack, str, int, int]]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not on PATH")
    stack = Stack(tmp_path / "run")
    p_primary, p_replica, p_sentinel = free_port(), free_port(), free_port()
    common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    try:
        (tmp_path / "primary").mkdir()
        (tmp_path / "replica").mkdir()
        stack.start("redis-primary", [binary, "--port", str(p_primary), "--dir", str(tmp_path / "primary"), *common])
        _wait_port(stack, "redis-primary", p_primary)
        stack.start("redis-replica", [binary, "--port", str(p_replica), "--dir", str(tmp_path / "replica"), *common,
                                      "--replicaof", "127.0.0.1", str(p_primary)])
        _wait_port(stack, "redis-replica", p_replica)
        with redis.Redis(port=p_replica, socket_timeout=2) as r:  # the first full sync is done
            deadline = time.monotonic() + 15
            while r.info("replication").get("master_link_status") != "up":
                assert time.monotonic() < deadline, "the replica never synced"
                time.sleep(0.05)
        conf = tmp_path / "sentinel.conf"  # Sentinel rewrites its config file: a writable copy of its own
        conf.write_text(f"port {p_sentinel}\nbind 127.0.0.1\ndir {tmp_path}\n"
                        f"sentinel monitor {MASTER} 127.0.0.1 {p_primary} 1\n"
                        f"sentinel down-after-milliseconds {MASTER} 1000\n"
                        f"sentinel failover-timeout {MASTER} 10000\n")
        stack.start("redis-sentinel", [binary, str(conf), "--sentinel"])
        _wait_port(stack, "redis-sentinel", p_sentinel)
        with redis.Redis(port=p_sentinel, socket_timeout=2) as s:  # Sentinel has found the replica
            deadline = time.monotonic() + 15
            while not s.sentinel_slaves(MASTER):
                assert time.monotonic() < deadline, "Sentinel never saw the replica"
                time.sleep(0.1)
        yield stack, f"redis+sentinel://127.0.0.1:{p_sentinel}/{MASTER}/0", p_primary, p_replica
    finally:
        stack.stop_all()


async def _async_get(url: str, key: str) -> bytes | None:
    client = async_client(url, timeout_s=2, max_connections=4)
    try:
        return await client.get(key)
    finally:
        await client.aclose()


def test_clients_follow_a_sentinel_failover(sentinel):
    stack, url, p_primary, p_replica = sentinel
    assert feast_online_store(url)["redis_type"] == "redis_sentinel"
    client = sync_client(url, socket_timeout=2)
    try:
        client.set("before", "1")
        assert client.execute_command("WAIT", 1, 1000) == 1  # replicated: survives the failover
        assert asyncio.run(_async_get(url, "before")) == b"1"
        stack.stop("redis-primary", timeout=0.1)
        t0 = time.monotonic()
        while True:  # what a caller sees: errors until Sentinel has promoted the replica
            try:
                client.set("after", "2")
                break
            except (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError):
                assert time.monotonic() - t0 < 30, "no failover within 30 s"
                time.sleep(0.1)
        took = time.monotonic() - t0
        print(f"\nSentinel failover: writes resumed after {took:.1f}s (down-after 1 s)")
        with redis.Redis(port=p_replica, socket_timeout=2) as promoted:
            assert promoted.info("replication")["role"] == "master"
            assert promoted.get("before") == b"1" and promoted.get("after") == b"2"

        assert asyncio.run(_async_get(url, "after")) == b"2"  # the gateway's kind of client, on a loop of its own
    finally:
        client.close()
