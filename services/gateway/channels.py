"""The gateway's gRPC channels to retrieval and ranking: one channel per service, N replicas behind it.

A service address is any gRPC target: ``host:port`` (one replica, or every address the name
resolves to), ``dns:///retrieval:50051`` (a DNS name with several A records: docker compose
``--scale``, a Kubernetes headless Service), or a static list ``ipv4:10.0.0.1:50051,10.0.0.2:50051``.
The channel spreads calls over every address with gRPC's client-side ``round_robin`` and keeps a
replica in the rotation only while its standard health service (``grpc.health.v1``, service ``""``)
answers SERVING: a replica that is loading a bundle, draining on SIGTERM or dead leaves the rotation
without a failed call (health watch), and comes back when it reports SERVING again.

New replicas are found when the name is resolved again: gRPC re-resolves when a connection closes,
which the services force every ``*_MAX_CONNECTION_AGE_S`` (``common.grpc_server``), so a scale-up is
picked up within that age without restarting the gateway.

A call that fails with UNAVAILABLE before any replica took it (the connection of a replica killed a
moment ago) is retried once on another replica when ``GATEWAY_GRPC_RETRY_UNAVAILABLE`` is on; the
retry stays within the call's own deadline, and gRPC's retry throttling stops retries when most calls
fail (a dependency that is down is the fallback ladder's job, not a retry storm's).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import grpc

# Come back quickly after a dependency restarts (the default backoff grows to 120 s).
RECONNECT_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # gRPC's DNS resolver waits 30 s between re-resolutions by default: a replica added by a
    # scale-up would wait that long after its name first changed; 5 s is cheap (one DNS query).
    ("grpc.dns_min_time_between_resolutions_ms", 5000),
]

SERVICE_NAMES = {"retrieval": "recsys.v1.RetrievalService", "ranking": "recsys.v1.RankingService"}


def service_config(service_full_name: str, *, lb_policy: str, health_check: bool, retry_unavailable: bool) -> dict:
    """The gRPC service config of one channel (``grpc.service_config``)."""
    config: dict = {"loadBalancingConfig": [{lb_policy: {}}]}
    if health_check:
        # "" = the server's overall health: NOT_SERVING while loading and while shutting down
        config["healthCheckConfig"] = {"serviceName": ""}
    if retry_unavailable:
        config["methodConfig"] = [{
            "name": [{"service": service_full_name}],
            "retryPolicy": {"maxAttempts": 2, "initialBackoff": "0.005s", "maxBackoff": "0.02s",
                            "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]},
        }]
        # a retry costs a token, a success gives back 0.1: retries stop once > ~half the calls fail
        config["retryThrottling"] = {"maxTokens": 10, "tokenRatio": 0.1}
    return config


def channel_options(service_full_name: str, *, lb_policy: str, health_check: bool,
                    retry_unavailable: bool) -> list[tuple[str, object]]:
    config = service_config(service_full_name, lb_policy=lb_policy, health_check=health_check,
                            retry_unavailable=retry_unavailable)
    return [*RECONNECT_OPTIONS,
            ("grpc.enable_retries", 1 if retry_unavailable else 0),
            ("grpc.service_config", json.dumps(config)),
            # the target's own service config (DNS TXT records) must not override ours
            ("grpc.service_config_disable_resolution", 1)]


def open_channels(settings, interceptors: Sequence | None = None) -> dict[str, grpc.aio.Channel]:
    """One channel per service, connecting now (not on the first request)."""
    targets = {"retrieval": settings.retrieval_addr, "ranking": settings.ranking_addr}
    channels = {}
    for name, target in targets.items():
        options = channel_options(SERVICE_NAMES[name], lb_policy=settings.grpc_lb_policy,
                                  health_check=settings.grpc_health_check,
                                  retry_unavailable=settings.grpc_retry_unavailable)
        channels[name] = channel = grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
        channel.get_state(try_to_connect=True)
    return channels
