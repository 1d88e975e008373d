"""``python -m architect diagnose``: two looks at a running stack -> findings, worst first.

By default it diagnoses the stack ``make up`` started (``run/stack.json``: the gateway, the events
consumer, Redis; the retrieval / ranking metrics ports from RETRIEVAL_METRICS_PORT /
RANKING_METRICS_PORT, as ``make up`` used them). ``--gateway`` and the ``--*-metrics`` URLs point
it elsewhere; ``--prometheus`` reads the same series from Prometheus's query API instead of
scraping (no waiting: the window is read from its history).

Exit codes: 0 no critical finding, 1 at least one critical finding, 2 bad arguments or a stack
that cannot be reached (one line saying which and why).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

EXIT_OK, EXIT_CRITICAL, EXIT_UNUSABLE = 0, 1, 2


class UsageError(Exception):
    """Bad arguments or an unreachable stack: exit 2 with this message."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m architect diagnose",
        description="Diagnose a running stack from its metrics: findings (critical / warning / info), worst first, "
                    "each with its evidence and remediation (docs/runbook.md).")
    where = p.add_argument_group("where (default: the stack `make up` started, run/stack.json)")
    where.add_argument("--gateway", metavar="URL", help="gateway base URL (its /metrics is scraped)")
    where.add_argument("--retrieval-metrics", metavar="URL", help="retrieval's metrics URL (default: RETRIEVAL_METRICS_PORT on the gateway's host)")
    where.add_argument("--ranking-metrics", metavar="URL", help="ranking's metrics URL (default: RANKING_METRICS_PORT on the gateway's host)")
    where.add_argument("--events-metrics", metavar="URL", help="the events consumer's metrics URL (default: stack.json's events_url)")
    where.add_argument("--prometheus", metavar="URL", help="read every series from Prometheus's HTTP API instead of scraping")
    where.add_argument("--job", action="append", default=[], metavar="COMPONENT=JOB",
                       help="Prometheus job name of a component (default: the component's name: gateway, retrieval, ranking, events)")
    where.add_argument("--redis", metavar="URL", help="Redis of the event stream, to read its lag directly (default: stack.json's)")
    where.add_argument("--no-redis", action="store_true", help="do not read the stream's lag from Redis")
    where.add_argument("--run-dir", type=Path, help="folder of stack.json (default: run/)")
    how = p.add_argument_group("how")
    how.add_argument("--window", type=float, default=10.0, metavar="S", help="seconds between the two looks (default 10)")
    how.add_argument("--timeout", type=float, default=2.0, metavar="S", help="timeout of one scrape (default 2)")
    how.add_argument("--json", action="store_true", help="machine-readable output")
    th = p.add_argument_group("thresholds")
    th.add_argument("--p99-ms", type=float, help="/recommend p99 target (default: half of GATEWAY_REQUEST_TIMEOUT_MS)")
    th.add_argument("--min-requests", type=int, default=20, help="answers needed in the window to judge rates (default 20)")
    th.add_argument("--cpu-target", type=float, default=0.7, help="target CPU utilisation the replica counts aim under (default 0.7)")
    th.add_argument("--cores", type=int, help="cores of the stack's host (default: the cores this command may use)")
    th.add_argument("--max-feature-age-h", type=float, default=26.0, help="warn above this feature age, hours (default 26)")
    th.add_argument("--max-lag-s", type=float, default=5.0, help="warn above this events lag, seconds (default 5)")
    th.add_argument("--max-model-age-days", type=float, default=30.0, help="warn above this model age (default 30)")
    return p


def _check(args: argparse.Namespace) -> None:
    if args.window <= 0:
        raise UsageError(f"--window must be > 0 seconds, got {args.window:g}")
    if args.timeout <= 0:
        raise UsageError(f"--timeout must be > 0 seconds, got {args.timeout:g}")
    if not 0 < args.cpu_target < 1:
        raise UsageError(f"--cpu-target must be between 0 and 1, got {args.cpu_target:g}")
    if args.cores is not None and args.cores < 1:
        raise UsageError(f"--cores must be >= 1, got {args.cores}")
    for name in ("gateway", "retrieval_metrics", "ranking_metrics", "events_metrics", "prometheus"):
        url = getattr(args, name)
        if url is not None and urlsplit(url).scheme not in ("http", "https"):
            raise UsageError(f"--{name.replace('_', '-')} must be an http(s) URL, got {url!r}")
    for j in args.job:
        comp, sep, job = j.partition("=")
        if not sep or comp not in ("gateway", "retrieval", "ranking", "events") or not job:
            raise UsageError(f"--job wants COMPONENT=JOB with COMPONENT one of gateway, retrieval, ranking, events; got {j!r}")


def _stack_info(run_dir: Path | None):
    from deploy.local import RUN_DIR, STACK_FILE, StackInfo

    folder = run_dir or RUN_DIR
    if not (folder / STACK_FILE).is_file():
        return None
    try:
        return StackInfo.load(folder)
    except (OSError, ValueError, TypeError) as exc:
        raise UsageError(f"{folder / STACK_FILE} is unreadable ({exc}): `make down` and `make up` again") from exc


def _service_ports() -> dict[str, int]:
    ports = {"retrieval": 9101, "ranking": 9102}
    try:
        from services.ranking.settings import RankingSettings
        from services.retrieval.settings import RetrievalSettings

        ports = {"retrieval": RetrievalSettings().metrics_port, "ranking": RankingSettings().metrics_port}
    except Exception:  # noqa: BLE001 - an unreadable setting falls back to the defaults
        pass
    return ports


def targets(args: argparse.Namespace) -> tuple[dict[str, str], str | None, bool]:
    """({component: metrics URL}, Redis URL of the stream or None, services in-process?)."""
    info = _stack_info(args.run_dir)
    gateway = args.gateway or (info.gateway_url if info else None)
    if gateway is None:
        raise UsageError("no stack to diagnose: run/stack.json is missing (start one with `make up`) and no --gateway was given")
    same = info is not None and args.gateway in (None, info.gateway_url)
    inprocess = same and info.gateway_mode == "inprocess"
    urls = {"gateway": gateway.rstrip("/") + "/metrics"}
    host = urlsplit(gateway).hostname or "127.0.0.1"
    ports = _service_ports()
    for comp in ("retrieval", "ranking"):
        given = getattr(args, f"{comp}_metrics")
        if given:
            urls[comp] = given
        elif not inprocess:
            urls[comp] = f"http://{host}:{ports[comp]}/metrics"
    events = args.events_metrics or (info.events_url.rstrip("/") + "/metrics" if same and info.events_url else None)
    if events:
        urls["events"] = events if events.endswith("/metrics") or args.events_metrics else events + "/metrics"
    redis_url = None if args.no_redis else (args.redis or (info.redis_url if same else None))
    return urls, redis_url, inprocess


def limits(args: argparse.Namespace):
    from architect.diagnose.rules import Limits
    from architect.diagnose.scrape import usable_cores

    lim = Limits(p99_ms=args.p99_ms, min_requests=args.min_requests, cpu_target=args.cpu_target,
                 cores=args.cores or usable_cores(), feature_age_warn_s=args.max_feature_age_h * 3600,
                 lag_warn_s=args.max_lag_s, model_age_warn_days=args.max_model_age_days)
    lim.feature_age_crit_s = max(lim.feature_age_crit_s, 2 * lim.feature_age_warn_s)
    lim.lag_crit_s = max(lim.lag_crit_s, 2 * lim.lag_warn_s)
    try:
        from services.gateway.settings import GatewaySettings

        g = GatewaySettings()
        lim.request_timeout_ms = g.request_timeout_ms
        lim.in_flight = {"retrieval": g.retrieval_max_in_flight, "ranking": g.ranking_max_in_flight}
        lim.num_candidates = g.num_candidates
    except Exception:  # noqa: BLE001 - the settings' defaults then
        pass
    return lim


def stream_lag(redis_url: str, timeout: float):
    """(entries, seconds, error) of the events consumer group, read from the stream itself."""
    try:
        from common.redis_client import sync_client
        from services.events.stream import Stream

        with sync_client(redis_url, socket_timeout=timeout, connect_timeout=timeout, fail_fast=True) as client:
            entries, seconds, exists = Stream(client, "diagnose").lag()
        if not exists:
            return None, None, "no consumer group on the stream yet"
        return entries, seconds, None
    except Exception as exc:  # noqa: BLE001 - a finding's evidence, not a crash
        return None, None, f"{type(exc).__name__}: {exc}"


def collect(args: argparse.Namespace):
    """(window, extra, description of the source)."""
    from architect.diagnose.scrape import PrometheusError, Window, prometheus_snapshots, scrape_all

    if args.prometheus:
        jobs = {c: c for c in ("gateway", "retrieval", "ranking", "events")}
        jobs.update(dict(j.split("=", 1) for j in args.job))
        try:
            first, last = prometheus_snapshots(args.prometheus, args.window, jobs, args.timeout)
        except PrometheusError as exc:
            raise UsageError(str(exc)) from exc
        if not last.scrapes["gateway"].ok:
            raise UsageError(f"the gateway is not in Prometheus: {last.scrapes['gateway'].error}")
        redis_url = None if args.no_redis else args.redis
        return Window(first, last), _extra(redis_url, args.timeout, last.t), f"Prometheus {args.prometheus}"
    urls, redis_url, _ = targets(args)
    local = (urlsplit(urls["gateway"]).hostname or "") in ("127.0.0.1", "localhost", "::1")
    first = scrape_all(urls, args.timeout, local)
    gw = first.scrapes["gateway"]
    if not gw.ok:
        raise UsageError(f"cannot diagnose: the gateway does not answer ({gw.error}); is the stack up? (`make up`, `make status`)")
    if any(n == "recsys_model_info" for n, _ in gw.samples):  # GATEWAY_MODE=inprocess: the stages are in the gateway
        for comp in ("retrieval", "ranking"):
            if not getattr(args, f"{comp}_metrics"):
                urls.pop(comp, None)
                first.scrapes.pop(comp, None)
    time.sleep(max(0.0, args.window - (time.time() - first.t)))
    last = scrape_all(urls, args.timeout, local)
    if not last.scrapes["gateway"].ok:
        raise UsageError(f"cannot diagnose: the gateway stopped answering ({last.scrapes['gateway'].error})")
    return Window(first, last), _extra(redis_url, args.timeout, last.t), "scrapes of " + ", ".join(urls.values())


def _extra(redis_url: str | None, timeout: float, now: float):
    from architect.diagnose.rules import Extra

    extra = Extra(now=now)
    if redis_url:
        extra.stream_lag_entries, extra.stream_lag_seconds, extra.stream_error = stream_lag(redis_url, timeout)
    return extra


def report(findings, window, source: str) -> dict[str, Any]:
    worst = findings[0].severity if findings else None
    return {
        "source": source,
        "window_s": round(window.seconds, 3),
        "scrapes": {c: {"url": s.url, "ok": s.ok, "error": s.error} for c, s in window.last.scrapes.items()},
        "worst": worst,
        "findings": [f.to_dict() for f in findings],
    }


def render(findings, window, source: str, out=None) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(file=out or sys.stdout, width=None if (out or sys.stdout).isatty() else 160)
    style = {"critical": "bold red", "warning": "yellow", "info": "dim"}
    table = Table(title=f"diagnose: {len(findings)} findings over {window.seconds:.1f} s ({source})", show_lines=True,
                  title_justify="left")
    table.add_column("severity", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("finding and evidence", ratio=3)
    table.add_column("remediation", ratio=2)
    for f in findings:
        evidence = escape("\n".join("  " + e.text() for e in f.evidence))
        table.add_row(f"[{style[f.severity]}]{f.severity}[/]", f.kind, f"[bold]{escape(f.title)}[/bold]\n{evidence}",
                      f"{escape(f.remediation)}\n[dim]{escape(f.runbook)}[/dim]")
    console.print(table)
    counts = {s: sum(f.severity == s for f in findings) for s in ("critical", "warning", "info")}
    console.print(", ".join(f"{n} {s}" for s, n in counts.items()))


def main(argv: list[str]) -> int:
    p = parser()
    try:
        args = p.parse_args(argv)
    except SystemExit as exc:  # argparse: 2 on bad arguments, 0 for --help
        return int(exc.code or 0)
    try:
        _check(args)
        window, extra, source = collect(args)
    except UsageError as exc:
        print(f"diagnose: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    from architect.diagnose.rules import evaluate

    findings = evaluate(window, limits(args), extra)
    if args.json:
        print(json.dumps(report(findings, window, source), indent=2))
    else:
        render(findings, window, source)
    return EXIT_CRITICAL if any(f.severity == "critical" for f in findings) else EXIT_OK
