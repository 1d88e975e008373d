"""``/debug/explain`` against real processes: admin token (404 / 401 / 200), and what it tells."""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from common.settings import REPO_ROOT
from deploy.local import Stack, free_port, wait_ready

TOKEN = secrets.token_urlsafe(24)


@pytest.fixture(scope="module")
def admin(stack, tmp_path_factory) -> Iterator[httpx.Client]:
    """A second gateway beside the API stack's services, with an admin token."""
    run = Stack(tmp_path_factory.mktemp("admin-gateway"))
    port = free_port()
    run.start_module("gateway", "services.gateway", {**stack.env, **stack.gateway_env,
                                                      "GATEWAY_PORT": str(port), "GATEWAY_ADMIN_TOKEN": TOKEN})
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(run, f"{url}/readyz", ["gateway"], 120)
        with httpx.Client(base_url=url, timeout=10) as client:
            yield client
    finally:
        run.stop_all()


def test_disabled_without_a_configured_token(stack, known_users):
    r = stack.client.get("/debug/explain", params={"user_id": known_users[0]},
                         headers={"authorization": "Bearer anything"})
    assert r.status_code == 404, r.text


@pytest.mark.parametrize("header", [None, "Bearer wrong-token-of-some-length", f"Basic {TOKEN}", TOKEN, "Bearer", f"Bearer {TOKEN}x"])
def test_a_missing_or_wrong_token_is_401(admin, known_users, header):
    headers = {} if header is None else {"authorization": header}
    r = admin.get("/debug/explain", params={"user_id": known_users[0]}, headers=headers)
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"] == "Bearer"
    assert "GATEWAY_ADMIN_TOKEN" in r.json()["error"]


def test_explain_tells_how_the_answer_was_made(admin, known_users):
    body = {"user_id": known_users[12], "k": 5, "context": {"recent_item_ids": [50, 181]}, "exclude_item_ids": [100]}
    r = admin.post("/debug/explain", json=body, headers={"authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200, r.text
    answer, explain = r.json()["answer"], r.json()["explain"]
    # the same answer /recommend gives for this body
    plain = admin.post("/recommend", json=body).json()
    assert [i["item_id"] for i in answer["items"]] == [i["item_id"] for i in plain["items"]]
    assert answer["fallback"] is None and explain["fallback"] == {"rung": None, "reason": None}

    sources = explain["retrieval"]["sources"]
    assert {"two_tower", "item_to_item"} <= set(sources)
    assert sources["two_tower"]["taken"] > 0 and sources["item_to_item"]["taken"] > 0
    assert all(len(s["top"]) <= 5 and s["fetched"] >= s["taken"] for s in sources.values())
    filters = explain["retrieval"]["filters"]
    assert {50, 181} <= set(filters["recent_items"]["ids"])  # the context items, removed as recent
    assert 100 in filters["request_exclusions"]["ids"]
    assert filters["seen_items"]["removed"] > 0  # a known user has seen items
    user = explain["retrieval"]["user"]
    assert user["known"] and user["recent_item_ids"][:2] == [50, 181]
    assert user["feature_rows"]["user_profile"]["age_s"] > 0

    ranking = explain["ranking"]
    for item in answer["items"]:
        row = ranking["items"][str(item["item_id"])]
        assert row["inputs"]["retrieval_score"] is not None and "user_age" in row["inputs"]
        assert set(row["feature_rows"]) == {"item_profile", "item_aggregates"}
    assert set(explain["seconds"]) >= {"retrieval_call", "ranking_call", "total"}
    assert explain["cache"]["enabled"] and "fresh_entry" in explain["cache"]
    assert explain["gateway"]["bundle"] == answer["model_version"]


def test_a_cold_start_shows_the_popular_backfill(admin):
    """An unknown user without context: two_tower has no signal (fetches nothing), popular fills k."""
    r = admin.get("/debug/explain", params={"user_id": "someone-new", "k": 3},
                  headers={"authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200
    sources = r.json()["explain"]["retrieval"]["sources"]
    # the gateway asks retrieval for GATEWAY_NUM_CANDIDATES (300) and ranks them; 3 are returned
    assert sources["two_tower"]["fetched"] == 0 and sources["item_to_item"]["fetched"] == 0
    assert sources["popular"]["taken"] == 300 and len(r.json()["answer"]["items"]) == 3


def test_a_placeholder_token_is_refused_outside_dev(tmp_path):
    env = {"GATEWAY_ADMIN_TOKEN": "changeme", "GATEWAY_PORT": str(free_port()), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "services.gateway"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if "refusing to serve" in ln]
    assert len(lines) == 1 and "GATEWAY_ADMIN_TOKEN looks like a placeholder" in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    dev = subprocess.run([sys.executable, "-c", "from services.gateway.settings import GatewaySettings as S; "
                          "print(S().admin_token is not None)"], cwd=REPO_ROOT, capture_output=True, text=True,
                         env={**env, "GATEWAY_ENVIRONMENT": "dev"}, timeout=60)
    assert dev.stdout.strip() == "True", dev.stderr
