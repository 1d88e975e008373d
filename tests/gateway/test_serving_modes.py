"""Serving modes on real processes: ``python -m services.precompute`` over the real ml-100k bundle
into a private Redis (into which a private Feast project was materialised), then retrieval,
ranking, the events consumer and gateways in every serving mode and both runtimes on it:

* ``online``: a grpc gateway (the reference answers, and the /events entry);
* ``precomputed`` and ``hybrid``: a grpc gateway and an in-process gateway each;
* ``precomputed`` with its Redis unreachable (``redis_error``).

The first test compares answers before any event is posted (live popularity and co-visitation
change online answers); the others each use users of their own.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis

from common.net import free_port
from common.precomputed import PrecomputedList, decode, encode
from common.realtime import precomputed_key
from common.settings import REPO_ROOT
from deploy.local import Ports, Stack, service_env, start_redis, start_services, wait_ready
from feature_store.testing import private_feast

TOKEN = "serving-modes-test-admin-token"
TOP_N = 300
SLACK = {"GATEWAY_CACHE_TTL_S": "0", "GATEWAY_REQUEST_TIMEOUT_MS": "3000",
         "GATEWAY_RETRIEVAL_TIMEOUT_MS": "1500", "GATEWAY_RANKING_TIMEOUT_MS": "1500", "GATEWAY_CACHE_TIMEOUT_MS": "500"}
ADMIN = {"GATEWAY_ADMIN_TOKEN": TOKEN, "GATEWAY_ENVIRONMENT": "dev"}


@dataclass
class Served:
    redis: redis.Redis
    version: str
    job_output: str
    job_window: tuple[float, float]
    services_metrics: dict[str, str]  # "retrieval" / "ranking" -> metrics URL of the grpc services
    clients: dict[str, httpx.Client] = field(default_factory=dict)  # online, pre_grpc, hyb_grpc, pre_inproc, ...

    def get(self, name: str, user: str, k: int = 10) -> dict:
        r = self.clients[name].get("/recommend", params={"user_id": user, "k": k})
        assert r.status_code == 200, r.text
        return r.json()

    def post(self, name: str, body: dict) -> dict:
        r = self.clients[name].post("/recommend", json=body)
        assert r.status_code == 200, r.text
        return r.json()

    def stored(self, user: str) -> PrecomputedList:
        lst = decode(self.redis.get(precomputed_key(user)))
        assert lst is not None, f"no precomputed list for {user}"
        return lst

    def answers(self, name: str, mode: str, outcome: str) -> float:
        text = self.clients[name].get("/metrics").text
        m = re.search(rf'^gateway_serving_mode_answers_total\{{mode="{mode}",outcome="{outcome}"\}} (\S+)$', text, re.M)
        return float(m.group(1)) if m else 0.0


def _gateway(run_dir: Path, services: Ports, redis_url: str, env: dict[str, str], gateway_env: dict[str, str],
             stacks: list[Stack]) -> str:
    """A grpc-mode gateway of its own on the shared retrieval and ranking services."""
    stack = Stack(run_dir)
    stacks.append(stack)
    port = free_port()
    stack.start_module("gateway", "services.gateway", {**service_env(services, redis_url, env), "GATEWAY_MODE": "grpc",
                                                       "GATEWAY_PORT": str(port), **gateway_env})
    url = f"http://127.0.0.1:{port}"
    wait_ready(stack, f"{url}/readyz", ["gateway"], 120)
    return url


@pytest.fixture(scope="module")
def served(tmp_path_factory, bundle_path: Path) -> Iterator[Served]:
    from common.bundle import load_bundle

    tmp = tmp_path_factory.mktemp("serving-modes")
    stacks = [Stack(tmp / "redis")]
    clients: dict[str, httpx.Client] = {}
    client = None
    try:
        url = start_redis(stacks[0])
        client = redis.Redis.from_url(url)
        feast = private_feast(tmp / "feast", url)
        env = {"ARTIFACTS_DIR": str(bundle_path), "FEAST_DATA_DIR": str(feast.settings.data_dir),
               "FEAST_OFFLINE_DIR": str(feast.settings.offline_dir), "RETRIEVAL_WARMUP_REQUESTS": "5",
               "RANKING_WARMUP_REQUESTS": "5", "RETRIEVAL_GRACE_PERIOD_S": "1", "RANKING_GRACE_PERIOD_S": "1",
               **SLACK}
        t0 = time.time()
        job = subprocess.run([sys.executable, "-m", "services.precompute", "--no-progress"], cwd=REPO_ROOT,
                             env={**os.environ, **env, "REDIS_URL": url, "PRECOMPUTE_TOP_N": str(TOP_N)},
                             capture_output=True, text=True, timeout=900)
        window = (t0, time.time())
        assert job.returncode == 0, job.stdout + job.stderr
        stacks.append(Stack(tmp / "run"))
        ports = Ports.free()
        urls = {"online": start_services(stacks[1], ports, url, extra_env=env, events=True, gateway_env=ADMIN)}
        for name, mode in (("pre_grpc", "precomputed"), ("hyb_grpc", "hybrid")):
            urls[name] = _gateway(tmp / name, ports, url, env, {"GATEWAY_SERVING_MODE": mode, **ADMIN}, stacks)
        dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
        urls["pre_dead"] = _gateway(tmp / "pre_dead", ports, dead, env, {"GATEWAY_SERVING_MODE": "precomputed"}, stacks)
        for name, mode in (("pre_inproc", "precomputed"), ("hyb_inproc", "hybrid")):
            stacks.append(Stack(tmp / name))
            urls[name] = start_services(stacks[-1], Ports.free(), url, extra_env=env, mode="inprocess", timeout=180,
                                        gateway_env={"GATEWAY_SERVING_MODE": mode, "GATEWAY_WORKERS": "1", **ADMIN})
        clients = {name: httpx.Client(base_url=u, timeout=10.0) for name, u in urls.items()}
        yield Served(client, load_bundle(bundle_path, verify=False).version, job.stdout + job.stderr, window,
                     {"retrieval": f"http://127.0.0.1:{ports.retrieval_metrics}/metrics",
                      "ranking": f"http://127.0.0.1:{ports.ranking_metrics}/metrics"}, clients)
    finally:
        for c in clients.values():
            c.close()
        for s in reversed(stacks):
            s.stop_all()
        if client is not None:
            client.close()


def _ids(answer: dict) -> list[int]:
    return [i["item_id"] for i in answer["items"]]


def _post_event(served: Served, user: str, item: int, type_: str = "click") -> None:
    r = served.clients["online"].post("/events", json={"events": [
        {"event_id": uuid.uuid4().hex, "user_id": user, "item_id": item, "type": type_}]})
    assert r.status_code == 202, r.text


def _rewrite(served: Served, user: str, **changes) -> PrecomputedList:
    lst = served.stored(user)
    fields = {f: getattr(lst, f) for f in ("version", "computed_at", "item_ids", "scores", "retrieval_scores",
                                            "source_codes", "source_names")} | changes
    new = PrecomputedList(**fields)
    served.redis.set(precomputed_key(user), encode(new))
    return new


# -- the batch job and the answers at precompute time (before any event) -------------------------
def test_the_batch_job_writes_every_known_user(served: Served, known_users):
    lo, hi = served.job_window
    for user in known_users:
        lst = served.stored(user)
        assert lst.version == served.version
        assert lo <= lst.computed_at <= hi
        assert len(lst) == TOP_N
        assert len(set(lst.item_ids.tolist())) == TOP_N
        assert (np.diff(lst.scores) <= 0).all(), "best first"
        assert 0 < served.redis.ttl(precomputed_key(user)) <= 604800
    assert not served.redis.exists(precomputed_key("0")), "row 0 is the unknown-user row"
    assert re.search(rf"{len(known_users):,} users in [\d.]+ s \([\d,]+ users/s\), [\d,]+ bytes per list", served.job_output), \
        served.job_output


def test_precomputed_and_hybrid_answers_equal_the_online_ones_when_nothing_happened(served: Served, known_users):
    rng = np.random.default_rng(5)
    users = [known_users[i] for i in rng.choice(len(known_users), 30, replace=False)]
    for n, user in enumerate(users):
        k = (10, 50, 100)[n % 3]
        want = served.get("online", user, k)
        assert want["mode"] == "online" and want["fallback"] is None
        for name, mode in (("pre_grpc", "precomputed"), ("pre_inproc", "precomputed"),
                           ("hyb_grpc", "hybrid"), ("hyb_inproc", "hybrid")):
            got = served.get(name, user, k)
            assert (got["mode"], got["fallback"], got["model_version"]) == (mode, None, want["model_version"]), (name, got)
            assert _ids(got) == _ids(want), (name, user, k)
            np.testing.assert_allclose([i["score"] for i in got["items"]], [i["score"] for i in want["items"]],
                                       rtol=0, atol=1e-5, err_msg=f"{name} {user}")
            assert [i["title"] for i in got["items"]] == [i["title"] for i in want["items"]]


# -- precomputed mode: the real-time filters -----------------------------------------------------
@pytest.mark.parametrize("name", ["pre_grpc", "pre_inproc"])
def test_a_seen_event_leaves_the_next_precomputed_answer(served: Served, known_users, name):
    user = known_users[100 if name == "pre_grpc" else 101]
    first = served.get(name, user)
    assert first["mode"] == "precomputed"
    clicked, viewed = _ids(first)[0], _ids(first)[1]
    _post_event(served, user, clicked, "click")
    _post_event(served, user, viewed, "view")  # not a "seen" type, but recent: filtered too
    deadline = time.monotonic() + 5
    while True:
        after = served.get(name, user)
        if clicked not in _ids(after) and viewed not in _ids(after):
            break
        assert time.monotonic() < deadline, f"still in the answer after 5 s: {after}"
        time.sleep(0.02)
    assert (after["mode"], after["fallback"]) == ("precomputed", None)
    assert _ids(after) == [i for i in served.stored(user).item_ids.tolist() if i not in (clicked, viewed)][:10]


def test_request_exclusions_and_context_apply_to_precomputed_answers(served: Served, known_users):
    user = known_users[102]
    stored = served.stored(user).item_ids.tolist()
    body = {"user_id": user, "k": 10, "exclude_item_ids": stored[:3], "context": {"recent_item_ids": [stored[4]]}}
    for name in ("pre_grpc", "pre_inproc"):
        got = served.post(name, body)
        assert got["mode"] == "precomputed"
        assert _ids(got) == [i for i in stored if i not in set(stored[:3]) | {stored[4]}][:10]


@pytest.mark.parametrize("name", ["pre_grpc", "pre_inproc", "hyb_grpc"])
def test_unusable_lists_fall_back_to_online_with_their_reason(served: Served, known_users, name):
    base = {"pre_grpc": 200, "pre_inproc": 210, "hyb_grpc": 220}[name]
    users = {reason: known_users[base + i] for i, reason in enumerate(("missing", "expired", "wrong_version", "too_few"))}
    served.redis.delete(precomputed_key(users["missing"]))
    _rewrite(served, users["expired"], computed_at=time.time() - 2 * 86400)
    _rewrite(served, users["wrong_version"], version="20200101T000000Z-00000000")
    short = _rewrite(served, users["too_few"], **{f: getattr(served.stored(users["too_few"]), f)[:5]
                                                   for f in ("item_ids", "scores", "retrieval_scores", "source_codes")})
    cases = [*users.items(), ("missing", "someone-never-seen-before")]
    for reason, user in cases:
        before = served.answers(name, "online", reason)
        got = served.get(name, user)
        assert (got["mode"], got["fallback"]) == ("online", None), (reason, got)
        assert len(got["items"]) == 10
        assert served.answers(name, "online", reason) == before + 1, reason
    mode = "precomputed" if name.startswith("pre") else "hybrid"
    five = served.get(name, users["too_few"], k=5)
    assert five["mode"] == mode, "5 items left: enough for k = 5"
    if mode == "precomputed":
        assert _ids(five) == short.item_ids.tolist()


def test_a_failing_redis_falls_back_to_online_never_a_5xx(served: Served, known_users):
    got = served.get("pre_dead", known_users[230])
    assert (got["mode"], got["fallback"]) == ("online", None)
    assert served.answers("pre_dead", "online", "redis_error") >= 1


def test_explain_says_which_mode_answered_and_why_not_precomputed(served: Served, known_users):
    user = known_users[240]
    auth = {"authorization": f"Bearer {TOKEN}"}
    ex = served.clients["pre_grpc"].get("/debug/explain", params={"user_id": user, "k": 5}, headers=auth).json()
    assert ex["answer"]["mode"] == "precomputed"
    pre = ex["explain"]["serving_mode"]["precomputed"]
    assert pre["used"] is True and pre["version"] == served.version and pre["items"] == TOP_N
    _rewrite(served, user, version="20200101T000000Z-00000000")
    ex = served.clients["pre_grpc"].get("/debug/explain", params={"user_id": user, "k": 5}, headers=auth).json()
    assert ex["answer"]["mode"] == "online"
    assert ex["explain"]["serving_mode"]["answered"] == "online"
    assert ex["explain"]["serving_mode"]["precomputed"]["reason"] == "wrong_version"
    assert ex["explain"]["retrieval"] is not None


# -- hybrid mode -------------------------------------------------------------------------------
def _count(text: str, pattern: str) -> float:
    return sum(float(v) for v in re.findall(pattern, text, re.M))


RETRIEVE_CALLS = r'^recsys_stage_seconds_count\{service="retrieval",stage="features"\} (\S+)$'
RANK_CALLS = r'^recsys_stage_seconds_count\{service="ranking",stage="score"\} (\S+)$'
GATEWAY_STAGE = r'^gateway_stage_latency_seconds_count\{{stage="{}"\}} (\S+)$'


def _calls(served: Served, name: str) -> dict[str, float]:
    gateway = served.clients[name].get("/metrics").text
    if name.endswith("inproc"):  # the pipelines' metrics are the gateway's
        retrieval = ranking = gateway
    else:
        retrieval, ranking = (httpx.get(served.services_metrics[s], timeout=5.0).text for s in ("retrieval", "ranking"))
    return {"retrieve": _count(retrieval, RETRIEVE_CALLS), "rank": _count(ranking, RANK_CALLS),
            "gateway_retrieval": _count(gateway, GATEWAY_STAGE.format("retrieval")),
            "gateway_ranking": _count(gateway, GATEWAY_STAGE.format("ranking"))}


@pytest.mark.parametrize("name", ["hyb_grpc", "hyb_inproc"])
def test_hybrid_re_ranks_the_precomputed_candidates_without_retrieval(served: Served, known_users, name):
    users = known_users[300:305] if name == "hyb_grpc" else known_users[305:310]
    before = _calls(served, name)
    for n, user in enumerate(users):
        stored = served.stored(user).item_ids.tolist()
        body = {"user_id": user, "k": 20, "context": {"recent_item_ids": stored[-3:] if n % 2 else []},
                "exclude_item_ids": stored[:2]}
        got = served.post(name, body)
        assert (got["mode"], got["fallback"]) == ("hybrid", None), got
        assert set(_ids(got)) <= set(stored) - set(stored[:2]) - set(body["context"]["recent_item_ids"])
        assert len(got["items"]) == 20
    after = _calls(served, name)
    assert after["retrieve"] == before["retrieve"] and after["gateway_retrieval"] == before["gateway_retrieval"]
    assert after["rank"] - before["rank"] == len(users)
    assert after["gateway_ranking"] - before["gateway_ranking"] == len(users)
    assert served.answers(name, "hybrid", "served") >= len(users)


def test_hybrid_re_ranking_uses_the_live_context(served: Served, known_users):
    """A seen event removes the item from the candidates, and the answer is still re-ranked."""
    user = known_users[320]
    first = served.get("hyb_grpc", user)
    _post_event(served, user, _ids(first)[0], "purchase")
    deadline = time.monotonic() + 5
    while _ids(first)[0] in _ids(after := served.get("hyb_grpc", user)):
        assert time.monotonic() < deadline, after
        time.sleep(0.02)
    assert (after["mode"], after["fallback"]) == ("hybrid", None)


# -- refusals ----------------------------------------------------------------------------------
def test_precomputed_modes_without_redis_are_refused_in_one_line(bundle_path):
    for mode in ("precomputed", "hybrid"):
        env = {**os.environ, "REDIS_URL": "", "GATEWAY_SERVING_MODE": mode, "GATEWAY_PORT": str(free_port()),
               "ARTIFACTS_DIR": str(bundle_path)}
        done = subprocess.run([sys.executable, "-m", "services.gateway"], cwd=REPO_ROOT, env=env,
                              capture_output=True, text=True, timeout=120)
        out = done.stdout + done.stderr
        assert done.returncode == 2, out
        assert f"refusing to serve: settings: Value error, GATEWAY_SERVING_MODE={mode} needs REDIS_URL" in out
        assert "Traceback" not in out


def test_the_batch_job_without_redis_is_refused_in_one_line(bundle_path):
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"} | {"ARTIFACTS_DIR": str(bundle_path)}
    done = subprocess.run([sys.executable, "-m", "services.precompute"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    out = done.stdout + done.stderr
    assert done.returncode == 2, out
    assert "precompute: refusing to run: REDIS_URL is not set" in out
    assert "Traceback" not in out
