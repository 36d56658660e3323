"""`mieux up [--replicas N]`: the dev stack and every service in the foreground, N processes per service.

Replica k (0-based) of a service listens on its ports shifted by REPLICA_STEP * k: gRPC (SERVICE_PORTS, so the
first replica is where a single one always was), Prometheus metrics (METRICS_BASE + the gRPC port's last
digits: 9451 for requests' first replica) and, for stats, the report pages (STATS_HTTP_PORT). Every process is
told every replica's gRPC address (MIEUX_<SERVICE>_ADDR, "ipv4:127.0.0.1:50051,127.0.0.1:50151"), which the
clients balance over (grpckit.channel: round_robin), so a command goes to either replica. A service's replicas
run the same consumer groups, which split the topics' partitions between them; one relay publishes
(relay.py: the others are standbys that take over when it dies).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal

from rich.console import Console
from rich.table import Table

from services.kernel.settings import Settings, service_port
from services.ops import catalog

console = Console()

REPLICA_STEP = 100  # replica k: every port + 100 * k
METRICS_BASE = 9400  # a replica's metrics port: 9400 + (its gRPC port - 50000)
STATS_HTTP_PORT = 8056  # the stats service's report pages (GET /reports/YEAR), of its first replica


def replica_ports(service: str, replica: int) -> dict[str, int]:
    """The ports of replica `replica` (0-based) of `service`: grpc, metrics and (stats) http."""
    grpc = service_port(service) + REPLICA_STEP * replica
    ports = {"grpc": grpc, "metrics": METRICS_BASE + grpc - 50000}
    if service == "stats":
        ports["http"] = STATS_HTTP_PORT + REPLICA_STEP * replica
    return ports


def addresses(service: str, replicas: int) -> str:
    """The gRPC target of every replica of `service`: one address, or a balanced list of them."""
    hosts = [f"127.0.0.1:{replica_ports(service, k)['grpc']}" for k in range(replicas)]
    return hosts[0] if replicas == 1 else "ipv4:" + ",".join(hosts)


def replica_env(base: dict[str, str], service: str, replica: int) -> dict[str, str]:
    """The environment of one replica: `base` (with every service's MIEUX_<SERVICE>_ADDR) and its own ports."""
    ports = replica_ports(service, replica)
    env = {
        **base,
        f"MIEUX_{service.upper()}_PORT": str(ports["grpc"]),
        "MIEUX_METRICS_PORT": str(ports["metrics"]),
    }
    if "http" in ports:
        env["MIEUX_STATS_HTTP_PORT"] = str(ports["http"])
    return env


def cmd_up(args: argparse.Namespace) -> int:
    """The whole stack in the foreground: the dev stack and every service's replicas on their fixed ports."""
    from services.ops.devstack import DevStack
    from services.ops.processes import Processes, serving

    replicas: int = args.replicas
    names = list(catalog.CONTEXTS)
    # one name per process: "requests" alone, or "requests-1", "requests-2", ...
    procs_of = {(n if replicas == 1 else f"{n}-{k + 1}"): (n, k) for n in names for k in range(replicas)}

    async def go() -> int:
        home = Settings().mieux_home.resolve()
        stack = DevStack(home)
        ours = not all(stack.status().values())
        stack.up()
        base = {**os.environ, "MIEUX_HOME": str(home)}
        base.update({f"MIEUX_{n.upper()}_ADDR": addresses(n, replicas) for n in names})
        procs = Processes()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            for proc, (n, k) in procs_of.items():
                await procs.start(n, replica_env(base, n, k), name=proc)
            deadline = loop.time() + 90
            waiting = set(procs_of)

            async def up(proc: str) -> bool:
                n, k = procs_of[proc]
                return await serving(f"127.0.0.1:{replica_ports(n, k)['grpc']}")

            while waiting and loop.time() < deadline and not stop.is_set() and not procs.exited():
                waiting = {p for p in waiting if not await up(p)}
                await asyncio.sleep(0.1)
            table = Table("process", "gRPC", "metrics", "health")
            for proc, (n, k) in procs_of.items():
                ports = replica_ports(n, k)
                health = "[red]not serving[/]" if proc in waiting else "[green]SERVING[/]"
                table.add_row(proc, f"127.0.0.1:{ports['grpc']}", f":{ports['metrics']}/metrics", health)
            console.print(table)
            if waiting or procs.exited():
                console.print(f"[red]not all services came up: {sorted(waiting) or procs.exited()}[/]")
                return 1
            console.print(
                f"all services up ({replicas} replica{'s' if replicas > 1 else ''} each; report pages on "
                f":{STATS_HTTP_PORT}); Ctrl-C or SIGTERM stops everything"
            )
            while not stop.is_set():
                if procs.exited():
                    console.print(f"[red]a service exited: {procs.exited()}[/]")
                    return 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
            return 0
        finally:
            await procs.stop()
            if ours:
                stack.down()
            console.print("stopped")

    return asyncio.run(go())


def positive(text: str) -> int:
    n = int(text)
    if not 1 <= n <= 9:  # replica 9's ports are the first's + 800: beyond, they would reach other services'
        raise argparse.ArgumentTypeError("between 1 and 9")
    return n


def register(sub: argparse._SubParsersAction) -> None:
    up = sub.add_parser("up", help="the dev stack and every service in the foreground (Ctrl-C stops all)")
    up.add_argument(
        "--replicas",
        type=positive,
        default=1,
        help="processes per service (default 1): they share its consumer groups, one relay publishes, and "
        "clients balance commands over them",
    )
    up.set_defaults(fn=cmd_up)
