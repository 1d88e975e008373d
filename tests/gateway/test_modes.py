"""One graph, two runtimes: ``GATEWAY_MODE=grpc`` and ``GATEWAY_MODE=inprocess``.

Process-level (real processes on free ports, same bundle, same embedded SQLite online store):
both modes return the same ranked lists; ``/readyz``; two in-process workers aggregate their
``/metrics``; a bad pipeline config or mode is refused in one line.
Unit-level (fake pipelines behind the in-process faces): a stage that raises or overruns its
budget takes the same fallback rung as a failed gRPC call.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from common.net import free_port
from common.settings import REPO_ROOT
from deploy.local import Ports, Stack, start_services
from tests.gateway.conftest import SERVICE_ENV

# generous budgets: the comparison is about answers, not speed, on a shared machine
SLACK = {"GATEWAY_CACHE_TTL_S": "0", "GATEWAY_REQUEST_TIMEOUT_MS": "3000",
         "GATEWAY_RETRIEVAL_TIMEOUT_MS": "1500", "GATEWAY_RANKING_TIMEOUT_MS": "1500"}


@dataclass
class Modes:
    grpc: httpx.Client
    inprocess: httpx.Client
    workers2: httpx.Client
    workers2_url: str


def _inprocess_gateway(run_dir: Path, env: dict[str, str], workers: int, stacks: list[Stack]) -> str:
    """The gateway alone, as ``GATEWAY_MODE=inprocess make up`` starts it (its own run dir)."""
    stack = Stack(run_dir)
    stacks.append(stack)
    return start_services(stack, Ports.free(), None, extra_env=env, gateway_env={"GATEWAY_WORKERS": str(workers)},
                          timeout=180, mode="inprocess")


@pytest.fixture(scope="module")
def modes(tmp_path_factory, bundle_path: Path) -> Iterator[Modes]:
    tmp = tmp_path_factory.mktemp("modes")
    env = {**SERVICE_ENV, "ARTIFACTS_DIR": str(bundle_path), **SLACK}
    stacks = [Stack(tmp / "grpc")]
    clients: list[httpx.Client] = []
    try:
        grpc_url = start_services(stacks[0], Ports.free(), None, extra_env=env, timeout=180)
        inprocess_url = _inprocess_gateway(tmp / "inprocess", env, 1, stacks)
        workers_url = _inprocess_gateway(tmp / "workers2", env, 2, stacks)
        assert {n for s in stacks[1:] for n in s.names()} == {"gateway"}, "inprocess: no retrieval / ranking processes"
        clients = [httpx.Client(base_url=u, timeout=10.0) for u in (grpc_url, inprocess_url, workers_url)]
        yield Modes(*clients, workers_url)
    finally:
        for c in clients:
            c.close()
        for s in stacks:
            s.stop_all()


def _ranked(client: httpx.Client, body: dict) -> list[tuple[int, float]]:
    r = client.post("/recommend", json=body)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["fallback"] is None, answer
    return [(i["item_id"], i["score"]) for i in answer["items"]]


def test_both_modes_return_the_same_ranked_lists(modes, known_users, popular):
    rng = random.Random(11)
    users = rng.sample(known_users, 44) + ["new-user-never-seen", "0", "999999999", "-5", "Alice", "42x"]
    requests = []
    for i, user in enumerate(users):
        body: dict = {"user_id": user, "k": 10 + i % 3 * 10}
        if i % 3 == 1:  # context: items watched just now
            body["context"] = {"recent_item_ids": rng.sample(range(1, 1683), 3)}
        if i % 2 == 1:  # exclusions, some of them certainly in the answer
            body["exclude_item_ids"] = popular[:3] + rng.sample(range(1, 1683), 5)
        requests.append(body)
    for body in requests:
        want, got = _ranked(modes.grpc, body), _ranked(modes.inprocess, body)
        assert [i for i, _ in got] == [i for i, _ in want], body
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want], rtol=0, atol=1e-5, err_msg=str(body))
        assert not set(body.get("exclude_item_ids", ())) & {i for i, _ in got}


def test_readyz_reports_the_in_process_stages(modes):
    r = modes.inprocess.get("/readyz")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ready"] is True
    assert body["dependencies"] == {"retrieval": "SERVING", "ranking": "SERVING"}
    assert set(body) == set(modes.grpc.get("/readyz").json()), "same response shape in both modes"


def test_in_process_metrics_include_the_stages(modes):
    m = modes.inprocess.get("/metrics").text
    assert 'recsys_stage_seconds_count{service="retrieval",stage="features"}' in m
    assert 'recsys_stage_seconds_count{service="ranking",stage="score"}' in m
    assert m.count("# TYPE recsys_stage_seconds histogram") == 1, "one family, both services"
    assert 'gateway_circuit_breaker_state{breaker="ranking",gateway_circuit_breaker_state="closed"} 1.0' in m


def _requests_200(text: str) -> float:
    return sum(float(v) for v in re.findall(r'^gateway_requests_total\{code="200"\} (\S+)$', text, re.M))


def test_two_workers_answer_and_metrics_count_both(modes, known_users):
    n = 40
    for i in range(n):
        # a new connection per request: the kernel hands them to either worker
        with httpx.Client(base_url=modes.workers2_url, timeout=10.0) as c:
            assert c.get("/recommend", params={"user_id": known_users[i], "k": 5}).status_code == 200
    for _ in range(4):  # whichever worker answers the scrape, it reports every worker's requests
        with httpx.Client(base_url=modes.workers2_url, timeout=10.0) as c:
            text = c.get("/metrics").text
        assert _requests_200(text) == n
        pids = set(re.findall(r'^gateway_circuit_breaker_state\{[^}]*pid="(\d+)"', text, re.M))
        assert len(pids) == 2, "each worker's breakers are exported with its pid"
        assert "gateway_catalog_items 1682.0" in text or re.search(r"^gateway_catalog_items \d", text, re.M)


def _gateway_exit(env: dict[str, str]) -> subprocess.CompletedProcess:
    full = {**os.environ, **SERVICE_ENV, "GATEWAY_PORT": str(free_port()), **env}
    return subprocess.run([sys.executable, "-m", "services.gateway"], cwd=REPO_ROOT, env=full,
                          capture_output=True, text=True, timeout=120)


def test_bad_pipeline_config_is_refused_in_one_line(tmp_path, bundle_path):
    bad = tmp_path / "pipeline.toml"
    bad.write_text((REPO_ROOT / "services" / "pipeline.toml").read_text().replace('type = "two_tower"', 'type = "nope"', 1))
    done = _gateway_exit({"GATEWAY_MODE": "inprocess", "ARTIFACTS_DIR": str(bundle_path),
                          "RETRIEVAL_PIPELINE_CONFIG": str(bad)})
    out = done.stdout + done.stderr
    assert done.returncode == 2, out
    assert "refusing to serve" in out and "nope" in out
    assert "Traceback" not in out


def test_unknown_mode_is_refused_in_one_line():
    done = _gateway_exit({"GATEWAY_MODE": "grcp"})
    out = done.stdout + done.stderr
    assert done.returncode == 2, out
    assert "GATEWAY_MODE must be one of grpc, inprocess; got 'grcp'" in out
    assert "Traceback" not in out


def test_worker_count_defaults_by_mode():
    from services.gateway.settings import GatewaySettings

    assert GatewaySettings(mode="grpc").worker_count == 1
    assert GatewaySettings(mode="inprocess").worker_count == (os.cpu_count() or 1)
    assert GatewaySettings(mode="inprocess", workers=3).worker_count == 3
    assert GatewaySettings(mode="grpc", workers=0).worker_count == 1
    # precomputed answers are the gateway's own work (HTTP, one Redis read, the filters): every core
    assert GatewaySettings(mode="grpc", serving_mode="precomputed", redis_url="redis://x:1/0").worker_count == (
        os.cpu_count() or 1)
    assert GatewaySettings(mode="grpc", serving_mode="hybrid", redis_url="redis://x:1/0").worker_count == 1


# -- unit level: in-process faces over fake pipelines --------------------------------------------
class FakeRetrieval:
    version = "v"

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    def retrieve(self, user_id, k, recent_item_ids=None, exclude_item_ids=None, trace=None):
        from services.retrieval.pipeline import RetrievalResult

        if self.fail:
            raise RuntimeError("index on fire")
        ids = np.array([5, 6, 7, 8], np.int64)[:k]
        return RetrievalResult(ids, np.linspace(0.4, 0.1, ids.size).astype(np.float32),
                               np.zeros(ids.size, np.uint8), ("fake",), "v")


class FakeRanking:
    version = "v"

    def __init__(self, fail: bool = False, sleep_s: float = 0.0) -> None:
        self.fail, self.sleep_s = fail, sleep_s

    def rank(self, user_id, item_ids, retrieval_scores, explain_top=0):
        from services.ranking.pipeline import RankResult

        if self.fail:
            raise RuntimeError("model on fire")
        time.sleep(self.sleep_s)  # CPU-bound work cannot be interrupted either
        order = np.argsort(retrieval_scores, kind="stable")  # worst first: visibly re-ranked
        return RankResult(item_ids[order], retrieval_scores[order], "v")


def _recommender(retrieval, ranking, **settings):
    from services.gateway.cache import NullCache
    from services.gateway.catalog import Catalog
    from services.gateway.metrics import GatewayMetrics
    from services.gateway.pipeline import Recommender
    from services.gateway.settings import GatewaySettings
    from services.inprocess import LocalRanking, LocalRetrieval
    from services.ranking.settings import RankingSettings
    from services.retrieval.settings import RetrievalSettings

    return Recommender(GatewaySettings(**settings), retrieval=LocalRetrieval(retrieval, RetrievalSettings()),
                       ranking=LocalRanking(ranking, RankingSettings()), cache=NullCache(),
                       catalog=Catalog(version="v", popular=((1, 0.9), (2, 0.8), (3, 0.7))), metrics=GatewayMetrics())


def _recommend(rec, **query):
    from services.gateway.pipeline import Query

    t = time.perf_counter()
    result = asyncio.run(rec.recommend(Query(**{"user_id": "1", "k": 3, **query})))
    return result, time.perf_counter() - t


def _errors(rec, dependency: str, code: str) -> float:
    return rec.metrics.registry.get_sample_value("gateway_dependency_errors_total",
                                                 {"dependency": dependency, "code": code}) or 0.0


def test_in_process_stages_answer_like_the_services():
    result, _ = _recommend(_recommender(FakeRetrieval(), FakeRanking()))
    assert result.fallback is None
    assert [i["item_id"] for i in result.items] == [8, 7, 6]


def test_a_ranking_stage_that_raises_takes_the_ranking_unavailable_rung():
    rec = _recommender(FakeRetrieval(), FakeRanking(fail=True))
    result, _ = _recommend(rec)
    assert result.fallback == "ranking_unavailable"
    assert [i["item_id"] for i in result.items] == [5, 6, 7], "retrieval order"
    assert _errors(rec, "ranking", "INTERNAL") == 1


def test_a_retrieval_stage_that_raises_takes_the_retrieval_unavailable_rung():
    rec = _recommender(FakeRetrieval(fail=True), FakeRanking())
    result, _ = _recommend(rec)
    assert result.fallback == "retrieval_unavailable"
    assert [i["item_id"] for i in result.items] == [3, 2, 1], "the popular list, re-ranked"
    assert _errors(rec, "retrieval", "INTERNAL") == 1


def test_a_stage_that_overruns_its_budget_falls_back_within_the_request_deadline():
    rec = _recommender(FakeRetrieval(), FakeRanking(sleep_s=0.05), ranking_timeout_ms=10, request_timeout_ms=500)
    result, elapsed = _recommend(rec)
    assert result.fallback == "ranking_unavailable"
    assert [i["item_id"] for i in result.items] == [5, 6, 7], "the late ranking is discarded"
    assert _errors(rec, "ranking", "DEADLINE_EXCEEDED") == 1
    assert elapsed < 0.5


def test_faces_raise_the_grpc_errors_of_the_servicers():
    from common.proto.recsys.v1 import common_pb2, ranking_pb2, retrieval_pb2
    from services.inprocess import LocalRanking, LocalRetrieval
    from services.ranking.settings import RankingSettings
    from services.retrieval.settings import RetrievalSettings

    async def code(call, request, timeout=1.0):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(request, timeout=timeout)
        return info.value.code(), info.value.details()

    retrieval = LocalRetrieval(FakeRetrieval(), RetrievalSettings())
    ranking = LocalRanking(FakeRanking(), RankingSettings())
    bad_scores = ranking_pb2.RankRequest(user_id="1", candidates=common_pb2.CandidateList(item_ids=[1], scores=[float("nan")]))
    assert asyncio.run(code(retrieval.Retrieve, retrieval_pb2.RetrieveRequest(user_id="1", k=0))) == \
        (grpc.StatusCode.INVALID_ARGUMENT, "k must be positive, got 0")
    assert asyncio.run(code(ranking.Rank, bad_scores)) == \
        (grpc.StatusCode.INVALID_ARGUMENT, "candidate scores must be finite numbers")
    assert asyncio.run(code(retrieval.Retrieve, retrieval_pb2.RetrieveRequest(user_id="1", k=3), timeout=0))[0] == \
        grpc.StatusCode.DEADLINE_EXCEEDED
    ok = asyncio.run(retrieval.Retrieve(retrieval_pb2.RetrieveRequest(user_id="1", k=3), timeout=1.0))
    assert list(ok.candidates.item_ids) == [5, 6, 7] and list(ok.candidates.source_names) == ["fake"]
