"""Helpers for services run as several replicas each (tests/e2e/test_replicas.py), on faultkit's machinery: a
fleet whose processes are replicas ("requests-1", "requests-2", ...) on free ports, each with its metrics port
and told every replica's gRPC address (as `mieux up --replicas N` does on fixed ports, services/ops/up.py), and
what their metrics and the bus say.

Only processes started here are ever signalled (by their pid), and every one is stopped by `Run.stop()`.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
from faultkit import Fleet, Run, clean_environ, connect
from support import Metrics, read_topic, scrape

from services.kernel.envelope import topic_for
from services.kernel.settings import Settings
from services.ops.catalog import CONTEXTS
from services.ops.devstack import free_port


class ReplicaFleet(Fleet):
    """`replicas` processes per service, named "<service>-<k>"; Fleet's start, kill, wait and logs per process."""

    def __init__(self, logs: Path, env: dict[str, str], replicas: int, services: tuple[str, ...] = CONTEXTS) -> None:
        self.logs = logs
        self.of = {f"{s}-{k + 1}": s for s in services for k in range(replicas)}
        self.services = tuple(self.of)  # the processes: what Fleet and faultkit's checks iterate
        self.ports = {p: free_port() for p in self.services}
        self.metrics_ports = {p: free_port() for p in self.services}
        self.addrs = {
            f"MIEUX_{s.upper()}_ADDR": "ipv4:" + ",".join(self.address(p) for p in self.replicas(s)) for s in services
        }
        self.env = {**env, **self.addrs, "MIEUX_LOG_LEVEL": env.get("MIEUX_LOG_LEVEL", "WARNING")}
        self.procs = {}
        self.killed = []

    def replicas(self, service: str) -> list[str]:
        return [p for p, s in self.of.items() if s == service]

    def start(self, service: str) -> None:
        """Start the replica `service` (a process name) on its ports."""
        name, svc = service, self.of[service]
        self.logs.mkdir(parents=True, exist_ok=True)
        env = {
            **self.env,
            f"MIEUX_{svc.upper()}_PORT": str(self.ports[name]),
            "MIEUX_METRICS_PORT": str(self.metrics_ports[name]),
        }
        with open(self.log(name), "ab") as out:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", f"services.{svc}"], env=env, stdout=out, stderr=subprocess.STDOUT
            )

    async def scrape(self, name: str) -> Metrics:
        """A replica's metrics: (sample name, its labels) -> value."""
        return await scrape(self.metrics_ports[name], timeout=2)

    async def metric(self, name: str, sample: str, **labels: str) -> float:
        """One sample of a replica's metrics (0 when it has none, or does not answer: killed, starting)."""
        try:
            return (await self.scrape(name)).get((sample, frozenset(labels.items())), 0.0)
        except OSError:
            return 0.0

    async def relay_active(self, service: str) -> dict[str, float]:
        """mieux_relay_active of each replica of `service`."""
        return {p: await self.metric(p, "mieux_relay_active", service=service) for p in self.replicas(service)}

    async def partitions(self, service: str, group: str) -> dict[str, float]:
        """mieux_consumer_partitions of `group` on each replica of `service`."""
        return {p: await self.metric(p, "mieux_consumer_partitions", group=group) for p in self.replicas(service)}

    async def calls(self, service: str) -> dict[str, float]:
        """gRPC calls each replica of `service` answered (since it last started), every method together."""
        out = {}
        for p in self.replicas(service):
            m = await self.scrape(p)
            out[p] = sum(v for (n, _), v in m.items() if n == "mieux_grpc_calls_total")
        return out


@dataclass
class ReplicaRun(Run):
    """faultkit.Run with `replicas` processes per service."""

    replicas: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        env = {**clean_environ(), "MIEUX_HOME": str(self.stack.home)}
        self.fleet = ReplicaFleet(self.home / "logs", env, self.replicas, self.services)


async def topics_hold_the_stores(settings: Settings) -> dict[str, dict[str, Any]]:
    """Per service: events in its store, how many of them are on its topic (all, unless one was lost), and the
    extra copies there (at-least-once: a relay that died republishes from its last checkpoint)."""
    conn: asyncpg.Connection = await connect(settings)
    try:
        stored: dict[str, set] = {}
        for ctx in CONTEXTS:
            if await conn.fetchval("SELECT to_regclass($1)", f"{ctx}.events") is not None:
                stored[ctx] = {str(r["event_id"]) for r in await conn.fetch(f"SELECT event_id FROM {ctx}.events")}
    finally:
        await conn.close()
    out: dict[str, dict[str, Any]] = {}
    for ctx, ids in stored.items():
        if not ids:
            continue
        seen = await read_topic(settings, topic_for(ctx), lambda s, ids=ids: ids <= {str(e.event_id) for e in s}, 60)
        on_topic = [str(e.event_id) for e in seen]
        out[ctx] = {
            "stored": len(ids),
            "published": len(ids & set(on_topic)),
            "copies": len(on_topic) - len(set(on_topic)),
        }
    return out
