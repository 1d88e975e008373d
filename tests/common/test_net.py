"""common.net: free ports and waiting for a listener (no stack needed)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from common.net import ProcessExited, free_port, port_in_use, wait_for_port


def test_free_port_is_bindable_and_not_listening():
    port = free_port()
    assert 0 < port < 65536 and not port_in_use(port)
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_wait_for_port_returns_once_something_listens():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert port_in_use(port)
        wait_for_port(port, timeout=1)


def test_wait_for_port_times_out():
    t = time.monotonic()
    with pytest.raises(TimeoutError, match="nothing listening"):
        wait_for_port(free_port(), timeout=0.2)
    assert time.monotonic() - t < 2


def test_wait_for_port_reports_an_exited_process_at_once():
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    proc.wait(timeout=30)
    with pytest.raises(ProcessExited, match="exited with 3"):
        wait_for_port(free_port(), timeout=30, proc=proc)
