"""Figure: bulk import against raw COPY (events/s), the same N rows side by side in one run.

The rows: N events, RequestReceived-shaped data (bench/common.py), in streams of STREAM_EVENTS events, each
event a command of its own (id, hash and count stored on it), in position order as an export lists them.

* mieux: `EventStore.importer()`, batch after batch: the checks of a batch (importing.py), the writers'
  lock, positions from the sequence, one COPY into the events table, one transaction per batch;
* copy: asyncpg's `copy_records_to_table` of the same rows, already as tuples with their positions, in the
  same batches (one autocommit COPY each), into a table made by the same DDL (store.schema_sql: the same
  primary key, unique (stream, version) and partial command-id index), checking nothing else.

Each round runs both into fresh schemas, after a CHECKPOINT, in lockstep: batch k of one, then batch k of the
other (which goes first alternating from batch to batch), each contender timed over its own batches, so that a
shared machine whose speed drifts from second to second favours neither. A figure is the median of its
rounds, and the ratio the median of the rounds' ratios.
"""

from __future__ import annotations

import json
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from bench.append import checkpoint
from bench.common import sample_data
from services.kernel.db import create_pool
from services.kernel.importing import COLUMNS, EventRow
from services.kernel.store import EventStore, schema_sql

STREAM_EVENTS = 4
IMPORT_SCHEMA = "bench_import"
COPY_SCHEMA = "bench_copy"
COMMAND_HASH = "0" * 64


def rows(n: int) -> list[EventRow]:
    """`n` events as an export of a store lists them: streams of STREAM_EVENTS, interleaved by position."""
    start = datetime(2009, 1, 1, tzinfo=UTC)
    streams = [f"req-{uuid.uuid4()}" for _ in range((n + STREAM_EVENTS - 1) // STREAM_EVENTS)]
    data = [json.dumps(sample_data(s)) for s in streams]
    out: list[EventRow] = []
    # stream k's version v sits at position v * streams + k: each stream's events in order, streams interleaved
    for v in range(1, STREAM_EVENTS + 1):
        for k, s in enumerate(streams):
            if len(out) == n:
                break
            at = start + timedelta(minutes=len(out))
            meta = (at, at, str(uuid.uuid4()), "", "bench", str(uuid.uuid4()), COMMAND_HASH, 1)
            out.append(EventRow(uuid.uuid4(), s, v, "RequestReceived", 1, data[k], *meta))
    return out


async def fresh(conn: asyncpg.Connection, schema: str) -> None:
    await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    await conn.execute(schema_sql(schema))


async def one_round(dsn: str, events: list[EventRow], records: list[tuple[Any, ...]], batch: int) -> dict[str, float]:
    """Both contenders through all the rows, batch by batch in lockstep (which goes first alternating), each
    timed over its own batches only: events/s of each."""
    pool = await create_pool(dsn, min_size=1, max_size=1)
    conn = await asyncpg.connect(dsn)
    spent = {"mieux": 0.0, "copy": 0.0}
    try:
        async with EventStore(pool, IMPORT_SCHEMA).importer() as imp:
            for k, i in enumerate(range(0, len(events), batch)):
                for name in ("mieux", "copy") if k % 2 == 0 else ("copy", "mieux"):
                    started = time.perf_counter()
                    if name == "mieux":
                        await imp.import_batch(events[i : i + batch])
                    else:
                        await conn.copy_records_to_table(
                            "events", schema_name=COPY_SCHEMA, columns=COLUMNS, records=records[i : i + batch]
                        )
                    spent[name] += time.perf_counter() - started
    finally:
        await conn.close()
        await pool.close()
    return {name: len(events) / seconds for name, seconds in spent.items()}


async def run(dsn: str, n: int, batch: int, rounds: int) -> dict[str, Any]:
    events = rows(n)
    records = [(p, *e) for p, e in enumerate(events, 1)]
    samples: dict[str, list[float]] = {"mieux": [], "copy": []}
    conn = await asyncpg.connect(dsn)
    try:
        for _ in range(rounds):
            for schema in (IMPORT_SCHEMA, COPY_SCHEMA):
                await fresh(conn, schema)
            await checkpoint(dsn)
            rates = await one_round(dsn, events, records, batch)
            for name, schema in (("mieux", IMPORT_SCHEMA), ("copy", COPY_SCHEMA)):
                samples[name].append(round(rates[name], 1))
                stored = await conn.fetchval(f"SELECT count(*) FROM {schema}.events")
                assert stored == n, f"{name}: {stored} events stored, not {n}"
                await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()
    ratios = [round(m / c, 3) for m, c in zip(samples["mieux"], samples["copy"], strict=True)]
    return {
        "mieux": statistics.median(samples["mieux"]),
        "copy": statistics.median(samples["copy"]),
        "ratio": statistics.median(ratios),
        "round_ratios": ratios,
        "events": n,
        "batch": batch,
        "rounds": samples,
    }
