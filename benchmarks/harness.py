"""Shared benchmark plumbing: a private Redis, materialised features, services as processes,
latency measurement and the result table/JSON.

Nothing here is faked: the services are the real ``python -m services.<name>`` processes on free
loopback ports (started and stopped by :class:`deploy.local.Stack`, the one process manager), reading a private ``redis-server`` that Feast materialised the bundle's features
into; latencies are wall-clock per gRPC call as a client sees them.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from common.net import free_port
from common.settings import REPO_ROOT, FeatureStoreSettings
from deploy.local import Stack, start_redis

RESULTS_DIR = REPO_ROOT / "bench-results"
SERVICE_STOP_TIMEOUT_S = 30  # SIGTERM, then SIGKILL only if a service ignores it this long
console = Console()
if not console.is_terminal:  # logs and CI: do not wrap the result tables at 80 columns
    console = Console(width=150)


class BenchError(RuntimeError):
    """A precondition of a benchmark is not met (no bundle, no redis-server...)."""


@contextmanager
def private_redis() -> Iterator[str]:
    """A throw-away ``redis-server`` on a free port (never the shared 6379), run by deploy.local."""
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as workdir:
        stack = Stack(Path(workdir))
        try:
            yield start_redis(stack)
        finally:
            stack.stop("redis")


def feast_settings(redis_url: str, data_dir: Path) -> FeatureStoreSettings:
    """Feast settings on a private registry folder, the repo's offline parquet and ``redis_url``."""
    return FeatureStoreSettings(redis_url=redis_url, data_dir=data_dir)


def materialise(settings: FeatureStoreSettings) -> float:
    """``feast apply`` + materialise every view into the settings' Redis; returns seconds."""
    from feature_store import store as fs

    t = time.perf_counter()
    fs.apply(settings)
    fs.materialize(settings)
    return time.perf_counter() - t


def service_env(settings: FeatureStoreSettings, bundle: Path, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RETRIEVAL_", "RANKING_", "GATEWAY_", "FEAST_", "OTEL_"))}
    env.update({
        "ARTIFACTS_DIR": str(bundle),
        "REDIS_URL": settings.redis_url or "",
        "FEAST_DATA_DIR": str(settings.data_dir),
        "FEAST_OFFLINE_DIR": str(settings.offline_dir),
        "FEAST_REPO_PATH": str(settings.repo_path),
        "FEAST_PROJECT": settings.project,
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra)
    return env


@dataclass
class Service:
    name: str
    address: str
    metrics_port: int
    proc: subprocess.Popen
    log_path: Path


def wait_serving(address: str, proc: subprocess.Popen, timeout: float, service: str = "") -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BenchError(f"{address}: process exited with {proc.returncode} before SERVING")
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise BenchError(f"{address} not SERVING after {timeout}s")


def spawn_service(stack: Stack, name: str, env: dict[str, str], **extra: str) -> tuple[subprocess.Popen, int, int]:
    """Start ``python -m services.<name>`` under ``stack`` (log ``stack.log_path(name)``) on free
    ports, with exactly ``env`` as its environment; returns (process, port, metrics port)."""
    prefix = name.upper()
    port, metrics_port = free_port(), free_port()
    env = {**env, f"{prefix}_PORT": str(port), f"{prefix}_METRICS_PORT": str(metrics_port), **extra}
    # the whole environment: service_env() stripped the caller's service variables on purpose
    proc = stack.start_module(name, f"services.{name}", env, inherit_env=False)
    return proc, port, metrics_port


@contextmanager
def run_service(name: str, env: dict[str, str], log_dir: Path, timeout: float = 180.0) -> Iterator[Service]:
    """``python -m services.<name>`` on free ports; waits for SERVING; SIGTERM on exit."""
    stack = Stack(log_dir)
    proc, port, metrics_port = spawn_service(stack, name, env)
    log_path = stack.log_path(name)
    address = f"127.0.0.1:{port}"
    try:
        try:
            wait_serving(address, proc, timeout)
        except BenchError as exc:
            raise BenchError(f"{exc}\n--- {log_path} ---\n{log_path.read_text()[-3000:]}") from exc
        yield Service(name, address, metrics_port, proc, log_path)
    finally:
        stack.stop(name, timeout=SERVICE_STOP_TIMEOUT_S)


def server_stage_means(metrics_port: int) -> dict[str, float]:
    """Mean server-side ms per stage and per gRPC method, from the service's /metrics."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(body):
        if family.name not in ("recsys_stage_seconds", "recsys_grpc_server_handling_seconds"):
            continue
        for sample in family.samples:
            labels = sample.labels
            if family.name == "recsys_stage_seconds":
                key = f"stage:{labels['stage']}"
            elif labels.get("code") == "OK":
                key = f"server:{labels['method']}"
            else:
                continue
            if sample.name.endswith("_sum"):
                sums[key] = sums.get(key, 0.0) + sample.value
            elif sample.name.endswith("_count"):
                counts[key] = counts.get(key, 0.0) + sample.value
    return {k: round(1e3 * sums[k] / counts[k], 3) for k in sums if counts.get(k)}


def measure(call: Callable[[int], Any], n: int, warmup: int) -> np.ndarray:
    """Latency in ms of ``call(i)`` for ``n`` calls after ``warmup`` unmeasured ones."""
    for i in range(warmup):
        call(i)
    out = np.empty(n, np.float64)
    perf = time.perf_counter
    for i in range(n):
        t = perf()
        call(i)
        out[i] = perf() - t
    return out * 1e3


def session_pids(pid: int) -> list[int]:
    """``pid`` and every process of its session (deploy.local.Stack starts each one as a session
    leader, so a gateway's uvicorn workers are in it)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(d.name) == pid or int(fields[3]) == pid:  # fields[3]: the session id
            out.append(int(d.name))
    return out


def process_cpu_seconds(pid: int, session: bool = False) -> float:
    """CPU seconds (user + system) ``pid`` has used so far; ``session``: with its session's processes."""
    total = 0
    for p in session_pids(pid) if session else [pid]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def process_rss_mib(pid: int, session: bool = False) -> float:
    """VmRSS of ``pid`` in MiB; ``session``: summed over its session's processes."""
    total = 0
    for p in session_pids(pid) if session else [pid]:
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        total += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return total / 1024


def summary(lat_ms: np.ndarray) -> dict[str, float]:
    p50, p90, p99, p999 = np.percentile(lat_ms, [50, 90, 99, 99.9])
    return {"n": int(lat_ms.size), "p50_ms": round(float(p50), 3), "p90_ms": round(float(p90), 3),
            "p99_ms": round(float(p99), 3), "p99.9_ms": round(float(p999), 3),
            "mean_ms": round(float(lat_ms.mean()), 3), "max_ms": round(float(lat_ms.max()), 3)}


def machine() -> dict[str, Any]:
    return {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "loadavg_1m": round(os.getloadavg()[0], 2)}


def report(name: str, title: str, rows: list[dict[str, Any]], extra: dict[str, Any]) -> Path:
    """Print a rich table of ``rows`` and write ``bench-results/<name>.json``."""
    table = Table(title=title)
    cols = ["case", "n", "p50_ms", "p90_ms", "p99_ms", "p99.9_ms", "mean_ms", "target"]
    for c in cols:
        table.add_column(c, justify="left" if c in ("case", "target") else "right")
    for r in rows:
        table.add_row(*[str(r.get(c, "")) for c in cols])
    console.print(table)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    payload = {"benchmark": name, "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
               "machine": machine(), "results": rows, **extra}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    console.print(f"wrote {path.relative_to(REPO_ROOT)}")
    return path


def bundle_ids(artifacts_dir: Path, name: str) -> list[int]:
    """The real ids of a bundle's ``user_ids`` / ``item_ids`` array (row 0 is the padding row)."""
    from common.bundle import load_bundle

    ids = np.load(load_bundle(artifacts_dir, verify=False).path(name), allow_pickle=False)
    return [int(i) for i in ids[1:] if i >= 0]


def write_json(path: Path, result: dict) -> Path:
    """``result`` as indented JSON at ``path`` (folders created); says where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return path


def verdict(stats: dict[str, float], p50: float, p99: float) -> str:
    ok = stats["p50_ms"] <= p50 and stats["p99_ms"] <= p99
    return f"p50≤{p50:g} p99≤{p99:g} ms: {'met' if ok else 'MISSED'}"
