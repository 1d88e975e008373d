"""The gateway's channel configuration (services.gateway.channels) and the servers' connection
age (common.grpc_server): what gRPC is told, checked as the JSON and options it receives. The
behaviour they produce (calls spread over replicas, a dead one left out, a new one found) is
tested on real processes in tests/integration/test_replicas.py."""

from __future__ import annotations

import grpc
import pytest

from common.grpc_server import connection_age_options
from services.gateway.channels import SERVICE_NAMES, channel_options, service_config


def test_round_robin_health_checked_with_one_retry_on_unavailable():
    config = service_config(SERVICE_NAMES["retrieval"], lb_policy="round_robin", health_check=True,
                            retry_unavailable=True)
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    assert config["healthCheckConfig"] == {"serviceName": ""}
    (method,) = config["methodConfig"]
    assert method["name"] == [{"service": "recsys.v1.RetrievalService"}]
    assert method["retryPolicy"]["maxAttempts"] == 2
    assert method["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]  # never DEADLINE_EXCEEDED
    assert config["retryThrottling"]["maxTokens"] > 0


def test_switches_leave_their_part_out():
    config = service_config(SERVICE_NAMES["ranking"], lb_policy="pick_first", health_check=False,
                            retry_unavailable=False)
    assert config == {"loadBalancingConfig": [{"pick_first": {}}]}
    options = dict(channel_options(SERVICE_NAMES["ranking"], lb_policy="pick_first", health_check=False,
                                   retry_unavailable=False))
    assert options["grpc.enable_retries"] == 0


def test_the_options_are_accepted_by_a_real_channel():
    """gRPC fails every call of a channel whose service config it cannot parse; these calls pass
    (a real server with the standard health service, behind a ``dns:///`` target)."""
    from concurrent import futures

    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    options = channel_options(SERVICE_NAMES["ranking"], lb_policy="round_robin", health_check=True,
                              retry_unavailable=True)
    assert dict(options)["grpc.service_config_disable_resolution"] == 1
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"dns:///127.0.0.1:{port}", options=options) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        server.stop(0)


@pytest.mark.parametrize(("age", "grace", "expected"), [
    (60.0, 10.0, {"grpc.max_connection_age_ms": 60_000, "grpc.max_connection_age_grace_ms": 10_000}),
    (2.0, 0.2, {"grpc.max_connection_age_ms": 2_000, "grpc.max_connection_age_grace_ms": 1_000}),
    (0.0, 10.0, {}),
])
def test_connection_age(age, grace, expected):
    assert dict(connection_age_options(age, grace)) == expected
