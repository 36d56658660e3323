"""Figure 2: projection throughput, Kafka -> PostgreSQL read model with dedupe.

N RequestReceived envelopes, as the relay publishes them (Envelope JSON, key = stream id), are produced
beforehand to a fresh topic created with explicit partitions. Then, each with a fresh consumer group:

* mieux: the real `ProjectionRunner` running the real `RequestsPerYear` projection (a subclass only
  renames it and points it at the bench topic). Per event it records a tracking row (the dedupe, one row
  per event like raw's), plus one upsert per year per batch, in one transaction per batch, then commits
  the offsets;
* raw: aiokafka `getmany` + `json.loads` + asyncpg `executemany` INSERT ... ON CONFLICT (event_id) DO
  NOTHING in one transaction + manual offset commit, with the same batch size.

Throughput counts from the first applied batch to the last event (so the group join, about 1 s with
Tansu, is excluded): (N - events applied by the first batch) / (time of last - time of first batch).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

import asyncpg

from bench.common import new_id, sample_data
from services.kernel import bus
from services.kernel.db import create_pool
from services.kernel.envelope import Envelope, utcnow
from services.kernel.runner import ProjectionRunner
from services.kernel.settings import Settings
from services.requests.projections import RequestsPerYear

RAW_VIEW_SQL = """
CREATE SCHEMA IF NOT EXISTS bench_raw;
CREATE TABLE IF NOT EXISTS bench_raw.view (event_id uuid PRIMARY KEY, year integer NOT NULL);
"""
WATCH_LIMIT_S = 180.0
RAW_INSERT = "INSERT INTO bench_raw.view (event_id, year) VALUES ($1, $2) ON CONFLICT (event_id) DO NOTHING"


def envelopes(n: int) -> list[tuple[bytes, bytes]]:
    """(key, value) of `n` envelopes, one new stream each, received over ten years."""
    now = utcnow()
    out = []
    for i in range(n):
        stream = f"req-{new_id()}"
        env = Envelope(
            event_id=new_id(),
            event_type="RequestReceived",
            schema_version=1,
            source="requests",
            stream_id=stream,
            stream_version=1,
            position=i + 1,
            occurred_at=now,
            recorded_at=now,
            correlation_id=new_id(),
            causation_id="",
            actor="bench",
            data=sample_data(stream, year=2015 + i % 10),
        )
        out.append((stream.encode(), env.to_bytes()))
    return out


async def produce(settings: Settings, topic: str, n: int) -> float:
    """Create `topic` and fill it with `n` envelopes; returns messages per second of the produce."""
    await bus.ensure_topics(settings, [topic])
    messages = envelopes(n)
    producer = bus.producer(settings)
    await producer.start()
    try:
        t0 = time.perf_counter()
        for i in range(0, n, 5000):
            chunk = messages[i : i + 5000]
            futures = [await producer.send(topic, value=value, key=key) for key, value in chunk]
            await asyncio.gather(*futures)
        return n / (time.perf_counter() - t0)
    finally:
        await producer.stop()


async def watch(applied: Callable[[], int], n: int) -> dict[str, float]:
    """Poll a counter every millisecond: events per second from the first applied batch to `n`."""
    while applied() == 0:  # noqa: ASYNC110 - the counters are plain ints of the runners
        await asyncio.sleep(0.001)
    t0, first = time.perf_counter(), applied()
    while applied() < n:  # noqa: ASYNC110
        await asyncio.sleep(0.001)
    elapsed = time.perf_counter() - t0
    return {"rate": (n - first) / elapsed, "seconds": elapsed, "first_batch": first}


def per_year_on(topic: str) -> RequestsPerYear:
    """The real projection under a name of its own (its tracking rows), reading the bench topic."""
    attrs = {"name": f"bench_per_year_{new_id()[:8]}", "topics": (topic,)}
    return type("BenchRequestsPerYear", (RequestsPerYear,), attrs)()


async def mieux(settings: Settings, topic: str, n: int) -> dict[str, float]:
    pool = await create_pool(settings.dsn(), max_size=4)
    projection = per_year_on(topic)
    runner = ProjectionRunner([projection], pool, settings, group=f"bench.mieux.{new_id()}")
    try:
        async with pool.acquire() as conn:
            await projection.setup(conn)
        await runner.start()
        async with asyncio.timeout(WATCH_LIMIT_S):
            result = await watch(lambda: runner.applied, n)
        tracked = await pool.fetchval(
            "SELECT count(*) FROM projections.tracking WHERE projection = $1", projection.name
        )
        return {**result, "tracked": tracked, "duplicates": runner.duplicates, "dead": runner.dead}
    finally:
        await runner.stop()
        await pool.close()


async def raw(settings: Settings, topic: str, n: int) -> dict[str, float]:
    conn = await asyncpg.connect(settings.dsn())
    consumer = bus.consumer(settings, topic, group_id=f"bench.raw.{new_id()}")
    applied = 0

    async def consume() -> None:
        nonlocal applied
        while True:
            batches = await consumer.getmany(timeout_ms=500, max_records=settings.projection_batch_size)
            if not batches:
                continue
            rows: list[tuple[Any, ...]] = []
            for msgs in batches.values():
                for m in msgs:
                    env = json.loads(m.value)
                    rows.append((env["event_id"], int(env["data"]["received_on"][:4])))
            async with conn.transaction():
                await conn.executemany(RAW_INSERT, rows)
            await consumer.commit({tp: msgs[-1].offset + 1 for tp, msgs in batches.items()})
            applied += len(rows)

    task: asyncio.Task[None] | None = None
    try:
        await conn.execute(RAW_VIEW_SQL)
        await consumer.start()
        task = asyncio.create_task(consume())
        async with asyncio.timeout(WATCH_LIMIT_S):
            result = await watch(lambda: applied, n)
        stored = await conn.fetchval("SELECT count(*) FROM bench_raw.view")
        return {**result, "tracked": stored}
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await consumer.stop()
        await conn.close()


async def run(settings: Settings, n: int) -> dict[str, Any]:
    topic = f"bench.projection.{new_id()[:8]}"
    produced = await produce(settings, topic, n)
    return {
        "topic_partitions": settings.topic_partitions,
        "produce_rate": produced,
        "mieux": await mieux(settings, topic, n),
        "raw": await raw(settings, topic, n),
    }
