"""Bucketing, canary and experiment assignment, and the experiments config (pure functions, no I/O)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from common.bucketing import in_share, pick, position
from common.deployments import Canary, Rollout
from services.components.config import DEFAULT_PATH, PipelineConfigError, load_config
from services.experiments import ExperimentConfig, VariantConfig
from services.gateway.assignment import assign
from tests.conftest import shipped_pipeline

USERS = [f"u{i}" for i in range(20000)]


def test_position_is_deterministic_uniform_and_independent_per_salt():
    a = [position("s1", u) for u in USERS]
    assert a == [position("s1", u) for u in USERS]  # no process state (not Python's salted hash)
    assert all(0 <= x < 1 for x in a)
    deciles = [sum(int(x * 10) == d for x in a) for d in range(10)]
    assert max(deciles) - min(deciles) < 0.1 * len(USERS) / 10 * 2
    b = [position("s2", u) for u in USERS]
    inside_a = {u for u, x in zip(USERS, a, strict=True) if x < 0.2}
    inside_b = {u for u, x in zip(USERS, b, strict=True) if x < 0.2}
    assert abs(len(inside_a & inside_b) / len(USERS) - 0.04) < 0.01  # independent: 0.2 x 0.2


def test_a_canary_ramp_keeps_its_users():
    five = {u for u in USERS if in_share("canary:v2", u, 5)}
    twenty = {u for u in USERS if in_share("canary:v2", u, 20)}
    assert five < twenty
    assert abs(len(five) / len(USERS) - 0.05) < 0.01 and abs(len(twenty) / len(USERS) - 0.20) < 0.015


def test_pick_follows_the_weights():
    counts = [0, 0, 0]
    for u in USERS:
        counts[pick("exp", u, [1, 1, 2])] += 1
    assert [round(c / len(USERS), 2) for c in counts] == pytest.approx([0.25, 0.25, 0.5], abs=0.02)


def _exp(name="depth", **change) -> ExperimentConfig:
    return ExperimentConfig(name=name, variants=[VariantConfig(name="control", weight=1),
                                                 VariantConfig(name="treated", weight=1, **change)])


def test_assign_precedence_experiment_bundle_then_canary_then_current():
    canary = Rollout(Canary("v2", 50.0, "canary:v2", "now"))
    exp = _exp(bundle="v9")
    seen = {(a.version, a.canary, a.bucket) for a in (assign(u, "v1", canary, [exp]) for u in USERS[:4000])}
    assert ("v9", False, "depth:treated") in seen  # the experiment's bundle wins over the canary
    assert ("v2", True, "depth:control") in seen and ("v1", False, "depth:control") in seen
    assert not any(v == "v2" and b == "depth:treated" for v, _, b in seen)
    plain = assign("u1", "v1", Rollout(), [])
    assert (plain.version, plain.variant, plain.bucket, plain.pipeline) == ("v1", "current", "", "")
    wide = next(a for a in (assign(u, "v1", Rollout(), [_exp(num_candidates=500)]) for u in USERS) if a.num_candidates)
    assert (wide.num_candidates, wide.variant) == (500, "depth:treated")


def test_assignment_is_stable_for_a_user():
    exps = [_exp(), _exp("other", pipeline="x.toml")]
    first = [assign(u, "v1", Rollout(Canary("v2", 10.0, "s", "now")), exps) for u in USERS[:500]]
    again = [assign(u, "v1", Rollout(Canary("v2", 10.0, "s", "now")), exps) for u in USERS[:500]]
    assert first == again


def _config(tmp_path: Path, experiments: str, extra: dict[str, str] | None = None) -> Path:
    path = tmp_path / "pipeline.toml"
    path.write_text(shipped_pipeline() + "\n" + textwrap.dedent(experiments))
    for name, body in (extra or {}).items():
        (tmp_path / name).write_text(body)
    return path


def test_experiments_config_loads_and_resolves_variant_pipelines(tmp_path):
    path = _config(tmp_path, """
        [[experiments]]
        name = "no_i2i"
        [[experiments.variants]]
        name = "control"
        weight = 1
        [[experiments.variants]]
        name = "off"
        weight = 1
        pipeline = "no_i2i.toml"
        num_candidates = 200
        """, {"no_i2i.toml": (DEFAULT_PATH.parent / "pipelines" / "no_item_to_item.toml").read_text()})
    config = load_config(path)
    assert [v.name for v in config.experiments[0].variants] == ["control", "off"]
    assert config.variant_paths() == {"no_i2i.toml": (tmp_path / "no_i2i.toml").resolve()}
    assert [s.type for s in config.variant("no_i2i.toml").retrieval.sources] == ["two_tower", "popular"]
    assert config.variant("") is config


@pytest.mark.parametrize(("block", "message"), [
    ("""
     [[experiments]]
     name = "a"
     variants = [{ name = "x", weight = 1 }]
     """, r"experiments\[0\]\.variants: List should have at least 2 items"),
    ("""
     [[experiments]]
     name = "a"
     variants = [{ name = "x", weight = 1 }, { name = "x", weight = 1 }]
     """, "variant names must be unique"),
    ("""
     [[experiments]]
     name = "a"
     variants = [{ name = "x", weight = 0 }, { name = "y", weight = 1 }]
     """, r"experiments\[0\]\.variants\[0\]\.weight: Input should be greater than 0"),
    ("""
     [[experiments]]
     name = "a:b"
     variants = [{ name = "x", weight = 1 }, { name = "y", weight = 1 }]
     """, r"experiments\[0\]\.name: String should match pattern"),
    ("""
     [[experiments]]
     name = "a"
     variants = [{ name = "x", weight = 1 }, { name = "y", weight = 1, num_candidates = 100 }]
     [[experiments]]
     name = "b"
     variants = [{ name = "x", weight = 1 }, { name = "y", weight = 1, num_candidates = 50 }]
     """, "experiments a and b both change num_candidates"),
    ("""
     [[experiments]]
     name = "a"
     variants = [{ name = "x", weight = 1 }, { name = "y", weight = 1, pipeline = "missing.toml" }]
     """, r"experiments\[0\]\.variants\[1\]\.pipeline: no such file"),
    ("""
     [[experiments]]
     name = "a"
     variants = [{ name = "x", weight = 1 }, { name = "y", weight = 1, colour = "red" }]
     """, r"experiments\[0\]\.variants\[1\]\.colour: Extra inputs are not permitted"),
])
def test_bad_experiments_are_refused_in_one_line(tmp_path, block, message):
    with pytest.raises(PipelineConfigError, match=message) as info:
        load_config(_config(tmp_path, block))
    assert "\n" not in str(info.value)


def test_the_shipped_config_and_its_example_experiment_load(tmp_path):
    shipped = load_config(DEFAULT_PATH)
    assert [(e.name, e.enabled) for e in shipped.experiments] == [("item_to_item_ab", False)]
    enabled = tmp_path / "services"
    (enabled / "pipelines").mkdir(parents=True)
    (enabled / "pipelines" / "no_item_to_item.toml").write_text(
        (DEFAULT_PATH.parent / "pipelines" / "no_item_to_item.toml").read_text())
    (enabled / "pipeline.toml").write_text(shipped_pipeline(without_experiments=False).replace("enabled = false", "enabled = true"))
    config = load_config(enabled / "pipeline.toml")
    arm = config.variant("pipelines/no_item_to_item.toml")
    assert [s.type for s in arm.retrieval.sources] == ["two_tower", "popular"]


def test_two_disabled_experiments_may_change_the_same_thing(tmp_path):
    config = load_config(_config(tmp_path, """
        [[experiments]]
        name = "a"
        variants = [{ name = "x", weight = 1 }, { name = "y", weight = 1, num_candidates = 100 }]
        [[experiments]]
        name = "b"
        enabled = false
        variants = [{ name = "x", weight = 1 }, { name = "y", weight = 1, num_candidates = 50 }]
        """))
    assert [e.enabled for e in config.experiments] == [True, False]


def test_a_variant_pipeline_may_not_define_experiments(tmp_path):
    nested = shipped_pipeline() + '\n[[experiments]]\nname = "n"\nvariants = [{ name = "x", weight = 1 }, { name = "y", weight = 1 }]\n'
    with pytest.raises(PipelineConfigError, match="defines no experiments of its own"):
        load_config(_config(tmp_path, """
            [[experiments]]
            name = "a"
            variants = [{ name = "x", weight = 1 }, { name = "y", weight = 1, pipeline = "nested.toml" }]
            """, {"nested.toml": nested}))
