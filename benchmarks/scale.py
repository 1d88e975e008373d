"""The 1M-item catalog end to end: runtimes x serving modes side by side (``python -m benchmarks scale``).

Everything runs on the scale bundle (``make artifacts-scale``: ``artifacts/scale/current`` and its
online store saved in ``data/scale/redis/online.rdb``), cache off, 500 candidates ranked per
online answer, in one run on one private Redis loaded from that RDB:

* **item snapshot** (in this process): the reader's load of the 1M-item table (seconds, RSS
  delta), the gather of 500 random items (p50/p99), and the same gather while a new snapshot
  loads on the background thread (the double-buffered swap: serving must not pause);
* **precompute**: ``python -m services.precompute`` for every known user (seconds, users/s);
* for each runtime (``grpc``: gateway + retrieval + ranking processes; ``inprocess``: the gateway
  alone) and serving mode (``online`` / ``precomputed`` / ``hybrid``), a private stack with its
  events consumer is started, measured and stopped before the next one (they never share the
  CPU): 1-client p50/p99 of ``GET /recommend?k=10``; 32-connection closed-loop saturation
  throughput of **full answers** (``wrk``; fallbacks counted apart); CPU seconds per answer of
  every process (``/proc`` utime + stime over the saturation run, the process and its children:
  a gateway's workers); RSS per process after the run; the share of answers per serving mode
  (``gateway_serving_mode_answers_total``); and freshness: a posted click on the user's first
  item until an answer no longer has it.

Writes ``bench-results/scale.json`` and prints the table.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from benchmarks.e2e import _closed_loop, one_client
from benchmarks.harness import bundle_ids, process_cpu_seconds, process_rss_mib, summary, write_json
from common.settings import REPO_ROOT

BUNDLE = REPO_ROOT / "artifacts" / "scale" / "current"
RDB = REPO_ROOT / "data" / "scale" / "redis" / "online.rdb"
SCALE_ENV = {"ARTIFACTS_DIR": str(BUNDLE), "FEAST_PROJECT": "recsys_scale",
             "FEAST_OFFLINE_DIR": str(REPO_ROOT / "data" / "scale" / "features"),
             "FEAST_DATA_DIR": str(REPO_ROOT / "data" / "scale" / "feast"), "FEAST_ONLINE_TYPE": "redis"}
TARGETS = {  # issue 13, 2-core machine
    ("grpc", "online", "p50_ms"): ("<=", 4.0),
    ("inprocess", "online", "rps_c32"): (">=", 800.0),
    ("grpc", "precomputed", "rps_c32"): (">=", 2000.0),
}


def cpu_seconds(pid: int) -> float:
    return process_cpu_seconds(pid, session=True)


def rss_mib(pid: int) -> float:
    return process_rss_mib(pid, session=True)


def wait_idle(pids: list[int], timeout: float = 180.0, window: float = 1.0, busy_s: float = 0.1) -> float:
    """Seconds until the processes (and their children) used < ``busy_s`` CPU in ``window``:
    /readyz is answered by the first worker up, while a second one may still load its bundle."""
    t0 = time.monotonic()
    last = sum(cpu_seconds(p) for p in pids)
    while time.monotonic() - t0 < timeout:
        time.sleep(window)
        now = sum(cpu_seconds(p) for p in pids)
        if now - last < busy_s:
            break
        last = now
    return time.monotonic() - t0


# -- the item snapshot ---------------------------------------------------------------------------
def snapshot_figures(redis_url: str, gathers: int = 2000) -> dict:
    """Load time, RSS delta and gather cost of the 1M-item table, and the gather's latency while a
    new snapshot loads in the background (what every ranking process does after a materialise)."""
    from prometheus_client import CollectorRegistry

    from common.settings import FeatureStoreSettings
    from feature_store.reader import build_reader, publish_item_snapshot

    settings = FeatureStoreSettings(project=SCALE_ENV["FEAST_PROJECT"], offline_dir=Path(SCALE_ENV["FEAST_OFFLINE_DIR"]),
                                    data_dir=Path(SCALE_ENV["FEAST_DATA_DIR"]), redis_url=redis_url, online_type="redis")
    pid = os.getpid()
    rss0 = rss_mib(pid)
    t = time.perf_counter()
    reader = build_reader(settings, registry=CollectorRegistry(), background_refresh=True, socket_timeout=30)
    load_s = time.perf_counter() - t
    table = reader.item_table
    ids = table.ids
    rng = np.random.default_rng(5)
    batches = [rng.choice(ids, 500, replace=False) for _ in range(64)]

    def gather(n: int) -> np.ndarray:
        lat = np.empty(n)
        for i in range(n):
            t0 = time.perf_counter()
            reader.item_features(batches[i % len(batches)])
            lat[i] = (time.perf_counter() - t0) * 1000
        return lat

    gather(200)
    idle = summary(gather(gathers))
    rss1 = rss_mib(pid)
    # a new snapshot of the same rows: published by this process, then loaded by the reader's thread
    # while this thread keeps gathering (the swap is one reference store)
    t = time.perf_counter()
    version = publish_item_snapshot(settings)
    publish_s = time.perf_counter() - t
    during: list[float] = []
    t_swap = time.perf_counter()
    while reader.item_table.version != version:
        t0 = time.perf_counter()
        reader.item_features(batches[len(during) % len(batches)])
        during.append((time.perf_counter() - t0) * 1000)
        if time.perf_counter() - t_swap > 120:
            raise RuntimeError("the background refresh never switched to the new snapshot")
    swap_s = time.perf_counter() - t_swap
    rss2 = rss_mib(pid)
    reader.close()
    return {"items": int(table.n), "load_s": round(load_s, 2), "rss_delta_mib": round(rss1 - rss0, 1),
            "table_mib": round(table.nbytes() / 2**20, 1), "gather_500": idle,
            "gather_500_during_refresh": summary(np.asarray(during)) if during else None,
            "refresh_s": round(swap_s, 2), "publish_s": round(publish_s, 1),
            "rss_after_swap_mib": round(rss2 - rss0, 1), "stall_free": bool(during) and max(during) < 250}


# -- one configuration ---------------------------------------------------------------------------
def _metric_lines(host: str, port: int, path: str = "/metrics") -> str:
    conn = http.client.HTTPConnection(host, port, timeout=5)
    conn.request("GET", path)
    text = conn.getresponse().read().decode()
    conn.close()
    return text


def serving_shares(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for m in re.finditer(r'^gateway_serving_mode_answers_total\{([^}]*)\} (\S+)', text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        key = labels.get("mode", "?") + (f"/{labels['outcome']}" if labels.get("outcome") else "")
        out[key] = out.get(key, 0.0) + float(m.group(2))
    return out


def freshness(host: str, port: int, user: str, timeout_s: float = 5.0) -> float | None:
    """ms from a 202 for a click on the user's first item until an answer without it."""
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("GET", f"/recommend?user_id={user}&k=10")
        items = json.loads(conn.getresponse().read())["items"]
        if not items:
            return None
        first = items[0]["item_id"]
        body = json.dumps({"events": [{"event_id": uuid.uuid4().hex, "user_id": user, "item_id": first,
                                       "type": "click"}]})
        conn.request("POST", "/events", body=body, headers={"content-type": "application/json"})
        r = conn.getresponse()
        r.read()
        if r.status != 202:
            return None
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < timeout_s:
            conn.request("GET", f"/recommend?user_id={user}&k=10")
            got = json.loads(conn.getresponse().read())["items"]
            if all(i["item_id"] != first for i in got):
                return round((time.perf_counter() - t0) * 1000, 1)
            time.sleep(0.002)
        return None
    finally:
        conn.close()


def measure(stack, ports, runtime: str, mode: str, users: list[str], paths: list[str], args, workdir: Path) -> dict:
    host = "127.0.0.1"
    names = ["gateway", "events", "redis"] + ([] if runtime == "inprocess" else ["retrieval", "ranking"])
    one = one_client(host, ports.gateway, paths, args.requests, args.warmup)
    pids = {n: stack.pid(n) for n in names}
    cpu0 = {n: cpu_seconds(p) for n, p in pids.items() if p}
    shares0 = serving_shares(_metric_lines(host, ports.gateway))
    load, stages, fallbacks, fallback_rate = _closed_loop(host, ports.gateway, users, args, workdir)
    cpu1 = {n: cpu_seconds(p) for n, p in pids.items() if p}
    shares1 = serving_shares(_metric_lines(host, ports.gateway))
    answers = load["requests"]
    full = answers * (1.0 - fallback_rate)
    cpu_ms = {n: round((cpu1[n] - cpu0[n]) / max(answers, 1) * 1000, 3) for n in cpu1}
    served = {k: v - shares0.get(k, 0.0) for k, v in shares1.items() if v - shares0.get(k, 0.0) > 0}
    total_served = sum(served.values()) or 1.0
    fresh = [f for f in (freshness(host, ports.gateway, u) for u in users[-3:]) if f is not None]
    return {
        "runtime": runtime, "mode": mode,
        "p50_ms": one["p50_ms"], "p99_ms": one["p99_ms"], "one_client": one,
        "rps_c32": load["rps"] * (1.0 - fallback_rate), "rps_c32_all_answers": load["rps"],
        "fallback_rate_c32": fallback_rate, "fallbacks_c32": fallbacks, "error_rate_c32": load["error_rate"],
        "p50_ms_c32_saturated": load["p50_ms"], "p99_ms_c32_saturated": load["p99_ms"], "loadgen": load["loadgen"],
        "full_answers_c32": int(full), "cpu_ms_per_answer": cpu_ms,
        "cpu_ms_per_answer_total": round(sum(cpu_ms.values()), 3),
        "rss_mib": {n: round(rss_mib(p), 1) for n, p in pids.items() if p},
        "serving_modes_c32": {k: round(v / total_served, 4) for k, v in served.items()},
        "freshness_ms": fresh, "stages_c32": stages, "loadavg_1m": round(os.getloadavg()[0], 2),
    }


# -- orchestration -------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict:
    from deploy.local import Ports, Stack, start_redis, start_services

    if not (BUNDLE / "manifest.json").is_file() or not RDB.is_file():
        raise SystemExit(f"no scale bundle ({BUNDLE}) or saved online store ({RDB}): run `make artifacts-scale`")
    runtimes = [m.strip() for m in args.runtimes.split(",") if m.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    users = [str(u) for u in bundle_ids(BUNDLE, "user_ids")]
    paths = [f"/recommend?user_id={u}&k=10" for u in random.Random(7).sample(users, len(users))]
    workdir = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    stack = Stack(workdir)
    result: dict = {"bundle": BUNDLE.resolve().name, "users": len(users), "k": 10, "num_candidates": 500,
                    "cache": "off", "cpu_count": os.cpu_count(), "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
                    "configs": []}
    service_env = {**SCALE_ENV, "RETRIEVAL_LOG_LEVEL": "WARNING", "RANKING_LOG_LEVEL": "WARNING",
                   "GATEWAY_LOG_LEVEL": "WARNING"}
    try:
        t = time.perf_counter()
        redis_url = start_redis(stack, rdb=RDB, timeout=300)
        result["redis_load_s"] = round(time.perf_counter() - t, 1)
        print(f"redis {redis_url} loaded {RDB.name} in {result['redis_load_s']}s", flush=True)
        if not args.skip_snapshot:
            result["snapshot"] = snapshot_figures(redis_url)
            print(f"item snapshot: {json.dumps(result['snapshot'])}", flush=True)
        if {"precomputed", "hybrid"} & set(modes):
            t = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "services.precompute"], cwd=REPO_ROOT,
                                  env={**os.environ, **SCALE_ENV, "REDIS_URL": redis_url, "PRECOMPUTE_TOP_N": "500"},
                                  capture_output=True, text=True, timeout=1800)
            if done.returncode != 0:
                raise SystemExit(f"precompute failed:\n{done.stdout}\n{done.stderr}")
            secs = time.perf_counter() - t
            result["precompute"] = {"seconds": round(secs, 1), "users": len(users),
                                    "users_per_s": round(len(users) / secs, 1),
                                    "output_tail": done.stdout.strip().splitlines()[-3:]}
            print(f"precompute: {len(users)} users in {secs:.1f}s", flush=True)
        for runtime in runtimes:
            for mode in modes:
                ports = Ports.free()
                print(f"{runtime} / {mode}: starting a private stack (logs in {workdir})…", flush=True)
                t = time.perf_counter()
                start_services(stack, ports, redis_url, extra_env=service_env, mode=runtime, events=True,
                               gateway_env={"GATEWAY_CACHE_TTL_S": "0", "GATEWAY_NUM_CANDIDATES": "500",
                                            "GATEWAY_SERVING_MODE": mode}, timeout=300)
                idle_s = wait_idle([p for n in ("gateway", "retrieval", "ranking") if (p := stack.pid(n))])
                row = measure(stack, ports, runtime, mode, users, paths, args, workdir)
                row["settle_s"] = round(idle_s, 1)
                row["start_s"] = round(time.perf_counter() - t, 1)
                result["configs"].append(row)
                print(f"  p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms, {row['rps_c32']:.0f} full answers/s, "
                      f"{row['cpu_ms_per_answer_total']:.2f} ms CPU/answer, modes {row['serving_modes_c32']}", flush=True)
                for name in ("gateway", "events", "ranking", "retrieval"):  # the next one gets the whole machine
                    if stack.pid(name) is not None:
                        stack.stop(name)
    finally:
        stack.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    by = {(c["runtime"], c["mode"]): c for c in result["configs"]}
    result["targets"] = {}
    for (runtime, mode, key), (op, v) in TARGETS.items():
        if (runtime, mode) in by:
            got = by[(runtime, mode)][key]
            result["targets"][f"{runtime}/{mode}/{key}"] = {"target": f"{op} {v}", "value": round(got, 2),
                                                           "ok": got <= v if op == "<=" else got >= v}
    result["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    return result


def report(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=180)
    t = Table(title=f"1M items, cache off, k=10, {result['num_candidates']} candidates ranked online "
                    f"({result['cpu_count']} CPUs)")
    for col in ("runtime", "mode", "1-client p50 ms", "p99 ms", "c32 full answers/s", "fallback share",
                "CPU ms/answer (per process)", "RSS MiB (per process)", "served as", "freshness ms"):
        t.add_column(col)
    for c in result["configs"]:
        t.add_row(c["runtime"], c["mode"], f"{c['p50_ms']:.2f}", f"{c['p99_ms']:.2f}", f"{c['rps_c32']:.0f}",
                  f"{c['fallback_rate_c32']:.3f}",
                  f"{c['cpu_ms_per_answer_total']:.2f} (" + ", ".join(f"{k} {v:.2f}" for k, v in c["cpu_ms_per_answer"].items()) + ")",
                  ", ".join(f"{k} {v:.0f}" for k, v in c["rss_mib"].items()),
                  ", ".join(f"{k} {v:.0%}" for k, v in c["serving_modes_c32"].items()),
                  "/".join(f"{f:.0f}" for f in c["freshness_ms"]) or "-")
    console.print(t)
    snap = result.get("snapshot")
    if snap:
        during = snap["gather_500_during_refresh"]
        console.print(f"item snapshot: {snap['items']:,} items loaded in {snap['load_s']} s, RSS +{snap['rss_delta_mib']} MiB "
                      f"(table {snap['table_mib']} MiB); gather of 500: p50 {snap['gather_500']['p50_ms']} / p99 "
                      f"{snap['gather_500']['p99_ms']} ms idle, p50 {during['p50_ms'] if during else '-'} / p99 "
                      f"{during['p99_ms'] if during else '-'} / max {during['max_ms'] if during else '-'} ms during a "
                      f"{snap['refresh_s']} s background refresh")
    if "precompute" in result:
        p = result["precompute"]
        console.print(f"precompute: {p['users']} users in {p['seconds']} s ({p['users_per_s']} users/s)")
    for key, v in result["targets"].items():
        console.print(f"{key} = {v['value']} (target {v['target']}): {'[green]met[/green]' if v['ok'] else '[red]MISSED[/red]'}")
    console.print(f"1-min load average {result['loadavg_1m_at_start']} at start, {result['loadavg_1m_at_end']} at the end")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--runtimes", default="grpc,inprocess")
    p.add_argument("--modes", default="online,precomputed,hybrid")
    p.add_argument("--requests", type=int, default=1000, help="measured requests of each 1-client run")
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--duration", type=float, default=10.0, help="seconds of each 32-connection run")
    p.add_argument("--no-wrk", action="store_true")
    p.add_argument("--skip-snapshot", action="store_true", help="skip the in-process item snapshot figures")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench-results" / "scale.json")
    args = p.parse_args([] if argv is None else argv)
    result = run(args)
    report(result)
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
