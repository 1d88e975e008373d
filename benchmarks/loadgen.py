"""A small HTTP/1.1 load generator for ``GET /recommend``, run in its own process.

``python -m benchmarks.loadgen URL --users-file F [--rate R] [--connections C] [--duration S]``
prints one JSON line with the figures.

Two modes over ``C`` keep-alive connections:

* **open loop** (``--rate R`` > 0): request *i* is due at ``t0 + i / R`` whatever happened to the
  earlier ones, and its latency is measured from that due time. A slow server therefore cannot
  slow the generator down and hide its own queueing (no coordinated omission): this is the
  latency users see at an arrival rate of R requests/s. A request waits for a free connection
  when all C are busy, and that wait counts.
* **closed loop** (``--rate 0``): C workers each send the next request as soon as the previous
  answer arrives - the saturation throughput. Here latency is bound to ``C / throughput``
  (Little's law), so it measures capacity, not the latency at a given load. ``wrk`` does the same
  faster; this is the fallback when it is not installed.

Every answer is read in full; a 200 whose body says ``"fallback":null`` is a full answer,
other 200s are counted as fallbacks, anything else (status, socket error, timeout) as an error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import sys
from pathlib import Path
from urllib.parse import urlsplit

from common.stats import percentile

_CONTENT_LENGTH = re.compile(rb"(?i)\r\ncontent-length:\s*(\d+)")
FULL_ANSWER = b'"fallback":null'


class Connection:
    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
        async with asyncio.timeout(self.timeout):
            head = await self.reader.readuntil(b"\r\n\r\n")
            m = _CONTENT_LENGTH.search(head)
            body = await self.reader.readexactly(int(m.group(1))) if m else b""
        return int(head[9:12]), body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None


class Tally:
    def __init__(self) -> None:
        self.latencies_ms: list[float] = []
        self.full = self.fallbacks = self.errors = 0

    def record(self, seconds: float, status: int | None, body: bytes) -> None:
        self.latencies_ms.append(seconds * 1000.0)
        if status != 200:
            self.errors += 1
        elif FULL_ANSWER in body:
            self.full += 1
        else:
            self.fallbacks += 1

    def summary(self, elapsed: float, mode: str, **extra) -> dict:
        n, lat = len(self.latencies_ms), self.latencies_ms
        return {
            "loadgen": "benchmarks.loadgen", "mode": mode, "requests": n, "elapsed_s": elapsed,
            "rps": n / elapsed, "rps_full_answers": self.full / elapsed,
            "p50_ms": percentile(lat, 50), "p90_ms": percentile(lat, 90), "p99_ms": percentile(lat, 99),
            "max_ms": max(lat, default=float("nan")), "errors": self.errors, "error_rate": self.errors / max(n, 1),
            "fallbacks": self.fallbacks, "fallback_rate": self.fallbacks / max(n, 1), **extra,
        }


async def _exchange(conn: Connection, path: str) -> tuple[int | None, bytes]:
    try:
        return await conn.get(path)
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
        conn.close()  # reconnect on the next request
        return None, b""


async def open_loop(url: str, paths: list[str], rate: float, connections: int, duration: float,
                    warmup: float, timeout: float) -> dict:
    parts = urlsplit(url)
    pool: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(Connection(parts.hostname, parts.port, timeout))
    tally, loop = Tally(), asyncio.get_running_loop()
    pending: set[asyncio.Task] = set()
    late = 0

    async def one(path: str, due: float, measured: bool) -> None:
        conn = await pool.get()
        try:
            status, body = await _exchange(conn, path)
        finally:
            pool.put_nowait(conn)
        if measured:
            tally.record(loop.time() - due, status, body)

    start = loop.time() + 0.05
    total = int((warmup + duration) * rate)
    for i in range(total):
        due = start + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.005:
            late += 1  # the generator itself fell behind (reported: the figures are then suspect)
        task = asyncio.create_task(one(paths[i % len(paths)], due, i >= warmup * rate))
        pending.add(task)
        task.add_done_callback(pending.discard)
    await asyncio.gather(*pending)
    elapsed = duration  # the measured requests were due over exactly `duration` seconds
    while not pool.empty():
        pool.get_nowait().close()
    return tally.summary(elapsed, "open", offered_rps=rate, connections=connections, late_sends=late)


async def closed_loop(url: str, paths: list[str], connections: int, duration: float, warmup: float,
                      timeout: float) -> dict:
    parts = urlsplit(url)
    tally, loop = Tally(), asyncio.get_running_loop()
    t_measure = loop.time() + warmup
    t_stop = t_measure + duration

    async def worker(seed: int) -> None:
        rng, conn = random.Random(seed), Connection(parts.hostname, parts.port, timeout)
        while (t := loop.time()) < t_stop:
            status, body = await _exchange(conn, rng.choice(paths))
            if t >= t_measure:
                tally.record(loop.time() - t, status, body)
        conn.close()

    await asyncio.gather(*(worker(i) for i in range(connections)))
    return tally.summary(duration, "closed", connections=connections)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.loadgen", description=__doc__.split("\n\n")[0])
    p.add_argument("url", help="gateway base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--users-file", type=Path, required=True, help="JSON list of user ids")
    p.add_argument("--rate", type=float, default=0.0, help="open-loop arrival rate (req/s); 0 = closed loop")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds sent before measuring")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--timeout", type=float, default=5.0, help="per-request timeout (s)")
    args = p.parse_args(argv)
    users = json.loads(args.users_file.read_text())
    rng = random.Random(11)
    paths = [f"/recommend?user_id={rng.choice(users)}&k={args.k}" for _ in range(max(1000, len(users)))]
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvicorn[standard] brings uvloop
        runner = asyncio.run
    if args.rate > 0:
        out = runner(open_loop(args.url, paths, args.rate, args.connections, args.duration, args.warmup, args.timeout))
    else:
        out = runner(closed_loop(args.url, paths, args.connections, args.duration, args.warmup, args.timeout))
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
