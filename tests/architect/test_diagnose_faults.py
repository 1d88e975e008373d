"""``python -m architect diagnose`` against a real stack, by fault injection.

Retrieval, ranking, the gateway and the events consumer run as processes on free ports over the
session's Redis (a database of its own) with a private Feast project materialised into it, as in
tests/integration/test_feedback_loop.py. Each test injects one real fault - a healthy stack under
light traffic, ranking paused with SIGSTOP, the events consumer paused while events are posted,
closed-loop overload from ``benchmarks.loadgen``, a materialisation whose end date is three days
old - and checks what diagnose finds. The healthy test runs first; the stale one last (its
materialisation is not undone).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import redis

from architect.diagnose.cli import main
from architect.diagnose.scrape import parse_exposition
from common.settings import REPO_ROOT
from deploy.local import Ports, Stack, start_services
from feature_store.testing import private_feast

WINDOW = "4"


@dataclass
class Live:
    url: str
    ports: Ports
    stack: Stack
    feast: object  # PrivateFeast
    users_file: Path

    def args(self, *extra: str) -> list[str]:
        p = self.ports
        return ["--gateway", self.url, "--retrieval-metrics", f"http://127.0.0.1:{p.retrieval_metrics}/metrics",
                "--ranking-metrics", f"http://127.0.0.1:{p.ranking_metrics}/metrics",
                "--events-metrics", f"http://127.0.0.1:{p.events_metrics}/metrics", "--no-redis",
                "--window", WINDOW, *extra]


@pytest.fixture(scope="module")
def live(redis_url: str, bundle_path, known_users, tmp_path_factory) -> Iterator[Live]:
    base = redis_url.rsplit("/", 1)[0]
    url = f"{base}/7"  # a database of its own in the session's Redis
    client = redis.Redis.from_url(url)
    client.flushdb()
    work = tmp_path_factory.mktemp("diagnose")
    feast = private_feast(work, url)
    env = {"FEAST_DATA_DIR": str(feast.settings.data_dir), "FEAST_OFFLINE_DIR": str(feast.settings.offline_dir),
           "ARTIFACTS_DIR": str(bundle_path), "RETRIEVAL_WARMUP_REQUESTS": "5", "RANKING_WARMUP_REQUESTS": "5",
           "RETRIEVAL_GRACE_PERIOD_S": "1", "RANKING_GRACE_PERIOD_S": "1"}
    stack = Stack(work / "run")
    ports = Ports.free()
    users = work / "users.json"
    users.write_text(json.dumps(known_users))
    try:
        gw = start_services(stack, ports, url, extra_env=env, events=True, gateway_env={"GATEWAY_ENVIRONMENT": "dev"})
        yield Live(gw, ports, stack, feast, users)
    finally:
        stack.stop_all()
        client.flushdb()
        client.close()


class Traffic:
    """``rate`` GET /recommend a second (and a click each, with ``events``) from a thread."""

    def __init__(self, url: str, users: list[str], rate: float, events: bool = False) -> None:
        self.url, self.users, self.rate, self.events = url, users, rate, events
        self.stop = threading.Event()
        self.sent = self.accepted = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=2.0) as client:
            t0 = time.monotonic()
            while not self.stop.is_set():
                user = self.users[self.sent % len(self.users)]
                try:
                    client.get("/recommend", params={"user_id": user, "k": 10})
                    if self.events:
                        r = client.post("/events", json={"events": [
                            {"event_id": uuid.uuid4().hex, "user_id": user, "item_id": 50 + self.sent % 100, "type": "click"}]})
                        self.accepted += r.status_code == 202
                except httpx.HTTPError:
                    pass
                self.sent += 1
                self.stop.wait(max(0.0, t0 + self.sent / self.rate - time.monotonic()))

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(10)


def diagnose_json(args: list[str], capsys) -> tuple[int, dict]:
    capsys.readouterr()
    code = main([*args, "--json"])
    return code, json.loads(capsys.readouterr().out)


def kinds(report: dict, at_least: str = "warning") -> list[tuple[str, str, str]]:
    order = {"critical": 0, "warning": 1, "info": 2}
    return [(f["severity"], f["kind"], f["component"]) for f in report["findings"] if order[f["severity"]] <= order[at_least]]


def test_a_healthy_stack_under_light_traffic_has_nothing_above_info(live: Live, known_users):
    with Traffic(live.url, known_users, rate=15, events=True):
        time.sleep(1)
        done = subprocess.run([sys.executable, "-m", "architect", "diagnose", *live.args(), "--json"], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr + done.stdout
    report = json.loads(done.stdout)
    assert kinds(report) == [], report
    found = {f["kind"] for f in report["findings"]}
    # the summaries are there: traffic was judged, the events loop and the features were measured
    assert {"latency", "events_lag", "stale_features", "cpu_saturation"} <= found, found
    assert all(s["ok"] for s in report["scrapes"].values()), report["scrapes"]


def test_by_default_it_diagnoses_the_stack_of_stack_json(live: Live, known_users, capsys, monkeypatch, tmp_path):
    """What `make up` records (deploy.local.StackInfo) plus the metrics ports of the settings it used."""
    from deploy.local import StackInfo

    StackInfo(live.url, f"127.0.0.1:{live.ports.retrieval}", f"127.0.0.1:{live.ports.ranking}", live.feast.settings.redis_url,
              "private", str(tmp_path), "grpc", f"http://127.0.0.1:{live.ports.events_metrics}").save(tmp_path)
    monkeypatch.setenv("RETRIEVAL_METRICS_PORT", str(live.ports.retrieval_metrics))
    monkeypatch.setenv("RANKING_METRICS_PORT", str(live.ports.ranking_metrics))
    with Traffic(live.url, known_users, rate=10):
        code, report = diagnose_json(["--run-dir", str(tmp_path), "--window", "2"], capsys)
    assert code == 0, report
    assert set(report["scrapes"]) == {"gateway", "retrieval", "ranking", "events"}
    assert all(s["ok"] for s in report["scrapes"].values()), report["scrapes"]
    [events] = [f for f in report["findings"] if f["kind"] == "events_lag"]
    assert any(e["metric"].startswith("stream:") for e in events["evidence"])  # read from the stack's Redis


def test_ranking_paused_under_traffic_is_the_top_finding(live: Live, known_users, capsys):
    pid = live.stack.pid("ranking")
    assert pid is not None
    with Traffic(live.url, known_users, rate=30):
        time.sleep(0.5)
        os.kill(pid, signal.SIGSTOP)
        try:
            code, report = diagnose_json(live.args(), capsys)
        finally:
            os.kill(pid, signal.SIGCONT)
    assert code == 1, report  # critical
    top = report["findings"][0]
    assert top["severity"] == "critical" and top["component"] == "ranking", report["findings"][:3]
    assert ("critical", "fallbacks", "ranking") in kinds(report), kinds(report)
    assert top["runbook"].startswith("docs/runbook.md#")
    # the stack recovers: full answers again once the breaker's probe succeeds
    with httpx.Client(base_url=live.url, timeout=2.0) as client:
        deadline = time.monotonic() + 20
        while client.get("/recommend", params={"user_id": "1", "k": 5}).json()["fallback"] is not None:
            assert time.monotonic() < deadline, "ranking did not come back after SIGCONT"
            time.sleep(0.2)


def test_events_consumer_stopped_while_events_are_posted_is_a_lag_finding(live: Live, known_users, capsys):
    pid = live.stack.pid("events")
    assert pid is not None
    args = [a for a in live.args() if a != "--no-redis"] + ["--redis", live.feast.settings.redis_url]
    os.kill(pid, signal.SIGSTOP)
    try:
        with Traffic(live.url, known_users, rate=20, events=True) as traffic:
            time.sleep(1.0)
            code, report = diagnose_json(args, capsys)
        assert traffic.accepted > 0
    finally:
        os.kill(pid, signal.SIGCONT)
    lag = [f for f in report["findings"] if f["kind"] == "events_lag"]
    assert lag and lag[0]["severity"] == "critical", report["findings"]
    assert lag[0]["data"]["lag_entries"] > 0 and lag[0]["data"]["lag_seconds"] >= 1.0, lag[0]
    assert code == 1
    # and once it runs again it catches up: the same rule then reports it caught up
    with httpx.Client(timeout=2.0) as client:
        deadline = time.monotonic() + 20
        while "recsys_events_lag_seconds 0.0" not in client.get(
                f"http://127.0.0.1:{live.ports.events_metrics}/metrics").text:
            assert time.monotonic() < deadline
            time.sleep(0.2)


def test_closed_loop_overload_is_a_capacity_finding_with_a_replica_count(live: Live, capsys):
    load = subprocess.Popen([sys.executable, "-m", "benchmarks.loadgen", live.url, "--users-file", str(live.users_file),
                             "--rate", "0", "--connections", "16", "--duration", "8", "--warmup", "0.5"],
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        time.sleep(1.5)
        _, report = diagnose_json(live.args(), capsys)
    finally:
        load.terminate()
        load.wait(10)
    capacity = [f for f in report["findings"] if f["kind"] == "cpu_saturation" and f["severity"] != "info"]
    assert capacity, report["findings"]
    assert all(f["data"]["replicas"] >= 2 for f in capacity), capacity
    assert "replicas" in capacity[0]["title"]


def test_an_old_materialisation_is_a_staleness_finding(live: Live, known_users, capsys):
    from feature_store import store as fs

    # Feast materialises the offline rows up to three days ago, for real; the snapshot records it
    end = datetime.now(UTC) - timedelta(days=3)
    fs.materialize(live.feast.settings, end=end, store=live.feast.store)
    metrics = f"http://127.0.0.1:{live.ports.ranking_metrics}/metrics"
    deadline = time.monotonic() + 20
    gauge = ("recsys_feature_materialized_until_timestamp_seconds", ())
    # ranking checks the snapshot version on its requests and loads a new one beside the served one
    with Traffic(live.url, known_users, rate=10), httpx.Client(timeout=2.0) as client:
        while abs(parse_exposition(client.get(metrics).text).get(gauge, 0.0) - end.timestamp()) > 1.0:
            assert time.monotonic() < deadline, "ranking did not load the new snapshot"
            time.sleep(0.2)
        code, report = diagnose_json(live.args("--window", "1"), capsys)
    stale = [f for f in report["findings"] if f["kind"] == "stale_features" and f["severity"] != "info"]
    assert stale, report["findings"]
    assert stale[0]["component"] == "ranking" and "materialisation" in stale[0]["title"]
    assert 2.9 * 86400 < stale[0]["data"]["age_s"] < 3.1 * 86400
    assert code == 0  # a warning (above 26 h, below 7 days), not critical
