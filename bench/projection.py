"""Figure 2: projection throughput, Kafka -> PostgreSQL read model with dedupe.

N RequestReceived envelopes, as the relay publishes them (Envelope JSON with the key id, key = stream id,
signed in relay batches of MIEUX_RELAY_BATCH_SIZE: signing.Signer.seal, the `mieux-signature` header), are
produced beforehand to a fresh topic created with explicit partitions, `mieux.bench_<id>.events` (a producer
of the bench's own, with a key of its own). Then, each with a fresh consumer group:

* mieux: the real `ProjectionRunner` running the real `RequestsPerYear` projection (a subclass only
  renames it and points it at the bench topic), verifying every message's signature (signing.Verifier) as
  it does in the services. Per event it records a tracking row (the dedupe, one row per event like raw's),
  plus one upsert per year per batch, in one transaction per batch, then commits the offsets;
* mieux, not verifying: the same, with a verifier that accepts every message unchecked (for the
  comparison only: the runner has no such setting);
* raw: aiokafka `getmany` + `json.loads` + asyncpg `executemany` INSERT ... ON CONFLICT (event_id) DO
  NOTHING in one transaction + manual offset commit, with the same batch size (it verifies nothing).

The cost of verification per event is measured twice: from the two runs (1/verifying - 1/not verifying),
and in-process over the same messages (`verify_cost`: a fresh Verifier over all N in a random order, and one
Ed25519 verification, what a signature per message would cost).

Throughput counts from the first applied batch to the last event (so the group join, about 1 s with
Tansu, is excluded): (N - events applied by the first batch) / (time of last - time of first batch).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Callable
from typing import Any

import asyncpg

from bench.common import new_id, sample_data
from services.kernel import bus
from services.kernel.db import create_pool
from services.kernel.envelope import Envelope, utcnow
from services.kernel.runner import ProjectionRunner
from services.kernel.service import settle_heap
from services.kernel.settings import Settings
from services.kernel.signing import Signer, Verifier, load_public_keys, new_key, signature_of
from services.requests.projections import RequestsPerYear

RAW_VIEW_SQL = """
CREATE SCHEMA IF NOT EXISTS bench_raw;
CREATE TABLE IF NOT EXISTS bench_raw.view (event_id uuid PRIMARY KEY, year integer NOT NULL);
"""
WATCH_LIMIT_S = 180.0
RAW_INSERT = "INSERT INTO bench_raw.view (event_id, year) VALUES ($1, $2) ON CONFLICT (event_id) DO NOTHING"


def envelopes(n: int, source: str) -> list[Envelope]:
    """`n` envelopes of `source`, one new stream each, received over ten years."""
    now = utcnow()
    out = []
    for i in range(n):
        stream = f"req-{new_id()}"
        env = Envelope(
            event_id=new_id(),
            event_type="RequestReceived",
            schema_version=1,
            source=source,
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
        out.append(env)
    return out


class NotVerifying(Verifier):
    """Accepts every message unchecked: the runner without verification, for the comparison only."""

    def __init__(self) -> None:
        super().__init__({})

    def verify(self, topic: str, value: bytes | None, env: Envelope, header: bytes | str | None) -> None:
        return None


async def produce(settings: Settings, topic: str, n: int, signer: Signer) -> tuple[float, list]:
    """Create `topic` and fill it with `n` envelopes signed as the relay signs them (in relay batches); returns
    messages per second of the produce, and the messages."""
    await bus.ensure_topics(settings, [topic])
    every = envelopes(n, signer.service)
    batch = settings.relay_batch_size
    messages = [m for i in range(0, n, batch) for m in signer.seal(every[i : i + batch])]
    producer = bus.producer(settings)
    await producer.start()
    try:
        t0 = time.perf_counter()
        for i in range(0, n, 5000):
            chunk = messages[i : i + 5000]
            futures = [await producer.send(topic, value=m.value, key=m.key, headers=m.headers) for m in chunk]
            await asyncio.gather(*futures)
        return n / (time.perf_counter() - t0), messages
    finally:
        await producer.stop()


def verify_cost(topic: str, messages: list, verifier: Verifier, signer: Signer) -> dict[str, float]:
    """Microseconds per event of verification in-process, the messages in a random order (a consumer meets
    them partition by partition; at random, fewer of a message's neighbours in its tree are known when it
    comes) with a fresh Verifier, and of one Ed25519 verification (what a signature per message would cost)."""
    parsed = [(m.value, Envelope.from_bytes(m.value), signature_of(m.headers)) for m in messages]
    random.Random(0).shuffle(parsed)
    t0 = time.perf_counter()
    for value, env, header in parsed:
        verifier.verify(topic, value, env, header)
    per_event = (time.perf_counter() - t0) / len(parsed)
    public = signer.private.public_key()
    signature = signer.private.sign(b"x" * 64)
    rounds = 2000
    t0 = time.perf_counter()
    for _ in range(rounds):
        public.verify(signature, b"x" * 64)
    ed25519 = (time.perf_counter() - t0) / rounds
    return {"per_event_us": per_event * 1e6, "ed25519_verify_us": ed25519 * 1e6}


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


async def mieux(settings: Settings, topic: str, n: int, verifier: Verifier) -> dict[str, float]:
    pool = await create_pool(settings.dsn("requests"), max_size=4)  # as the requests service: its role, its schemas
    projection = per_year_on(topic)
    runner = ProjectionRunner([projection], pool, settings, group=f"bench.mieux.{new_id()}")
    runner.verifier = verifier  # the bench topic's producer is the bench's own, with a key of its own
    try:
        async with pool.acquire() as conn:
            await projection.setup(conn)
        settle_heap()  # as a service process does once started, before its runners start
        await runner.start()
        async with asyncio.timeout(WATCH_LIMIT_S):
            result = await watch(lambda: runner.applied, n)
        tracked = await pool.fetchval(
            f"SELECT count(*) FROM {projection.kernel.tracking} WHERE projection = $1", projection.name
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
    producer = f"bench_{new_id()[:8]}"
    topic = f"mieux.{producer}.events"
    private, kid, public = new_key()
    signer = Signer(producer, kid, private)
    keys = load_public_keys({producer: {kid: public}})
    produced, messages = await produce(settings, topic, n, signer)
    verifying = await mieux(settings, topic, n, Verifier(keys))
    not_verifying = await mieux(settings, topic, n, NotVerifying())
    return {
        "topic_partitions": settings.topic_partitions,
        "produce_rate": produced,
        "mieux": verifying,
        "mieux_not_verifying": not_verifying,
        "raw": await raw(settings, topic, n),
        "verify_cost": verify_cost(topic, messages, Verifier(keys), signer),
    }
