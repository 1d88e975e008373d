"""Narrow tests of the shared server plumbing, in-process (a real grpc.aio server on a free port)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from common.grpc_server import ServerInterceptor, ServiceMetrics
from common.proto.recsys.v1 import ranking_pb2, ranking_pb2_grpc
from common.telemetry import TelemetrySettings


class Exploding(ranking_pb2_grpc.RankingServiceServicer):
    async def Rank(self, request, context):
        if request.user_id == "bad":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad user")
        raise RuntimeError("a bug")


async def _call_exploding(user_id: str, metrics: ServiceMetrics):
    server = grpc.aio.server(interceptors=[ServerInterceptor(metrics)])
    ranking_pb2_grpc.add_RankingServiceServicer_to_server(Exploding(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = ranking_pb2_grpc.RankingServiceStub(channel)
            try:
                await stub.Rank(ranking_pb2.RankRequest(user_id=user_id), timeout=5)
            except grpc.aio.AioRpcError as exc:
                return exc.code(), exc.details()
            return grpc.StatusCode.OK, ""
    finally:
        await server.stop(0)


def _count(metrics: ServiceMetrics, code: str) -> float:
    return metrics.registry.get_sample_value(
        "recsys_grpc_server_handling_seconds_count", {"service": "t", "method": "Rank", "code": code}) or 0.0


def test_unexpected_exception_becomes_internal_and_is_logged(caplog):
    metrics = ServiceMetrics("t")
    code, details = asyncio.run(_call_exploding("x", metrics))
    assert code == grpc.StatusCode.INTERNAL
    assert "a bug" not in details  # no internals leak to the client
    assert any("a bug" in (r.exc_text or "") for r in caplog.records)
    assert _count(metrics, "INTERNAL") == 1


def test_abort_keeps_its_code_and_message():
    metrics = ServiceMetrics("t")
    code, details = asyncio.run(_call_exploding("bad", metrics))
    assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, "bad user")
    assert _count(metrics, "INVALID_ARGUMENT") == 1


class _ExpiredContext:
    """A call whose deadline passed and whose client is gone: sending a status fails, as grpc's
    ``execute_batch`` does then (seen under load: the wrapper then aborted twice, UsageError)."""

    def __init__(self) -> None:
        self.aborts = 0

    def time_remaining(self) -> float:
        return -0.001

    async def abort(self, code, details):
        self.aborts += 1
        raise RuntimeError('Failed "execute_batch"')

    def code(self):
        return None


def test_an_expired_call_whose_client_is_gone_is_dropped_without_a_second_abort():
    metrics = ServiceMetrics("t")
    called = []

    async def rank(request, context):
        called.append(request)

    handler = grpc.unary_unary_rpc_method_handler(rank)
    wrapped = ServerInterceptor(metrics)._wrap("/recsys.v1.RankingService/Rank", handler)
    ctx = _ExpiredContext()
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(wrapped.unary_unary(ranking_pb2.RankRequest(), ctx))
    assert ctx.aborts == 1 and not called
    assert _count(metrics, "CANCELLED") == 1


@pytest.mark.parametrize(
    ("env", "enabled"),
    [
        ({}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317", "OTEL_TRACES_EXPORTER": "none"}, False),
    ],
)
def test_tracing_is_off_unless_asked_for(monkeypatch, env, enabled):
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert TelemetrySettings().enabled is enabled


class _DownReader:
    def user_features(self, user_id):
        raise ConnectionError("redis is down")

    def item_features(self, item_ids):
        raise ConnectionError("redis is down")


def test_feature_fetcher_degrades_to_defaults_when_the_online_store_fails():
    import numpy as np

    from services.features import FeatureFetcher, parse_user_id

    metrics = ServiceMetrics("t")
    fetcher = FeatureFetcher(_DownReader(), metrics)
    user = fetcher.user(42)
    assert user.values == {} and user.all_missing
    items = fetcher.items(np.array([1, 2, 3]))
    assert items.values == {} and items.missing.tolist() == [True, True, True]
    get = metrics.registry.get_sample_value
    assert get("recsys_feature_errors_total", {"service": "t", "entity": "user"}) == 1
    assert get("recsys_feature_errors_total", {"service": "t", "entity": "item"}) == 1
    assert [parse_user_id(s) for s in ("42", " 7 ", "-1", "abc", "1" * 19, "")] == [42, 7, None, None, None, None]
