"""Refusal of a missing or tampered bundle: a clear log line and a non-zero exit, never SERVING.

(Health transitions and SIGTERM are checked on the servers of the other modules.)"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from benchmarks.harness import SERVICE_STOP_TIMEOUT_S, spawn_service
from common.bundle import MANIFEST
from deploy.local import Stack


def _refused(name: str, env: dict[str, str], tmp: Path) -> tuple[int, str]:
    stack = Stack(tmp)
    proc, _, _ = spawn_service(stack, name, env)
    try:
        rc = proc.wait(timeout=60)
    finally:
        stack.stop(name, timeout=SERVICE_STOP_TIMEOUT_S)
    return rc, stack.log_path(name).read_text()


@pytest.mark.parametrize("name", ["retrieval", "ranking"])
def test_missing_bundle_is_refused(name, services_env, tmp_path):
    env = {**services_env, "ARTIFACTS_DIR": str(tmp_path / "no-such-bundle")}
    rc, text = _refused(name, env, tmp_path / "run")
    assert rc != 0
    assert f"{name}: refusing to serve: no artifact bundle at {tmp_path / 'no-such-bundle'}" in text


@pytest.mark.parametrize("name", ["retrieval", "ranking"])
def test_tampered_bundle_is_refused(name, services_env, bundle_path, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(bundle_path.resolve(), copy)
    target = copy / "ranker.onnx" if (copy / "ranker.onnx").exists() else next(
        p for p in sorted(copy.iterdir()) if p.name != MANIFEST and p.is_file())
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF  # flip one byte
    target.write_bytes(bytes(data))
    rc, text = _refused(name, {**services_env, "ARTIFACTS_DIR": str(copy)}, tmp_path / "run")
    assert rc != 0
    assert f"{name}: refusing to serve:" in text and "sha256 mismatch" in text
    assert "SERVING\n" not in text.replace("NOT_SERVING", "")


@pytest.mark.parametrize("name", ["retrieval", "ranking"])
def test_unknown_online_store_type_is_refused_in_one_line(name, services_env, tmp_path):
    rc, text = _refused(name, {**services_env, "FEAST_ONLINE_TYPE": "memcached"}, tmp_path / "run")
    assert rc != 0
    line = next(ln for ln in text.splitlines() if "refusing to serve" in ln)
    assert line.endswith(f"{name}: refusing to serve: FEAST_ONLINE_TYPE='memcached' is not a known online store "
                         "type (one of: redis, sqlite)")
    assert "Traceback" not in text


@pytest.mark.parametrize(("name", "config", "message"), [
    ("retrieval", '[retrieval]\nsources = [{ type = "two_tower", quota = "rest" }, { type = "nearest_shop", quota = 5 }]\n'
                  '[ranking]\nscorer = { type = "onnx_ranker" }\n',
     "retrieval.sources[1].type: unknown source 'nearest_shop' (known: item_to_item, popular, two_tower)"),
    ("retrieval", '[retrieval]\nsources = [{ type = "two_tower", quota = 5000 }]\n[ranking]\nscorer = { type = "onnx_ranker" }\n',
     "retrieval.sources[0].quota: 5000 is above RETRIEVAL_MAX_K=1000, the largest k a request may ask for"),
    ("ranking", '[retrieval]\nsources = [{ type = "popular", quota = "rest" }]\n[ranking]\nscorer = { type = "gbdt" }\n',
     "ranking.scorer.type: unknown scorer 'gbdt' (known: onnx_ranker)"),
])
def test_invalid_pipeline_config_is_refused_in_one_line(name, config, message, services_env, tmp_path):
    path = tmp_path / "pipeline.toml"
    path.write_text(config)
    env = {**services_env, f"{name.upper()}_PIPELINE_CONFIG": str(path)}
    rc, text = _refused(name, env, tmp_path / "run")
    assert rc != 0
    line = next(ln for ln in text.splitlines() if "refusing to serve" in ln)
    assert line.endswith(f"{name}: refusing to serve: pipeline config {path}: {message}"), line
    assert "Traceback" not in text
