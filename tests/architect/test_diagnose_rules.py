"""The diagnose rules over synthetic metric snapshots, the CLI's argument and reachability errors,
the Prometheus source over a stand-in of its query API, and the runbook anchors."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from architect.diagnose.cli import main
from architect.diagnose.findings import KINDS, Finding
from architect.diagnose.rules import (
    Extra,
    Limits,
    evaluate,
    rule_cpu,
    rule_events,
    rule_fallbacks,
    rule_latency,
)
from architect.diagnose.scrape import (
    Histogram,
    Scrape,
    Snapshot,
    Window,
    parse_exposition,
    prometheus_snapshots,
)
from common.net import free_port
from common.settings import REPO_ROOT

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, float("inf"))


def hist(name: str, labels: str, values: list[float]) -> str:
    lines = []
    for b in BUCKETS:
        le = "+Inf" if b == float("inf") else repr(b)
        lines.append(f'{name}_bucket{{{labels}{"," if labels else ""}le="{le}"}} {sum(v <= b for v in values)}')
    lines += [f"{name}_count{{{labels}}} {len(values)}", f"{name}_sum{{{labels}}} {sum(values)}"]
    return "\n".join(lines)


def snap(t: float, **texts: str | None) -> Snapshot:
    scrapes = {}
    for comp, text in texts.items():
        if text is None:
            scrapes[comp] = Scrape(comp, f"http://{comp}/metrics", t, error="no answer within 2s")
        else:
            scrapes[comp] = Scrape(comp, f"http://{comp}/metrics", t, samples=parse_exposition(text + "\n"))
    return Snapshot(t, scrapes)


def gateway_text(answers: int, fallbacks: int = 0, latencies: list[float] | None = None, breaker: str = "closed") -> str:
    lat = latencies if latencies is not None else [0.008] * answers
    states = "\n".join(f'gateway_circuit_breaker_state{{breaker="ranking",gateway_circuit_breaker_state="{s}"}} '
                       f'{1.0 if s == breaker else 0.0}' for s in ("closed", "open", "half_open"))
    return "\n".join([
        "# TYPE gateway_requests_total counter", f'gateway_requests_total{{code="200"}} {answers}',
        "# TYPE gateway_fallbacks_total counter", f'gateway_fallbacks_total{{reason="ranking_unavailable"}} {fallbacks}',
        "# TYPE gateway_stage_latency_seconds histogram", hist("gateway_stage_latency_seconds", 'stage="total"', lat),
        hist("gateway_stage_latency_seconds", 'stage="ranking"', [x * 0.8 for x in lat]),
        "# TYPE gateway_circuit_breaker_state gauge", states,
    ])


def test_histogram_quantile_interpolates_like_prometheus():
    h = Histogram([(0.01, 50.0), (0.02, 100.0), (float("inf"), 100.0)], sum=1.0, count=100.0)
    assert h.quantile(0.5) == pytest.approx(0.01)
    assert h.quantile(0.75) == pytest.approx(0.015)
    assert h.quantile(0.99) == pytest.approx(0.0198)
    assert Histogram().quantile(0.99) is None
    inf = Histogram([(0.01, 0.0), (float("inf"), 10.0)], count=10.0)
    assert inf.quantile(0.5) == 0.01  # in +Inf: the largest finite bound


def test_counter_increase_over_the_window_and_a_reset():
    w = Window(snap(0, gateway="c_total 10\nd_total 50"), snap(10, gateway="c_total 25\nd_total 5\ne_total 3"))
    assert w.increase("gateway", "c_total") == 15
    assert w.increase("gateway", "d_total") == 5  # restarted: its new value
    assert w.increase("gateway", "e_total") == 3  # new in the window


def test_fallback_share_thresholds_and_the_rung_names_the_component():
    lim = Limits()
    quiet = Window(snap(0, gateway=gateway_text(0)), snap(10, gateway=gateway_text(1000, fallbacks=5)))
    assert rule_fallbacks(quiet, lim, Extra()) == []  # 0.5 %: below the 1 % warning
    some = Window(snap(0, gateway=gateway_text(0)), snap(10, gateway=gateway_text(1000, fallbacks=50)))
    [f] = rule_fallbacks(some, lim, Extra())
    assert (f.severity, f.component) == ("warning", "ranking")
    many = Window(snap(0, gateway=gateway_text(0)), snap(10, gateway=gateway_text(1000, fallbacks=300)))
    assert rule_fallbacks(many, lim, Extra())[0].severity == "critical"


def test_latency_p99_against_the_target_and_too_little_traffic():
    lim = Limits(request_timeout_ms=100)
    fast = Window(snap(0, gateway=gateway_text(0, latencies=[])), snap(10, gateway=gateway_text(100)))
    [f] = rule_latency(fast, lim, Extra())
    assert f.severity == "info" and f.data["p99_ms"] < 10
    slow = Window(snap(0, gateway=gateway_text(0, latencies=[])),
                  snap(10, gateway=gateway_text(100, latencies=[0.008] * 90 + [0.04] * 10)))
    [f] = rule_latency(slow, Limits(request_timeout_ms=100, p99_ms=40), Extra())  # p99 47.5 ms
    assert f.severity == "warning" and f.component == "ranking" and "ranking call" in f.title
    assert rule_latency(slow, Limits(request_timeout_ms=50), Extra())[0].severity == "critical"  # >= 90 % of 50
    few = Window(snap(0, gateway=gateway_text(0, latencies=[])), snap(10, gateway=gateway_text(5)))
    assert rule_latency(few, lim, Extra())[0].kind == "traffic"


def test_an_open_breaker_and_an_unreachable_service_are_critical_and_first():
    first = snap(0, gateway=gateway_text(0), ranking="process_cpu_seconds_total 1")
    last = snap(10, gateway=gateway_text(100, fallbacks=100, breaker="open"), ranking=None)
    findings = evaluate(Window(first, last), Limits())
    assert [f.severity for f in findings[:3]] == ["critical"] * 3
    assert {f.kind for f in findings[:3]} == {"unreachable", "breaker_open", "fallbacks"}
    assert all(f.component == "ranking" for f in findings[:3])


def test_cpu_replicas_per_process_and_for_the_host():
    first = snap(0, gateway="process_cpu_seconds_total 0", ranking="process_cpu_seconds_total 0",
                 retrieval="process_cpu_seconds_total 0")
    last = snap(10, gateway="process_cpu_seconds_total 3", ranking="process_cpu_seconds_total 9.5",
                retrieval="process_cpu_seconds_total 4")
    out = rule_cpu(Window(first, last), Limits(cores=2, cpu_target=0.7), Extra())
    ranking = next(f for f in out if f.component == "ranking")
    assert ranking.severity == "critical" and ranking.data["replicas"] == 2  # 0.95 core / 0.7
    host = next(f for f in out if f.component == "host")
    # 1.65 cores of 2 = 82 %: ceil(1.65 / (0.7 x 2)) = 2 copies, ceil(1.65 / 0.7) = 3 cores
    assert host.severity == "warning" and host.data["replicas"] == 2 and host.data["cores_needed"] == 3
    calm = rule_cpu(Window(first, snap(10, gateway="process_cpu_seconds_total 1")), Limits(cores=2), Extra())
    assert [f.severity for f in calm] == ["info"]


def test_events_lag_from_the_stream_while_the_consumer_is_down():
    first = snap(0, gateway='gateway_events_total{outcome="accepted"} 0', events="recsys_events_lag_seconds 0")
    last = snap(10, gateway='gateway_events_total{outcome="accepted"} 40', events=None)
    [f] = rule_events(Window(first, last), Limits(), Extra(stream_lag_entries=40, stream_lag_seconds=9.5))
    assert (f.severity, f.kind, f.data["lag_entries"]) == ("critical", "events_lag", 40)
    caught_up = snap(10, gateway='gateway_events_total{outcome="accepted"} 40',
                     events="recsys_events_lag_seconds 0\nrecsys_events_lag_entries 0")
    assert rule_events(Window(first, caught_up), Limits(), Extra())[0].severity == "info"


def test_stale_features_from_the_snapshot_timestamps():
    now = 1_800_000_000.0
    text = (f"recsys_feature_snapshot_published_timestamp_seconds {now - 60}\n"
            f"recsys_feature_materialized_until_timestamp_seconds {now - 3 * 86400}")
    w = Window(snap(now - 10, ranking=text), snap(now, ranking=text))
    stale = [f for f in evaluate(w, Limits(), Extra(now=now)) if f.kind == "stale_features"]
    assert sorted(f.severity for f in stale) == ["info", "warning"]
    assert next(f for f in stale if f.severity == "warning").data["age_s"] == pytest.approx(3 * 86400)


def test_every_finding_kind_has_its_runbook_section():
    text = (REPO_ROOT / "docs" / "runbook.md").read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
               for h in re.findall(r"^#{2,3} (.+)$", text, flags=re.M)}
    assert set(KINDS.values()) <= anchors, set(KINDS.values()) - anchors
    f = Finding("info", "cache", "gateway", "t", [], "r")
    assert f.runbook == "docs/runbook.md#cache-hit-rate"
    with pytest.raises(ValueError):
        Finding("info", "no_such_kind", "gateway", "t", [], "r")


def test_bad_arguments_and_an_unreachable_gateway_exit_2(capsys, tmp_path):
    assert main(["--window", "0", "--gateway", "http://127.0.0.1:1"]) == 2
    assert "--window" in capsys.readouterr().err
    assert main(["--gateway", "ftp://x"]) == 2
    assert main(["--no-such-option"]) == 2
    port = free_port()
    assert main(["--gateway", f"http://127.0.0.1:{port}", "--window", "0.1", "--run-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "the gateway does not answer" in err and str(port) in err
    assert main(["--run-dir", str(tmp_path)]) == 2  # no stack.json, no --gateway
    assert "make up" in capsys.readouterr().err


class _FakePrometheus(BaseHTTPRequestHandler):
    """``/api/v1/query`` answering from two stored instants (before / after)."""

    series: dict[str, list[tuple[dict, float]]] = {}

    def do_GET(self):  # noqa: N802 - the base class's name
        q = parse_qs(urlsplit(self.path).query)
        at = float(q["time"][0])
        which = "after" if at >= self.server.split else "before"  # type: ignore[attr-defined]
        result = [{"metric": m, "value": [at, str(v)]} for m, v in self.series[which]]
        body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_the_prometheus_source_reads_the_same_window():
    def g(name, v, **labels):
        return ({"__name__": name, "job": "gateway", "instance": "gw:8000", **labels}, v)

    _FakePrometheus.series = {
        "before": [g("up", 1), g("gateway_requests_total", 0, code="200"),
                   g("gateway_fallbacks_total", 0, reason="retrieval_unavailable"),
                   ({"__name__": "up", "job": "retrieval", "instance": "r:9101"}, 1)],
        "after": [g("up", 1), g("gateway_requests_total", 200, code="200"),
                  g("gateway_fallbacks_total", 60, reason="retrieval_unavailable"),
                  ({"__name__": "up", "job": "retrieval", "instance": "r:9101"}, 0)],
    }
    server = HTTPServer(("127.0.0.1", 0), _FakePrometheus)
    server.split = 1000.0  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        jobs = {c: c for c in ("gateway", "retrieval", "ranking", "events")}
        first, last = prometheus_snapshots(f"http://127.0.0.1:{server.server_port}", 30, jobs, 2.0, now=1010.0)
    finally:
        server.shutdown()
    w = Window(first, last)
    assert w.seconds == pytest.approx(30)
    assert not w.ok("retrieval") and "up == 0" in w.error("retrieval")
    findings = evaluate(w, Limits())
    assert (findings[0].severity, findings[0].component) == ("critical", "retrieval")
    assert any(f.kind == "fallbacks" and f.data["share"] == pytest.approx(0.3) for f in findings)
