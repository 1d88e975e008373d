"""Real retrieval and ranking processes on free ports, reading a real Redis with the bundle's
features materialised by Feast (``feature_store.store``).

Each module-scoped server is watched from the moment its port opens (``Health.Watch``), so the
tests can check the NOT_SERVING -> SERVING transition of the very process they call, and the
last test of a module stops it with SIGTERM.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.harness import SERVICE_STOP_TIMEOUT_S, feast_settings, materialise, service_env, spawn_service
from common.net import wait_for_port
from common.settings import FeatureStoreSettings
from deploy.local import Stack

SERVICES = {"retrieval": "recsys.v1.RetrievalService", "ranking": "recsys.v1.RankingService"}
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
FAST = {"RETRIEVAL_WARMUP_REQUESTS": "200", "RANKING_WARMUP_REQUESTS": "100",
        "RETRIEVAL_GRACE_PERIOD_S": "1", "RANKING_GRACE_PERIOD_S": "1"}


class Watcher:
    """Collects the statuses a ``Health.Watch`` stream reports, in a thread."""

    def __init__(self, address: str, service: str) -> None:
        self.statuses: list[int] = []
        self.ended = threading.Event()
        self._channel = grpc.insecure_channel(address)
        self._stream = health_pb2_grpc.HealthStub(self._channel).Watch(
            health_pb2.HealthCheckRequest(service=service), timeout=600)
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        try:
            for msg in self._stream:
                self.statuses.append(msg.status)
        except grpc.RpcError:
            pass
        finally:
            self.ended.set()

    def wait_for(self, status: int, timeout: float, after: int = 0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if status in self.statuses[after:]:
                return True
            if self.ended.is_set():
                return status in self.statuses[after:]
            time.sleep(0.02)
        return False

    def close(self) -> None:
        self._stream.cancel()
        self._channel.close()


@dataclass
class Running:
    name: str
    address: str
    metrics_port: int
    proc: subprocess.Popen
    log: Path
    watcher: Watcher

    def check_health_transition(self) -> None:
        """The process was NOT_SERVING while loading, then SERVING."""
        assert self.watcher.statuses[:2] == [NOT_SERVING, SERVING], self.watcher.statuses

    def check_sigterm(self) -> None:
        """SIGTERM: health turns NOT_SERVING, the process exits 0 within the grace period."""
        seen = len(self.watcher.statuses)
        self.proc.send_signal(signal.SIGTERM)
        assert self.watcher.wait_for(NOT_SERVING, timeout=10, after=seen), self.watcher.statuses
        assert self.proc.wait(timeout=30) == 0
        text = self.log.read_text()
        assert f"{self.name}: shutting down" in text and f"{self.name}: stopped" in text


@pytest.fixture(scope="session")
def services_feast(redis_url: str, bundle_path: Path, tmp_path_factory: pytest.TempPathFactory) -> FeatureStoreSettings:
    """Feast settings (private registry) whose Redis holds every view, materialised once."""
    settings = feast_settings(redis_url, tmp_path_factory.mktemp("services-feast"))
    materialise(settings)
    return settings


@pytest.fixture(scope="session")
def services_env(services_feast: FeatureStoreSettings, bundle_path: Path) -> dict[str, str]:
    return service_env(services_feast, bundle_path, FAST)


def _running(name: str, env: dict[str, str], tmp: Path) -> Iterator[Running]:
    stack = Stack(tmp)
    proc, port, metrics_port = spawn_service(stack, name, env)
    log = stack.log_path(name)
    watcher = None
    try:
        # 5 ms polls: the watcher must attach while the server still says NOT_SERVING
        wait_for_port(port, timeout=60, proc=proc, interval=0.005)
        watcher = Watcher(f"127.0.0.1:{port}", SERVICES[name])
        if not watcher.wait_for(SERVING, timeout=180):
            raise RuntimeError(f"{name} never SERVING ({watcher.statuses}):\n{log.read_text()[-3000:]}")
        yield Running(name, f"127.0.0.1:{port}", metrics_port, proc, log, watcher)
    finally:
        if watcher is not None:
            watcher.close()
        stack.stop(name, timeout=SERVICE_STOP_TIMEOUT_S)


@pytest.fixture(scope="module")
def retrieval(services_env, tmp_path_factory) -> Iterator[Running]:
    yield from _running("retrieval", services_env, tmp_path_factory.mktemp("retrieval"))


@pytest.fixture(scope="module")
def ranking(services_env, tmp_path_factory) -> Iterator[Running]:
    yield from _running("ranking", services_env, tmp_path_factory.mktemp("ranking"))


@pytest.fixture(scope="module")
def retrieval_stub(retrieval: Running):
    from common.proto.recsys.v1 import retrieval_pb2_grpc

    with grpc.insecure_channel(retrieval.address) as channel:
        yield retrieval_pb2_grpc.RetrievalServiceStub(channel)


@pytest.fixture(scope="module")
def ranking_stub(ranking: Running):
    from common.proto.recsys.v1 import ranking_pb2_grpc

    with grpc.insecure_channel(ranking.address) as channel:
        yield ranking_pb2_grpc.RankingServiceStub(channel)
