"""Real stacks for the gateway tests: retrieval, ranking and gateway processes on free ports.

The services read the bundle's features from Feast's embedded SQLite online store (materialised
by the pipeline; the Redis-backed reader is covered by tests/feature_store and tests/services,
and materialising into a fresh Redis costs over a minute here). The gateway's response cache is
a real private Redis.

* ``collector`` - a tiny OTLP/gRPC trace collector in the test process (spans kept in memory).
* ``stack`` - a healthy stack (tracing on, Redis cache) shared by the API tests.
* ``fragile`` - a stack the fallback tests break and repair: its gateway caches in a Redis of its
  own (so that Redis can be killed without touching the features), short breaker cool-down.
* :func:`lone_gateway` - a gateway process alone (its retrieval and ranking addresses are
  whatever the caller gives, by default nothing listens there: every answer is a fallback), for
  what needs no services (``POST /events``) or a gateway of other settings beside a stack.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import pytest

from deploy.local import Ports, Stack, StackError, free_port, start_redis, start_services, wait_ready

SERVICE_ENV = {"RETRIEVAL_WARMUP_REQUESTS": "5", "RANKING_WARMUP_REQUESTS": "5",
               "RETRIEVAL_GRACE_PERIOD_S": "1", "RANKING_GRACE_PERIOD_S": "1",
               "REDIS_URL": ""}  # services: embedded SQLite online store (see above)


# -- OTLP collector ----------------------------------------------------------------------------
@dataclass
class Collector:
    endpoint: str
    spans: list[dict] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def trace(self, trace_id: str) -> list[dict]:
        with self.lock:
            return [s for s in self.spans if s["trace_id"] == trace_id]

    def wait_for(self, trace_id: str, done: Callable[[list[dict]], bool], timeout: float = 10.0) -> list[dict]:
        """The spans of ``trace_id`` once ``done(spans)`` holds, or whatever arrived by ``timeout``.
        Services export in batches at their own pace, so wait for the exact property under test."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            spans = self.trace(trace_id)
            if done(spans):
                return spans
            time.sleep(0.05)
        return self.trace(trace_id)


@pytest.fixture(scope="session")
def collector() -> Iterator[Collector]:
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    class Servicer(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):  # noqa: N802 - gRPC method name
            rows = []
            for rs in request.resource_spans:
                attrs = {a.key: a.value.string_value for a in rs.resource.attributes}
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        rows.append({"service": attrs.get("service.name"), "name": s.name, "kind": s.kind,
                                     "trace_id": s.trace_id.hex(), "span_id": s.span_id.hex(),
                                     "parent_span_id": s.parent_span_id.hex()})
            with col.lock:
                col.spans.extend(rows)
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Servicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    col = Collector(endpoint=f"http://127.0.0.1:{port}")
    yield col
    server.stop(grace=None)


# -- stacks ------------------------------------------------------------------------------------
@dataclass
class RunningStack:
    stack: Stack
    ports: Ports
    url: str
    env: dict[str, str]
    gateway_env: dict[str, str]
    client: httpx.Client

    def get(self, user_id: str, k: int = 10, **kw) -> httpx.Response:
        return self.client.get("/recommend", params={"user_id": user_id, "k": k}, **kw)

    def metrics(self) -> str:
        return self.client.get("/metrics").text

    def restart(self, name: str) -> None:
        """Start ``name`` again (after a kill) and wait until the gateway is ready again."""
        self.stack.stop(name)
        env = {**self.env, **(self.gateway_env if name == "gateway" else {})}
        self.stack.start_module(name, f"services.{name}", env)
        wait_ready(self.stack, f"{self.url}/readyz", [name], 120)


def _start(tmp: Path, bundle: Path, cache_redis: str, extra: dict[str, str],
           gateway_env: dict[str, str]) -> RunningStack:
    from deploy.local import service_env

    stack = Stack(tmp)
    ports = Ports.free()
    env = {**SERVICE_ENV, "ARTIFACTS_DIR": str(bundle), **extra}
    gateway_env = {"REDIS_URL": cache_redis, **gateway_env}
    try:
        url = start_services(stack, ports, None, extra_env=env, gateway_env=gateway_env, timeout=180)
    except Exception:
        stack.stop_all()
        raise
    return RunningStack(stack, ports, url, service_env(ports, None, env), gateway_env,
                        httpx.Client(base_url=url, timeout=5.0))


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_url: str, bundle_path: Path, collector: Collector) -> Iterator[RunningStack]:
    tracing = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
               "OTEL_EXPORTER_OTLP_INSECURE": "true", "OTEL_BSP_SCHEDULE_DELAY": "100"}
    running = _start(tmp_path_factory.mktemp("stack"), bundle_path, redis_url, tracing, {"GATEWAY_CACHE_TTL_S": "60"})
    yield running
    running.client.close()
    running.stack.stop_all()


@pytest.fixture(scope="module")
def fragile(tmp_path_factory, bundle_path: Path) -> Iterator[RunningStack]:
    tmp = tmp_path_factory.mktemp("fragile")
    cache_stack = Stack(tmp / "cache")
    cache_url = start_redis(cache_stack)
    gateway_env = {"GATEWAY_CACHE_TTL_S": "60", "GATEWAY_BREAKER_RESET_S": "0.5",
                   "GATEWAY_BREAKER_MIN_CALLS": "3"}
    try:
        running = _start(tmp / "stack", bundle_path, cache_url, {}, gateway_env)
    except Exception:
        cache_stack.stop_all()
        raise
    running.cache_stack = cache_stack  # type: ignore[attr-defined]
    yield running
    running.client.close()
    running.stack.stop_all()
    cache_stack.stop_all()


@pytest.fixture(scope="session")
def popular(bundle_path: Path) -> list[int]:
    from common.bundle import load_bundle

    bundle = load_bundle(bundle_path, verify=False)
    return [int(r["item_id"]) for r in json.loads(bundle.path("popular_items").read_text())]


def poll(fn, timeout: float = 5.0):
    """``fn()`` once it is truthy, or its last value after ``timeout`` seconds (for effects that
    land after the response: cache writes, the exposure log)."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.02)


@contextlib.contextmanager
def lone_gateway(tmp: Path, bundle: Path, env: dict[str, str], timeout: float = 60.0) -> Iterator[httpx.Client]:
    """A gateway process on a free port with ``env`` (REDIS_URL unset unless given; retrieval and
    ranking at free ports unless given), once its /healthz answers; stopped on exit."""
    stack = Stack(tmp)
    port = free_port()
    base = {"ARTIFACTS_DIR": str(bundle), "REDIS_URL": "", "GATEWAY_PORT": str(port),
            "GATEWAY_RETRIEVAL_ADDR": f"127.0.0.1:{free_port()}", "GATEWAY_RANKING_ADDR": f"127.0.0.1:{free_port()}"}
    stack.start_module("gateway", "services.gateway", {**base, **env})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=url, timeout=5.0) as client:
            while True:
                stack.check_alive(["gateway"])
                with contextlib.suppress(httpx.HTTPError):
                    if client.get("/healthz", timeout=0.5).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise StackError(f"the gateway at {url} did not answer /healthz within {timeout:.0f}s")
                time.sleep(0.1)
            client.stack = stack  # type: ignore[attr-defined]
            yield client
    finally:
        stack.stop_all()
