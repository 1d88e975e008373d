"""The bundle lifecycle on copies of the real bundle: publish, rollback, and every refusal
(unknown version, a corrupt file, the gate, a bundle that does not fit the live Feast registry)
leaving ``current`` where it was."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from common.deployments import CURRENT, PREVIOUS, Deployments
from common.settings import FeatureStoreSettings
from models import lifecycle
from models.lifecycle import LifecycleError
from tests.conftest import copy_bundle


@pytest.fixture(scope="module")
def registry() -> FeatureStoreSettings:
    settings = FeatureStoreSettings(redis_url=None)
    if not (Path(settings.data_dir) / "registry.db").is_file():
        pytest.fail("no Feast registry: run `make artifacts` (make test does it first)")
    return settings


@pytest.fixture()
def root(tmp_path, bundle_path) -> Path:
    """An artifacts root with v1 current (as `models run` leaves it) and v2 beside it."""
    r = tmp_path / "artifacts"
    r.mkdir()
    copy_bundle(bundle_path, r, "v1")
    Deployments(r).switch("v1", action="publish", why="first", actor="test")
    copy_bundle(bundle_path, r, "v2")
    return r


def test_publish_then_rollback_in_one_step_each_logged(root, registry):
    d = Deployments(root)
    done = lifecycle.publish(root, "v2", registry, why="better recall", actor="alice")
    assert (d.pointer(CURRENT), d.pointer(PREVIOUS)) == ("v2", "v1")
    assert (done.version, done.replaced, done.actor, done.why) == ("v2", "v1", "alice", "better recall")
    assert (root / CURRENT / "manifest.json").is_file()  # a usable link, relative to the root
    back = lifecycle.rollback(root, registry, why="p99 regression", actor="bob")
    assert (d.pointer(CURRENT), d.pointer(PREVIOUS)) == ("v1", "v2")
    assert back.action == "rollback" and back.replaced == "v2"
    assert [(a.action, a.version, a.actor) for a in d.history()] == [
        ("publish", "v1", "test"), ("publish", "v2", "alice"), ("rollback", "v1", "bob")]


def _refused(root: Path, registry, version: str, match: str) -> None:
    d = Deployments(root)
    before = (d.pointer(CURRENT), d.pointer(PREVIOUS), len(d.history()))
    with pytest.raises(LifecycleError, match=match):
        lifecycle.publish(root, version, registry, why="x", actor="t")
    assert (d.pointer(CURRENT), d.pointer(PREVIOUS), len(d.history())) == before


def test_unknown_version_is_refused_naming_the_known_ones(root, registry):
    _refused(root, registry, "v9", r"no bundle version 'v9'.*known: v1, v2")


def test_a_corrupt_file_is_refused(root, registry, bundle_path):
    with open(root / "v2" / "ranker.onnx", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    _refused(root, registry, "v2", "sha256 mismatch for ranker")


def test_a_bundle_below_the_gate_is_refused(root, registry, bundle_path):
    def worse(m):
        m["metrics"]["retrieval"]["recall@100"] = 0.1

    copy_bundle(bundle_path, root, "v3", worse)
    _refused(root, registry, "v3", "validation gate")


def test_a_bundle_built_on_other_feature_views_is_refused(root, registry, bundle_path):
    def other(m):
        m["feature_views"]["user_profile"]["features"].append(["income", "Float32"])
        m["ranker_features"].append({"name": "x", "dtype": "float32", "source": "user_profile:income"})

    copy_bundle(bundle_path, root, "v4", other)
    _refused(root, registry, "v4", r"does not fit the live Feast registry: feature view user_profile.*income.*ranker input x")


def test_rollback_without_a_previous_version_is_refused(tmp_path, bundle_path, registry):
    r = tmp_path / "a"
    r.mkdir()
    copy_bundle(bundle_path, r, "only")
    Deployments(r).switch("only", action="publish", why="first", actor="t")
    with pytest.raises(LifecycleError, match="no previous version"):
        lifecycle.rollback(r, registry, why="x")


def test_cli_list_publish_rollback(root, registry, monkeypatch):
    from models import __main__ as cli
    from models.config import PipelineConfig

    monkeypatch.setattr(cli, "PipelineConfig", lambda: PipelineConfig(artifacts_dir=root))
    monkeypatch.setattr(cli, "FeatureStoreSettings", lambda: registry)
    runner = CliRunner()
    r = runner.invoke(cli.app, ["publish", "v2", "--why", "ship it", "--actor", "ci"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli.app, ["list"])
    assert r.exit_code == 0 and "v2" in r.output and "current" in r.output and "ship it" in r.output
    r = runner.invoke(cli.app, ["publish", "nope"])
    assert r.exit_code == 2 and "no bundle version 'nope'" in r.output
    r = runner.invoke(cli.app, ["rollback", "--why", "bad canary"])
    assert r.exit_code == 0, r.output
    assert Deployments(root).pointer(CURRENT) == "v1"


# -- canary, promote, abort, shadow ------------------------------------------------------------
def test_canary_ramp_promote_each_checked_and_logged(root, registry):
    d = Deployments(root)
    lifecycle.canary(root, "v2", 5, registry, why="try v2", actor="alice")
    state = d.rollout()
    assert (state.canary.version, state.canary.percent) == ("v2", 5.0) and d.pointer(CURRENT) == "v1"
    salt = state.canary.salt
    lifecycle.canary(root, "v2", 20, registry, why="ramp", actor="alice")  # the same canary, a larger share
    assert d.rollout().canary.percent == 20.0 and d.rollout().canary.salt == salt  # the first 5 % stay in
    assert [r.role for r in lifecycle.rows(root) if r.version == "v2"] == ["canary 20%"]
    done = lifecycle.promote(root, registry, why="looks good", actor="bob")
    assert (done.action, done.version, done.replaced) == ("promote", "v2", "v1")
    assert (d.pointer(CURRENT), d.pointer(PREVIOUS), d.rollout().canary) == ("v2", "v1", None)
    assert [(a.action, a.version, a.percent) for a in d.history()][1:] == [
        ("canary", "v2", 5.0), ("canary", "v2", 20.0), ("promote", "v2", None)]


def test_canary_refusals_switch_nothing(root, registry):
    d = Deployments(root)
    with pytest.raises(LifecycleError, match="v1 is current"):
        lifecycle.canary(root, "v1", 10, registry, why="x")
    with pytest.raises(LifecycleError, match="no bundle version 'v9'"):
        lifecycle.canary(root, "v9", 10, registry, why="x")
    with pytest.raises(LifecycleError, match=r"percent must be in \(0, 100\]"):
        lifecycle.canary(root, "v2", 0, registry, why="x")
    with pytest.raises(LifecycleError, match="no canary to promote"):
        lifecycle.promote(root, registry, why="x")
    with pytest.raises(LifecycleError, match="no canary to abort"):
        lifecycle.abort(root, why="x")
    lifecycle.canary(root, "v2", 10, registry, why="x")
    copy_bundle(root / "v2", root, "v3")
    with pytest.raises(LifecycleError, match="canary v2 is running: promote or abort it first"):
        lifecycle.canary(root, "v3", 10, registry, why="x")
    # a canary whose files were damaged while it ran is not promoted
    (root / "v2" / "popular_items.json").write_text("[]")
    with pytest.raises(LifecycleError, match="v2 refused: .*sha256"):
        lifecycle.promote(root, registry, why="x")
    assert d.pointer(CURRENT) == "v1" and d.rollout().canary.version == "v2"
    done = lifecycle.abort(root, why="damaged", actor="carol")
    assert (done.action, done.version, d.rollout().canary, d.pointer(CURRENT)) == ("abort", "v2", None, "v1")


def test_shadow_on_and_off(root, registry):
    d = Deployments(root)
    lifecycle.shadow(root, "v2", registry, why="compare rankers", actor="dan")
    assert d.rollout().shadow == "v2" and d.pointer(CURRENT) == "v1"
    assert "shadow" in [r.role for r in lifecycle.rows(root) if r.version == "v2"][0]
    lifecycle.shadow(root, None, registry, why="done")
    assert d.rollout().shadow is None
    with pytest.raises(LifecycleError, match="no shadow ranker to stop"):
        lifecycle.shadow(root, None, registry, why="again")
    assert [a.action for a in d.history()][-2:] == ["shadow", "shadow-off"]


def test_a_broken_rollout_file_is_an_error_not_a_guess(root, registry):
    (root / "rollout.json").write_text("{not json")
    with pytest.raises(LifecycleError, match="rollout.json: unreadable"):
        lifecycle.canary(root, "v2", 10, registry, why="x")


def test_cli_canary_promote_abort_shadow(root, registry, monkeypatch):
    from models import __main__ as cli
    from models.config import PipelineConfig

    monkeypatch.setattr(cli, "PipelineConfig", lambda: PipelineConfig(artifacts_dir=root))
    monkeypatch.setattr(cli, "FeatureStoreSettings", lambda: registry)
    app = cli.app
    runner = CliRunner()
    out = runner.invoke(app, ["canary", "v2", "--percent", "10", "--why", "cli"])
    assert out.exit_code == 0, out.output
    assert "canary = v2 for 10% of users" in out.output
    out = runner.invoke(app, ["shadow"])
    assert out.exit_code == 2 and "give a VERSION or --off" in out.output
    out = runner.invoke(app, ["abort"])
    assert out.exit_code == 0 and "canary v2 aborted" in out.output, out.output
    out = runner.invoke(app, ["promote"])
    assert out.exit_code == 2 and "no canary to promote" in out.output
