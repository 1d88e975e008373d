"""Shared fixtures: a hermetic Redis server, the published artifact bundle.

Free ports and port waits come from :mod:`common.net`; processes are run by
:class:`deploy.local.Stack`, the same process manager as ``make up`` and the benchmarks.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.settings import REPO_ROOT
from deploy.local import Stack, start_redis, start_redis_cluster, stop_redis_cluster


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``REDIS_URL`` when given, else a private ``redis-server`` on a free port."""
    given = os.environ.get("REDIS_URL")
    if given:
        yield given
        return
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not on PATH and REDIS_URL is not set")
    stack = Stack(tmp_path_factory.mktemp("redis"))
    try:
        yield start_redis(stack)
    finally:
        stack.stop("redis")


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``REDIS_CLUSTER_URL`` when given, else a private 3-node Redis Cluster (no replicas) on free
    ports, started once per session and stopped by PID (``redis+cluster://`` URL)."""
    given = os.environ.get("REDIS_CLUSTER_URL")
    if given:
        yield given
        return
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.fail("redis-server / redis-cli are not on PATH and REDIS_CLUSTER_URL is not set")
    stack = Stack(tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield start_redis_cluster(stack)
    finally:
        stop_redis_cluster(stack)


@pytest.fixture(scope="session")
def bundle_path() -> Path:
    """The bundle published by `make artifacts` (`make test` runs it first when missing)."""
    path = REPO_ROOT / "artifacts" / "current"
    if not (path / "manifest.json").is_file():
        pytest.fail("no artifacts/current bundle: run `make artifacts` (make test does it for you)")
    return path


@pytest.fixture(scope="session")
def known_users(bundle_path: Path) -> list[str]:
    import numpy as np

    from common.bundle import load_bundle

    ids = np.load(load_bundle(bundle_path, verify=False).path("user_ids"), allow_pickle=False)
    return [str(int(i)) for i in ids[1:] if i >= 0]


def until(fn, timeout: float) -> float:
    """Seconds until ``fn()`` holds (polled every 20 ms); fails the test after ``timeout``."""
    import time

    t0 = time.monotonic()
    while not fn():
        assert time.monotonic() - t0 < timeout, f"not within {timeout}s"
        time.sleep(0.02)
    return time.monotonic() - t0


def shipped_pipeline(without_experiments: bool = True) -> str:
    """services/pipeline.toml's text, by default cut before its ``[[experiments]]`` (tests add their own)."""
    from services.components.config import DEFAULT_PATH

    text = DEFAULT_PATH.read_text()
    return text[: text.index("# A/B experiments")].rstrip() + "\n" if without_experiments else text


def copy_bundle(src: Path, root: Path, version: str, edit=None) -> Path:
    """A copy of the bundle at ``src`` as ``root/version`` (its manifest says so; ``edit(manifest)``
    may change it further): the lifecycle and hot-swap tests' versions."""
    import json

    target = root / version
    shutil.copytree(Path(src).resolve(), target)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["version"] = version
    if edit is not None:
        edit(manifest)
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target
