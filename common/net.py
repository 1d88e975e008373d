"""Loopback port helpers for the process managers, tests and benchmarks (``deploy.local``,
``benchmarks.harness``, the test fixtures): pick a free port, ask whether one listens, wait for it.

Only ``socket``: cheap to import from anywhere, no side effects.
"""

from __future__ import annotations

import socket
import subprocess
import time

LOOPBACK = "127.0.0.1"


class ProcessExited(RuntimeError):
    """The process that should open the port exited first."""


def free_port(host: str = LOOPBACK) -> int:
    """A port nothing listens on right now (the OS picks it; another process may take it later)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_in_use(port: int, host: str = LOOPBACK, timeout: float = 0.2) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    with socket.socket() as s:
        s.settimeout(timeout)
        return s.connect_ex((host, port)) == 0


def wait_for_port(port: int, timeout: float = 20.0, host: str = LOOPBACK, *,
                  proc: subprocess.Popen | None = None, interval: float = 0.05) -> None:
    """Return once ``host:port`` accepts connections.

    Raises :class:`ProcessExited` when ``proc`` (the process expected to listen) exits first, so
    a crash is reported at once instead of after ``timeout``; ``TimeoutError`` after ``timeout``.
    A short ``interval`` matters to callers that must see a server in its first milliseconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ProcessExited(f"process exited with {proc.returncode} before listening on {host}:{port}")
        if port_in_use(port, host):
            return
        time.sleep(interval)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")
