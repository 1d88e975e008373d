"""The pipeline config: the shipped file loads, and every kind of mistake is one line naming the setting."""

from __future__ import annotations

import dataclasses

import pytest

from common.bundle import Bundle, load_bundle
from services.components.config import (
    DEFAULT_PATH,
    PipelineConfigError,
    build_filters,
    build_scorer,
    build_sources,
    load_config,
)

SCORER = '[ranking]\nscorer = { type = "onnx_ranker" }\n'


def write(tmp_path, text: str):
    path = tmp_path / "pipeline.toml"
    path.write_text(text)
    return path


def test_the_shipped_config_is_todays_pipeline(bundle_path):
    cfg = load_config()
    assert DEFAULT_PATH.name == "pipeline.toml"
    assert [(s.label, s.quota, s.backfill) for s in cfg.retrieval.sources] == [
        ("two_tower", "rest", False), ("item_to_item", None, False), ("popular", None, True)]
    assert cfg.retrieval.sources[1].share == 0.15
    assert cfg.retrieval.score_with == "two_tower"
    assert [f.label for f in cfg.retrieval.filters] == ["request_exclusions", "recent_items", "seen_items"]
    bundle = load_bundle(bundle_path, verify=False)
    assert [s.name for s in build_sources(cfg.retrieval, bundle)] == ["two_tower", "item_to_item", "popular"]
    assert [f.name for f in build_filters(cfg.retrieval, bundle)] == ["request_exclusions", "recent_items", "seen_items"]
    assert build_scorer(cfg.ranking, bundle).name == "onnx_ranker"


@pytest.mark.parametrize(("text", "message"), [
    ('[retrieval]\nsources = [{ type = "two_tower", quota = "most" }]\n' + SCORER, "retrieval.sources[0].quota"),
    ('[retrieval]\nsources = [{ type = "two_tower", quota = 0 }]\n' + SCORER, "quota must be at least 1"),
    ('[retrieval]\nsources = [{ type = "a", quota = "rest" }, { type = "b", quota = "rest" }]\n' + SCORER,
     'at most one source may have quota = "rest"'),
    ('[retrieval]\nsources = [{ type = "popular", backfill = true, quota = 3 }]\n' + SCORER,
     "a backfill source takes no quota"),
    ('[retrieval]\nsources = [{ type = "popular", backfill = true }]\n' + SCORER, "at least one source must be primary"),
    ('[retrieval]\nsources = [{ type = "two_tower" }]\n' + SCORER, "a primary source needs a quota"),
    ('[retrieval]\nsources = [{ type = "two_tower", quota = "rest", weight = 2 }]\n' + SCORER,
     "retrieval.sources[0].weight: Extra inputs are not permitted"),
    ('[retrieval]\nsources = []\n' + SCORER, "retrieval.sources: List should have at least 1 item"),
    ('[retrieval]\nsources = [{ type = "popular", quota = "rest" }]\n', "ranking: Field required"),
    ("[retrieval\n", "not valid TOML"),
    ('[retrieval]\nsources = [{ type = "popular", quota = "rest" }]\nscore_with = "two_tower"\n' + SCORER,
     "score_with names no source: 'two_tower' (sources: popular)"),
])
def test_schema_mistakes_name_the_setting(tmp_path, text, message):
    with pytest.raises(PipelineConfigError, match="pipeline config .*pipeline.toml: ") as info:
        load_config(write(tmp_path, text))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_missing_file_is_one_line(tmp_path):
    with pytest.raises(PipelineConfigError, match="cannot be read"):
        load_config(tmp_path / "nope.toml")


def test_unknown_components_and_options_are_refused_before_loading(tmp_path, bundle_path):
    bundle = load_bundle(bundle_path, verify=False)
    cfg = load_config(write(tmp_path, '[retrieval]\nsources = [{ type = "two_tower", quota = "rest" }, '
                                      '{ type = "trending", quota = 5 }]\n'
                                      'filters = [{ type = "in_stock" }]\n' + SCORER))
    with pytest.raises(PipelineConfigError, match=r"retrieval.sources\[1\].type: unknown source 'trending' "
                                                  r"\(known: item_to_item, popular, two_tower\)"):
        build_sources(cfg.retrieval, bundle)
    with pytest.raises(PipelineConfigError, match=r"retrieval.filters\[0\].type: unknown filter 'in_stock' "
                                                  r"\(known: recent_items, request_exclusions, seen_items\)"):
        build_filters(cfg.retrieval, bundle)
    opts = load_config(write(tmp_path, '[retrieval]\nsources = [{ type = "two_tower", quota = "rest", '
                                       'options = { nprobe = 8, depth = 3 } }]\n' + SCORER))
    with pytest.raises(PipelineConfigError, match=r"retrieval.sources\[0\].options: .*depth"):
        build_sources(opts.retrieval, bundle)
    plain = load_config(write(tmp_path, '[retrieval]\nsources = [{ type = "popular", quota = "rest", '
                                        'options = { size = 3 } }]\n' + SCORER))
    with pytest.raises(PipelineConfigError, match=r"retrieval.sources\[0\].options: unknown option\(s\) size"):
        build_sources(plain.retrieval, bundle)


def test_a_component_whose_artifact_the_bundle_lacks_is_refused(tmp_path, bundle_path):
    real = load_bundle(bundle_path, verify=False)
    files = {k: v for k, v in real.manifest["files"].items() if k != "item_neighbors"}  # a bundle from before it
    lacking = dataclasses.replace(real, manifest={**real.manifest, "files": files})
    assert isinstance(lacking, Bundle)
    with pytest.raises(PipelineConfigError, match=r"retrieval.sources\[1\]: item_to_item needs bundle file\(s\) "
                                                  r"item_neighbors, which bundle .* does not have"):
        build_sources(load_config().retrieval, lacking)


def test_quotas_above_the_largest_k_are_refused(tmp_path):
    cfg = load_config(write(tmp_path, '[retrieval]\nsources = [{ type = "two_tower", quota = "rest" }, '
                                      '{ type = "popular", quota = 2000 }]\n' + SCORER))
    with pytest.raises(PipelineConfigError, match=r"retrieval.sources\[1\].quota: 2000 is above RETRIEVAL_MAX_K=1000"):
        cfg.retrieval.check_quotas(1000, "RETRIEVAL_MAX_K")


@pytest.mark.parametrize(("ladder", "message"), [
    ('["cached", "retrieval_order"]', 'the last rung must be "popular"'),
    ('["cached", "cached", "popular"]', "a rung appears twice"),
    ('["stale", "popular"]', "fallback.ladder[0]: Input should be 'retrieval_order', 'cached', 'popular_ranked' or 'popular'"),
])
def test_fallback_ladder_mistakes_name_the_setting(tmp_path, ladder, message):
    text = '[retrieval]\nsources = [{ type = "popular", quota = "rest" }]\n' + SCORER + f"[fallback]\nladder = {ladder}\n"
    with pytest.raises(PipelineConfigError) as info:
        load_config(write(tmp_path, text))
    assert message in str(info.value), str(info.value)


def test_the_shipped_ladder():
    assert load_config().fallback.ladder == ("retrieval_order", "cached", "popular_ranked", "popular")
