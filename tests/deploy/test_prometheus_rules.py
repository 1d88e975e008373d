"""The compose stack's Prometheus, offline: the alert rules pass ``promtool check rules`` and their
unit tests (``alerts_test.yml``), the scrape config loads them, every PromQL expression of the
Grafana dashboard parses; every alert links an existing runbook section and has a firing and a
non-firing unit-test case. promtool is fetched and pinned by deploy/prometheus/promcheck.py."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from deploy.prometheus import promcheck as pc

RUNBOOK = pc.REPO_ROOT / "docs" / "runbook.md"
SEVERITIES = {"critical", "warning", "info"}


@pytest.fixture(scope="module")
def promtool() -> Path:
    return pc.ensure_promtool()


def alert_rules() -> list[dict]:
    doc = yaml.safe_load(pc.ALERTS.read_text())
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def rule_tests() -> list[tuple[dict, dict]]:
    doc = yaml.safe_load(pc.ALERTS_TEST.read_text())
    return [(group, case) for group in doc["tests"] for case in group.get("alert_rule_test") or []]


def github_anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lowercase, punctuation dropped, spaces -> '-', repeats get -1, -2..."""
    seen: dict[str, int] = defaultdict(int)
    anchors = set()
    in_code = False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            in_code = not in_code
        m = None if in_code else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        anchors.add(slug if seen[slug] == 0 else f"{slug}-{seen[slug]}")
        seen[slug] += 1
    return anchors


# --- promtool ---------------------------------------------------------------------------------

def test_promtool_is_the_pinned_one(promtool):
    res = pc.run([str(promtool), "--version"])
    assert res.returncode == 0 and "2.42.0" in res.output, res.output


def test_alert_rules_pass_promtool_check(promtool):
    res = pc.check_rules(promtool)
    assert res.returncode == 0, res.output
    assert "SUCCESS" in res.output


def test_alert_rule_unit_tests_pass(promtool):
    res = pc.run_rule_tests(promtool)
    assert res.returncode == 0, res.output
    assert "SUCCESS" in res.output


def test_scrape_config_loads_the_alert_rules(promtool):
    res = pc.check_config(promtool)
    assert res.returncode == 0, res.output
    assert "1 rule files found" in res.output, res.output


def test_config_without_the_container_rule_file_is_refused(tmp_path):
    config = tmp_path / "prometheus.yml"
    config.write_text(pc.CONFIG.read_text().replace(pc.CONTAINER_ALERTS, "/elsewhere/alerts.yml"))
    with pytest.raises(pc.ToolError, match="rule_files"):
        pc.container_config(tmp_path / "out", config)


def test_every_dashboard_expr_parses(promtool):
    exprs = pc.dashboard_exprs()
    assert len(exprs) >= 20, exprs  # 21 panel targets today
    res = pc.check_dashboard(promtool)
    assert res.returncode == 0, res.output
    assert f"SUCCESS: {len(exprs)} rules found" in res.output, res.output


def test_a_broken_expr_fails_the_check(promtool, tmp_path):
    rules = tmp_path / "broken.yml"
    rules.write_text(yaml.safe_dump(pc.dashboard_rules([("broken / A", "sum(rate(gateway_requests_total[$__rate_interval])")])))
    res = pc.check_rules(promtool, rules)
    assert res.returncode != 0, res.output


def test_grafana_variables_become_concrete():
    expr = 'sum(rate(x{job=~"$job",instance=~"${instance:regex}",a=~"[[legacy]]"}[$__rate_interval])) / $__range_s'
    out = pc.concrete(expr)
    assert "$" not in out and "[[" not in out, out
    assert out == 'sum(rate(x{job=~".*",instance=~".*",a=~".*"}[1m])) / 3600'


# --- alert hygiene ----------------------------------------------------------------------------

def test_alerts_have_severity_and_annotations():
    rules = alert_rules()
    assert rules
    for rule in rules:
        assert rule.get("labels", {}).get("severity") in SEVERITIES, rule["alert"]
        for key in ("summary", "description", "runbook_url"):
            assert rule.get("annotations", {}).get(key), (rule["alert"], key)


def test_runbook_urls_point_to_existing_anchors():
    anchors = github_anchors(RUNBOOK.read_text())
    assert "open-breakers" in anchors and "events-lag-and-freshness" in anchors, sorted(anchors)
    for rule in alert_rules():
        url = rule["annotations"]["runbook_url"]
        path, _, anchor = url.partition("#")
        assert path == "docs/runbook.md", url
        assert anchor in anchors, f"{rule['alert']}: {url} has no heading in docs/runbook.md ({sorted(anchors)})"


def test_github_anchor_rules():
    md = "# Runbook\n## Events lag and freshness\n## CPU saturation\n```\n## not a heading\n```\n## A `code`, (x)!\n## CPU saturation\n"
    assert github_anchors(md) == {"runbook", "events-lag-and-freshness", "cpu-saturation", "a-code-x", "cpu-saturation-1"}


def test_every_alert_has_a_firing_and_a_non_firing_case():
    firing: dict[str, list[dict]] = defaultdict(list)
    quiet: set[str] = set()
    for _, case in rule_tests():
        if case.get("exp_alerts"):
            firing[case["alertname"]].extend(a.get("exp_labels", {}) for a in case["exp_alerts"])
        else:
            quiet.add(case["alertname"])
    names = {r["alert"] for r in alert_rules()}
    assert names - set(firing) == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested not firing"
    assert (set(firing) | quiet) - names == set(), "unit tests of alerts that do not exist"
    # each rule, not just each name: a rule's static labels (severity, job) appear in a firing case
    for rule in alert_rules():
        static = rule["labels"]
        assert any(all(got.get(k) == v for k, v in static.items()) for got in firing[rule["alert"]]), \
            f"{rule['alert']} {static}: no firing case"


def test_container_path_matches_compose_mount():
    """prometheus.yml's rule file is where compose mounts alerts.yml next to prometheus.yml."""
    doc = yaml.safe_load(pc.CONFIG.read_text())
    assert pc.CONTAINER_ALERTS in doc["rule_files"]
    assert Path(pc.CONTAINER_ALERTS).parent == Path("/etc/prometheus")


def test_compose_mounts_the_alert_rules():
    compose = yaml.safe_load((pc.REPO_ROOT / "docker-compose.yml").read_text())
    volumes = compose["services"]["prometheus"].get("volumes") or []
    assert "./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in volumes, volumes
