"""The fallback ladder against real processes: dependencies stalled (SIGSTOP), killed (SIGKILL)
or stopped (SIGTERM), and their recovery. Tests run in file order and each repairs what it broke."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from common.bundle import sha256_file
from common.settings import REPO_ROOT
from deploy.local import Stack, free_port


def _poll(fn, timeout: float = 10.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def _breaker(metrics: str, name: str) -> str:
    for line in metrics.splitlines():
        if line.startswith(f'gateway_circuit_breaker_state{{breaker="{name}"') and line.endswith(" 1.0"):
            return line.split('gateway_circuit_breaker_state="')[1].split('"')[0]
    raise AssertionError(f"no breaker state for {name}")


def _counter(metrics: str, prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith(prefix))


# "Within the deadline": the gateway's request deadline (GATEWAY_REQUEST_TIMEOUT_MS, 100 ms by
# default) plus what an HTTP round trip from this process may add on a shared, loaded 2-core machine.
DEADLINE_S = 0.100
MARGIN_S = 0.250


def test_healthy_baseline(fragile, known_users):
    body = fragile.get(known_users[0]).json()
    assert body["fallback"] is None and len(body["items"]) == 10


def test_ranking_stalled_falls_back_to_retrieval_order_then_recovers(fragile, known_users):
    timeouts = 'gateway_dependency_errors_total{code="DEADLINE_EXCEEDED",dependency="ranking"}'
    refused = 'gateway_dependency_errors_total{code="breaker_open",dependency="ranking"}'
    before = fragile.metrics()
    fragile.stack.signal("ranking", signal.SIGSTOP)
    try:
        times, bodies = [], []
        for user in known_users[10:30]:
            t = time.perf_counter()
            r = fragile.get(user, k=10)
            times.append(time.perf_counter() - t)
            assert r.status_code == 200, r.text
            bodies.append(r.json())
        assert all(b["fallback"] == "ranking_unavailable" for b in bodies)
        assert all(len(b["items"]) == 10 for b in bodies)
        assert all(not b["cached"] for b in bodies)
        assert max(times) < DEADLINE_S + MARGIN_S, times
        m = fragile.metrics()
        assert _breaker(m, "ranking") in ("open", "half_open")
        assert _counter(m, 'gateway_fallbacks_total{reason="ranking_unavailable"}') >= 20
        # the breaker opened after at most min_calls (3) timeouts; later requests were refused
        # without a call (the only later calls are half-open probes, one per 0.5 s cool-down)
        timed_out = _counter(m, timeouts) - _counter(before, timeouts)
        breaker_refused = _counter(m, refused) - _counter(before, refused)
        assert timed_out >= 1 and timed_out + breaker_refused == 20, (timed_out, breaker_refused)
        assert breaker_refused >= 20 - 3 - 2 * (sum(times) / 0.5 + 1), (timed_out, breaker_refused, sum(times))
    finally:
        fragile.stack.signal("ranking", signal.SIGCONT)
    # half-open probe succeeds after the 0.5 s cool-down: back to ranked results
    recovered = _poll(lambda: fragile.get(known_users[31]).json()["fallback"] is None)
    assert recovered
    assert _breaker(fragile.metrics(), "ranking") == "closed"
    # a degraded answer was not cached: this key was answered (degraded) during the stall, and its
    # next answer is computed afresh, then cached
    again = fragile.get(known_users[10]).json()
    assert again["cached"] is False and again["fallback"] is None
    assert _poll(lambda: fragile.get(known_users[10]).json()["cached"]), "a full answer is cached"


def test_concurrent_burst_with_ranking_stalled_stays_within_the_deadline(fragile, known_users):
    """32 requests at once while ranking hangs: the bulkhead queues them in the gateway, none waits
    past its deadline, every one is a 200 in retrieval order, and few reach the hung service."""
    import asyncio

    async def burst():
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
        async with httpx.AsyncClient(base_url=fragile.url, timeout=5.0, limits=limits) as client:
            await asyncio.gather(*(client.get("/healthz") for _ in range(32)))  # open the 32 connections

            async def one(user: str):
                t = time.perf_counter()
                r = await client.get("/recommend", params={"user_id": user, "k": 8})  # k=8: uncached keys
                return r.status_code, r.json().get("fallback"), time.perf_counter() - t

            return await asyncio.gather(*(one(u) for u in known_users[300:332]))

    timeouts = 'gateway_dependency_errors_total{code="DEADLINE_EXCEEDED",dependency="ranking"}'
    before = _counter(fragile.metrics(), timeouts)
    fragile.stack.signal("ranking", signal.SIGSTOP)
    try:
        results = asyncio.run(burst())
        assert [code for code, _, _ in results] == [200] * 32
        assert {fallback for _, fallback, _ in results} == {"ranking_unavailable"}
        # 32 clients at once on 2 cores: the last one's HTTP handling alone queues behind 31 others
        assert max(t for _, _, t in results) < DEADLINE_S + 4 * MARGIN_S, results
        # few calls ever reached the hung service (without the bulkhead: all 32): its 4 slots, plus
        # the waiters that took a freed slot before the 3rd failure (min_calls) opened the breaker
        assert _counter(fragile.metrics(), timeouts) - before <= 4 + 3 - 1
    finally:
        fragile.stack.signal("ranking", signal.SIGCONT)
    assert _poll(lambda: fragile.get(known_users[333]).json()["fallback"] is None)
    assert _breaker(fragile.metrics(), "ranking") == "closed"


def test_ranking_killed_every_request_is_200(fragile, known_users):
    fragile.stack.signal("ranking", signal.SIGKILL)
    try:
        codes, fallbacks = [], set()
        for user in known_users[:100]:
            r = fragile.get(user, k=9)  # k=9: no earlier test cached these keys
            codes.append(r.status_code)
            fallbacks.add(r.json().get("fallback"))
        assert codes == [200] * 100
        assert fallbacks == {"ranking_unavailable"}
        ready = fragile.client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["dependencies"]["ranking"] != "SERVING"
    finally:
        fragile.restart("ranking")
    assert _poll(lambda: fragile.get(known_users[200]).json()["fallback"] is None)


def test_retrieval_stalled_with_ranking_healthy_serves_popular_items_ranked(fragile, known_users, popular):
    fragile.stack.signal("retrieval", signal.SIGSTOP)
    try:
        for user in known_users[50:60]:
            t = time.perf_counter()
            r = fragile.get(user, k=10)
            took = time.perf_counter() - t
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["fallback"] == "retrieval_unavailable", body
            ids = [i["item_id"] for i in body["items"]]
            assert len(ids) == 10 and set(ids) <= set(popular)
            assert took < DEADLINE_S + MARGIN_S, took
        m = fragile.metrics()
        assert _breaker(m, "retrieval") in ("open", "half_open")
        assert _breaker(m, "ranking") == "closed", "ranking answered every re-rank of the popular list"
    finally:
        fragile.stack.signal("retrieval", signal.SIGCONT)
    assert _poll(lambda: fragile.get(known_users[61]).json()["fallback"] is None)


def test_retrieval_down_serves_popular_items_ranked(fragile, known_users, popular):
    fragile.stack.signal("retrieval", signal.SIGTERM)
    try:
        _poll(lambda: fragile.stack.pid("retrieval") is None, timeout=15)
        r = fragile.get(known_users[5], k=10)
        assert r.status_code == 200
        body = r.json()
        assert body["fallback"] == "retrieval_unavailable"
        ids = [i["item_id"] for i in body["items"]]
        assert len(ids) == 10 and set(ids) <= set(popular)
        scores = [i["score"] for i in body["items"]]
        assert scores == sorted(scores, reverse=True)
        excl = fragile.client.post("/recommend", json={"user_id": known_users[5], "k": 10,
                                                        "exclude_item_ids": ids[:3]}).json()
        assert not set(ids[:3]) & {i["item_id"] for i in excl["items"]}
    finally:
        fragile.restart("retrieval")
    assert _poll(lambda: fragile.get(known_users[6]).json()["fallback"] is None)


def test_retrieval_down_serves_the_users_last_good_answer_marked_cached(fragile, known_users, tmp_path):
    """The ``cached`` rung: a user answered in full before the outage gets that answer back
    (minus this request's exclusions), marked ``fallback="cached"``; a user without one falls to
    the popular list; a gateway without a cache has no such rung."""
    user = known_users[400]
    full = fragile.get(user, k=10).json()
    assert full["fallback"] is None
    assert _poll(lambda: fragile.get(user, k=10).json()["cached"]), "the full answer was written"
    ids = [i["item_id"] for i in full["items"]]
    fragile.stack.signal("retrieval", signal.SIGSTOP)
    try:
        # another shape (k=5, an exclusion): the response cache has no entry for it
        r = fragile.client.post("/recommend", json={"user_id": user, "k": 5, "exclude_item_ids": ids[:1]})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["fallback"] == "cached" and body["cached"] is True, body
        assert [i["item_id"] for i in body["items"]] == ids[1:6]
        assert body["model_version"] == full["model_version"]
        other = fragile.get(known_users[401], k=5).json()
        assert other["fallback"] == "retrieval_unavailable", "no last answer: the next rung"
        # the same user through a gateway without a response cache: no cached rung
        with _gateway(tmp_path, fragile) as c:
            assert c.get("/recommend", params={"user_id": user, "k": 5}).json()["fallback"] == "retrieval_unavailable"
        m = fragile.metrics()
        assert _counter(m, 'gateway_fallbacks_total{reason="cached"}') >= 1
    finally:
        fragile.stack.signal("retrieval", signal.SIGCONT)
    assert _poll(lambda: fragile.get(known_users[402]).json()["fallback"] is None)


def test_everything_down_serves_the_startup_popular_list(fragile, known_users, popular):
    for name in ("retrieval", "ranking"):
        fragile.stack.signal(name, signal.SIGSTOP)
    try:
        for user in (known_users[7], "unknown-user"):
            r = fragile.get(user, k=10)
            assert r.status_code == 200
            body = r.json()
            assert body["fallback"] == "all_unavailable"
            assert [i["item_id"] for i in body["items"]] == popular[:10]
            assert all(i["title"] for i in body["items"])
    finally:
        for name in ("retrieval", "ranking"):
            fragile.stack.signal(name, signal.SIGCONT)
    assert _poll(lambda: fragile.get(known_users[8]).json()["fallback"] is None)


def test_redis_stalled_serves_without_cache_within_the_deadline_then_caches_again(fragile, known_users):
    """A stalled Redis (SIGSTOP: connections open, no answers) costs each request at most the
    cache budget (GATEWAY_CACHE_TIMEOUT_MS), never the request; once it answers again, so does the cache."""
    user = known_users[45]
    fragile.get(user)
    assert _poll(lambda: fragile.get(user).json()["cached"])
    errors_before = _counter(fragile.metrics(), 'gateway_cache_requests_total{result="error"}')
    fragile.cache_stack.signal("redis", signal.SIGSTOP)
    try:
        for _ in range(10):
            t = time.perf_counter()
            r = fragile.get(user)
            took = time.perf_counter() - t
            assert r.status_code == 200, r.text
            assert r.json()["cached"] is False and r.json()["fallback"] is None, r.json()
            assert took < DEADLINE_S + MARGIN_S, took
        m = fragile.metrics()
        assert _counter(m, 'gateway_cache_requests_total{result="error"}') - errors_before >= 10
        assert _breaker(m, "redis") in ("open", "half_open")
    finally:
        fragile.cache_stack.signal("redis", signal.SIGCONT)
    # the redis breaker probes back (0.5 s cool-down) and the entry written before the stall is served
    assert _poll(lambda: fragile.get(user).json()["cached"], timeout=15)
    assert _breaker(fragile.metrics(), "redis") == "closed"


def test_redis_down_serves_without_cache(fragile, known_users):
    user = known_users[40]
    fragile.get(user)
    assert _poll(lambda: fragile.get(user).json()["cached"])
    fragile.cache_stack.signal("redis", signal.SIGKILL)
    bodies = [fragile.get(user) for _ in range(10)]
    assert all(b.status_code == 200 for b in bodies)
    assert all(b.json()["cached"] is False and b.json()["fallback"] is None for b in bodies)
    m = fragile.metrics()
    assert _counter(m, "gateway_cache_errors_total") >= 1
    assert _counter(m, 'gateway_cache_requests_total{result="error"}') >= 10
    assert _breaker(m, "redis") in ("open", "half_open")


@contextlib.contextmanager
def _gateway(tmp_path: Path, fragile, **env: str):
    """A gateway process of its own (no cache) beside the fragile stack's services; ``env``
    overrides its settings (e.g. another bundle or dependency address)."""
    stack = Stack(tmp_path / "gateway-run")
    port = free_port()
    base = {k: v for k, v in fragile.env.items() if k.startswith(("GATEWAY_", "REDIS_URL", "ARTIFACTS_DIR"))}
    stack.start_module("gateway", "services.gateway",
                       {**base, "GATEWAY_PORT": str(port), "GATEWAY_CACHE_TTL_S": "0", **env})
    try:
        url = f"http://127.0.0.1:{port}"
        assert _poll(lambda: _up(port), timeout=60), "the gateway did not start"
        with httpx.Client(base_url=url, timeout=5) as client:
            yield client
    finally:
        stack.stop_all()


def _bundle_copy(bundle_path: Path, dest: Path) -> Path:
    root = dest / "bundle"
    shutil.copytree(bundle_path.resolve(), root)
    return root


def _rewrite(root: Path, name: str, content: bytes, *, fix_checksum: bool) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    (root / manifest["files"][name]["path"]).write_bytes(content)
    if fix_checksum:
        manifest["files"][name]["sha256"] = sha256_file(root / manifest["files"][name]["path"])
        (root / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("breakage", ["missing", "tampered_popular_items", "manifest_not_json"])
def test_gateway_starts_with_an_unreadable_bundle(fragile, tmp_path, known_users, bundle_path, breakage):
    """A broken bundle is not fatal to the gateway: empty catalog, said in metrics and /readyz."""
    expected = {"missing": "no artifact bundle", "tampered_popular_items": "sha256 mismatch for popular_items",
                "manifest_not_json": "is not valid JSON"}[breakage]
    if breakage == "missing":
        artifacts = tmp_path / "missing"
    else:
        artifacts = _bundle_copy(bundle_path, tmp_path)
        if breakage == "tampered_popular_items":
            _rewrite(artifacts, "popular_items", b'[{"item_id": 1, "score": 1.0}]', fix_checksum=False)
        else:
            (artifacts / "manifest.json").write_text('{"version": "broken", ')
    with _gateway(tmp_path, fragile, ARTIFACTS_DIR=str(artifacts)) as c:
        ready = c.get("/readyz").json()
        assert ready["bundle"] is None and expected in ready["bundle_error"], ready
        body = c.get("/recommend", params={"user_id": known_users[0], "k": 5}).json()
        assert body["fallback"] is None and len(body["items"]) == 5
        assert all(i["title"] is None for i in body["items"])
        m = c.get("/metrics").text
        assert "gateway_catalog_items 0.0" in m and "gateway_popular_items 0.0" in m


def test_empty_popular_list_with_retrieval_down_is_an_empty_answer_not_an_error(fragile, tmp_path, known_users,
                                                                               bundle_path):
    artifacts = _bundle_copy(bundle_path, tmp_path)
    _rewrite(artifacts, "popular_items", b"[]", fix_checksum=True)
    with _gateway(tmp_path, fragile, ARTIFACTS_DIR=str(artifacts),
                  GATEWAY_RETRIEVAL_ADDR=f"127.0.0.1:{free_port()}") as c:  # nothing listens there
        assert c.get("/readyz").json()["bundle_error"] is None
        for user in (known_users[0], "unknown-user"):
            r = c.get("/recommend", params={"user_id": user, "k": 5})
            assert r.status_code == 200, r.text
            assert r.json()["items"] == [] and r.json()["fallback"] == "all_unavailable", r.json()


@pytest.fixture
def refusing_ranking():
    """A real gRPC ranking server that refuses every request with INVALID_ARGUMENT."""
    from concurrent import futures

    import grpc

    from common.proto.recsys.v1 import ranking_pb2_grpc

    class Refusing(ranking_pb2_grpc.RankingServiceServicer):
        calls = 0

        def Rank(self, request, context):  # noqa: N802 - gRPC method name
            Refusing.calls += 1
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "candidates: refused by the test server")

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    ranking_pb2_grpc.add_RankingServiceServicer_to_server(Refusing(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", Refusing
    server.stop(grace=None)


def test_ranking_invalid_argument_is_not_held_against_its_breaker(fragile, tmp_path, known_users,
                                                                 refusing_ranking):
    """INVALID_ARGUMENT says the request was bad, not that ranking is unhealthy: every request
    falls back to retrieval order, and the breaker stays closed (every request still tries)."""
    addr, servicer = refusing_ranking
    with _gateway(tmp_path, fragile, GATEWAY_RANKING_ADDR=addr) as c:
        for user in known_users[70:80]:
            r = c.get("/recommend", params={"user_id": user, "k": 5})
            assert r.status_code == 200, r.text
            assert r.json()["fallback"] == "ranking_unavailable"
        m = c.get("/metrics").text
    assert servicer.calls == 10, "the breaker opened and refused calls"
    assert _counter(m, 'gateway_dependency_errors_total{code="INVALID_ARGUMENT",dependency="ranking"}') == 10
    assert _breaker(m, "ranking") == "closed"
    assert _counter(m, 'gateway_circuit_breaker_transitions_total{breaker="ranking"') == 0


def test_sigterm_stops_the_gateway_cleanly(tmp_path, fragile):
    port = free_port()
    env = {**os.environ, **{k: v for k, v in fragile.env.items() if k.startswith("GATEWAY_")},
           "GATEWAY_PORT": str(port)}
    proc = subprocess.Popen([sys.executable, "-m", "services.gateway"], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert _poll(lambda: _up(port), timeout=30)
        proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the SIGTERM it captured
        assert proc.wait(timeout=10) in (0, -signal.SIGTERM)
        out = proc.stdout.read().decode()
        assert "Application shutdown complete" in out, out[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _up(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


def test_readyz_is_503_when_a_dependency_is_not_serving(tmp_path, fragile):
    stack = Stack(tmp_path)
    port = free_port()
    env = {"GATEWAY_PORT": str(port), "GATEWAY_RETRIEVAL_ADDR": f"127.0.0.1:{free_port()}",
           "GATEWAY_RANKING_ADDR": fragile.env["GATEWAY_RANKING_ADDR"], "GATEWAY_CACHE_TTL_S": "0"}
    stack.start_module("gateway", "services.gateway", env)
    try:
        assert _poll(lambda: _up(port), timeout=30)
        r = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
        assert r.status_code == 503
        deps = r.json()["dependencies"]
        assert deps["retrieval"] == "UNAVAILABLE" and deps["ranking"] == "SERVING"
        assert json.loads(r.text)["ready"] is False
    finally:
        stack.stop_all()
