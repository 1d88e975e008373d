"""What one answer costs, process by process, and what the whole stack saturates at: the measured
input of ``python -m architect design`` (``python -m benchmarks capacity``).

One private stack on free ports (a private ``redis-server``, a private Feast project materialised
into it, retrieval, ranking, the events consumer, a cache-less gateway and a second gateway with
the response cache on), then these phases, each measured from ``/proc`` (CPU seconds of every
process and its children) and Redis' own ``INFO commandstats``:

* ``--rounds`` (3) times, alternating, because this VM's capacity drifts by tens of percent within
  a minute and the design check compares the two:

  - **saturation**: ``--connections`` closed-loop connections (wrk when installed) for
    ``--duration`` s: throughput of full answers, each process's CPU utilisation, and the load
    generator's CPU per request (it shares the cores with the stack);
  - **cost**: an open-loop load (cache off) at 60 % of that round's saturation (``--rate`` to fix
    it), the utilisation a design is sized at: CPU ms per answer of the gateway, retrieval,
    ranking, Redis and the load generator, Redis commands per answer, latency, and the services'
    own stage means;

* **cache hits**: the last cost rate on the cache-on gateway over primed users: CPU per cache hit;
* **events**: ``POST /events`` at ``--events-rate`` events/s until the consumer caught up: CPU per
  event in the gateway, the consumer and Redis, Redis commands per event.

Plus memory: Redis' bytes per Feast user row and item row (``MEMORY USAGE`` of a sample), per
response-cache entry, and each process's RSS. Writes ``bench-results/capacity.json`` (``--out``).
No targets: these are the costs a design is sized from (architect/profiles/).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import resource
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from benchmarks.e2e import one_client, run_loadgen, run_wrk
from benchmarks.harness import bundle_ids, machine, process_cpu_seconds, process_rss_mib, server_stage_means
from common.settings import REPO_ROOT

DEFAULT_OUT = REPO_ROOT / "bench-results" / "capacity.json"
PROCESSES = ("gateway", "retrieval", "ranking", "events", "redis")
UTILISATION = 0.6  # architect.design.model.TARGET_UTILISATION: the cost phases run at this share of saturation


def _children_cpu_s() -> float:
    """CPU seconds of this process's reaped children (the load generator, once it exited)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _cpu_stat() -> list[int]:
    """The machine's ``cpu`` line of /proc/stat: user nice system idle iowait irq softirq steal."""
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:9]]


def _median(values) -> float:
    v = sorted(values)
    return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2


def _fit_linear(runs: list[tuple[Phase, dict]]) -> dict[str, dict[str, float]]:
    """Per process, a least-squares line through (answers/s, cores used) of the open-loop runs:
    ``fixed_cores`` (what serving at all costs: pollers, timers, wakeups) + ``marginal_ms`` per answer."""
    import numpy as np

    x = np.array([lg["requests"] / lg["elapsed_s"] for _, lg in runs])
    out = {}
    for name in runs[0][0].cpu_s:
        y = np.array([ph.cpu_s[name] / lg["elapsed_s"] for ph, lg in runs])
        slope, intercept = np.polyfit(x, y, 1) if len(set(x.round(1))) > 1 else (float(y.mean() / x.mean()), 0.0)
        out[name] = {"marginal_ms": round(float(slope) * 1e3, 4), "fixed_cores": round(float(intercept), 4)}
    return out


def _cpu(pids: dict[str, int]) -> dict[str, float]:
    return {name: process_cpu_seconds(pid, session=True) for name, pid in pids.items()}


def _redis_calls(client) -> int:
    return sum(int(v["calls"]) for k, v in client.info("commandstats").items() if k.startswith("cmdstat_"))


def _metric_total(port: int, family: str) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(family) and not line.startswith("#") and
               re.match(rf"{family}(\{{|\s)", line))


class Phase:
    """CPU and Redis-command deltas around one phase, less each process's idle CPU (``idle``:
    cores each burns with no load: reload polls, health watches, the consumer's blocking read)."""

    def __init__(self, pids: dict[str, int], redis_client, idle: dict[str, float] | None = None) -> None:
        self.pids, self.redis, self.idle = pids, redis_client, idle or {}

    def __enter__(self) -> Phase:
        self.cpu0, self.calls0, self.child0 = _cpu(self.pids), _redis_calls(self.redis), _children_cpu_s()
        self.stat0 = _cpu_stat()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.elapsed = time.perf_counter() - self.t0
        cpu1 = _cpu(self.pids)
        self.cpu_s = {n: max(0.0, cpu1[n] - self.cpu0[n] - self.idle.get(n, 0.0) * self.elapsed) for n in self.pids}
        self.cpu_s["loadgen"] = _children_cpu_s() - self.child0
        self.redis_calls = _redis_calls(self.redis) - self.calls0
        stat = [b - a for a, b in zip(self.stat0, _cpu_stat(), strict=True)]
        self.steal = round(stat[7] / max(sum(stat), 1), 3)  # share of the machine's time the hypervisor took

    @classmethod
    def combined(cls, phases: list[Phase]) -> Phase:
        """The sum of several phases (CPU, calls, time; steal weighted by time)."""
        out = cls.__new__(cls)
        out.pids, out.redis, out.idle = phases[0].pids, phases[0].redis, phases[0].idle
        out.elapsed = sum(p.elapsed for p in phases)
        out.cpu_s = {k: sum(p.cpu_s[k] for p in phases) for k in phases[0].cpu_s}
        out.redis_calls = sum(p.redis_calls for p in phases)
        out.steal = round(sum(p.steal * p.elapsed for p in phases) / out.elapsed, 3)
        return out

    def per(self, n: int) -> dict[str, float]:
        """CPU ms per unit of work (``n`` units in the phase)."""
        return {name: round(1e3 * s / max(n, 1), 4) for name, s in self.cpu_s.items()}

    def utilisation(self, seconds: float | None = None) -> dict[str, float]:
        return {name: round(s / (seconds or self.elapsed), 3) for name, s in self.cpu_s.items()}


def _memory_usage(client, pattern: bytes, sample: int = 200) -> float | None:
    sizes = []
    for key in client.scan_iter(match=pattern, count=1000):
        sizes.append(client.memory_usage(key, samples=0) or 0)
        if len(sizes) >= sample:
            break
    return round(sum(sizes) / len(sizes), 1) if sizes else None


def _post_events(url: str, users: list[str], items: list[int], rate: float, duration: float) -> int:
    """POST /events in batches of 10 on schedule; returns the events accepted."""
    import httpx

    accepted, batch = 0, 10
    interval = batch / rate
    t0 = time.perf_counter()
    with httpx.Client(base_url=url, timeout=5.0) as client:
        i = 0
        while time.perf_counter() - t0 < duration:
            due = t0 + i * interval
            if (wait := due - time.perf_counter()) > 0:
                time.sleep(wait)
            events = [{"event_id": uuid.uuid4().hex, "user_id": users[(i * batch + j) % len(users)],
                       "item_id": items[(i * batch + j) % len(items)], "type": "click"} for j in range(batch)]
            r = client.post("/events", json={"events": events})
            if r.status_code == 202:
                accepted += r.json()["accepted"]
            i += 1
    return accepted


def _wait_applied(events_port: int, timeout: float = 60.0) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if _metric_total(events_port, "recsys_events_lag_entries") == 0:
            return time.monotonic() - t0
        time.sleep(0.05)
    raise RuntimeError(f"the events consumer did not catch up within {timeout}s")


def run(*, rate: float, duration: float, connections: int, events_rate: float, work: Path,
        rounds: int = 3, log=print) -> dict:
    import redis

    from benchmarks.e2e import _users
    from common.net import free_port
    from deploy.local import Ports, Stack, service_env, start_redis, start_services, wait_ready
    from feature_store.testing import private_feast

    bundle = REPO_ROOT / "artifacts" / "current"
    stack = Stack(work / "run")
    try:
        redis_url = start_redis(stack)
        feast = private_feast(work / "feast", redis_url)
        env = {"FEAST_DATA_DIR": str(feast.settings.data_dir), "FEAST_OFFLINE_DIR": str(feast.settings.offline_dir),
               "ARTIFACTS_DIR": str(bundle)}
        ports = Ports.free()
        url = start_services(stack, ports, redis_url, extra_env=env, events=True,
                             gateway_env={"GATEWAY_CACHE_TTL_S": "0"})
        cache_port = free_port()
        stack.start_module("gateway-cache", "services.gateway", {
            **service_env(ports, redis_url, env), "GATEWAY_PORT": str(cache_port), "GATEWAY_CACHE_TTL_S": "3600"})
        wait_ready(stack, f"http://127.0.0.1:{cache_port}/readyz", ["gateway-cache"], 120)
        client = redis.Redis.from_url(redis_url)
        pids = {name: stack.pid(name) for name in (*PROCESSES, "gateway-cache")}
        users = _users(bundle)
        paths = [f"/recommend?user_id={u}&k=10" for u in users]
        one_client("127.0.0.1", ports.gateway, paths, 300, 50)
        from services.gateway.settings import GatewaySettings

        settings_note = {"num_candidates": GatewaySettings().num_candidates, "k": 10,
                         "items": len(bundle_ids(bundle, "item_ids")), "users": len(users)}

        with Phase(pids, client) as quiet:
            time.sleep(3.0)
        idle = quiet.utilisation()
        # cost and saturation alternate, `rounds` times: this VM's capacity drifts by tens of percent
        # within a minute (steal), and the design check compares one with the other
        costs, sats, rates, lows = [], [], [], []
        for r in range(rounds):
            fb0 = _metric_total(ports.gateway, "gateway_fallbacks_total")
            with Phase(pids, client, idle) as sat:
                if shutil.which("wrk"):
                    sat_lg = run_wrk(url, users, connections, duration, work)
                    sat_lg.pop("raw", None)
                else:
                    sat_lg = run_loadgen(url, users, connections, duration, work, rate=0.0)
            fallbacks = _metric_total(ports.gateway, "gateway_fallbacks_total") - fb0
            sats.append((sat, sat_lg, fallbacks))
            full = (sat_lg["requests"] - fallbacks) / float(sat_lg.get("elapsed_s", duration))
            # the cost of an answer is measured at the load a design runs at (architect sizes replicas
            # at 60 % CPU): per-answer CPU falls with load as wakeups batch (here ~9 ms at 100 req/s,
            # ~5.5 ms at saturation), so a figure from an idle stack would over-size every design
            this_rate = rate or max(20.0, round(UTILISATION * full))
            rates.append(this_rate)
            log(f"round {r + 1}/{rounds}: saturation {full:.0f} full answers/s ({connections} connections, closed loop, "
                f"{duration:.0f}s), then {this_rate:.0f} req/s open loop ({duration:.0f}s, cache off)")
            with Phase(pids, client, idle) as cost:
                lg = run_loadgen(url, users, 8, duration, work, rate=this_rate)
            costs.append((cost, lg))
            # and at half that rate: two loads give each process's CPU as fixed + marginal x rate
            with Phase(pids, client, idle) as low:
                lg_low = run_loadgen(url, users, 8, duration, work, rate=max(10.0, this_rate / 2))
            lows.append((low, lg_low))
        n = sum(lg["requests"] for _, lg in costs)
        cost = Phase.combined([c for c, _ in costs])
        linear = _fit_linear([*costs, *lows])
        stages = {"retrieval": server_stage_means(ports.retrieval_metrics),
                  "ranking": server_stage_means(ports.ranking_metrics)}

        rate = rate or rates[-1]
        log("cache hits: the same rate over primed users")
        hot = users[:200]
        one_client("127.0.0.1", cache_port, [f"/recommend?user_id={u}&k=10" for u in hot], len(hot), 0)
        with Phase(pids, client, idle) as hits:
            lg_hits = run_loadgen(f"http://127.0.0.1:{cache_port}", hot, 8, duration, work, rate=rate)
        entry_bytes = _memory_usage(client, b"{u:*}:resp:*")

        log(f"events: {events_rate:.0f} events/s for {duration:.0f}s")
        items = bundle_ids(bundle, "item_ids")
        with Phase(pids, client, idle) as ev:
            accepted = _post_events(url, users, items, events_rate, duration)
            caught_up_s = _wait_applied(ports.events_metrics)

        sat = Phase.combined([x for x, _, _ in sats])
        sat_n = sum(lg["requests"] for _, lg, _ in sats)
        fallbacks = sum(f for _, _, f in sats)
        # the load generator's own clock: its start-up (a second of Python imports) is not load
        sat_s = sum(float(lg.get("elapsed_s", duration)) for _, lg, _ in sats)
        full_rps = (sat_n - fallbacks) / sat_s
        sat_lg = sats[-1][1]
        rounds_out = [{"cost_cpu_ms_per_request": round(sum(c.per(lg["requests"]).values()), 3),
                       "steal": c.steal, "saturation_rps_full": round((slg["requests"] - f) / float(slg.get("elapsed_s", duration)), 1),
                       "saturation_steal": st.steal}
                      for (c, lg), (st, slg, f) in zip(costs, sats, strict=True)]

        memory = {
            "user_row_bytes": _memory_usage(client, b"*user_id*"),
            "item_row_bytes": _memory_usage(client, b"*item_id*"),
            "cache_entry_bytes": entry_bytes,
            "redis_used_memory_mib": round(client.info("memory")["used_memory"] / 2**20, 1),
            "rss_mib": {name: round(process_rss_mib(pid, session=True), 1) for name, pid in pids.items()},
        }
        client.close()
        return {
            "machine": machine(), "idle_cores": idle, "cores": os.cpu_count(), "bundle": str(bundle.resolve().name), **settings_note,
            "rounds": rounds_out,
            "cpu_linear": linear,
            "cost": {"rate": round(sum(rates) / len(rates), 1), "rates": rates, "requests": n, "elapsed_s": round(cost.elapsed, 2), "steal": cost.steal,
                     "cpu_ms_per_request": cost.per(n), "redis_calls_per_request": round(cost.redis_calls / n, 2),
                     "p50_ms": _median(lg["p50_ms"] for _, lg in costs), "p99_ms": _median(lg["p99_ms"] for _, lg in costs),
                     "stage_ms": stages},
            "cache_hit": {"requests": lg_hits["requests"], "cpu_ms_per_request": hits.per(lg_hits["requests"]),
                          "redis_calls_per_request": round(hits.redis_calls / lg_hits["requests"], 2),
                          "p50_ms": lg_hits["p50_ms"], "p99_ms": lg_hits["p99_ms"]},
            "events": {"rate": events_rate, "accepted": accepted, "caught_up_s": round(caught_up_s, 2),
                       "cpu_ms_per_event": ev.per(accepted), "redis_calls_per_event": round(ev.redis_calls / max(accepted, 1), 2)},
            "saturation": {"connections": connections, "loadgen": sat_lg["loadgen"], "requests": sat_n,
                           "elapsed_s": round(sat_s, 2), "fallbacks": int(fallbacks), "steal": sat.steal,
                           "rps_all_answers": round(sat_n / sat_s, 1), "rps_full_answers": round(full_rps, 1),
                           "utilisation": sat.utilisation(sat_s), "cpu_ms_per_request": sat.per(sat_n),
                           "p50_ms": sat_lg["p50_ms"], "p99_ms": sat_lg["p99_ms"]},
            "memory": memory,
        }
    finally:
        stack.stop_all()


def table(result: dict) -> str:
    c, s = result["cost"], result["saturation"]
    rows = [f"{'process':<12}{'CPU ms/answer':>15}{'CPU ms/hit':>12}{'CPU ms/event':>14}{'util. at sat.':>15}"]
    for name in (*PROCESSES, "gateway-cache", "loadgen"):
        rows.append(f"{name:<12}{c['cpu_ms_per_request'].get(name, 0):>15.3f}"
                    f"{result['cache_hit']['cpu_ms_per_request'].get(name, 0):>12.3f}"
                    f"{result['events']['cpu_ms_per_event'].get(name, 0):>14.3f}{s['utilisation'].get(name, 0):>15.2f}")
    for i, r in enumerate(result["rounds"], 1):
        rows.append(f"round {i}: {r['cost_cpu_ms_per_request']:.2f} CPU ms/answer (steal {r['steal']:.0%}), "
                    f"saturation {r['saturation_rps_full']:.0f} full answers/s (steal {r['saturation_steal']:.0%})")
    rows.append(f"cost runs: {c['requests']} answers at {c['rate']:.0f}/s, p50 {c['p50_ms']:.1f} ms, p99 {c['p99_ms']:.1f} ms, "
                f"{c['redis_calls_per_request']} Redis calls/answer")
    rows.append(f"saturation ({s['connections']} conn., {s['loadgen']}): {s['rps_full_answers']:.0f} full answers/s "
                f"({s['rps_all_answers']:.0f} in all, {s['fallbacks']} fallbacks)")
    m = result["memory"]
    rows.append(f"Redis: user row {m['user_row_bytes']} B, item row {m['item_row_bytes']} B, cache entry "
                f"{m['cache_entry_bytes']} B; used {m['redis_used_memory_mib']} MiB")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks capacity", description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=0.0,
                   help="requests/s of the cost phases (open loop); 0 = 60 %% of the round's saturation")
    p.add_argument("--events-rate", type=float, default=100.0, help="events/s of the events phase")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of each phase")
    p.add_argument("--connections", type=int, default=32, help="closed-loop connections of the saturation phase")
    p.add_argument("--rounds", type=int, default=3, help="cost and saturation phases, alternating, this many times each")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="capacity-") as tmp:
        result = run(rate=a.rate, duration=a.duration, connections=a.connections, events_rate=a.events_rate,
                     work=Path(tmp), rounds=a.rounds)
    print(table(result))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {a.out}")
    return result


if __name__ == "__main__":
    main()
