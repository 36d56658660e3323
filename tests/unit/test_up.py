"""`mieux up --replicas N` (services/ops/up.py): each replica on ports of its own, every client told every
replica's address, and a target listing several addresses balanced over them (grpckit.channel)."""

from __future__ import annotations

import argparse

import pytest

from services.kernel.grpckit import BALANCED, balanced
from services.kernel.settings import SERVICE_PORTS
from services.ops import catalog, up
from services.ops.cli import main


def test_every_replica_of_every_service_has_ports_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    for svc in SERVICE_PORTS:
        monkeypatch.delenv(f"MIEUX_{svc.upper()}_PORT", raising=False)
    taken: list[int] = []
    for svc in catalog.CONTEXTS:
        for k in range(9):
            ports = up.replica_ports(svc, k)
            taken += ports.values()
            assert set(ports) == ({"grpc", "metrics", "http"} if svc == "stats" else {"grpc", "metrics"})
    assert len(taken) == len(set(taken)), "two processes on one port"
    # the first replica is where a single process always was
    assert {svc: up.replica_ports(svc, 0)["grpc"] for svc in SERVICE_PORTS} == SERVICE_PORTS
    assert up.replica_ports("stats", 0)["http"] == 8056


def test_each_replica_is_told_its_ports_and_every_replicas_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MIEUX_REQUESTS_PORT", raising=False)
    assert up.addresses("requests", 1) == "127.0.0.1:50051"
    assert up.addresses("requests", 2) == "ipv4:127.0.0.1:50051,127.0.0.1:50151"
    env = up.replica_env({"MIEUX_REQUESTS_ADDR": up.addresses("requests", 2)}, "requests", 1)
    assert env["MIEUX_REQUESTS_PORT"] == "50151" and env["MIEUX_METRICS_PORT"] == "9551"
    assert env["MIEUX_REQUESTS_ADDR"] == "ipv4:127.0.0.1:50051,127.0.0.1:50151"
    assert up.replica_env({}, "stats", 1)["MIEUX_STATS_HTTP_PORT"] == "8156"


def test_a_list_of_addresses_is_balanced_and_named_after_its_first() -> None:
    assert balanced("127.0.0.1:50051") == BALANCED
    assert dict(BALANCED)["grpc.lb_policy_name"] == "round_robin"
    # a replica that comes back is tried again within seconds, not gRPC's default of up to 120 s
    assert dict(BALANCED)["grpc.max_reconnect_backoff_ms"] <= 2000
    assert balanced("mieux-requests:50051") == BALANCED  # a DNS name: every address it resolves to
    assert dict(balanced("ipv4:127.0.0.1:50051,127.0.0.1:50151")) == {
        **dict(BALANCED),
        "grpc.default_authority": "127.0.0.1:50051",
    }


def test_up_takes_a_number_of_replicas(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    monkeypatch.setattr(up, "cmd_up", lambda args: seen.append(args.replicas) or 0)
    assert main(["up"]) == 0 and main(["up", "--replicas", "2"]) == 0
    assert seen == [1, 2]
    with pytest.raises(argparse.ArgumentTypeError):
        up.positive("0")
