"""The gateway's DeploymentWatcher on a real artifacts root (copies of the bundle): it pins requests
to a new ``current`` / canary only once the stages report it, waits at most GATEWAY_PIN_WAIT_S,
and keeps the old catalog for a bundle it cannot read."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry, Counter

from common.deployments import Deployments
from services.gateway.catalog import load_catalog
from services.gateway.deployment import DeploymentWatcher
from tests.conftest import copy_bundle


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture()
def root(tmp_path, bundle_path):
    r = tmp_path / "artifacts"
    r.mkdir()
    for v in ("v1", "v2"):
        copy_bundle(bundle_path, r, v)
    Deployments(r).switch("v1", action="publish", why="t", actor="t")
    return r


def _watcher(root, ready_versions: set[str], clock: Clock, seen: dict):
    async def ready(version: str) -> bool:
        return version in ready_versions

    counter = Counter("gateway_reloads_total", "x", ["outcome"], registry=CollectorRegistry())
    return DeploymentWatcher(root / "current", load_catalog(root / "current"),
                             on_catalog=lambda c: seen.__setitem__("catalog", c.version),
                             on_rollout=lambda r: seen.__setitem__("rollout", r), counter=counter,
                             ready=ready, pin_wait_s=30.0, clock=clock)


def test_pins_only_when_the_stages_serve_the_version_or_the_wait_is_over(root):
    clock, seen, ready = Clock(), {}, {"v1"}
    w = _watcher(root, ready, clock, seen)
    Deployments(root).switch("v2", action="publish", why="t", actor="t")
    assert asyncio.run(w.check()) == {"waiting": ["v2"]} and "catalog" not in seen
    assert w.status()["waiting_for_services"] == ["v2"] and w.status()["current"] == "v1"
    ready.add("v2")
    assert asyncio.run(w.check()) == {"catalog": "v2"} and seen["catalog"] == "v2"
    # a version the stages never report: pinned after pin_wait_s anyway
    copy_bundle(root / "v1", root, "v3")
    Deployments(root).switch("v3", action="publish", why="t", actor="t")
    assert asyncio.run(w.check()) == {"waiting": ["v3"]}
    clock.t = 29.0
    assert asyncio.run(w.check()) == {"waiting": ["v3"]}
    clock.t = 30.5
    assert asyncio.run(w.check()) == {"catalog": "v3"}


def test_a_new_canary_waits_a_dropped_one_does_not(root):
    clock, seen, ready = Clock(), {}, {"v1"}
    w = _watcher(root, ready, clock, seen)
    Deployments(root).start_canary("v2", 10, why="t", actor="t")
    assert asyncio.run(w.check()) == {"waiting": ["v2"]} and w.rollout.canary is None
    ready.add("v2")
    asyncio.run(w.check())
    assert w.rollout.canary.version == "v2" and seen["rollout"].canary.percent == 10
    Deployments(root).start_canary("v2", 30, why="ramp", actor="t")
    asyncio.run(w.check())
    assert w.rollout.canary.percent == 30
    ready.discard("v2")  # an abort applies at once, whatever the stages say
    Deployments(root).abort(why="t", actor="t")
    asyncio.run(w.check())
    assert w.rollout.canary is None and seen["rollout"].canary is None


def test_an_unreadable_catalog_or_rollout_keeps_the_last_good_state(root):
    clock, seen = Clock(), {}
    w = _watcher(root, {"v1", "v2"}, clock, seen)
    Deployments(root).start_canary("v2", 10, why="t", actor="t")
    asyncio.run(w.check())
    (root / "rollout.json").write_text("{broken")
    asyncio.run(w.check())
    assert w.rollout.canary.version == "v2" and "unreadable" in w.status()["rollout_error"]
    (root / "v2" / "popular_items.json").write_text("[]")  # the gateway's file no longer matches its sha256
    Deployments(root).switch("v2", action="publish", why="t", actor="t")
    changed = asyncio.run(w.check())
    assert "sha256" in changed["refused"]["reason"] and w.catalog.version == "v1"
