"""What the offline checks of deploy/ (``deploy.helm.chartcheck``, ``deploy.prometheus.promcheck``)
share: the error of a tool that cannot be had or checked, and running a pinned binary."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass


class ToolError(RuntimeError):
    """A pinned tool could not be fetched or verified, or a check it ran failed to start."""


@dataclass(frozen=True)
class Result:
    cmd: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return (self.stdout + self.stderr).strip()


def run(cmd: list[str], **kw) -> Result:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)
    return Result(cmd, proc.returncode, proc.stdout, proc.stderr)
