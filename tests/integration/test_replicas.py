"""Two retrieval and two ranking replicas behind one DNS name each, on real processes.

What ``docker compose up --scale retrieval=2 --scale ranking=2`` and a Kubernetes headless Service
give the gateway: one name that resolves to several addresses. Here a DNS server of the test's own
(:mod:`tests.integration.dns_stub`) answers ``retrieval.replicas.test`` with 127.0.0.2 and
127.0.0.3, every replica binds the same gRPC port on its own loopback address, and the gateway
gets ``dns://<stub>/retrieval.replicas.test:<port>``: gRPC's own resolver, ``round_robin`` and the
health watch do the rest (services.gateway.channels). The tests read every replica's own
``/metrics`` to see who served what, then SIGKILL one replica of each service under load.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from common.net import free_port
from deploy.local import Ports, Stack, service_env, wait_ready
from tests.integration.dns_stub import DnsStub
from tests.integration.helpers import feast_db

ADDRESSES = ("127.0.0.2", "127.0.0.3")
SCALED_UP = "127.0.0.4"  # the replica a scale-up adds
METHODS = {"retrieval": "Retrieve", "ranking": "Rank"}  # the `method` label of the servers' histogram
SLACK = {"GATEWAY_REQUEST_TIMEOUT_MS": "3000", "GATEWAY_RETRIEVAL_TIMEOUT_MS": "1500",
         "GATEWAY_RANKING_TIMEOUT_MS": "1500"}


@dataclass
class Replicas:
    stack: Stack
    gateway: httpx.Client
    metrics: dict[str, int]  # replica name -> its metrics port
    dns: dict[str, DnsStub]
    env: dict[str, str]
    grpc_port: dict[str, int]


def _port_free_on_every_address() -> int:
    """A port that 127.0.0.2 and 127.0.0.3 can both bind (each replica binds its own address)."""
    for _ in range(20):
        port = free_port(ADDRESSES[0])
        try:
            with socket.socket() as s:
                s.bind((ADDRESSES[1], port))
            return port
        except OSError:
            continue
    raise RuntimeError("no port free on both loopback addresses")


def _serving(address: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0).status == \
                        health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline, f"{address} not SERVING after {timeout}s"
            time.sleep(0.1)


def calls(metrics_port: int, method: str) -> int:
    """Calls of ``method`` this replica answered OK, from its own ``/metrics``."""
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5.0).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name != "recsys_grpc_server_handling_seconds":
            continue
        for s in family.samples:
            if s.name.endswith("_count") and s.labels.get("method") == method and s.labels.get("code") == "OK":
                total += s.value
    return int(total)


@pytest.fixture(scope="module")
def replicas(redis_url: str, bundle_path, tmp_path_factory) -> Iterator[Replicas]:
    work = tmp_path_factory.mktemp("replicas")
    with feast_db(redis_url, 9, work) as db, DnsStub("retrieval.replicas.test", ADDRESSES) as dns_r, \
            DnsStub("ranking.replicas.test", ADDRESSES) as dns_k:
        yield from _replicas(Stack(work / "run"), db, {"retrieval": dns_r, "ranking": dns_k}, bundle_path)


def _replicas(stack: Stack, db, dns: dict[str, DnsStub], bundle_path) -> Iterator[Replicas]:
    ports = Ports.free()
    grpc_port = {"retrieval": _port_free_on_every_address(), "ranking": _port_free_on_every_address()}
    env = service_env(ports, db.url, {
        **db.env, "ARTIFACTS_DIR": str(bundle_path), "RETRIEVAL_WARMUP_REQUESTS": "5", "RANKING_WARMUP_REQUESTS": "5",
        "RETRIEVAL_GRACE_PERIOD_S": "1", "RANKING_GRACE_PERIOD_S": "1",
        # connections are closed (gracefully) every 2 s, so the gateway resolves the names again
        "RETRIEVAL_MAX_CONNECTION_AGE_S": "2", "RANKING_MAX_CONNECTION_AGE_S": "2"})
    metrics: dict[str, int] = {}
    gateway = None
    try:
        for service in METHODS:
            prefix = service.upper()
            for suffix, address in zip("ab", ADDRESSES, strict=True):
                name = f"{service}-{suffix}"
                metrics[name] = free_port()
                stack.start_module(name, f"services.{service}", {
                    **env, f"{prefix}_HOST": address, f"{prefix}_PORT": str(grpc_port[service]),
                    f"{prefix}_METRICS_PORT": str(metrics[name])})
        for name in metrics:
            service, suffix = name.split("-")
            _serving(f"{ADDRESSES['ab'.index(suffix)]}:{grpc_port[service]}")
        stack.start_module("gateway", "services.gateway", {
            **env, **SLACK, "GATEWAY_MODE": "grpc", "GATEWAY_CACHE_TTL_S": "0",
            "GATEWAY_RETRIEVAL_ADDR": dns["retrieval"].target(grpc_port["retrieval"]),
            "GATEWAY_RANKING_ADDR": dns["ranking"].target(grpc_port["ranking"])})
        wait_ready(stack, f"http://127.0.0.1:{ports.gateway}/readyz", ["gateway", *metrics], 120)
        gateway = httpx.Client(base_url=f"http://127.0.0.1:{ports.gateway}", timeout=10.0)
        yield Replicas(stack, gateway, metrics, dns, env, grpc_port)
    finally:
        if gateway is not None:
            gateway.close()
        stack.stop_all()


def _split(r: Replicas) -> dict[str, int]:
    return {name: calls(port, METHODS[name.split("-")[0]]) for name, port in r.metrics.items()}


def test_one_dns_name_spreads_calls_over_both_replicas(replicas: Replicas, known_users):
    before = _split(replicas)
    n = 200
    for user in known_users[:n]:
        r = replicas.gateway.get("/recommend", params={"user_id": user, "k": 10})
        assert r.status_code == 200, r.text
        assert r.json()["fallback"] is None, r.json()
    after = _split(replicas)
    got = {name: after[name] - before[name] for name in after}
    print(f"\ncall split over {n} requests: {got}")
    for service in METHODS:
        a, b = got[f"{service}-a"], got[f"{service}-b"]
        assert a + b >= n, got  # every request reached one replica of each service
        # round_robin: alternate picks; the only imbalance is which replica took the first call
        assert min(a, b) >= 0.4 * (a + b), f"{service}: {a} vs {b}"
    assert all(d.queries > 0 for d in replicas.dns.values()), "the names were not resolved through the stub"


def test_a_replica_added_behind_the_name_gets_calls_without_a_gateway_restart(replicas: Replicas, known_users):
    """Scale-up: a third retrieval replica starts and the name gains its address. The gateway finds
    it when it resolves the name again, which the replicas' max connection age (2 s here, 60 s by
    default) forces; meanwhile no request fails."""
    port = replicas.grpc_port["retrieval"]
    replicas.metrics["retrieval-c"] = metrics = free_port()
    replicas.stack.start_module("retrieval-c", "services.retrieval", {
        **replicas.env, "RETRIEVAL_HOST": SCALED_UP, "RETRIEVAL_PORT": str(port),
        "RETRIEVAL_METRICS_PORT": str(metrics)})
    _serving(f"{SCALED_UP}:{port}")
    t0 = time.monotonic()
    replicas.dns["retrieval"].addresses = [*ADDRESSES, SCALED_UP]
    i = 0
    while calls(metrics, METHODS["retrieval"]) == 0:
        assert time.monotonic() - t0 < 30, "the new replica got no call within 30 s"
        r = replicas.gateway.get("/recommend", params={"user_id": known_users[200 + i % 100], "k": 10})
        assert r.status_code == 200 and r.json()["fallback"] is None, r.text
        i += 1
    print(f"\nthe added replica took its first call {time.monotonic() - t0:.1f} s after the name changed "
          f"({i} requests)")
    before = _split(replicas)
    for user in known_users[:90]:
        assert replicas.gateway.get("/recommend", params={"user_id": user, "k": 10}).status_code == 200
    after = _split(replicas)
    got = {n: after[n] - before[n] for n in after if n.startswith("retrieval")}
    print(f"split over three retrieval replicas (90 requests): {got}")
    assert all(v >= 15 for v in got.values()), got


def _load(client: httpx.Client, users: list[str], stop: threading.Event, out: list[tuple[int, str | None]]) -> None:
    i = 0
    while not stop.is_set():
        r = client.get("/recommend", params={"user_id": users[i % len(users)], "k": 10})
        out.append((r.status_code, r.json().get("fallback") if r.status_code == 200 else r.text))
        i += 1


def test_killing_one_replica_of_each_service_costs_no_5xx(replicas: Replicas, known_users):
    """SIGKILL (no drain, no NOT_SERVING first): the killed replica's connections break, calls in
    flight on it are retried once on the other replica (UNAVAILABLE), the health watch drops it
    from the rotation, and every later call goes to the survivor."""
    base = replicas.gateway.base_url
    answers: list[tuple[int, str | None]] = []
    stop = threading.Event()
    clients = [httpx.Client(base_url=base, timeout=10.0) for _ in range(2)]
    threads = [threading.Thread(target=_load, args=(c, known_users[300 + 200 * i:500 + 200 * i], stop, answers))
               for i, c in enumerate(clients)]
    try:
        for t in threads:
            t.start()
        time.sleep(1.0)
        before_kill = len(answers)
        for name in ("retrieval-b", "ranking-b"):
            replicas.stack.signal(name, 9)
        survivors = {name: calls(replicas.metrics[name], METHODS[name.split("-")[0]])
                     for name in ("retrieval-a", "ranking-a")}
        time.sleep(3.0)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=15)
        for c in clients:
            c.close()
    statuses = Counter(code for code, _ in answers)
    rungs = Counter(rung for code, rung in answers if code == 200)
    after_kill = answers[before_kill:]
    print(f"\n{len(answers)} answers ({len(after_kill)} after the kill): statuses {dict(statuses)}, "
          f"rungs {dict(rungs)}")
    assert not [a for a in answers if a[0] >= 500], statuses
    assert set(statuses) == {200}, statuses
    assert len(after_kill) > 50, "too few requests after the kill to say anything"
    # past the first second after the kill every answer is a full one again
    tail = after_kill[len(after_kill) // 2:]
    assert all(rung is None for _, rung in tail), Counter(r for _, r in tail)
    for name, count in survivors.items():
        assert calls(replicas.metrics[name], METHODS[name.split("-")[0]]) > count, f"{name} took no calls"
    for user in known_users[:20]:
        r = replicas.gateway.get("/recommend", params={"user_id": user, "k": 10})
        assert r.status_code == 200 and r.json()["fallback"] is None, r.text
