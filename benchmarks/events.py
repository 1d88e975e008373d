"""The events loop, measured on a private stack: freshness, ingestion throughput, consumer lag.

``python -m benchmarks events`` (part of ``make bench``) starts a private Redis (with its AOF,
as compose runs it), materialises the features, starts retrieval, ranking, the gateway (response
cache on) and the events consumer, then:

1. **freshness** (``--trials``, >= 200): for a known user, an answer is fetched twice (so it is
   in the response cache), a click on its first item is posted, and ``/recommend`` is polled
   until an answer no longer holds the clicked item. Freshness = the time from the ``202`` to
   the arrival of that first answer: ingest -> stream -> consumer -> Feast row + seen set ->
   generation bump -> cache miss -> retrieval and ranking on the new row. Without load.
2. **baseline**: ``/recommend`` at ``--rate`` req/s (open loop, ``benchmarks.loadgen``, latency
   from each request's due time) with no events, against a second gateway without a response
   cache (every request runs the whole pipeline, in both runs).
3. **sustained ingestion under load**: the same ``/recommend`` load while events are offered at
   ``--event-rate`` events/s (open loop: a batch of ``--batch`` every ``batch / rate`` s,
   whatever the previous answers took) for ``--duration`` s: accepted events/s (202s), applied
   events/s (the consumer group's progress), consumer lag (entries and seconds) sampled every
   0.1 s, and ``/recommend`` p50/p99 side by side with the baseline.
4. **burst and recovery**: ``--burst`` events posted as fast as ``--posters`` connections can
   (the ingest capacity of ``/events`` on this machine), then the seconds from the last 202 until
   the group has applied everything (lag 0).

Lag comes from Redis itself (``XINFO GROUPS``: ``lag`` = not yet delivered, ``pending`` =
delivered, not acknowledged), not from the consumer's own metrics. Writes
``bench-results/events.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path

from common.realtime import GROUP, STREAM
from common.settings import REPO_ROOT
from common.stats import percentile

TARGETS = {"freshness_p99_ms": ("<=", 1000.0), "applied_per_s": (">=", 2000.0), "recovery_s": ("<=", 5.0)}


def unapplied(client) -> tuple[int, float]:
    """(entries appended but not yet acknowledged by the group: undelivered + pending, seconds the
    oldest of them has waited). Redis' own view (``Stream.lag``: XINFO GROUPS, XPENDING, XRANGE),
    not the consumer's metrics."""
    from services.events.stream import Stream

    stream = Stream(client, "benchmark")  # read-only use: never reads as a consumer
    group = next((g for g in stream.groups() if (g["name"].decode() if isinstance(g["name"], bytes)
                                                 else g["name"]) == GROUP), None)
    if group is None:
        return client.xlen(STREAM), 0.0
    lag, age, _ = stream.lag()
    return (lag or 0) + int(group.get("pending") or 0), age


def freshness(url: str, users: list[str], trials: int, k: int = 10, timeout_s: float = 5.0) -> dict:
    import httpx

    rng = random.Random(11)
    times: list[float] = []
    misses = 0
    with httpx.Client(base_url=url, timeout=5.0) as client:
        for user in rng.sample(users, min(trials, len(users))):
            params = {"user_id": user, "k": k}
            client.get("/recommend", params=params)
            before = client.get("/recommend", params=params).json()  # now cached
            if not before["items"]:
                continue
            item = before["items"][0]["item_id"]
            ev = {"event_id": uuid.uuid4().hex, "user_id": user, "item_id": item, "type": "click"}
            r = client.post("/events", json={"events": [ev]})
            t0 = time.perf_counter()
            if r.status_code != 202:
                raise RuntimeError(f"POST /events: {r.status_code} {r.text}")
            while True:
                body = client.get("/recommend", params=params).json()
                if all(i["item_id"] != item for i in body["items"]):
                    times.append((time.perf_counter() - t0) * 1000.0)
                    break
                if time.perf_counter() - t0 > timeout_s:
                    misses += 1
                    break
    return {"trials": len(times) + misses, "reflected": len(times), "not_reflected_within_s": timeout_s,
            "missed": misses, "p50_ms": round(percentile(times, 50), 2), "p90_ms": round(percentile(times, 90), 2),
            "p99_ms": round(percentile(times, 99), 2), "max_ms": round(max(times), 2) if times else None}


async def _post_events(host: str, port: int, users: list[str], items: list[int], batch: int, *,
                       posters: int, rate: float = 0.0, duration: float = 0.0, total: int = 0) -> dict:
    """Batches of ``batch`` events over ``posters`` keep-alive connections. ``rate`` > 0: open
    loop, batch i due at ``i * batch / rate`` for ``duration`` s (a late batch is sent at once and
    counted); else back to back until ``total`` events were sent."""
    rng = random.Random(5)
    t0 = time.perf_counter()
    n_batches = int(duration * rate / batch) if rate > 0 else -(-total // batch)
    queue: asyncio.Queue[float] = asyncio.Queue()
    for i in range(n_batches):
        queue.put_nowait(t0 + i * batch / rate if rate > 0 else 0.0)
    out = {"batches": 0, "accepted": 0, "errors": 0, "late": 0, "latencies_ms": []}

    async def one() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while not queue.empty():
                due = queue.get_nowait()
                wait = due - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
                elif rate > 0 and wait < -0.05:
                    out["late"] += 1
                now = time.time()
                events = [{"event_id": uuid.uuid4().hex, "user_id": rng.choice(users), "item_id": rng.choice(items),
                           "type": rng.choice(("click", "view", "click", "add_to_cart")), "ts": now}
                          for _ in range(batch)]
                body = json.dumps({"events": events}).encode()
                t = time.perf_counter()
                writer.write(b"POST /events HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\n"
                             b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
                await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                payload = await reader.readexactly(length)
                out["latencies_ms"].append((time.perf_counter() - max(t, due)) * 1000.0)
                if head.startswith(b"HTTP/1.1 202"):
                    out["batches"] += 1
                    out["accepted"] += json.loads(payload)["accepted"]
                else:
                    out["errors"] += 1
        finally:
            writer.close()

    await asyncio.gather(*(one() for _ in range(posters)))
    out["seconds"] = time.perf_counter() - t0
    return out


def cpu_seconds(stack, names: list[str]) -> dict[str, float]:
    """CPU seconds (user + system) each named process of ``stack`` has used so far (its
    children too: the gateway's workers, none here)."""
    from benchmarks.harness import process_cpu_seconds

    return {name: process_cpu_seconds(pid) for name in names if (pid := stack.pid(name)) is not None}


def consumer_histograms(url: str) -> dict[str, tuple[float, float]]:
    """(sum, count) of the consumer's apply-time and batch-size histograms, from its /metrics."""
    import httpx

    out = {}
    for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
        for name in ("recsys_events_apply_seconds", "recsys_events_batch_size"):
            for part in ("sum", "count"):
                if line.startswith(f"{name}_{part} "):
                    out.setdefault(name, [0.0, 0.0])[0 if part == "sum" else 1] = float(line.split()[1])
    return {k: tuple(v) for k, v in out.items()}


def gateway_counters(url: str) -> dict[str, float]:
    """The gateway's fallback and dependency-error counters (by label) from its /metrics."""
    import httpx

    out = {}
    for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
        if line.startswith(("gateway_fallbacks_total{", "gateway_dependency_errors_total{")):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def _sample_lag(client, stop: threading.Event, samples: list, period: float = 0.1) -> None:
    while not stop.is_set():
        n, age = unapplied(client)
        samples.append((time.perf_counter(), n, age))
        stop.wait(period)


def run(args: argparse.Namespace) -> dict:
    import redis

    from benchmarks.e2e import run_loadgen
    from benchmarks.harness import bundle_ids
    from common.settings import ArtifactSettings
    from deploy.local import (
        Ports,
        Stack,
        free_port,
        materialize,
        service_env,
        start_redis,
        start_services,
        wait_ready,
    )

    artifacts = ArtifactSettings().artifacts_dir
    users, items = [str(u) for u in bundle_ids(artifacts, "user_ids")], bundle_ids(artifacts, "item_ids")
    if not shutil.which("redis-server"):
        raise SystemExit("benchmarks.events needs redis-server on PATH")
    workdir = Path(tempfile.mkdtemp(prefix="bench-events-", dir=REPO_ROOT / "run" if (REPO_ROOT / "run").is_dir() else None))
    stack = Stack(workdir)
    result: dict = {}
    try:
        redis_url = start_redis(stack, appendonly=True)
        print(f"private redis {redis_url} (appendonly): materialising features…", flush=True)
        materialize(redis_url, stack.log_path("materialize"))
        ports = Ports.free()
        print(f"starting retrieval, ranking, gateway (cache on) and the events consumer (logs in {workdir})…", flush=True)
        url = start_services(stack, ports, redis_url, events=True, gateway_env={"GATEWAY_CACHE_TTL_S": "60"},
                             extra_env={"EVENTS_NICE": str(args.consumer_nice)})
        # the /recommend load goes to a second gateway without a response cache: every request
        # runs the whole pipeline in both runs (with a cache, events would turn hits into misses
        # and the side-by-side would compare hit rates, not the cost of ingestion)
        nocache_port = free_port()
        stack.start_module("gateway-nocache", "services.gateway", {
            **service_env(ports, redis_url, {"EVENTS_NICE": str(args.consumer_nice)}),
            "GATEWAY_PORT": str(nocache_port), "GATEWAY_CACHE_TTL_S": "0"})
        wait_ready(stack, f"http://127.0.0.1:{nocache_port}/readyz", ["gateway-nocache"], 60)
        load_url = f"http://127.0.0.1:{nocache_port}"
        client = redis.Redis.from_url(redis_url)

        print(f"freshness: {args.trials} trials…", flush=True)
        fresh = freshness(url, users, args.trials)
        print(f"  p50 {fresh['p50_ms']} / p99 {fresh['p99_ms']} ms ({fresh['missed']} not reflected)", flush=True)

        print(f"baseline: /recommend at {args.rate:.0f} req/s for {args.duration:.0f}s, no events…", flush=True)
        baseline = run_loadgen(load_url, users, args.connections, args.duration, workdir, rate=args.rate)

        print(f"sustained: /recommend at {args.rate:.0f} req/s + events offered at {args.event_rate:.0f}/s "
              f"(batches of {args.batch}) for {args.duration:.0f}s…", flush=True)
        samples: list = []
        stop = threading.Event()
        sampler = threading.Thread(target=_sample_lag, args=(redis.Redis.from_url(redis_url), stop, samples), daemon=True)
        before_n = client.xlen(STREAM)
        under: dict = {}

        def recommend_load() -> None:
            under.update(run_loadgen(load_url, users, args.connections, args.duration, workdir, rate=args.rate))

        load = threading.Thread(target=recommend_load)
        procs = ["redis", "retrieval", "ranking", "gateway", "gateway-nocache", "events"]
        cpu_before = cpu_seconds(stack, procs)
        events_url = f"http://127.0.0.1:{ports.events_metrics}"
        hist_before = consumer_histograms(events_url)
        gw_before = gateway_counters(load_url)
        sampler.start()
        load.start()
        posted = asyncio.run(_post_events("127.0.0.1", ports.gateway, users, items, args.batch, posters=args.posters,
                                          rate=args.event_rate, duration=args.duration))
        n_at_end, age_at_end = unapplied(client)
        cpu_after = cpu_seconds(stack, procs)
        hist_after = consumer_histograms(events_url)
        gw_after = gateway_counters(load_url)
        load.join()
        stop.set()
        sampler.join()
        appended = client.xlen(STREAM) - before_n
        applied = appended - n_at_end
        lags = sorted(n for _, n, _ in samples)
        ages = sorted(a for _, _, a in samples)
        t_end = time.perf_counter()
        while unapplied(client)[0] > 0 and time.perf_counter() - t_end < 120:
            time.sleep(0.05)

        print(f"burst: {args.burst} events as fast as {args.posters} connections post them, then recovery…", flush=True)
        burst = asyncio.run(_post_events("127.0.0.1", ports.gateway, users, items, args.batch, posters=args.posters,
                                         total=args.burst))
        t_end = time.perf_counter()
        lag_after_burst = unapplied(client)[0]
        while unapplied(client)[0] > 0 and time.perf_counter() - t_end < 300:
            time.sleep(0.02)
        recovery = time.perf_counter() - t_end

        def ms(x: float) -> float:
            return round(x, 2)

        result = {
            "freshness": fresh,
            "freshness_p50_ms": fresh["p50_ms"], "freshness_p99_ms": fresh["p99_ms"],
            "sustained": {"seconds": round(posted["seconds"], 2), "offered_per_s": args.event_rate,
                          "batch_size": args.batch, "batches": posted["batches"], "late_batches": posted["late"],
                          "errors": posted["errors"], "batch_p50_ms": ms(percentile(posted["latencies_ms"], 50)),
                          "batch_p99_ms": ms(percentile(posted["latencies_ms"], 99))},
            "accepted_per_s": round(posted["accepted"] / posted["seconds"], 1),
            "applied_per_s": round(applied / posted["seconds"], 1),
            "lag_entries_p50": lags[len(lags) // 2] if lags else 0, "lag_entries_max": lags[-1] if lags else 0,
            "lag_seconds_p50": round(ages[len(ages) // 2], 3) if ages else 0.0,
            "lag_seconds_max": round(ages[-1], 3) if ages else 0.0,
            "lag_entries_at_end": n_at_end, "lag_seconds_at_end": round(age_at_end, 3),
            "burst": {"events": burst["accepted"], "seconds": round(burst["seconds"], 2),
                      "accepted_per_s": round(burst["accepted"] / burst["seconds"], 1), "errors": burst["errors"],
                      "lag_at_last_202": lag_after_burst},
            "recovery_s": round(recovery, 2),
            # cores each process used during the sustained run (2 cores here, shared with the
            # load generators): the consumer's share is what applying 2,000 events/s costs
            "cores_sustained": {n: round((cpu_after[n] - cpu_before.get(n, 0.0)) / posted["seconds"], 2)
                                for n in cpu_after},
            "consumer_batches_sustained": _batches(hist_before, hist_after),
            "recommend_fallbacks_sustained": {k: v - gw_before.get(k, 0.0) for k, v in gw_after.items()
                                              if v - gw_before.get(k, 0.0) > 0},
            "recommend_rate": args.rate, "consumer_nice": args.consumer_nice,
            "consumer_drain_per_s": round(lag_after_burst / recovery, 1) if recovery > 0 else None,
            "recommend_baseline": {k: baseline[k] for k in ("p50_ms", "p99_ms", "requests", "errors", "fallbacks") if k in baseline},
            "recommend_under_ingest": {k: under[k] for k in ("p50_ms", "p99_ms", "requests", "errors", "fallbacks") if k in under},
            "cpu_count": os.cpu_count(), "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
        }
        result["targets"] = {k: {"target": f"{op} {v}", "ok": (result[k] <= v if op == "<=" else result[k] >= v)}
                             for k, (op, v) in TARGETS.items()}
    finally:
        stack.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def _batches(before: dict, after: dict) -> dict:
    """Batches the consumer applied in a window: how many, their mean size and apply time."""
    a0, a1 = before.get("recsys_events_apply_seconds", (0, 0)), after.get("recsys_events_apply_seconds", (0, 0))
    b0, b1 = before.get("recsys_events_batch_size", (0, 0)), after.get("recsys_events_batch_size", (0, 0))
    n = a1[1] - a0[1]
    return {"batches": int(n), "mean_size": round((b1[0] - b0[0]) / n, 1) if n else None,
            "mean_apply_ms": round((a1[0] - a0[0]) / n * 1000, 2) if n else None}


def report(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    t = Table(title="events loop (private stack; freshness with the response cache on, /recommend load without)")
    for c in ("measure", "result", "target"):
        t.add_column(c)
    f = result["freshness"]
    tg = result["targets"]

    def ok(name: str) -> str:
        return f"{tg[name]['target']} {'met' if tg[name]['ok'] else 'MISSED'}"

    t.add_row("freshness 202 -> answer without the clicked item", f"p50 {f['p50_ms']} / p99 {f['p99_ms']} ms "
              f"({f['reflected']} of {f['trials']} reflected)", ok("freshness_p99_ms"))
    su = result["sustained"]
    t.add_row(f"events offered at {su['offered_per_s']:.0f}/s: accepted (202)", f"{result['accepted_per_s']:.0f}/s "
              f"(batches of {su['batch_size']}, p99 {su['batch_p99_ms']} ms, {su['late_batches']} late)", "")
    t.add_row("  applied by the consumer", f"{result['applied_per_s']:.0f}/s", ok("applied_per_s"))
    t.add_row("  consumer lag", f"p50 {result['lag_entries_p50']} / max {result['lag_entries_max']} entries, "
              f"p50 {result['lag_seconds_p50']} / max {result['lag_seconds_max']} s", "")
    bu = result["burst"]
    t.add_row(f"burst of {bu['events']} events as fast as possible", f"{bu['accepted_per_s']:.0f}/s accepted, "
              f"{bu['lag_at_last_202']} not yet applied at the last 202", "")
    t.add_row("  lag back to 0 after the burst", f"{result['recovery_s']} s (the consumer drained "
              f"{result['consumer_drain_per_s']:.0f} events/s)", ok("recovery_s"))
    b, u = result["recommend_baseline"], result["recommend_under_ingest"]
    t.add_row(f"/recommend at {result['recommend_rate']:.0f} req/s: p50 / p99", f"{b.get('p50_ms', 0):.1f} / "
              f"{b.get('p99_ms', 0):.1f} ms alone, {u.get('p50_ms', 0):.1f} / {u.get('p99_ms', 0):.1f} ms during the "
              "sustained ingestion", "")
    console.print(t)
    cores = ", ".join(f"{n} {c:.2f}" for n, c in result.get("cores_sustained", {}).items())
    console.print(f"cores used during the sustained run: {cores} (of {result['cpu_count']}; load generators not counted)")
    console.print(f"consumer batches during the sustained run: {result['consumer_batches_sustained']}")
    if result.get("recommend_fallbacks_sustained"):
        console.print(f"[yellow]/recommend fallbacks and dependency errors during the sustained run: "
                      f"{result['recommend_fallbacks_sustained']}[/yellow]")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.events", description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=250, help="freshness trials (>= 200)")
    p.add_argument("--rate", type=float, default=100.0, help="/recommend req/s offered during the runs")
    p.add_argument("--connections", type=int, default=16, help="/recommend connections")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of the baseline and of the ingestion run")
    p.add_argument("--event-rate", type=float, default=2200.0, help="events/s offered in the sustained run")
    p.add_argument("--batch", type=int, default=100, help="events per POST /events")
    p.add_argument("--posters", type=int, default=4, help="connections posting events")
    p.add_argument("--burst", type=int, default=10000, help="events of the burst")
    p.add_argument("--consumer-nice", type=int, default=0, help="EVENTS_NICE of the consumer")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench-results" / "events.json")
    args = p.parse_args([] if argv is None else argv)
    from benchmarks.harness import write_json

    result = run(args)
    report(result)
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
