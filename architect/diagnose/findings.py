"""What ``diagnose`` reports: findings, worst first, each linked to its runbook section."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

CRITICAL, WARNING, INFO = "critical", "warning", "info"
SEVERITY_RANK = {CRITICAL: 0, WARNING: 1, INFO: 2}
RUNBOOK = "docs/runbook.md"

# kind -> the runbook section (its heading's anchor) that explains it: symptom, command, remediation
KINDS: dict[str, str] = {
    "unreachable": "unreachable-component",
    "breaker_open": "open-breakers",
    "fallbacks": "fallbacks",
    "latency": "tail-latency",
    "bulkhead": "bulkhead-waiting-and-shedding",
    "cpu_saturation": "cpu-saturation",
    "events_lag": "events-lag-and-freshness",
    "stale_features": "stale-features",
    "missing_features": "missing-features",
    "model_skew": "model-version-skew",
    "model_age": "model-age",
    "gc_pauses": "gc-pauses",
    "cache": "cache-hit-rate",
    "traffic": "too-little-traffic",
}


@dataclass
class Evidence:
    metric: str
    value: float | str | None
    threshold: float | str | None = None
    unit: str = ""

    def text(self) -> str:
        v = _fmt(self.value, self.unit)
        return f"{self.metric} = {v}" + (f" (threshold {_fmt(self.threshold, self.unit)})" if self.threshold is not None else "")


def _fmt(x: Any, unit: str) -> str:
    if isinstance(x, float):
        if unit == "%":
            return f"{x * 100:.1f} %"
        if unit == "ms":
            return f"{x:.1f} ms"
        if unit == "s":
            return f"{x:.3g} s" if x < 10 else f"{x:,.1f} s" if x < 3600 else f"{x / 3600:,.1f} h"
        if unit == "days":
            return f"{x:,.1f} days"
        if unit == "cores":
            return f"{x:.2f} cores"
        return f"{x:,.3g}" if abs(x) < 1000 else f"{x:,.0f}"
    return f"{x}{' ' + unit if unit and x is not None else ''}"


@dataclass
class Finding:
    severity: str
    kind: str
    component: str
    title: str
    evidence: list[Evidence]
    remediation: str
    data: dict[str, Any] = field(default_factory=dict)  # numbers a machine may want (replicas, rates)
    score: float = 0.0  # within a severity: how far past its threshold (larger = worse)

    def __post_init__(self) -> None:
        if self.severity not in SEVERITY_RANK:
            raise ValueError(f"unknown severity {self.severity!r}")
        if self.kind not in KINDS:
            raise ValueError(f"unknown finding kind {self.kind!r}")

    @property
    def runbook(self) -> str:
        return f"{RUNBOOK}#{KINDS[self.kind]}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["runbook"] = self.runbook
        d.pop("score")
        return d


def ordered(findings: list[Finding]) -> list[Finding]:
    """Worst first: severity, then how far past the threshold."""
    return sorted(findings, key=lambda f: (SEVERITY_RANK[f.severity], -f.score))
