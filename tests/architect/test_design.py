"""``python -m architect design``: the requirements schema's errors, the example documents kept
true, and the sizing model against this machine's own measured saturation (same run)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from architect.design import plan, profile, render
from architect.design.cli import main
from architect.design.requirements import RequirementsError, parse
from common.settings import REPO_ROOT

DESIGNS = REPO_ROOT / "docs" / "designs"
EXAMPLES = sorted(DESIGNS.glob("*.yaml"))


def _example(name: str = "small-shop") -> dict:
    return yaml.safe_load((DESIGNS / f"{name}.yaml").read_text())


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "req.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(("change", "field", "words"), [
    (lambda d: d.pop("latency"), "latency", "required field is missing"),
    (lambda d: d["traffic"].pop("peak_qps"), "traffic.peak_qps", "required field is missing"),
    (lambda d: d["traffic"].__setitem__("peak_qps", "fifty"), "traffic.peak_qps", "valid number"),
    (lambda d: d["traffic"].__setitem__("peak_qps", "50"), "traffic.peak_qps", "valid number"),  # strict: no coercion
    (lambda d: d["users"].__setitem__("unknown_share", 1.5), "users.unknown_share", "less than or equal to 1"),
    (lambda d: d["latency"].__setitem__("p99_ms", 10), "latency.p99_ms", "below latency.p50_ms"),
    (lambda d: d["traffic"].__setitem__("average_qps", 500), "traffic.average_qps", "above traffic.peak_qps"),
    (lambda d: d["request"].__setitem__("k", 400), "request.k", "more than request.candidates"),
    (lambda d: d["infrastructure"].__setitem__("redis", "memcached"), "infrastructure.redis", "Input should be"),
    (lambda d: d.__setitem__("trafic", {}), "trafic", "Extra inputs are not permitted"),
])
def test_bad_requirements_name_the_field_and_exit_2(tmp_path, capsys, change, field, words):
    data = _example()
    change(data)
    assert main([str(_write(tmp_path, data))]) == 2
    err = capsys.readouterr().err
    line = next((ln for ln in err.splitlines() if ln.startswith(f"{field}:")), None)
    assert line is not None, err
    assert words in line, err


def test_an_impossible_latency_target_is_refused(tmp_path, capsys):
    data = _example()
    data["latency"] = {"p50_ms": 0.5, "p99_ms": 1.0}
    assert main([str(_write(tmp_path, data))]) == 2
    err = capsys.readouterr().err
    assert "latency.p99_ms: 1 ms is below what any serving mode" in err, err


def test_unreadable_input_exits_2(tmp_path, capsys):
    assert main([str(tmp_path / "missing.yaml")]) == 2
    (tmp_path / "bad.yaml").write_text("traffic: [1, 2\n")
    assert main([str(tmp_path / "bad.yaml")]) == 2
    (tmp_path / "list.yaml").write_text("- 1\n")
    assert main([str(tmp_path / "list.yaml")]) == 2
    assert "expected a mapping" in capsys.readouterr().err


def test_the_cli_as_a_process(tmp_path):
    out = tmp_path / "doc.md"
    done = subprocess.run([sys.executable, "-m", "architect", "design", str(DESIGNS / "small-shop.yaml"), "--out", str(out)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "small shop: online" in done.stderr
    assert out.read_text().startswith("# Architecture: small shop")
    bad = subprocess.run([sys.executable, "-m", "architect", "design"], cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and "requirements file is required" in bad.stderr


def test_three_examples_ship_with_their_documents():
    names = {p.stem for p in EXAMPLES}
    assert {"small-shop", "mid-feed", "marketplace"} <= names
    peaks = {p.stem: yaml.safe_load(p.read_text())["traffic"]["peak_qps"] for p in EXAMPLES}
    assert peaks["mid-feed"] == 5000 and peaks["marketplace"] == 50000
    assert yaml.safe_load((DESIGNS / "marketplace.yaml").read_text())["catalog"]["items"] == 100_000_000


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_documents_are_up_to_date(path):
    doc = path.with_suffix(".md")
    expected = render.render(plan.make(parse(yaml.safe_load(path.read_text())), profile.load()))
    assert doc.is_file(), f"{doc} is missing: run `make designs`"
    assert doc.read_text() == expected, f"{doc} is out of date: run `make designs`"


def test_every_number_says_where_it_came_from():
    d = plan.make(parse(_example("mid-feed")), profile.load())
    text = render.render(d)
    for key, fig in d.profile.figures.items():
        assert fig.source and fig.field, key
    assert "`bench-results/capacity.json` →" in text or "capacity.json" in text
    for s in d.services:
        assert "cores busy" in s.why and s.memory_mib.why
    for _, q in d.redis.parts:
        assert q.why
    assert d.index.name.startswith("IVF") and "recall" in text  # 2M items: ANN, not exact


def test_sizing_grows_with_the_load():
    small = plan.make(parse(_example("small-shop")), profile.load())
    big = plan.make(parse(_example("marketplace")), profile.load())
    total = {d.req.name: sum(s.replicas for s in d.services) for d in (small, big)}
    assert total["100M-item marketplace"] > 50 * total["small shop"], total
    assert big.redis.shape == "cluster" and big.redis.shards >= 3
    assert any("events consumers" in w for w in big.warnings)


def test_requirements_errors_are_one_line_per_field():
    with pytest.raises(RequirementsError) as exc:
        parse({"name": "x"})
    lines = str(exc.value).splitlines()
    assert {ln.split(":")[0] for ln in lines} == {"traffic", "latency", "catalog", "users"}


# -- the sizing model against this machine's own measurement ------------------------------------
@pytest.fixture(scope="module")
def capacity_run(bundle_path) -> dict:
    """One short ``benchmarks capacity`` run: the per-answer costs and the saturation of one stack."""
    from benchmarks import capacity

    with tempfile.TemporaryDirectory(prefix="capacity-test-") as tmp:
        return capacity.run(rate=0.0, duration=5.0, connections=32, events_rate=100.0, work=Path(tmp),
                            log=lambda _m: None)


def test_the_model_predicts_this_machines_saturation_within_30_percent(capacity_run, tmp_path):
    """The design's cost model, fed the per-answer CPU of the low-rate phase, predicts what the same
    run's closed-loop phase measured (full answers/s on this machine's cores, the load generator on
    the same cores)."""
    path = tmp_path / "capacity.json"
    import json

    path.write_text(json.dumps(capacity_run))
    prof = profile.build(path, name="this machine")
    req = parse({
        "name": "this machine", "traffic": {"peak_qps": 100, "average_qps": 100, "burst_factor": 1.0},
        "latency": {"p50_ms": 20, "p99_ms": 100},
        "catalog": {"items": int(capacity_run["items"])},
        "users": {"total": int(capacity_run["users"]), "unknown_share": 0.0},
        "request": {"k": 10, "candidates": int(capacity_run["num_candidates"])},
        "infrastructure": {"cores_per_node": int(capacity_run["cores"]), "shared_with_loadgen": True},
    })
    predicted = plan.this_machine_saturation(req, prof)
    measured = capacity_run["saturation"]["rps_full_answers"]
    ratio = predicted.value / measured
    print(f"\npredicted {predicted.value:.0f} answers/s ({predicted.why}) vs measured {measured:.0f}: ratio {ratio:.2f}")
    assert 0.7 <= ratio <= 1.3, f"predicted {predicted.value:.0f} vs measured {measured:.0f} answers/s"
