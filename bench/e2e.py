"""Figure 3: end-to-end latency, command acknowledged -> read model updated, at a steady rate, with one
replica of the service and with two, one after the other in one run.

The requests service runs as its own process (`python -m services.requests`: gRPC, relay, projection
runner), or as two (`replicas=2`): the client balances its commands over both (round_robin, grpckit.channel),
their projection runners split the group's partitions, and one relay (the lock holder's) publishes what both
append: events appended by the other replica reach it by its poll (MIEUX_RELAY_POLL_INTERVAL_S), not by an
in-process wake-up. SubmitRequest commands go over gRPC on an open-loop schedule (one every 1/rate s, whether or not
earlier ones have been answered). The ack carries the event's position; one poller, every 2 ms, asks
which acknowledged positions have their `requests_per_year` tracking row, which is written in the same
transaction as the view. Latency = start of the first poll that sees the row - arrival of the ack: an
upper bound, with a resolution of the poll interval plus one query.

To see where the time goes, the relay's records are read back afterwards: their timestamps (set by the
relay's producer, ms resolution) split each latency into ack -> published and published -> visible (bus
+ projection runner). The service's CPU time per command is reported too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc

from bench.common import SAMPLE, cpu_seconds, new_id, percentile
from services.kernel import bus
from services.kernel.envelope import topic_for
from services.kernel.settings import Settings
from services.ops.devstack import DevStack, free_port
from services.requests.client import RequestsClient

POLL_INTERVAL = 0.002
START_TIMEOUT_S = 180.0  # the service's start, on a machine others may load
VISIBLE = (
    "SELECT e.position FROM requests.events e JOIN requests_projections.tracking t "
    "ON t.projection = 'requests_per_year' AND t.event_id = e.event_id WHERE e.position = ANY($1::bigint[])"
)


async def submit(client: RequestsClient, title: str) -> int:
    ack = await client.submit(
        command_id=new_id(),
        partner=SAMPLE["partner"],
        institution=SAMPLE["institution"],
        institution_type=SAMPLE["institution_type"],
        received_on=SAMPLE["received_on"],
        title=title,
        themes=SAMPLE["themes"],
    )
    return int(ack.position)


class Visibility:
    """Polls for acknowledged positions whose projection row is committed."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.acked: dict[int, float] = {}  # position -> ack time (perf_counter)
        self.ack_wall: dict[int, float] = {}  # position -> ack time (epoch s), to compare with the bus
        self.latency: dict[int, float] = {}  # position -> ack -> visible (s)
        self.drained = asyncio.Event()

    def add(self, position: int) -> None:
        self.acked[position] = time.perf_counter()
        self.ack_wall[position] = time.time()
        self.drained.clear()

    def reset(self) -> None:
        self.ack_wall.clear()
        self.latency.clear()

    async def run(self) -> None:
        while True:
            if self.acked:
                started = time.perf_counter()
                for row in await self.conn.fetch(VISIBLE, list(self.acked)):
                    position = row["position"]
                    self.latency[position] = started - self.acked.pop(position)
                if not self.acked:
                    self.drained.set()
            await asyncio.sleep(POLL_INTERVAL)


async def published_at(settings: Settings, positions: set[int]) -> dict[int, float]:
    """Position -> time the relay's producer created the record (epoch s, ms resolution)."""
    ends = await bus.end_offsets(settings, topic_for("requests"))
    consumer = bus.consumer(settings, group_id=None)
    await consumer.start()
    found: dict[int, float] = {}
    try:
        consumer.assign(list(ends))
        await consumer.seek_to_beginning(*ends)

        async def behind() -> bool:
            return any([await consumer.position(tp) < end for tp, end in ends.items()])

        while await behind():
            for msgs in (await consumer.getmany(timeout_ms=200)).values():
                for m in msgs:
                    position = json.loads(m.value)["position"]
                    if position in positions:
                        found.setdefault(position, m.timestamp / 1000)
    finally:
        await consumer.stop()
    return found


def spread(values: list[float]) -> dict[str, float]:
    ms = 1000.0
    return {"p50": percentile(values, 50) * ms, "p99": percentile(values, 99) * ms}


def breakdown(seen: Visibility, published: dict[int, float]) -> dict[str, dict[str, float]]:
    """Ack -> published by the relay, and published -> visible in the read model (bus + projection)."""
    relay, rest = [], []
    for position, latency in seen.latency.items():
        if position in published:
            relay.append(published[position] - seen.ack_wall[position])
            rest.append(seen.ack_wall[position] + latency - published[position])
    return {"ack_to_published_ms": spread(relay), "published_to_visible_ms": spread(rest)} if relay else {}


async def wait_serving(client: RequestsClient) -> None:
    """Retry one command until the service answers (it is starting); any other refusal is an error."""
    while True:
        try:
            await submit(client, "warm-up")
            return
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            await asyncio.sleep(0.2)


async def measure(settings: Settings, rate: int, duration: float, service_pids: list[int]) -> dict[str, Any]:
    conn = await asyncpg.connect(settings.dsn())
    seen = Visibility(conn)
    poller = asyncio.create_task(seen.run())
    try:
        async with RequestsClient.connect(settings) as client:
            async with asyncio.timeout(START_TIMEOUT_S):
                await wait_serving(client)
            # warm-up: the projection's consumer group has joined once a few commands are visible
            for i in range(20):
                seen.add(await submit(client, f"warm-up {i}"))
            async with asyncio.timeout(60):
                await seen.drained.wait()
            seen.reset()

            acks: list[float] = []
            errors = 0

            async def one(i: int) -> None:
                nonlocal errors
                sent = time.perf_counter()
                try:
                    position = await submit(client, f"bench {i}")
                except grpc.aio.AioRpcError:
                    errors += 1
                    return
                seen.add(position)
                acks.append(time.perf_counter() - sent)

            cpu_before = sum(cpu_seconds(pid) for pid in service_pids)
            start = time.perf_counter()
            tasks = []
            for i in range(int(rate * duration)):
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(i)))
            await asyncio.gather(*tasks)
            sent_rate = len(tasks) / (time.perf_counter() - start)
            service_cpu = sum(cpu_seconds(pid) for pid in service_pids) - cpu_before
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(30):
                    await seen.drained.wait()
    finally:
        poller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await poller
        await conn.close()
    lat = list(seen.latency.values())
    stages = breakdown(seen, await published_at(settings, set(seen.latency)))
    ms = 1000.0
    return {
        "rate": rate,
        "replicas": len(service_pids),
        "duration_s": duration,
        "achieved_rate": round(sent_rate, 1),
        "samples": len(lat),
        "errors": errors,
        "never_visible": len(seen.acked),
        "p50": percentile(lat, 50) * ms,
        "p90": percentile(lat, 90) * ms,
        "p99": percentile(lat, 99) * ms,
        "max": max(lat) * ms,
        "ack_p50": percentile(acks, 50) * ms,
        "ack_p99": percentile(acks, 99) * ms,
        "poll_interval_ms": POLL_INTERVAL * ms,
        "service_cpu_ms_per_command": service_cpu / max(len(tasks), 1) * ms,
        **stages,
    }


@contextlib.contextmanager
def requests_service(stack: DevStack, ports: list[int]) -> Iterator[list[int]]:
    """`python -m services.requests` on each of `ports` (its replicas, each told every replica's address),
    logging into the stack's home; every one always stopped. Their pids."""
    address = target(ports)
    root = Path(__file__).resolve().parent.parent
    procs: list[subprocess.Popen] = []
    try:
        for k, port in enumerate(ports):
            env = {
                **os.environ,
                "MIEUX_HOME": str(stack.home),
                "MIEUX_REQUESTS_PORT": str(port),
                "MIEUX_REQUESTS_ADDR": address,
                "MIEUX_LOG_LEVEL": "WARNING",
            }
            with open(stack.home / f"requests-service-{k + 1}.log", "ab") as log:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "services.requests"], env=env, cwd=root, stdout=log, stderr=log
                    )
                )
        yield [p.pid for p in procs]
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def target(ports: list[int]) -> str:
    """The gRPC target of the replicas on `ports`: one address, or a list the client balances over."""
    hosts = [f"127.0.0.1:{p}" for p in ports]
    return hosts[0] if len(hosts) == 1 else "ipv4:" + ",".join(hosts)


async def run(stack: DevStack, settings: Settings, rate: int, duration: float, replicas: int = 1) -> dict[str, Any]:
    """Start `replicas` processes of the requests service on free ports, measure, and always stop them."""
    ports = [free_port() for _ in range(replicas)]
    os.environ["MIEUX_REQUESTS_ADDR"] = target(ports)  # for RequestsClient.connect, in this process
    with requests_service(stack, ports) as pids:
        await every_replica_serving(ports)
        return await measure(settings, rate, duration, pids)


async def every_replica_serving(ports: list[int], timeout: float = START_TIMEOUT_S) -> None:
    """Each replica's gRPC health says SERVING (its consumer groups joined): a replica that joins later would
    rebalance the group during the measurement."""
    from services.ops.processes import serving

    async with asyncio.timeout(timeout):
        for port in ports:
            while True:
                if await serving(f"127.0.0.1:{port}"):
                    break
                await asyncio.sleep(0.2)
