"""End-to-end ``/recommend`` benchmark (part of ``make bench``; ``python -m benchmarks.e2e``).

What it measures, all over real HTTP against real processes:

* **1 client, cache disabled** - a gateway started with ``GATEWAY_CACHE_TTL_S=0``: every request
  goes cache-less through retrieval and ranking. p50/p99 of ``GET /recommend?k=10`` over real
  users, one keep-alive connection (``http.client``: the client adds ~0.05 ms, not httpx's ~0.5).
* **1 client, cache hits** - a second gateway with the Redis cache; the measured requests are
  repeats of primed keys and every response is checked to say ``cached: true``.
* **32 connections** - two runs against the cache-less gateway, each from a separate
  load-generator process:

  - *saturation* (closed loop: each connection sends its next request when the answer arrives):
    ``rps_c32`` is the throughput of full answers; answers served by a fallback rung (counted by
    the gateway's ``gateway_fallbacks_total``) are 200s but are reported apart
    (``fallback_rate_c32``, ``rps_c32_all_answers``). Its latency is bound to
    ``32 / throughput`` by Little's law and is reported as ``p50/p99_ms_c32_saturated``.
    Load generator: ``wrk`` when installed, else :mod:`benchmarks.loadgen` in closed-loop mode.
  - *at the target rate* (open loop, :mod:`benchmarks.loadgen`): ``--rate`` (300) requests/s
    arrive on schedule over 32 connections whatever the latency, and each latency is measured
    from the request's due time. ``p99_ms_c32`` is that run's p99: the latency at 300 req/s.

  ``error_rate_c32`` counts non-200s and socket errors over both runs.
* **per-stage breakdown** - from the cache-less gateway's own Prometheus histograms
  (``gateway_stage_latency_seconds``), scraped before and after the 32-connection run.

Retrieval, ranking and Redis are reused when ``make up`` is running (``run/stack.json``);
otherwise a private stack is started on free ports (private ``redis-server`` + materialised
features when the binary exists) and stopped at the end. The two gateways are always private.
Writes ``bench-results/e2e.json``.

``--modes grpc,inprocess`` (``python -m benchmarks e2e-modes``) instead compares the two
runtimes of the same graph in one run, on one private Redis and the same bundle, cache off: for
each mode a private stack (``grpc``: retrieval + ranking + gateway; ``inprocess``: the gateway
alone, ``GATEWAY_WORKERS`` default) is started, measured (1 client p50/p99, 32-connection
closed-loop saturation throughput of full answers) and stopped before the next mode starts, so
the modes never share the CPU. Writes ``bench-results/e2e_modes.json`` and prints the ratios.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common.settings import REPO_ROOT
from common.stats import percentile

TARGETS = {  # issue 4, ml-100k bundle
    "p50_ms": ("<=", 6.0), "p99_ms": ("<=", 15.0), "cache_hit_p50_ms": ("<=", 1.0),
    "rps_c32": (">=", 300.0), "p99_ms_c32": ("<=", 50.0), "error_rate_c32": ("<=", 0.0),
}
TARGET_RATE = 300.0  # req/s offered in the open-loop run (p99_ms_c32 is measured at this rate)


# -- 1 client ----------------------------------------------------------------------------------
def one_client(host: str, port: int, paths: list[str], n: int, warmup: int, expect_cached: bool | None = None):
    conn = http.client.HTTPConnection(host, port, timeout=5)
    lat: list[float] = []
    errors = wrong_cache = 0
    try:
        for i in range(warmup + n):
            path = paths[i % len(paths)]
            t = time.perf_counter()
            conn.request("GET", path)
            r = conn.getresponse()
            body = r.read()
            dt = (time.perf_counter() - t) * 1000
            if i < warmup:
                continue
            lat.append(dt)
            if r.status != 200:
                errors += 1
            elif expect_cached is not None and json.loads(body)["cached"] is not expect_cached:
                wrong_cache += 1
    finally:
        conn.close()
    return {"n": n, "p50_ms": percentile(lat, 50), "p90_ms": percentile(lat, 90), "p99_ms": percentile(lat, 99),
            "max_ms": max(lat), "errors": errors, "unexpected_cache_state": wrong_cache}


# -- 32 connections ----------------------------------------------------------------------------
WRK_SCRIPT = """
local users = {%s}
request = function()
  return wrk.format("GET", "/recommend?user_id=" .. users[math.random(#users)] .. "&k=10")
end
"""


def _wrk_ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not m:
        raise ValueError(f"cannot parse wrk latency {text!r}")
    value, unit = float(m.group(1)), m.group(2)
    return value * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def run_wrk(url: str, users: list[str], connections: int, duration: float, workdir: Path) -> dict:
    script = workdir / "recommend.lua"
    script.write_text(WRK_SCRIPT % ", ".join(f'"{u}"' for u in users))
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{int(duration)}s", "--latency", "-s", str(script), url],
        capture_output=True, text=True, timeout=duration + 60, check=True,
    ).stdout
    total = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    sock = sum(int(x) for x in m.groups()) if (
        m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)) else 0
    pct = {p: _wrk_ms(v) for p, v in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", out, re.M)}
    return {"loadgen": "wrk", "connections": connections, "requests": total, "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50_ms": pct["50"], "p90_ms": pct["90"], "p99_ms": pct["99"], "errors": non2xx + sock,
            "error_rate": (non2xx + sock) / max(total, 1), "raw": out}


def run_loadgen(url: str, users: list[str], connections: int, duration: float, workdir: Path,
                rate: float = 0.0) -> dict:
    """:mod:`benchmarks.loadgen` in a child process (its own GIL and core); ``rate`` 0 = closed loop."""
    users_file = workdir / "users.json"
    users_file.write_text(json.dumps(users))
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.loadgen", url, "--users-file", str(users_file),
         "--connections", str(connections), "--duration", str(duration), "--rate", str(rate)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=duration + 60, check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


# -- metrics -----------------------------------------------------------------------------------
HISTOGRAMS = {  # gateway histogram -> (label that names the row, suffix of the row name)
    "gateway_stage_latency_seconds": ("stage", ""),
    "gateway_dependency_wait_seconds": ("dependency", " wait"),  # time queued for a bulkhead slot
}


def scrape_stages(host: str, port: int) -> dict[str, dict[str, float]]:
    """Buckets/sum/count of the gateway's per-stage and bulkhead-wait histograms from /metrics."""
    conn = http.client.HTTPConnection(host, port, timeout=5)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    stages: dict[str, dict] = {}
    for line in text.splitlines():
        family = next((h for h in HISTOGRAMS if line.startswith(h)), None)
        if family is None:
            continue
        label, suffix = HISTOGRAMS[family]
        name, value = line.rsplit(" ", 1)
        labels = dict(re.findall(r'(\w+)="([^"]*)"', name))
        st = stages.setdefault(labels[label] + suffix, {"buckets": {}, "sum": 0.0, "count": 0.0})
        kind = name[len(family):].split("{", 1)[0]
        if kind == "_bucket":
            st["buckets"][float(labels["le"])] = float(value)
        elif kind == "_sum":
            st["sum"] = float(value)
        elif kind == "_count":
            st["count"] = float(value)
    return stages


def _bucket_quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """Prometheus-style histogram_quantile over cumulative (le, count) pairs."""
    total = buckets[-1][1]
    if total <= 0:
        return float("nan")
    rank, prev_le, prev_c = q * total, 0.0, 0.0
    for le, c in buckets:
        if c >= rank:
            if math.isinf(le):
                return prev_le
            return prev_le + (le - prev_le) * ((rank - prev_c) / max(c - prev_c, 1e-12))
        prev_le, prev_c = le, c
    return prev_le


def stage_breakdown(before: dict, after: dict) -> dict[str, dict[str, float]]:
    out = {}
    for stage, a in after.items():
        b = before.get(stage, {"buckets": {}, "sum": 0.0, "count": 0.0})
        n = a["count"] - b["count"]
        if n <= 0:
            continue
        buckets = sorted((le, c - b["buckets"].get(le, 0.0)) for le, c in a["buckets"].items())
        out[stage] = {"count": int(n), "mean_ms": (a["sum"] - b["sum"]) / n * 1000,
                      "p50_ms": _bucket_quantile(buckets, 0.5) * 1000, "p99_ms": _bucket_quantile(buckets, 0.99) * 1000}
    return out


# -- orchestration -----------------------------------------------------------------------------
def _users(artifacts_dir: Path) -> list[str]:
    from benchmarks.harness import bundle_ids

    return [str(u) for u in bundle_ids(artifacts_dir, "user_ids")]


def _running_stack():
    from deploy.local import RUN_DIR, Stack, StackError, StackInfo

    try:
        info = StackInfo.load(RUN_DIR)
    except StackError:
        return None
    stack = Stack(RUN_DIR)
    if stack.pid("retrieval") is None or stack.pid("ranking") is None:
        return None
    return info


def run(args: argparse.Namespace) -> dict:
    from common.settings import ArtifactSettings
    from deploy.local import Ports, Stack, free_port, start_services, wait_ready

    users = _users(ArtifactSettings().artifacts_dir)
    rng = random.Random(7)
    workdir = Path(tempfile.mkdtemp(prefix="bench-e2e-", dir=REPO_ROOT / "run" if (REPO_ROOT / "run").is_dir() else None))
    stack = Stack(workdir)
    result: dict = {}
    try:
        running = None if args.private else _running_stack()
        if running is not None:
            retrieval_addr, ranking_addr, redis_url = running.retrieval_addr, running.ranking_addr, running.redis_url
            print(f"using the running stack's retrieval {retrieval_addr}, ranking {ranking_addr}, redis {redis_url}")
        else:
            redis_url = _private_redis(stack)
            ports = Ports.free()
            print(f"starting a private stack (logs in {workdir})…", flush=True)
            start_services(stack, ports, redis_url, gateway_env={"GATEWAY_CACHE_TTL_S": "0"})
            stack.stop("gateway")
            retrieval_addr, ranking_addr = f"127.0.0.1:{ports.retrieval}", f"127.0.0.1:{ports.ranking}"

        def gateway(name: str, ttl: int) -> int:
            port = free_port()
            env = {"GATEWAY_PORT": str(port), "GATEWAY_RETRIEVAL_ADDR": retrieval_addr,
                   "GATEWAY_RANKING_ADDR": ranking_addr, "GATEWAY_CACHE_TTL_S": str(ttl)}
            if redis_url:
                env["REDIS_URL"] = redis_url
            stack.start_module(name, "services.gateway", env)
            wait_ready(stack, f"http://127.0.0.1:{port}/readyz", [name], 60)
            return port

        nocache, cached = gateway("gateway-nocache", 0), gateway("gateway-cache", 300)
        host = "127.0.0.1"

        # 1 client, cache disabled
        paths = [f"/recommend?user_id={u}&k=10" for u in rng.sample(users, len(users))]
        before_1 = scrape_stages(host, nocache)
        miss = one_client(host, nocache, paths, args.requests, args.warmup)
        stages_1 = stage_breakdown(before_1, scrape_stages(host, nocache))
        # 1 client, cache hits: prime 100 keys, then repeat them
        hot = paths[:100]
        one_client(host, cached, hot, len(hot), 0)
        time.sleep(0.2)  # cache writes are fire-and-forget after the response
        hit = one_client(host, cached, hot, args.requests, len(hot), expect_cached=True)
        stack.stop("gateway-cache")

        # 32 connections against the cache-less gateway: saturation (closed loop) ...
        load, stages, fallbacks, fallback_rate = _closed_loop(host, nocache, users, args, workdir)
        url = f"http://{host}:{nocache}"
        # ... then the latency at the target rate (open loop, due-time latencies)
        at_rate = run_loadgen(url, users, args.connections, args.duration, workdir, rate=args.rate)

        result = {
            "p50_ms": miss["p50_ms"], "p99_ms": miss["p99_ms"],
            "cache_hit_p50_ms": hit["p50_ms"], "cache_hit_p99_ms": hit["p99_ms"],
            "rps_c32": load["rps"] * (1.0 - fallback_rate), "rps_c32_all_answers": load["rps"],
            "fallback_rate_c32": fallback_rate,
            "p50_ms_c32_saturated": load["p50_ms"], "p99_ms_c32_saturated": load["p99_ms"],
            "p50_ms_c32": at_rate["p50_ms"], "p99_ms_c32": at_rate["p99_ms"], "rate_c32": args.rate,
            "fallback_rate_c32_at_rate": at_rate["fallback_rate"],
            "error_rate_c32": (load["errors"] + at_rate["errors"]) / max(load["requests"] + at_rate["requests"], 1),
            "one_client_cache_disabled": miss, "one_client_cache_hit": hit,
            "c32": {k: v for k, v in load.items() if k != "raw"}, "c32_at_rate": at_rate, "stages_c32": stages, "stages_1client": stages_1,
            "fallbacks_c32": fallbacks, "stack": "running (make up)" if running else "private",
            "users": len(users), "k": 10, "cpu_count": os.cpu_count(), "loadavg_1m_at_end": os.getloadavg()[0],
        }
        result["targets"] = {k: {"target": f"{op} {v}", "ok": (result[k] <= v if op == "<=" else result[k] >= v)}
                             for k, (op, v) in TARGETS.items()}
    finally:
        stack.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    return result


# -- both runtimes -------------------------------------------------------------------------------
MODE_TARGETS = {"rps_c32_ratio": (">=", 1.5), "inprocess_p50_ms": ("<=", 2.0)}  # inprocess vs grpc


def _private_redis(stack) -> str | None:
    """A private redis-server with the bundle's features materialised (None: none on PATH, the
    services then read the embedded SQLite store)."""
    from deploy.local import materialize, start_redis

    if not shutil.which("redis-server"):
        return None
    redis_url = start_redis(stack)
    print(f"private redis {redis_url}: materialising features…", flush=True)
    materialize(redis_url, stack.log_path("materialize"))
    return redis_url


def _closed_loop(host: str, port: int, users: list[str], args: argparse.Namespace, workdir: Path):
    """Closed-loop 32-connection run: (load, stage breakdown, fallbacks by reason, fallback rate)."""
    before, fb_before = scrape_stages(host, port), _fallbacks(host, port)
    url = f"http://{host}:{port}"
    if shutil.which("wrk") and not args.no_wrk:
        load = run_wrk(url, users, args.connections, args.duration, workdir)
    else:
        load = run_loadgen(url, users, args.connections, args.duration, workdir)
    stages = stage_breakdown(before, scrape_stages(host, port))
    fallbacks = {r: v - fb_before.get(r, 0.0) for r, v in _fallbacks(host, port).items() if v - fb_before.get(r, 0.0) > 0}
    answered = stages.get("total", {}).get("count", 0)
    # a fallback answer is a 200 but not the product: throughput counts full answers only
    fallback_rate = sum(fallbacks.values()) / answered if answered else 1.0
    return load, stages, fallbacks, fallback_rate


def _saturation(host: str, port: int, users: list[str], args: argparse.Namespace, workdir: Path) -> dict:
    """Closed-loop 32-connection run; throughput of full answers (fallbacks counted apart)."""
    load, _, _, fallback_rate = _closed_loop(host, port, users, args, workdir)
    return {"rps_c32": load["rps"] * (1.0 - fallback_rate), "rps_c32_all_answers": load["rps"],
            "fallback_rate_c32": fallback_rate, "error_rate_c32": load["error_rate"],
            "p50_ms_c32_saturated": load["p50_ms"], "p99_ms_c32_saturated": load["p99_ms"],
            "loadgen": load["loadgen"], "requests_c32": load["requests"]}


def run_modes(args: argparse.Namespace) -> dict:
    from common.settings import ArtifactSettings
    from deploy.local import Ports, Stack, start_services

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(modes) - {"grpc", "inprocess"})
    if unknown:
        raise SystemExit(f"--modes: unknown mode(s) {unknown}; choose from grpc, inprocess")
    users = _users(ArtifactSettings().artifacts_dir)
    paths = [f"/recommend?user_id={u}&k=10" for u in random.Random(7).sample(users, len(users))]
    workdir = Path(tempfile.mkdtemp(prefix="bench-modes-", dir=REPO_ROOT / "run" if (REPO_ROOT / "run").is_dir() else None))
    stack = Stack(workdir)
    host = "127.0.0.1"
    result: dict = {"modes": {}, "users": len(users), "k": 10, "cpu_count": os.cpu_count(),
                    "loadavg_1m_at_start": os.getloadavg()[0]}
    try:
        redis_url = _private_redis(stack)
        for mode in modes:
            ports = Ports.free()
            print(f"{mode}: starting a private stack (logs in {workdir})…", flush=True)
            start_services(stack, ports, redis_url, mode=mode, gateway_env={"GATEWAY_CACHE_TTL_S": "0"})
            one = one_client(host, ports.gateway, paths, args.requests, args.warmup)
            sat = _saturation(host, ports.gateway, users, args, workdir)
            result["modes"][mode] = {"p50_ms": one["p50_ms"], "p99_ms": one["p99_ms"], **sat,
                                     "one_client": one, "loadavg_1m": os.getloadavg()[0]}
            for name in ("gateway", "ranking", "retrieval"):  # the next mode gets the whole machine
                if stack.pid(name) is not None:
                    stack.stop(name)
    finally:
        stack.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    m = result["modes"]
    if "grpc" in m and "inprocess" in m:
        result["rps_c32_ratio"] = m["inprocess"]["rps_c32"] / max(m["grpc"]["rps_c32"], 1e-9)
        result["p50_ratio"] = m["inprocess"]["p50_ms"] / max(m["grpc"]["p50_ms"], 1e-9)
        result["inprocess_p50_ms"] = m["inprocess"]["p50_ms"]
        result["targets"] = {k: {"target": f"{op} {v}", "ok": (result[k] <= v if op == "<=" else result[k] >= v)}
                             for k, (op, v) in MODE_TARGETS.items()}
    result["loadavg_1m_at_end"] = os.getloadavg()[0]
    return result


def report_modes(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    m = result["modes"]
    names = list(m)
    t = Table(title="/recommend (k=10, cache off): grpc vs inprocess")
    for col in ("measure", *names, *(["inprocess / grpc"] if len(names) == 2 else [])):
        t.add_column(col)
    for key, fmt in (("p50_ms", "{:.2f}"), ("p99_ms", "{:.2f}"), ("rps_c32", "{:.0f}"),
                     ("rps_c32_all_answers", "{:.0f}"), ("fallback_rate_c32", "{:.3f}"),
                     ("p50_ms_c32_saturated", "{:.1f}"), ("p99_ms_c32_saturated", "{:.1f}"), ("error_rate_c32", "{:.3f}")):
        row = [fmt.format(m[n][key]) for n in names]
        if len(names) == 2:
            a, b = m["grpc"][key], m["inprocess"][key]
            row.append(f"{b / a:.2f}x" if a else "-")
        t.add_row(key, *row)
    console.print(t)
    for key, v in result.get("targets", {}).items():
        ok = "[green]yes[/green]" if v["ok"] else "[red]no[/red]"
        console.print(f"{key} = {result[key]:.2f} (target {v['target']}): {ok}")
    console.print(f"loadgen {next(iter(m.values()))['loadgen'] if m else '-'}; 1-min load average "
                  f"{result['loadavg_1m_at_start']:.1f} at start, {result['loadavg_1m_at_end']:.1f} at the end, "
                  f"{result['cpu_count']} CPUs")


def _fallbacks(host: str, port: int) -> dict[str, float]:
    conn = http.client.HTTPConnection(host, port, timeout=5)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    return {m.group(1): float(m.group(2))
            for m in re.finditer(r'^gateway_fallbacks_total\{reason="([^"]+)"\} (\S+)', text, re.M)}


def report(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    t = Table(title="/recommend end to end (k=10)")
    for col in ("measure", "value", "target", "ok"):
        t.add_column(col)
    for key, (op, v) in TARGETS.items():
        ok = result["targets"][key]["ok"]
        t.add_row(key, f"{result[key]:.3f}" if "rate" in key else f"{result[key]:.2f}", f"{op} {v}",
                  "[green]yes[/green]" if ok else "[red]no[/red]")
    console.print(t)
    for key, title in (("stages_1client", "1 client, cache disabled"),
                       ("stages_c32", f"{result['c32']['loadgen']} c32, saturation")):
        s = Table(title=f"per-stage latency, {title} (gateway histograms, bucket-interpolated)")
        for col in ("stage", "count", "mean ms", "p50 ms", "p99 ms"):
            s.add_column(col)
        for stage, v in result[key].items():
            s.add_row(stage, str(v["count"]), f"{v['mean_ms']:.2f}", f"{v['p50_ms']:.2f}", f"{v['p99_ms']:.2f}")
        console.print(s)
    sat, at = result["c32"], result["c32_at_rate"]
    console.print(f"c32 saturation ({sat['loadgen']}, closed loop): {sat['rps']:.0f} req/s, "
                  f"{result['rps_c32']:.0f} full answers/s, p50 {sat['p50_ms']:.1f} / p99 {sat['p99_ms']:.1f} ms "
                  f"(Little's law: {result['c32'].get('connections', 32)} connections / throughput)")
    console.print(f"c32 at {result['rate_c32']:.0f} req/s offered (open loop): p50 {at['p50_ms']:.1f} / "
                  f"p99 {at['p99_ms']:.1f} ms, {at['fallbacks']} fallbacks, {at['errors']} errors, "
                  f"{at['late_sends']} late sends")
    if result["fallbacks_c32"]:
        console.print(f"[yellow]fallbacks during the c32 run: {result['fallbacks_c32']} "
                      f"({result['fallback_rate_c32']:.1%}); rps_c32 counts full answers only "
                      f"({result['rps_c32_all_answers']:.0f} req/s including fallbacks)[/yellow]")
    console.print(f"1-min load average at the end: {result['loadavg_1m_at_end']:.1f} on {result['cpu_count']} CPUs")


def main(argv: list[str] | None = None) -> dict:
    from benchmarks.harness import write_json

    p = argparse.ArgumentParser(prog="python -m benchmarks.e2e", description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=2000, help="measured requests per 1-client run")
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--duration", type=float, default=10.0, help="seconds of the 32-connection run")
    p.add_argument("--private", action="store_true", help="never reuse a running `make up` stack")
    p.add_argument("--rate", type=float, default=TARGET_RATE, help="req/s offered in the open-loop 32-connection run")
    p.add_argument("--no-wrk", action="store_true", help="use benchmarks.loadgen for the saturation run even if wrk exists")
    p.add_argument("--modes", default="", help="compare runtimes instead, e.g. grpc,inprocess (-> e2e_modes.json)")
    p.add_argument("--out", type=Path, default=None, help="default bench-results/e2e.json (e2e_modes.json with --modes)")
    args = p.parse_args([] if argv is None else argv)  # None: defaults (called from benchmarks/__main__)
    if args.modes:
        result = run_modes(args)
        report_modes(result)
        write_json(args.out or REPO_ROOT / "bench-results" / "e2e_modes.json", result)
        return result
    args.out = args.out or REPO_ROOT / "bench-results" / "e2e.json"
    result = run(args)
    report(result)
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
