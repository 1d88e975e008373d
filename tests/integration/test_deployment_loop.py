"""The deployment loop end to end, on real processes: publish, rollback, a corrupt bundle, canary,
promote, abort, shadow scoring and an A/B experiment, without a restart.

Retrieval, ranking and the gateway run on free ports over an artifacts root of their own (copies
of the real bundle as v1, v2...) with a 0.2 s reload poll, the services on Feast's embedded
online store, the gateway with the response cache off (every answer is computed: what is
compared is the pipeline, not the cache) and its exposure log in a database of the session's
Redis. The pipeline config is the shipped one plus one experiment (``depth``: the control, and
``narrow``: 100 candidates from a pipeline without ``item_to_item``). The tests run in order
on one stack, each leaving the deployment as the next expects (noted per test).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest
import redis

from common.deployments import CURRENT, Deployments
from common.realtime import EXPOSURES
from common.settings import FeatureStoreSettings
from deploy.local import Ports, Stack, start_services
from models import lifecycle
from services.components.config import DEFAULT_PATH
from tests.conftest import copy_bundle, shipped_pipeline
from tests.conftest import until as _until

TOKEN = "deployment-loop-test-admin-token"
ADMIN = {"authorization": f"Bearer {TOKEN}"}
SWAP_S = 2.0  # the bound: every service serves a published version within 2 s
EXPERIMENT = """
[[experiments]]
name = "depth"
[[experiments.variants]]
name = "control"
weight = 1
[[experiments.variants]]
name = "narrow"
weight = 1
num_candidates = 100
pipeline = "no_i2i.toml"
"""


@dataclass
class Loop:
    root: Path
    url: str
    client: httpx.Client
    ports: Ports
    stack: Stack
    env: dict[str, str]
    exposures: redis.Redis
    registry: FeatureStoreSettings

    def answer(self, user: str, k: int = 10) -> dict:
        r = self.client.get("/recommend", params={"user_id": user, "k": k})
        assert r.status_code == 200, r.text
        return r.json()

    def service_status(self, name: str) -> dict:
        port = self.ports.retrieval_metrics if name == "retrieval" else self.ports.ranking_metrics
        return httpx.get(f"http://127.0.0.1:{port}/status", timeout=5).json()

    def metrics(self, name: str) -> str:
        port = {"retrieval": self.ports.retrieval_metrics, "ranking": self.ports.ranking_metrics}.get(name)
        url = f"http://127.0.0.1:{port}/metrics" if port else f"{self.url}/metrics"
        return httpx.get(url, timeout=5).text


@pytest.fixture(scope="module")
def loop(tmp_path_factory, bundle_path, redis_url) -> Iterator[Loop]:
    work = tmp_path_factory.mktemp("deployment-loop")
    root = work / "artifacts"
    root.mkdir()
    for v in ("v1", "v2"):
        copy_bundle(bundle_path, root, v)
    Deployments(root).switch("v1", action="publish", why="test", actor="test")
    config = work / "pipeline.toml"
    config.write_text(shipped_pipeline() + EXPERIMENT)
    (work / "no_i2i.toml").write_text((DEFAULT_PATH.parent / "pipelines" / "no_item_to_item.toml").read_text())
    exposures_url = redis_url.rsplit("/", 1)[0] + "/6"
    exposures = redis.Redis.from_url(exposures_url)
    exposures.flushdb()
    env = {"ARTIFACTS_DIR": str(root / CURRENT), "REDIS_URL": "",
           "RETRIEVAL_WARMUP_REQUESTS": "5", "RANKING_WARMUP_REQUESTS": "5",
           "RETRIEVAL_GRACE_PERIOD_S": "1", "RANKING_GRACE_PERIOD_S": "1",
           "RETRIEVAL_RELOAD_POLL_S": "0.2", "RANKING_RELOAD_POLL_S": "0.2", "GATEWAY_RELOAD_POLL_S": "0.2",
           "RETRIEVAL_PIPELINE_CONFIG": str(config), "RANKING_PIPELINE_CONFIG": str(config),
           "GATEWAY_PIPELINE_CONFIG": str(config)}
    gateway_env = {"REDIS_URL": exposures_url, "GATEWAY_CACHE_TTL_S": "0", "GATEWAY_ADMIN_TOKEN": TOKEN,
                   "GATEWAY_ENVIRONMENT": "dev", "GATEWAY_REQUEST_TIMEOUT_MS": "1000",
                   "GATEWAY_RETRIEVAL_TIMEOUT_MS": "500", "GATEWAY_RANKING_TIMEOUT_MS": "500"}
    stack = Stack(work / "run")
    ports = Ports.free()
    try:
        url = start_services(stack, ports, None, extra_env=env, gateway_env=gateway_env, timeout=240)
        with httpx.Client(base_url=url, timeout=10.0) as client:
            yield Loop(root, url, client, ports, stack, {**env, **gateway_env}, exposures,
                       FeatureStoreSettings(redis_url=None))
    finally:
        stack.stop_all()
        exposures.flushdb()
        exposures.close()


@contextlib.contextmanager
def traffic(loop: Loop, users: list[str]) -> Iterator[list[tuple[float, int, dict]]]:
    """Two clients calling /recommend and /debug/explain without pause while the block runs."""
    seen: list[tuple[float, int, dict]] = []
    stop = threading.Event()

    def run(path: str, headers: dict) -> None:
        with httpx.Client(base_url=loop.url, timeout=10.0, headers=headers) as c:
            i = 0
            while not stop.is_set():
                r = c.get(path, params={"user_id": users[i % len(users)], "k": 10})
                seen.append((time.monotonic(), r.status_code, r.json() if r.status_code == 200 else {"text": r.text}))
                i += 1

    threads = [threading.Thread(target=run, args=("/recommend", {})),
               threading.Thread(target=run, args=("/debug/explain", ADMIN))]
    for t in threads:
        t.start()
    try:
        yield seen
    finally:
        stop.set()
        for t in threads:
            t.join()


def _one_version(body: dict) -> str:
    """The version an answer names, after checking retrieval and ranking of an explained answer
    were that same version (a /recommend answer carries only the one)."""
    if "explain" not in body:
        return body["model_version"]
    answer, explain = body["answer"], body["explain"]
    retrieved = (explain.get("retrieval") or {}).get("model_version")
    ranked = (explain.get("ranking") or {}).get("model_version")
    assert retrieved == answer["model_version"], (retrieved, answer)
    assert ranked in (None, retrieved), (retrieved, ranked)  # None: ranking failed, retrieval's order
    return answer["model_version"]


def _switch_under_load(loop: Loop, users: list[str], action, old: str, new: str) -> dict:
    with traffic(loop, users) as seen:
        _until(lambda: len(seen) > 20, 10)
        action()  # validated first (checksums, gate, the Feast registry: about a second), then switched
        t_switch = time.monotonic()
        took = _until(lambda: loop.answer(users[0])["model_version"] == new, SWAP_S)
        time.sleep(SWAP_S)
    assert all(code == 200 for _, code, _ in seen), [b for _, c, b in seen if c != 200][:3]
    versions = [(t, _one_version(b)) for t, _, b in seen]
    assert {v for _, v in versions} <= {old, new}
    late = [v for t, v in versions if t > t_switch + SWAP_S]
    assert late and set(late) == {new}, Counter(late)
    fallbacks = sum(1 for _, _, b in seen if (b.get("answer") or b).get("fallback"))
    return {"took_s": took, "answers": len(seen), "fallbacks": fallbacks}


def test_publish_then_rollback_under_load_every_answer_one_version(loop, known_users):
    """v1 -> v2 -> v1 (leaves v1 current, v2 previous)."""
    assert loop.answer(known_users[0])["model_version"] == "v1"
    users = known_users[:50]
    up = _switch_under_load(loop, users, lambda: lifecycle.publish(loop.root, "v2", loop.registry, why="t"), "v1", "v2")
    for name in ("retrieval", "ranking"):
        status = loop.service_status(name)
        assert status["default"] == "v2" and "v1" in status["retiring"], status  # kept for requests pinned to it
    down = _switch_under_load(loop, users, lambda: lifecycle.rollback(loop.root, loop.registry, why="t"), "v2", "v1")
    assert up["took_s"] < SWAP_S and down["took_s"] < SWAP_S
    # the gateway pinned to the new version only once both services reported it loaded: no request
    # met a ranking without its retrieval's version (FAILED_PRECONDITION -> a fallback)
    assert up["fallbacks"] == down["fallbacks"] == 0, (up, down)
    assert "FAILED_PRECONDITION" not in loop.stack.log_path("gateway").read_text()
    ready = loop.client.get("/readyz").json()
    assert ready["bundle"] == "v1" and ready["deployment"]["current"] == "v1"


def test_a_corrupt_bundle_is_refused_and_the_old_one_keeps_serving(loop, known_users):
    """A bad push (v3, a damaged ranker) straight onto current: refused by the services, v1 keeps
    answering; rolled back (leaves v1 current)."""
    copy_bundle(loop.root / "v1", loop.root, "v3")
    with open(loop.root / "v3" / "ranker.onnx", "r+b") as f:
        f.seek(64)
        f.write(b"\xff\xfe\xfd")
    Deployments(loop.root).switch("v3", action="publish", why="bad push", actor="test")
    _until(lambda: all("v3" in loop.service_status(n)["refused"] for n in ("retrieval", "ranking")), SWAP_S)
    for name in ("retrieval", "ranking"):
        status = loop.service_status(name)
        assert status["default"] == "v1" and "sha256" in status["refused"]["v3"]["reason"], status
        assert 'outcome="refused"' in loop.metrics(name)
    assert {loop.answer(u)["model_version"] for u in known_users[:20]} == {"v1"}
    lifecycle.rollback(loop.root, loop.registry, why="undo the bad push")
    _until(lambda: not loop.service_status("retrieval")["refused"], SWAP_S)


def _answers(loop: Loop, users: list[str]) -> list[dict]:
    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(loop.answer, users))


def test_canary_share_ramp_promote(loop):
    """canary v2 at 10 %, ramped to 20 %, promoted (leaves v2 current, v1 previous)."""
    users = [f"canary-user-{i}" for i in range(2000)]
    lifecycle.canary(loop.root, "v2", 10, loop.registry, why="t")
    _until(lambda: "v2" in loop.service_status("ranking")["arms"] and "v2" in loop.service_status("retrieval")["arms"]
           and loop.client.get("/readyz").json()["deployment"]["rollout"]["canary"], SWAP_S)
    answers = _answers(loop, users)
    on_canary = {u for u, a in zip(users, answers, strict=True) if a["model_version"] == "v2"}
    assert all(("canary" in a["variant"]) == (u in on_canary) for u, a in zip(users, answers, strict=True))
    share = len(on_canary) / len(users) * 100
    assert 7 <= share <= 13, share
    assert {a["model_version"] for u, a in zip(users, answers, strict=True) if u not in on_canary} == {"v1"}
    again = _answers(loop, sorted(on_canary)[:100])  # stable across requests
    assert {a["model_version"] for a in again} == {"v2"}
    assert 'gateway_variant_answers_total{outcome="none",variant="canary,depth:' in loop.metrics("gateway")

    lifecycle.canary(loop.root, "v2", 20, loop.registry, why="ramp")
    _until(lambda: loop.client.get("/readyz").json()["deployment"]["rollout"]["canary"]["percent"] == 20, SWAP_S)
    ramped = _answers(loop, users)
    now_on = {u for u, a in zip(users, ramped, strict=True) if a["model_version"] == "v2"}
    assert on_canary < now_on and 17 <= len(now_on) / len(users) * 100 <= 23

    lifecycle.promote(loop.root, loop.registry, why="t")
    _until(lambda: {a["model_version"] for a in _answers(loop, users[:40])} == {"v2"}, SWAP_S + 1)
    assert all("canary" not in a["variant"] for a in _answers(loop, users[:40]))


def test_abort_drops_the_canary(loop):
    """canary v1 (the previous) at 50 %, aborted (leaves v2 current, no canary)."""
    users = [f"abort-user-{i}" for i in range(200)]
    lifecycle.canary(loop.root, "v1", 50, loop.registry, why="t")
    _until(lambda: {a["model_version"] for a in _answers(loop, users)} == {"v1", "v2"}, SWAP_S + 1)
    lifecycle.abort(loop.root, why="t")
    _until(lambda: {a["model_version"] for a in _answers(loop, users)} == {"v2"}, SWAP_S + 1)


def test_shadow_scoring_never_changes_the_answer_and_records_agreement(loop, known_users):
    """shadow v1 beside current v2 (a copy of the same model: full agreement); stopped after."""
    users = known_users[:60]
    before = _answers(loop, users)
    lifecycle.shadow(loop.root, "v1", loop.registry, why="t")
    _until(lambda: loop.service_status("ranking")["shadow"] == "v1", SWAP_S)
    during = _answers(loop, users)
    assert [a["items"] for a in during] == [a["items"] for a in before]
    assert {a["model_version"] for a in during} == {"v2"}

    def sample(name: str, **labels) -> float:
        from prometheus_client.parser import text_string_to_metric_families

        for family in text_string_to_metric_families(loop.metrics("ranking")):
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    return s.value
        return 0.0

    labels = {"live": "v2", "shadow": "v1"}
    _until(lambda: sample("recsys_shadow_total", outcome="scored", **labels) >= 50, 5)
    n = sample("recsys_shadow_rank_correlation_count", **labels)
    assert n >= 50
    assert sample("recsys_shadow_rank_correlation_bucket", le="0.99", **labels) == 0  # the same model: rho = 1
    assert sample("recsys_shadow_top10_overlap_sum", **labels) == pytest.approx(
        sample("recsys_shadow_top10_overlap_count", **labels))
    lifecycle.shadow(loop.root, None, loop.registry, why="t")
    _until(lambda: loop.service_status("ranking")["shadow"] is None, SWAP_S)


def test_experiment_buckets_are_stable_weighted_applied_and_logged(loop, tmp_path):
    users = [f"exp-user-{i}" for i in range(2000)]
    answers = _answers(loop, users)
    buckets = [a["variant"] for a in answers]
    assert set(buckets) == {"depth:control", "depth:narrow"}
    share = buckets.count("depth:narrow") / len(users) * 100
    assert 47 <= share <= 53, share
    assert [a["variant"] for a in _answers(loop, users[:300])] == buckets[:300]  # stable

    # what the variant changes: 100 candidates from a pipeline without item_to_item
    def explained(user: str) -> dict:
        return loop.client.get("/debug/explain", params={"user_id": user, "k": 10}, headers=ADMIN).json()

    narrow = explained(users[buckets.index("depth:narrow")])
    control = explained(users[buckets.index("depth:control")])
    assert narrow["explain"]["assignment"]["num_candidates"] == 100
    assert "item_to_item" not in narrow["explain"]["retrieval"]["sources"]
    assert sum(s["taken"] for s in narrow["explain"]["retrieval"]["sources"].values()) == 100
    assert control["explain"]["assignment"]["num_candidates"] is None
    assert "item_to_item" in control["explain"]["retrieval"]["sources"]

    # the exposure log carries the bucket of each answer
    by_request = {a["request_id"]: a["variant"] for a in answers}

    def logged() -> dict[str, str]:
        out = {}
        for _, fields in loop.exposures.xrange(EXPOSURES):
            f = {k.decode(): v.decode() for k, v in fields.items()}
            if f["request_id"] in by_request:
                out[f["request_id"]] = f["bucket"]
        return out

    _until(lambda: len(logged()) == len(by_request), 5)
    assert logged() == by_request

    # clicks through POST /events on the first item of some answers -> the experiment report
    from models.experiment_report import report

    clicked = {"depth:control": 0, "depth:narrow": 0}
    events = []
    for i, (user, a) in enumerate(zip(users, answers, strict=True)):
        if i % (3 if a["variant"] == "depth:narrow" else 6) == 0:  # ~33 % vs ~17 % of answers clicked
            clicked[a["variant"]] += 1
            events.append({"event_id": f"exp-click-{i}", "user_id": user, "item_id": a["items"][0]["item_id"],
                           "type": "click"})
    for start in range(0, len(events), 200):
        assert loop.client.post("/events", json={"events": events[start:start + 200]}).status_code == 202
    result = report("depth", redis_url=loop.env["REDIS_URL"])
    for variant, n in Counter(buckets).items():
        row = result.variant(variant.split(":")[1])
        assert row.exposures >= n  # earlier tests' answers of these users count too (same buckets)
        assert row.clicked == clicked[variant], (variant, row)
    narrow, control = result.variant("narrow"), result.variant("control")
    assert narrow.ctr_ci[0] < narrow.ctr < narrow.ctr_ci[1] and narrow.ctr > control.ctr
    assert result.comparison("narrow").diff_ci[0] > 0  # 33 % vs 17 % on ~1,000 each: clearly apart

    # a second gateway replica assigns every user the same way
    from tests.gateway.conftest import lone_gateway

    env = {k: v for k, v in loop.env.items() if k.startswith(("GATEWAY_", "ARTIFACTS_DIR", "REDIS_URL"))}
    env |= {"GATEWAY_RETRIEVAL_ADDR": f"127.0.0.1:{loop.ports.retrieval}",
            "GATEWAY_RANKING_ADDR": f"127.0.0.1:{loop.ports.ranking}"}
    with lone_gateway(tmp_path, loop.root / CURRENT, env) as other:
        again = [other.get("/recommend", params={"user_id": u, "k": 10}).json()["variant"] for u in users[:300]]
    assert again == buckets[:300]


def test_admin_reload_needs_the_token(loop):
    assert loop.client.post("/admin/reload").status_code == 401
    assert loop.client.post("/admin/reload", headers={"authorization": "Bearer wrong"}).status_code == 401
    r = loop.client.post("/admin/reload", headers=ADMIN)
    assert r.status_code == 200 and r.json()["deployment"]["current"] == "v2", r.text
    assert orjson.loads(r.content)["changed"] == {}


def test_inprocess_mode_follows_current_on_admin_reload(tmp_path, bundle_path):
    """GATEWAY_MODE=inprocess with polling off: POST /admin/reload loads the new arms in the
    gateway's own stages and pins to them (no restart)."""
    from tests.gateway.conftest import lone_gateway

    root = tmp_path / "artifacts"
    root.mkdir()
    for v in ("v1", "v2"):
        copy_bundle(bundle_path, root, v)
    Deployments(root).switch("v1", action="publish", why="t", actor="t")
    env = {"GATEWAY_MODE": "inprocess", "GATEWAY_WORKERS": "1", "GATEWAY_RELOAD_POLL_S": "0",
           "GATEWAY_ADMIN_TOKEN": TOKEN, "GATEWAY_ENVIRONMENT": "dev", "GATEWAY_CACHE_TTL_S": "0",
           "RETRIEVAL_WARMUP_REQUESTS": "5", "RANKING_WARMUP_REQUESTS": "5"}
    with lone_gateway(tmp_path / "run", root / CURRENT, env, timeout=120) as gw:
        def version() -> str:
            r = gw.get("/recommend", params={"user_id": "1", "k": 5})
            assert r.status_code == 200 and r.json()["fallback"] is None, r.text
            return r.json()["model_version"]

        assert version() == "v1"
        Deployments(root).switch("v2", action="publish", why="t", actor="t")
        assert version() == "v1"  # polling is off
        r = gw.post("/admin/reload", headers=ADMIN)
        assert r.status_code == 200 and r.json()["changed"] == {"catalog": "v2"}, r.text
        assert version() == "v2"
