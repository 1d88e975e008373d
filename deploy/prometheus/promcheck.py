"""Offline checks of the Prometheus configuration: the alert rules, their unit tests, the scrape
config and every PromQL expression of the Grafana dashboard, all with promtool.

    python -m deploy.prometheus.promcheck     # prints every promtool output; non-zero on any failure

* ``promtool check rules alerts.yml`` and ``promtool test rules alerts_test.yml``;
* ``promtool check config`` on a temporary copy of ``prometheus.yml`` whose ``rule_files`` entry
  ``/etc/prometheus/alerts.yml`` (the path inside the Prometheus container, see docker-compose.yml)
  points at the repository's ``alerts.yml`` instead;
* ``promtool check rules`` on a temporary rule file with one recording rule per expression of
  ``deploy/grafana/dashboards/recsys.json``: Grafana's ``$__rate_interval`` / ``$__interval`` /
  ``$__range`` become concrete durations and any other ``$variable`` a match-all regex.

promtool is fetched once into ``.cache/tools/`` (git-ignored) from Debian's ``prometheus`` package,
the version pinned below: ``apt-get download`` (apt's own sources and proxy settings), the .deb
checked against its pinned sha256, ``dpkg -x`` into a temporary folder, and ``usr/bin/promtool``
checked against its sha256 before it is kept. The package is never installed (installing it would
start a Prometheus server). Debian's promtool is 2.42 while compose runs ``prom/prometheus:v2.53.0``:
the rules use nothing newer than 2.42. ``tests/deploy/test_prometheus_rules.py`` runs the same
functions and asserts on their results.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from deploy.tools import Result, ToolError, run  # noqa: F401  (re-exported for the tests)

REPO_ROOT = Path(__file__).resolve().parents[2]
HERE = REPO_ROOT / "deploy" / "prometheus"
ALERTS = HERE / "alerts.yml"
ALERTS_TEST = HERE / "alerts_test.yml"
CONFIG = HERE / "prometheus.yml"
DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "dashboards" / "recsys.json"
CACHE = REPO_ROOT / ".cache" / "tools"

# where docker-compose.yml mounts alerts.yml in the Prometheus container (prometheus.yml's rule_files)
CONTAINER_ALERTS = "/etc/prometheus/alerts.yml"

# Debian 12 (bookworm) `prometheus`: `apt-cache policy prometheus`; sha256sum of the downloaded .deb
# and of usr/bin/promtool inside it (promtool --version: 2.42.0+ds).
DEB_PACKAGE = "prometheus"
DEB_VERSION = "2.42.0+ds-5+deb12u1"
DEB_ARCH = "amd64"
DEB_FILE = f"{DEB_PACKAGE}_{DEB_VERSION}_{DEB_ARCH}.deb"
DEB_SHA256 = "81d59a24fce84f7fbe97a45a4f2914b6a5881b5cd1db2a6a0e129e515e1a5f55"
PROMTOOL_SHA256 = "14d9c8acdc5d1321dc2092400111c586f09ac350f23f2383d1679b2bf256e583"

# Grafana's global variables -> what they stand for in a check (any valid duration would do)
GRAFANA_DURATIONS = {
    "__rate_interval": "1m", "__interval": "1m", "__range": "1h",
    "__interval_ms": "60000", "__range_s": "3600", "__range_ms": "3600000",
}
MATCH_ALL = ".*"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _arch() -> str:
    dpkg = shutil.which("dpkg")
    if dpkg is None:
        raise ToolError("promcheck: dpkg not found: promtool is taken from Debian's prometheus package "
                        "(apt-get download + dpkg -x), which needs a Debian-like system")
    return subprocess.run([dpkg, "--print-architecture"], capture_output=True, text=True, check=True).stdout.strip()


def _download_deb(folder: Path) -> Path:
    """The pinned .deb in ``folder`` (kept there: a later run re-extracts it without apt)."""
    deb = folder / DEB_FILE
    if deb.is_file() and _sha256(deb) == DEB_SHA256:
        return deb
    apt = shutil.which("apt-get")
    if apt is None:
        raise ToolError(f"promcheck: apt-get not found: cannot download {DEB_PACKAGE}={DEB_VERSION}")
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:  # a partial download never lands as DEB_FILE
        proc = subprocess.run([apt, "download", f"{DEB_PACKAGE}={DEB_VERSION}"], cwd=tmp,
                              capture_output=True, text=True, timeout=600)
        got = Path(tmp) / DEB_FILE
        if proc.returncode != 0 or not got.is_file():
            raise ToolError(
                f"promcheck: `apt-get download {DEB_PACKAGE}={DEB_VERSION}` failed (exit {proc.returncode}): "
                f"{(proc.stderr or proc.stdout).strip()[-600:]}\n"
                f"promtool comes from that Debian package; run `apt-get update` if the version is not known, "
                f"or put {DEB_FILE} (sha256 {DEB_SHA256}) into {folder}.")
        digest = _sha256(got)
        if digest != DEB_SHA256:
            raise ToolError(f"promcheck: {DEB_FILE} has sha256 {digest}, not the pinned {DEB_SHA256}: refused")
        os.replace(got, deb)
    return deb


def ensure_promtool(cache: Path = CACHE) -> Path:
    """Path of the pinned promtool, fetched into ``cache/prometheus-<version>/`` on first use."""
    folder = cache / f"prometheus-{DEB_VERSION}"
    target = folder / "promtool"
    if target.is_file() and _sha256(target) == PROMTOOL_SHA256:
        return target
    arch = _arch()
    if arch != DEB_ARCH:
        raise ToolError(f"promcheck: the pinned {DEB_PACKAGE} package is {DEB_ARCH}, this system is {arch}: "
                        f"pin the {arch} .deb's sha256 (and its promtool's) in {__file__}")
    deb = _download_deb(folder)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        proc = subprocess.run(["dpkg", "-x", str(deb), tmp], capture_output=True, text=True, timeout=300)
        binary = Path(tmp) / "usr" / "bin" / "promtool"
        if proc.returncode != 0 or not binary.is_file():
            raise ToolError(f"promcheck: dpkg -x {deb.name} gave no usr/bin/promtool: {proc.stderr.strip()[-300:]}")
        digest = _sha256(binary)
        if digest != PROMTOOL_SHA256:
            raise ToolError(f"promcheck: usr/bin/promtool has sha256 {digest}, not the pinned {PROMTOOL_SHA256}")
        binary.chmod(0o755)
        os.replace(binary, target)  # concurrent first runs: both move the same verified bytes
    return target


def check_rules(promtool: Path, path: Path = ALERTS) -> Result:
    return run([str(promtool), "check", "rules", str(path)])


def run_rule_tests(promtool: Path, path: Path = ALERTS_TEST) -> Result:
    # relative rule_files in the test file are resolved from the working directory
    return run([str(promtool), "test", "rules", path.name], cwd=path.parent)




def container_config(tmp: Path, config: Path = CONFIG, alerts: Path = ALERTS) -> Path:
    """A copy of ``config`` in ``tmp`` whose in-container rule file path points at ``alerts``."""
    doc = yaml.safe_load(config.read_text())
    rule_files = doc.get("rule_files") or []
    if CONTAINER_ALERTS not in rule_files:
        raise ToolError(f"promcheck: {config.name} has no rule_files entry {CONTAINER_ALERTS} (rule_files: {rule_files})")
    text = config.read_text().replace(CONTAINER_ALERTS, str(alerts.resolve()))
    out = tmp / config.name
    out.write_text(text)
    return out


def check_config(promtool: Path, config: Path = CONFIG, alerts: Path = ALERTS) -> Result:
    with tempfile.TemporaryDirectory() as tmp:
        copy = container_config(Path(tmp), config, alerts)
        res = run([str(promtool), "check", "config", str(copy)])
    return Result(res.cmd, res.returncode, res.stdout.replace(str(copy), config.name), res.stderr.replace(str(copy), config.name))


def _panels(panels: list[dict]):
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels") or [])  # collapsed rows keep their panels inside


def dashboard_exprs(dashboard: Path = DASHBOARD) -> list[tuple[str, str]]:
    """(``panel title / refId``, expr) of every panel target with a PromQL expression."""
    doc = json.loads(dashboard.read_text())
    out = []
    for panel in _panels(doc.get("panels") or []):
        for target in panel.get("targets") or []:
            expr = (target.get("expr") or "").strip()
            if expr:
                out.append((f"{panel.get('title', '?')} / {target.get('refId', '?')}", expr))
    return out


_VARIABLE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\[\[(\w+)(?::[^\]]*)?\]\]|\$(\w+)")


def concrete(expr: str) -> str:
    """``expr`` with Grafana's variables replaced: durations for the interval / range ones, a
    match-all regex for template variables."""
    def sub(m: re.Match) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        return GRAFANA_DURATIONS.get(name, MATCH_ALL)
    return _VARIABLE.sub(sub, expr)


def dashboard_rules(exprs: list[tuple[str, str]]) -> dict:
    rules = [{"record": f"dashboard:expr_{i}", "expr": concrete(expr), "labels": {"panel": where}}
             for i, (where, expr) in enumerate(exprs, 1)]
    return {"groups": [{"name": "grafana-dashboard-exprs", "rules": rules}]}


def check_dashboard(promtool: Path, dashboard: Path = DASHBOARD) -> Result:
    exprs = dashboard_exprs(dashboard)
    if not exprs:
        return Result(["dashboard_exprs", str(dashboard)], 1, "", f"no PromQL expression found in {dashboard}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dashboard-exprs.yml"
        path.write_text(yaml.safe_dump(dashboard_rules(exprs), sort_keys=False))
        res = check_rules(promtool, path)
    return Result(res.cmd, res.returncode, res.stdout.replace(str(path), f"{dashboard.name} (as recording rules)"),
                  res.stderr.replace(str(path), f"{dashboard.name} (as recording rules)"))


def checks(promtool: Path) -> list[tuple[str, Result]]:
    rel = lambda p: p.relative_to(REPO_ROOT)  # noqa: E731
    return [
        (f"promtool check rules {rel(ALERTS)}", check_rules(promtool)),
        (f"promtool test rules {rel(ALERTS_TEST)}", run_rule_tests(promtool)),
        (f"promtool check config {rel(CONFIG)} (rule_files {CONTAINER_ALERTS} -> {rel(ALERTS)})", check_config(promtool)),
        (f"promtool check rules <every PromQL expr of {rel(DASHBOARD)}>", check_dashboard(promtool)),
    ]


def main() -> int:
    try:
        promtool = ensure_promtool()
        results = checks(promtool)
    except ToolError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"$ {promtool} --version\n{run([str(promtool), '--version']).output.splitlines()[0]}")
    failed = []
    for title, res in results:
        print(f"\n$ {title}\n{res.output}")
        if res.returncode != 0:
            failed.append(title)
    if failed:
        print("\nprometheus checks FAILED:\n" + "\n".join(f"  - {t}" for t in failed), file=sys.stderr)
        return 1
    print("\nprometheus checks: all passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
