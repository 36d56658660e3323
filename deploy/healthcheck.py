"""Container health check: exit 0 when the gRPC server on localhost:<port> answers SERVING to the standard
health check (grpc.health.v1.Health/Check, the overall service ""), 1 otherwise.

    python /opt/mieux/healthcheck.py 50050

<port> is the service's plaintext health port (MIEUX_GRPC_HEALTH_PORT), which serves health alone: its gRPC
port speaks TLS only. Kubernetes probes that port natively; compose has no gRPC probe, so the image ships
this script.
"""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(address: str, timeout: float = 3.0) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].isdigit():
        print("usage: healthcheck.py PORT", file=sys.stderr)
        return 2
    return 0 if check(f"127.0.0.1:{argv[0]}") else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
