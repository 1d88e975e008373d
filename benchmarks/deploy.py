"""Shipping a model, measured: a hot swap under load, the shadow ranker's cost, the swap's memory.

``python -m benchmarks deploy`` (part of ``make bench``) or ``python -m benchmarks.deploy
[--quick] [--skip-scale] [--rate 200] [--phase-s 10]``. Everything runs on private processes on
free ports: a private ``redis-server`` with the bundle's features materialised (as
``benchmarks.e2e`` does), retrieval, ranking and a gateway in ``grpc`` mode with the response
cache off (``GATEWAY_CACHE_TTL_S=0``: every request runs the whole pipeline), over a private
artifacts root holding ``v1`` and ``v2``, two copies of ``artifacts/current`` (files hardlinked,
``manifest.json`` a real copy with its version edited) with ``current -> v1``. Every
``*_RELOAD_POLL_S`` is 1 s (the default) and ``*_KEEP_PREVIOUS_S`` the default 30 s.

1. **Swap under load.** ``/recommend`` at ``--rate`` req/s, open loop, for ``3 x --phase-s``
   seconds from ONE load-generator process; ``--phase-s`` seconds in, ``current`` is switched
   v1 -> v2 (:meth:`common.deployments.Deployments.switch`, what ``make publish`` does after its
   checks). The load generator is :mod:`benchmarks.loadgen` itself (its open-loop schedule,
   connections and due-time latencies), run by ``python -m benchmarks.deploy client`` with a
   :class:`~benchmarks.loadgen.Tally` that also keeps one record per answer: its due time
   (``CLOCK_MONOTONIC``, the same clock in every process), latency, status, fallback rung and
   the ``model_version`` of the body; on asyncio's own event loop rather than uvloop, whose
   clock has a resolution of 1 ms. The phases are cut from those records by due time, so one
   uninterrupted load is split without a gap or a restart around the switch:

   * *before*: from the first measured request to the switch;
   * *during*: from the switch until retrieval and ranking both serve v2 (their ``/status`` on
     the metrics port: ``default``) and the gateway pins requests to it (``/readyz``:
     ``deployment.current``), plus ``--settle-s`` (3 s);
   * *after*: the rest of the run.

   Per phase: requests, errors (non-200 or socket errors: must be 0), fallbacks (a 200 whose
   ``fallback`` is not null, by rung; the gateway's ``gateway_fallbacks_total`` and
   ``gateway_dependency_errors_total`` scraped at the phase boundaries say why), p50/p99 and which
   version answered. The swap's timeline: switch -> each service serves v2 (polled every 50 ms;
   its ``last_load`` and ``recsys_bundle_reload_seconds``: load + verify + build + warm-up) ->
   the gateway pins v2. **Memory**: VmRSS of retrieval and ranking from ``/proc/<pid>/status``
   every 20 ms for the whole run and until the replaced arm is dropped (30 s after the switch):
   steady state (median before the switch), peak from the switch on, their ratio; and VmHWM, the
   kernel's exact peak, before the switch and at the end.
2. **Shadow cost.** With v2 current, ``/recommend`` at the same rate in four ``--phase-s``
   segments, shadow ranker off, on (``Deployments.set_shadow("v1")``, then waiting until
   ranking's ``/status`` names it), off, on: machine noise hits both conditions. Per segment and
   pooled per condition: p50/p99; the ratio of the pooled p99s on / off (target <= 1.05); and
   ranking's ``recsys_shadow_total`` by outcome (scored, dropped) from its ``/metrics``.
3. **1M-item memory during a swap** (``artifacts/scale/current``, ``python -m models scale``):
   retrieval alone (the scale bundle's synthetic items have no features in the online store, so
   ranking cannot serve it) on a root with two hardlinked copies ``s1``/``s2``; a light Retrieve
   client (k = 500, ~20 calls/s) keeps calling; RSS sampled as above: steady, peak during the
   load of ``s2``, ratio, load seconds. Skipped, saying how to build it, when the bundle is absent.

Writes ``bench-results/deploy.json`` (:func:`benchmarks.harness.write_json`, with the machine).
``--quick``: 3-second phases, for a smoke run (figures not meaningful).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.harness import process_cpu_seconds
from common.settings import REPO_ROOT
from common.stats import percentile

NAME = "deploy"
SHADOW_TARGET = 1.05  # p99 with the shadow ranker on / off
ACTOR = "benchmarks.deploy"
_VERSION = re.compile(rb'"model_version":"([^"]*)"')
_FALLBACK = re.compile(rb'"fallback":(null|"([^"]*)")')


# -- the load generator's process -------------------------------------------------------------
def client_main(argv: list[str]) -> None:
    """``python -m benchmarks.deploy client URL ...``: :func:`benchmarks.loadgen.open_loop`, its
    Tally extended to keep (due time, latency ms, status, model_version, fallback) per answer.
    Prints ``started <monotonic>`` at once, writes ``--out`` (summary + records) at the end."""
    import asyncio
    import random

    from benchmarks import loadgen

    p = argparse.ArgumentParser(prog="python -m benchmarks.deploy client")
    p.add_argument("url")
    p.add_argument("--users-file", type=Path, required=True)
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--timeout", type=float, default=5.0)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    records: list[tuple] = []

    class RecordingTally(loadgen.Tally):
        def record(self, seconds: float, status: int | None, body: bytes) -> None:
            super().record(seconds, status, body)
            version, fallback = _VERSION.search(body), _FALLBACK.search(body)
            records.append((round(time.monotonic() - seconds, 4), round(seconds * 1000.0, 3), status or 0,
                            version.group(1).decode() if version else None,
                            fallback.group(2).decode() if fallback and fallback.group(2) is not None else None))

    loadgen.Tally = RecordingTally  # open_loop builds its tally from the module's name
    users = json.loads(args.users_file.read_text())
    rng = random.Random(11)  # the paths benchmarks.loadgen itself would send
    paths = [f"/recommend?user_id={rng.choice(users)}&k={args.k}" for _ in range(max(1000, len(users)))]
    # the standard event loop, not uvloop (benchmarks.loadgen's choice): uvloop's loop.time() is
    # libuv's millisecond clock, cached per loop iteration, so every latency would be a whole ms;
    # asyncio's is time.monotonic() (CLOCK_MONOTONIC, also the clock of the records' due times)
    print(f"started {time.monotonic()}", flush=True)
    summary = asyncio.run(loadgen.open_loop(args.url, paths, args.rate, args.connections, args.duration,
                                       args.warmup, args.timeout))
    args.out.write_text(json.dumps({"summary": summary, "records": records}))


class Load:
    """One load-generator process (:func:`client_main`) against ``url``."""

    def __init__(self, url: str, users_file: Path, rate: float, duration: float, workdir: Path, name: str,
                 connections: int = 32, warmup: float = 1.0) -> None:
        self.out = workdir / f"load-{name}.json"
        self.log = workdir / f"load-{name}.log"
        self.warmup = warmup
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.deploy", "client", url, "--users-file", str(users_file),
                 "--rate", str(rate), "--duration", str(duration), "--warmup", str(warmup),
                 "--connections", str(connections), "--out", str(self.out)],
                cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("started "):
            self.proc.wait(30)
            raise RuntimeError(f"load generator did not start: {line!r}\n{self.log.read_text()[-2000:]}")
        # its first measured request is due 0.05 s (open_loop's start) + the warm-up after this
        self.measure_start = float(line.split()[1]) + 0.05 + warmup
        self.duration = duration

    def result(self) -> dict:
        rc = self.proc.wait(timeout=self.duration + self.warmup + 120)
        self.proc.stdout.close()
        if rc != 0 or not self.out.is_file():
            raise RuntimeError(f"load generator exited with {rc}:\n{self.log.read_text()[-2000:]}")
        return json.loads(self.out.read_text())


def window(records: list, t0: float, t1: float) -> dict:
    """Figures of the answers due in [t0, t1)."""
    sel = [r for r in records if t0 <= r[0] < t1]
    lat = [r[1] for r in sel]
    ok = [r for r in sel if r[2] == 200]
    fallbacks = Counter(r[4] for r in ok if r[4] is not None)
    versions = Counter(r[3] or "?" for r in ok)
    return {"seconds": round(t1 - t0, 2), "requests": len(sel), "errors": len(sel) - len(ok),
            "fallbacks": sum(fallbacks.values()), "fallback_rate": round(sum(fallbacks.values()) / max(len(sel), 1), 4),
            "fallbacks_by_rung": dict(fallbacks), "p50_ms": _r(percentile(lat, 50)), "p90_ms": _r(percentile(lat, 90)),
            "p99_ms": _r(percentile(lat, 99)), "max_ms": _r(max(lat, default=float("nan"))),
            "answered_by": dict(sorted(versions.items()))}


def _r(x: float | None, nd: int = 2) -> float | None:
    return None if x is None or x != x else round(x, nd)


# -- what the processes say about themselves ---------------------------------------------------
def proc_memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (kB) of ``pid``."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line[:5]] = int(line.split()[1])
    return out


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds (user + system) each pid has used so far."""
    return {name: process_cpu_seconds(pid) for name, pid in pids.items()}


def timeline(records: list, t_ref: float, t0: float, t1: float, bucket: float = 0.5) -> list[dict]:
    """Per ``bucket`` seconds of due time in [t0, t1), from ``t_ref``: requests, fallbacks, p99."""
    out: dict[int, list] = {}
    for r in records:
        if t0 <= r[0] < t1:
            out.setdefault(int((r[0] - t_ref) // bucket), []).append(r)
    return [{"t_s": round(b * bucket, 2), "requests": len(rs), "fallbacks": sum(1 for r in rs if r[2] == 200 and r[4]),
             "errors": sum(1 for r in rs if r[2] != 200), "p99_ms": _r(percentile([r[1] for r in rs], 99))}
            for b, rs in sorted(out.items())]


class RssSampler(threading.Thread):
    """VmRSS (kB) of each named pid every ``period`` s: ``samples`` = [(monotonic, {name: kB})]."""

    def __init__(self, pids: dict[str, int], period: float = 0.02) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.pids, self.period = pids, period
        self.samples: list[tuple[float, dict[str, int]]] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            row = {}
            for name, pid in self.pids.items():
                try:
                    row[name] = proc_memory(pid)["VmRSS"]
                except (OSError, KeyError):
                    continue
            self.samples.append((time.monotonic(), row))
            self._stop_event.wait(self.period)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)

    def series(self, name: str, t_ref: float, bucket: float = 0.25) -> list[list[float]]:
        """[seconds from ``t_ref``, max MiB] per ``bucket`` seconds: the shape of the curve."""
        out: dict[int, int] = {}
        for t, row in self.samples:
            if name in row:
                b = int((t - t_ref) // bucket)
                out[b] = max(out.get(b, 0), row[name])
        return [[round(b * bucket, 2), round(v / 1024, 1)] for b, v in sorted(out.items())]

    def summary(self, name: str, t_switch: float, t_from: float | None = None, t_drop: float | None = None) -> dict:
        """Steady (median of [t_from, t_switch)), peak from the switch on, ratio; MiB."""
        before = [row[name] for t, row in self.samples if (t_from is None or t >= t_from) and t < t_switch and name in row]
        after = [row[name] for t, row in self.samples if t >= t_switch and name in row]
        dropped = [row[name] for t, row in self.samples if t_drop is not None and t >= t_drop and name in row]
        if not before or not after:
            return {"samples": len(self.samples)}
        steady, peak = statistics.median(before), max(after)
        peak_t = next(t for t, row in self.samples if t >= t_switch and row.get(name) == peak)
        return {"steady_mib": round(steady / 1024, 1), "peak_mib": round(peak / 1024, 1),
                "peak_ratio": round(peak / steady, 3), "peak_at_s_after_switch": round(peak_t - t_switch, 2),
                "after_drop_mib": round(statistics.median(dropped) / 1024, 1) if dropped else None,
                "samples_before": len(before), "samples_after": len(after),
                "period_ms": round(self.period * 1000)}


def get_json(client, url: str) -> dict | None:
    import httpx

    try:
        return client.get(url).json()
    except (httpx.HTTPError, ValueError):
        return None


def scrape(url: str, families: tuple[str, ...]) -> dict[str, float]:
    """Samples of the named families from a Prometheus ``/metrics`` page, as 'name{labels}' -> value."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(url, timeout=5).text):
        if family.name in families:  # a counter's family is named without its _total
            for s in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}"] = s.value
    return out


def diff(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: round(v - before.get(k, 0.0), 3) for k, v in after.items() if v - before.get(k, 0.0) > 0}


def wait_for(fn, timeout: float, what: str, period: float = 0.05) -> float:
    """Call ``fn`` until truthy; returns the monotonic time it became so."""
    deadline = time.monotonic() + timeout
    while True:
        if fn():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout:.0f}s")
        time.sleep(period)


# -- bundles -----------------------------------------------------------------------------------
def link_bundle(src: Path, root: Path, version: str) -> Path:
    """``src`` as ``root/version``: every file hardlinked (copied across file systems) except
    ``manifest.json``, a real copy whose ``version`` says ``version``."""
    src, target = Path(src).resolve(), root / version
    for folder, _, files in os.walk(src):
        out = target / Path(folder).relative_to(src)
        out.mkdir(parents=True, exist_ok=True)
        for name in files:
            if Path(folder) == src and name == "manifest.json":
                continue
            try:
                os.link(Path(folder) / name, out / name)
            except OSError:
                shutil.copy2(Path(folder) / name, out / name)
    manifest = json.loads((src / "manifest.json").read_text())
    manifest["version"] = version
    (target / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return target


def make_root(src: Path, root: Path, versions: tuple[str, ...]) -> Path:
    from common.deployments import Deployments

    root.mkdir(parents=True)
    for v in versions:
        link_bundle(src, root, v)
    Deployments(root).switch(versions[0], action="publish", why="benchmark start", actor=ACTOR)
    return root


# -- 1. the swap under load --------------------------------------------------------------------
def swap_under_load(args, stack, ports, url: str, root: Path, users_file: Path, workdir: Path) -> dict:
    import httpx

    from common.deployments import Deployments

    status_url = {"retrieval": f"http://127.0.0.1:{ports.retrieval_metrics}/status",
                  "ranking": f"http://127.0.0.1:{ports.ranking_metrics}/status"}
    metrics_url = {"retrieval": f"http://127.0.0.1:{ports.retrieval_metrics}/metrics",
                   "ranking": f"http://127.0.0.1:{ports.ranking_metrics}/metrics"}
    gw_families = ("gateway_fallbacks", "gateway_dependency_errors")
    pids = {n: stack.pid(n) for n in ("retrieval", "ranking")}
    hwm_start = {n: proc_memory(p)["VmHWM"] for n, p in pids.items()}
    sampler = RssSampler(pids)
    sampler.start()
    total = 3 * args.phase_s
    print(f"swap: /recommend at {args.rate:.0f} req/s for {total:.0f}s; current v1 -> v2 after {args.phase_s:.0f}s…",
          flush=True)
    load = Load(url, users_file, args.rate, total, workdir, "swap", args.connections)
    time.sleep(max(0.0, load.measure_start - time.monotonic()))
    gw_start = scrape(f"{url}/metrics", gw_families)  # the warm-up second's fallbacks are not counted
    cpu_pids = {n: stack.pid(n) for n in ("gateway", "retrieval", "ranking")}
    cpu_start, t_cpu_start = cpu_seconds(cpu_pids), time.monotonic()
    time.sleep(max(0.0, load.measure_start + args.phase_s - time.monotonic()))
    gw_0 = scrape(f"{url}/metrics", gw_families)
    cpu_0 = cpu_seconds(cpu_pids)
    hwm_before = {n: proc_memory(p)["VmHWM"] for n, p in pids.items()}
    t_switch = time.monotonic()
    Deployments(root).switch("v2", action="publish", why="swap under load", actor=ACTOR)
    seen: dict[str, float] = {}
    last_load: dict[str, Any] = {}
    with httpx.Client(timeout=2.0) as c:
        def progressed() -> bool:
            for name, u in status_url.items():
                if name not in seen and (st := get_json(c, u)) and st.get("default") == "v2":
                    seen[name], last_load[name] = time.monotonic(), st.get("last_load")
            if "gateway" not in seen and (body := get_json(c, f"{url}/readyz")) \
                    and (body.get("deployment") or {}).get("current") == "v2":
                seen["gateway"] = time.monotonic()
            return len(seen) == 3
        t_all = wait_for(progressed, 60 + total, "the swap to v2")
    during_end = max(t_all + args.settle_s, t_switch + 0.5)
    time.sleep(max(0.0, during_end - time.monotonic()))
    gw_1 = scrape(f"{url}/metrics", gw_families)
    cpu_1, t_cpu_1 = cpu_seconds(cpu_pids), time.monotonic()
    out = load.result()
    gw_2 = scrape(f"{url}/metrics", gw_families)
    cpu_2, t_cpu_2 = cpu_seconds(cpu_pids), time.monotonic()
    load_end = load.measure_start + total
    reload_seconds = {n: scrape(u, ("recsys_bundle_reload_seconds",)) for n, u in metrics_url.items()}
    # keep sampling until both services dropped v1 (RETRIEVAL/RANKING_KEEP_PREVIOUS_S after the switch)
    with httpx.Client(timeout=2.0) as c:
        def dropped() -> bool:
            return all((st := get_json(c, u)) is not None and "v1" not in st.get("arms", ["v1"])
                       for u in status_url.values())
        try:
            t_drop = wait_for(dropped, 90, "v1 dropped", period=0.2)
        except RuntimeError:
            t_drop = None
    time.sleep(1.0)  # a few samples once the old arm is gone
    sampler.stop()
    hwm_end = {n: proc_memory(p)["VmHWM"] for n, p in pids.items()}
    records = out["records"]
    phases = {"before": window(records, load.measure_start, t_switch),
              "during": window(records, t_switch, during_end),
              "after": window(records, during_end, load_end)}
    phases["before"]["gateway_counters"] = diff(gw_0, gw_start)
    phases["during"]["gateway_counters"] = diff(gw_1, gw_0)
    phases["after"]["gateway_counters"] = diff(gw_2, gw_1)
    for name, (a, b, ta, tb) in {"before": (cpu_start, cpu_0, t_cpu_start, t_switch),
                                 "during": (cpu_0, cpu_1, t_switch, t_cpu_1),
                                 "after": (cpu_1, cpu_2, t_cpu_1, t_cpu_2)}.items():
        phases[name]["cores"] = {n: round((b[n] - a[n]) / max(tb - ta, 1e-9), 2) for n in a}
    v2_due = [r[0] for r in records if r[3] == "v2"]
    v1_due = [r[0] for r in records if r[3] == "v1"]
    memory = {}
    for n in pids:
        memory[n] = {**sampler.summary(n, t_switch, t_from=load.measure_start, t_drop=t_drop),
                     "hwm_at_start_mib": round(hwm_start[n] / 1024, 1),
                     "hwm_before_switch_mib": round(hwm_before[n] / 1024, 1), "hwm_end_mib": round(hwm_end[n] / 1024, 1),
                     "series_from_switch": sampler.series(n, t_switch)}
    swap_timeline = {
        "retrieval_serves_v2_s": round(seen["retrieval"] - t_switch, 3),
        "ranking_serves_v2_s": round(seen["ranking"] - t_switch, 3),
        "gateway_pins_v2_s": round(seen["gateway"] - t_switch, 3),
        "all_v2_s": round(t_all - t_switch, 3),
        "first_v2_answer_due_s": round(min(v2_due) - t_switch, 3) if v2_due else None,
        "last_v1_answer_due_s": round(max(v1_due) - t_switch, 3) if v1_due else None,
        "v1_dropped_s": round(t_drop - t_switch, 2) if t_drop else None,
        "last_load": last_load,
        "reload_seconds_gauge": {n: next(iter(v.values()), None) for n, v in reload_seconds.items()},
        "poll_period_ms": 50,
    }
    around = timeline(records, t_switch, t_switch - 2.0, during_end + 2.0)
    return {"phases": phases, "timeline": swap_timeline, "around_switch_500ms": around, "memory": memory, "settle_s": args.settle_s,
            "loadgen": {k: v for k, v in out["summary"].items()}, "rate": args.rate, "phase_s": args.phase_s}


# -- 2. the shadow ranker's cost ---------------------------------------------------------------
def shadow_cost(args, stack, ports, url: str, root: Path, users_file: Path, workdir: Path) -> dict:
    import httpx

    from common.deployments import Deployments

    status_url = f"http://127.0.0.1:{ports.ranking_metrics}/status"
    metrics_url = f"http://127.0.0.1:{ports.ranking_metrics}/metrics"
    families = ("recsys_shadow", "recsys_shadow_seconds")
    deployments = Deployments(root)
    pids = {n: stack.pid(n) for n in ("gateway", "retrieval", "ranking")}
    segments, pooled = [], {"off": [], "on": []}
    shadow_on = False
    with httpx.Client(timeout=2.0) as c:
        for i, state in enumerate(("off", "on", "off", "on")):
            want = state == "on"
            if want != shadow_on:
                deployments.set_shadow("v1" if want else None, why="shadow cost benchmark", actor=ACTOR)
                t = time.monotonic()
                wait_for(lambda w=want: (st := get_json(c, status_url)) is not None
                         and st.get("shadow") == ("v1" if w else None), 120, f"ranking's shadow {state}")
                print(f"  shadow {state} after {time.monotonic() - t:.2f}s", flush=True)
                shadow_on = want
            before = scrape(metrics_url, families)
            cpu_a, t_a = cpu_seconds(pids), time.monotonic()
            print(f"shadow {state}: /recommend at {args.rate:.0f} req/s for {args.phase_s:.0f}s…", flush=True)
            load = Load(url, users_file, args.rate, args.phase_s, workdir, f"shadow-{i}-{state}", args.connections)
            out = load.result()
            after = scrape(metrics_url, families)
            cpu_b, t_b = cpu_seconds(pids), time.monotonic()
            records = out["records"]
            pooled[state].extend(records)
            seg = {"segment": i + 1, "shadow": state,
                   **window(records, load.measure_start, load.measure_start + args.phase_s),
                   "late_sends": out["summary"].get("late_sends"),
                   "loadavg_1m": round(os.getloadavg()[0], 2)}
            seg["cores"] = {n: round((cpu_b[n] - cpu_a[n]) / (t_b - t_a), 2) for n in pids}
            seg["shadow_total"] = _outcomes(diff(after, before))
            seg["shadow_mean_ms"] = _mean_ms(diff(after, before), "recsys_shadow_seconds")
            segments.append(seg)
            print(f"  p50 {seg['p50_ms']} / p99 {seg['p99_ms']} ms, {seg['errors']} errors, {seg['fallbacks']} "
                  f"fallbacks, shadow {seg['shadow_total']}", flush=True)
        if shadow_on:
            deployments.set_shadow(None, why="shadow cost benchmark done", actor=ACTOR)
    cond = {s: window(r, float("-inf"), float("inf")) for s, r in pooled.items()}
    for s in cond:
        cond[s].pop("seconds", None)
        cond[s]["shadow_total"] = _sum_outcomes([g["shadow_total"] for g in segments if g["shadow"] == s])
    ratio = cond["on"]["p99_ms"] / cond["off"]["p99_ms"] if cond["off"]["p99_ms"] else None
    return {"segments": segments, "off": cond["off"], "on": cond["on"],
            "p99_ratio_on_off": _r(ratio, 3), "p50_ratio_on_off": _r(cond["on"]["p50_ms"] / cond["off"]["p50_ms"], 3)
            if cond["off"]["p50_ms"] else None,
            "target": f"p99 on / off <= {SHADOW_TARGET}", "met": ratio is not None and ratio <= SHADOW_TARGET,
            "rate": args.rate, "segment_s": args.phase_s}


def _outcomes(d: dict[str, float]) -> dict[str, int]:
    out: Counter = Counter()
    for k, v in d.items():
        if k.startswith("recsys_shadow_total{") and (m := re.search(r'outcome="([^"]+)"', k)):
            out[m.group(1)] += int(v)
    return dict(out)


def _sum_outcomes(items: list[dict[str, int]]) -> dict[str, int]:
    out: Counter = Counter()
    for d in items:
        out.update(d)
    return dict(out)


def _mean_ms(d: dict[str, float], family: str) -> float | None:
    s = sum(v for k, v in d.items() if k.startswith(f"{family}_sum"))
    n = sum(v for k, v in d.items() if k.startswith(f"{family}_count"))
    return round(1000 * s / n, 3) if n else None


# -- 3. the 1M-item bundle --------------------------------------------------------------------
def scale_swap(args, stack, redis_url: str | None, workdir: Path) -> dict:
    import grpc
    import httpx
    import numpy as np

    from benchmarks.harness import wait_serving
    from common.bundle import load_bundle
    from common.deployments import Deployments
    from common.proto.recsys.v1 import retrieval_pb2, retrieval_pb2_grpc
    from deploy.local import Ports, service_env

    src = Path(args.scale_bundle)
    if not (src / "manifest.json").is_file():
        how = "python -m models scale --candidates ivf_flat  (or make artifacts-scale; several minutes)"
        print(f"no 1M-item bundle at {src}: skipping the scale case; build it with: {how}", flush=True)
        return {"skipped": f"no bundle at {src}; build it with `{how}`"}
    manifest = load_bundle(src, verify=False).manifest
    root = make_root(src, workdir / "scale-artifacts", ("s1", "s2"))
    size_mb = sum(f.stat().st_size for f in (root / "s1").rglob("*") if f.is_file()) / 2**20
    ports = Ports.free()
    env = service_env(ports, redis_url, {"ARTIFACTS_DIR": str(root / "current"), "RETRIEVAL_RELOAD_POLL_S": "1"})
    print(f"scale: retrieval alone on the {manifest.get('index', {}).get('ntotal', '?')}-item bundle "
          f"({size_mb:.0f} MiB)…", flush=True)
    t = time.monotonic()
    proc = stack.start_module("retrieval-scale", "services.retrieval", env)
    address = f"127.0.0.1:{ports.retrieval}"
    wait_serving(address, proc, 1800)
    startup_s = time.monotonic() - t
    status_url = f"http://127.0.0.1:{ports.retrieval_metrics}/status"
    pid = stack.pid("retrieval-scale")
    hwm_start = proc_memory(pid)["VmHWM"]
    sampler = RssSampler({"retrieval": pid})
    sampler.start()
    users = np.load(load_bundle(src, verify=False).path("user_ids"), allow_pickle=False)[1:]
    calls: list[tuple[float, float, bool, str]] = []
    stop = threading.Event()

    def client() -> None:  # keeps calling during the swap: a swap must not stop the service answering
        with grpc.insecure_channel(address) as ch:
            stub = retrieval_pb2_grpc.RetrievalServiceStub(ch)
            i = 0
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    r = stub.Retrieve(retrieval_pb2.RetrieveRequest(user_id=str(users[i % len(users)]), k=500), timeout=5)
                    calls.append((t0, (time.monotonic() - t0) * 1000, True, r.model_version))
                except grpc.RpcError:
                    calls.append((t0, (time.monotonic() - t0) * 1000, False, ""))
                i += 1
                stop.wait(max(0.0, 0.05 - (time.monotonic() - t0)))

    th = threading.Thread(target=client, daemon=True)
    th.start()
    time.sleep(args.scale_steady_s)
    t_switch = time.monotonic()
    hwm_before = proc_memory(pid)["VmHWM"]
    Deployments(root).switch("s2", action="publish", why="1M-item swap", actor=ACTOR)
    last: dict = {}
    with httpx.Client(timeout=5.0) as c:
        def loaded() -> bool:
            st = get_json(c, status_url)
            if st and st.get("default") == "s2":
                last.update(st.get("last_load") or {})
                return True
            return False
        t_loaded = wait_for(loaded, 1800, "the 1M-item s2 loaded", period=0.1)
        time.sleep(2.0)
        t_stop_calls = time.monotonic()
        stop.set()
        th.join(10)

        def dropped() -> bool:
            st = get_json(c, status_url)
            return st is not None and "s1" not in st.get("arms", ["s1"])
        try:
            t_drop = wait_for(dropped, 90, "s1 dropped", period=0.2)
        except RuntimeError:
            t_drop = None
    time.sleep(1.0)
    sampler.stop()
    hwm_end = proc_memory(pid)["VmHWM"]
    stack.stop("retrieval-scale", timeout=30)

    def calls_in(t0: float, t1: float) -> dict:
        sel = [c for c in calls if t0 <= c[0] < t1]
        lat = [c[1] for c in sel if c[2]]
        return {"calls": len(sel), "errors": sum(1 for c in sel if not c[2]), "p50_ms": _r(percentile(lat, 50)),
                "p99_ms": _r(percentile(lat, 99)), "max_ms": _r(max(lat, default=float("nan"))),
                "answered_by": dict(Counter(c[3] for c in sel if c[2]))}

    return {"bundle": manifest.get("version"), "items": manifest.get("index", {}).get("ntotal"),
            "index": manifest.get("index", {}).get("factory") or manifest.get("index", {}).get("type"),
            "bundle_mib": round(size_mb, 1), "startup_s": round(startup_s, 1),
            "load_s": last.get("seconds"), "serves_s2_after_s": round(t_loaded - t_switch, 2),
            "s1_dropped_after_s": round(t_drop - t_switch, 1) if t_drop else None,
            "memory": {**sampler.summary("retrieval", t_switch, t_drop=t_drop),
                       "hwm_at_start_mib": round(hwm_start / 1024, 1), "hwm_before_switch_mib": round(hwm_before / 1024, 1),
                       "hwm_end_mib": round(hwm_end / 1024, 1), "series_from_switch": sampler.series("retrieval", t_switch)},
            "retrieve_k500_before": calls_in(float("-inf"), t_switch),
            "retrieve_k500_during": calls_in(t_switch, t_stop_calls),
            "ranking": "not run: the synthetic items have no features in the online store"}


# -- orchestration -----------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict:
    from benchmarks.e2e import _private_redis
    from benchmarks.harness import bundle_ids
    from common.settings import ArtifactSettings
    from deploy.local import Ports, Stack, start_services

    bundle = ArtifactSettings().artifacts_dir
    if not (bundle / "manifest.json").is_file():
        raise SystemExit(f"no bundle at {bundle}: run `make artifacts` first")
    run_dir = REPO_ROOT / "run"
    workdir = Path(tempfile.mkdtemp(prefix="bench-deploy-", dir=run_dir if run_dir.is_dir() else None))
    stack = Stack(workdir)
    ok = False
    result: dict = {"bundle": bundle.resolve().name}
    try:
        users_file = workdir / "users.json"
        users_file.write_text(json.dumps([str(u) for u in bundle_ids(bundle, "user_ids")]))
        root = make_root(bundle, workdir / "artifacts", ("v1", "v2"))
        redis_url = _private_redis(stack)
        ports = Ports.free()
        print(f"starting retrieval, ranking, gateway (grpc, cache off) over {root} (logs in {workdir})…", flush=True)
        polls = {"RETRIEVAL_RELOAD_POLL_S": "1", "RANKING_RELOAD_POLL_S": "1", "GATEWAY_RELOAD_POLL_S": "1"}
        url = start_services(stack, ports, redis_url, extra_env={"ARTIFACTS_DIR": str(root / "current"), **polls},
                             gateway_env={"GATEWAY_CACHE_TTL_S": "0", "GATEWAY_MODE": "grpc"})
        result["redis"] = "private redis-server" if redis_url else "embedded SQLite"
        result["loadavg_1m_at_start"] = round(os.getloadavg()[0], 2)
        result["swap"] = swap_under_load(args, stack, ports, url, root, users_file, workdir)
        result["shadow"] = shadow_cost(args, stack, ports, url, root, users_file, workdir)
        for name in ("gateway", "ranking", "retrieval"):  # the scale case gets the machine (Redis stays)
            stack.stop(name, timeout=30)
        result["scale"] = {"skipped": "--skip-scale"} if args.skip_scale else scale_swap(args, stack, redis_url, workdir)
        result["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
        ok = True
    finally:
        stack.stop_all(timeout=30)
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"benchmarks.deploy failed; logs kept in {workdir}", file=sys.stderr)
    return result


def report(result: dict) -> None:
    from rich.table import Table

    from benchmarks.harness import console

    sw = result["swap"]
    t = Table(title=f"hot swap v1 -> v2 under /recommend at {sw['rate']:.0f} req/s (open loop, cache off)")
    for c in ("phase", "seconds", "requests", "errors", "fallbacks", "p50 ms", "p99 ms", "max ms", "answered by",
              "cores gw / ret / rank"):
        t.add_column(c, justify="left" if c in ("phase", "answered by") else "right")
    for name, p in sw["phases"].items():
        t.add_row(name, f"{p['seconds']:.1f}", str(p["requests"]),
                  f"[{'green' if p['errors'] == 0 else 'red'}]{p['errors']}[/]",
                  f"{p['fallbacks']}" + (f" {p['fallbacks_by_rung']}" if p["fallbacks"] else ""),
                  str(p["p50_ms"]), str(p["p99_ms"]), str(p["max_ms"]),
                  ", ".join(f"{v} {n}" for v, n in p["answered_by"].items()), _cores(p.get("cores")))
    console.print(t)
    tl = sw["timeline"]
    loads = {n: (v or {}).get("seconds") for n, v in tl["last_load"].items()}
    console.print(f"swap: switch -> retrieval serves v2 {tl['retrieval_serves_v2_s']:.2f}s (its load {loads.get('retrieval')}s), "
                  f"ranking {tl['ranking_serves_v2_s']:.2f}s (load {loads.get('ranking')}s), gateway pins v2 "
                  f"{tl['gateway_pins_v2_s']:.2f}s; first v2 answer due +{tl['first_v2_answer_due_s']}s, last v1 "
                  f"+{tl['last_v1_answer_due_s']}s; v1 dropped +{tl['v1_dropped_s']}s")
    console.print("around the switch (due time, 0.5 s buckets: +s requests/fallbacks p99): " + ", ".join(
        f"{b['t_s']:+.1f} {b['requests']}/{b['fallbacks']} {b['p99_ms']}" for b in sw["around_switch_500ms"]))
    for name, p in sw["phases"].items():
        if p["gateway_counters"]:
            console.print(f"[yellow]gateway counters, {name}: {p['gateway_counters']}[/yellow]")
    m = Table(title="RSS during the swap (VmRSS every 20 ms; HWM = the kernel's peak)")
    for c in ("bundle / service", "steady MiB", "peak MiB", "peak / steady", "peak at +s", "after drop MiB",
              "HWM before MiB", "HWM end MiB"):
        m.add_column(c, justify="left" if c == "bundle / service" else "right")
    rows = [(f"ml-100k / {n}", v) for n, v in sw["memory"].items()]
    sc = result.get("scale", {})
    if "memory" in sc:
        rows.append((f"1M items / retrieval (load {sc['load_s']}s)", sc["memory"]))
    for label, v in rows:
        m.add_row(label, str(v.get("steady_mib")), str(v.get("peak_mib")), str(v.get("peak_ratio")),
                  str(v.get("peak_at_s_after_switch")), str(v.get("after_drop_mib")),
                  str(v.get("hwm_before_switch_mib")), str(v.get("hwm_end_mib")))
    console.print(m)
    if "skipped" in sc:
        console.print(f"[yellow]1M-item case skipped: {sc['skipped']}[/yellow]")
    else:
        console.print(f"1M items: {sc['items']} items ({sc['index']}, {sc['bundle_mib']} MiB), start-up "
                      f"{sc['startup_s']}s, s2 served {sc['serves_s2_after_s']}s after the switch; Retrieve k=500 "
                      f"before {sc['retrieve_k500_before']} / during {sc['retrieve_k500_during']}; ranking: {sc['ranking']}")
    sh = result["shadow"]
    s = Table(title=f"shadow ranker (v1 behind v2) at {sh['rate']:.0f} req/s, interleaved {sh['segment_s']:.0f}s segments")
    for c in ("segment", "shadow", "requests", "errors", "fallbacks", "p50 ms", "p99 ms", "shadow scored / dropped",
              "cores gw / ret / rank"):
        s.add_column(c, justify="right")
    for g in sh["segments"]:
        s.add_row(str(g["segment"]), g["shadow"], str(g["requests"]), str(g["errors"]), str(g["fallbacks"]),
                  str(g["p50_ms"]), str(g["p99_ms"]),
                  f"{g['shadow_total'].get('scored', 0)} / {g['shadow_total'].get('dropped', 0)}", _cores(g.get("cores")))
    for cond in ("off", "on"):
        g = sh[cond]
        s.add_row("pooled", cond, str(g["requests"]), str(g["errors"]), str(g["fallbacks"]), str(g["p50_ms"]),
                  str(g["p99_ms"]), f"{g['shadow_total'].get('scored', 0)} / {g['shadow_total'].get('dropped', 0)}")
    console.print(s)
    colour = "green" if sh["met"] else "red"
    console.print(f"shadow p99 on / off = [{colour}]{sh['p99_ratio_on_off']}[/] ({sh['target']}: "
                  f"{'met' if sh['met'] else 'MISSED'}); p50 ratio {sh['p50_ratio_on_off']}")
    console.print(f"1-min load average {result.get('loadavg_1m_at_start')} at start, {result.get('loadavg_1m_at_end')} "
                  f"at the end, {os.cpu_count()} CPUs")


def _cores(c: dict | None) -> str:
    return " / ".join(f"{c[n]:.2f}" for n in ("gateway", "retrieval", "ranking")) if c else ""


def main(argv: list[str] | None = None) -> dict:
    from benchmarks.harness import machine, write_json

    p = argparse.ArgumentParser(prog="python -m benchmarks.deploy", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="3 s phases: a smoke run, figures not meaningful")
    p.add_argument("--skip-scale", action="store_true", help="skip the 1M-item swap")
    p.add_argument("--rate", type=float, default=200.0, help="/recommend req/s offered (open loop)")
    p.add_argument("--phase-s", type=float, default=None, help="seconds per phase / shadow segment (10; --quick 3)")
    p.add_argument("--settle-s", type=float, default=None, help="'during' lasts until all serve v2 + this (3; --quick 1)")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--scale-bundle", type=Path, default=REPO_ROOT / "artifacts" / "scale" / "current",
                   help="the 1M-item bundle to swap (python -m models scale)")
    p.add_argument("--scale-steady-s", type=float, default=None, help="RSS sampled this long before the 1M swap (5)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench-results" / f"{NAME}.json")
    args = p.parse_args([] if argv is None else argv)
    args.phase_s = args.phase_s or (3.0 if args.quick else 10.0)
    args.settle_s = args.settle_s if args.settle_s is not None else (1.0 if args.quick else 3.0)
    args.scale_steady_s = args.scale_steady_s or (2.0 if args.quick else 5.0)
    t = time.perf_counter()
    result = run(args)
    result = {"benchmark": NAME, "created_at": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
              "quick": args.quick, "seconds": round(time.perf_counter() - t, 1), **result}
    report(result)
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    if sys.argv[1:2] == ["client"]:
        client_main(sys.argv[2:])
    else:
        main(sys.argv[1:])
