"""Container healthcheck: exit 0 when the service answers healthy, 1 otherwise.

    python deploy/healthcheck.py grpc 127.0.0.1:50051 [service]   # grpc.health.v1 Check == SERVING
    python deploy/healthcheck.py http http://127.0.0.1:8000/readyz  # HTTP 2xx

Used by the HEALTHCHECK of the images in deploy/Dockerfile (stdlib + grpcio-health-checking
only, so it runs in the serving images without the service's own code).
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

TIMEOUT_S = 2.0


def check_grpc(target: str, service: str = "") -> str | None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT_S)
        except grpc.RpcError as exc:
            return f"{target}: {exc.code().name} {exc.details() or ''}".strip()
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        return f"{target}: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}"
    return None


def check_http(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp:  # noqa: S310 (fixed local URL)
            if 200 <= resp.status < 300:
                return None
            return f"{url}: HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        return f"{url}: HTTP {exc.code} {exc.read(200).decode(errors='replace')}"
    except (urllib.error.URLError, OSError) as exc:
        return f"{url}: {exc}"


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in {"grpc", "http"}:
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        print("usage: healthcheck.py grpc HOST:PORT [SERVICE] | http URL", file=sys.stderr)
        return 2
    error = check_grpc(argv[1], *argv[2:3]) if argv[0] == "grpc" else check_http(argv[1])
    if error:
        print(f"unhealthy: {error}", file=sys.stderr)
        return 1
    print("healthy")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
