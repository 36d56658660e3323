"""Figure 1: appends per second, one event per command, with 1 and 8 concurrent clients.

Every command creates a new stream (expected version 0) holding one RequestReceived-shaped event:

* mieux: `EventStore.append` with a command id and hash, on a pool from `create_pool` sized to the
  client count (one round trip to its `append_events` function per command);
* eventsourcing 9.5.6: `Application.save` of a newly created aggregate, PostgreSQL recorder with its
  database function (`POSTGRES_ENABLE_DB_FUNCTIONS`), psycopg binary; one application shared by the
  client threads, its pool sized to the client count;
* raw: one autocommit INSERT per event, each client on its own asyncpg connection, into a plain table
  with the same columns and keys as mieux's events table.

The machine is small and may be shared, so the contenders take turns: `rounds` rounds, each measuring
every contender for one window after a CHECKPOINT. A figure is the median of its rounds.
"""

from __future__ import annotations

import asyncio
import json
import re
import statistics
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlparse

import asyncpg
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate

from bench.common import Window, drive_tasks, drive_threads, new_id, sample_data, sample_event
from services.kernel.db import create_pool
from services.kernel.envelope import utcnow
from services.kernel.store import EventStore, Metadata

MIEUX_SCHEMA = "bench_mieux"
ES_SCHEMA = "bench_es"
COMMAND_HASH = "0" * 64  # stored as the real hash would be; hashing the payload is the caller's work

RAW_SQL = """
CREATE SCHEMA IF NOT EXISTS bench_raw;
CREATE TABLE IF NOT EXISTS bench_raw.events (
    position        bigserial PRIMARY KEY,
    event_id        uuid NOT NULL,
    stream_id       text NOT NULL,
    stream_version  integer NOT NULL,
    event_type      text NOT NULL,
    schema_version  integer NOT NULL,
    data            jsonb NOT NULL,
    occurred_at     timestamptz NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    correlation_id  text NOT NULL,
    causation_id    text NOT NULL,
    actor           text NOT NULL,
    UNIQUE (stream_id, stream_version)
);
"""
RAW_INSERT = (
    "INSERT INTO bench_raw.events (event_id, stream_id, stream_version, event_type, schema_version, data, "
    "occurred_at, correlation_id, causation_id, actor) "
    "VALUES ($1, $2, 1, 'RequestReceived', 1, $3, $4, $5, '', 'bench')"
)


class Contender(Protocol):
    name: str

    async def start(self, dsn: str, clients: int) -> None: ...

    async def rate(self, window: Window) -> float: ...

    async def close(self) -> None: ...


class Mieux:
    name = "mieux"

    async def start(self, dsn: str, clients: int) -> None:
        self.clients = clients
        self.pool = await create_pool(dsn, min_size=clients, max_size=clients)
        self.store = EventStore(self.pool, MIEUX_SCHEMA)
        await self.store.setup()

    async def op(self, _client: int) -> None:
        stream = f"req-{new_id()}"
        event = sample_event(stream)
        meta = Metadata(actor="bench")
        await self.store.append(stream, 0, [event], meta, command_id=new_id(), command_hash=COMMAND_HASH)

    async def rate(self, window: Window) -> float:
        return await drive_tasks(self.clients, self.op, window)

    async def close(self) -> None:
        await self.pool.close()


class Raw:
    name = "raw"

    async def start(self, dsn: str, clients: int) -> None:
        self.conns = [await asyncpg.connect(dsn) for _ in range(clients)]
        await self.conns[0].execute(RAW_SQL)

    async def op(self, client: int) -> None:
        stream = f"req-{new_id()}"
        data = json.dumps(sample_data(stream))
        await self.conns[client].execute(RAW_INSERT, new_id(), stream, data, utcnow(), new_id())

    async def rate(self, window: Window) -> float:
        return await drive_tasks(len(self.conns), self.op, window)

    async def close(self) -> None:
        for conn in self.conns:
            await conn.close()


class EsRequest(Aggregate):
    """The eventsourcing library's aggregate: its Created event carries the request's fields."""

    def __init__(
        self,
        partner: str,
        partner_kind: str,
        partner_name: str,
        institution: str,
        institution_type: str,
        received_on: str,
        title: str,
        themes: list[str],
    ) -> None:
        self.partner = partner
        self.partner_kind = partner_kind
        self.partner_name = partner_name
        self.institution = institution
        self.institution_type = institution_type
        self.received_on = received_on
        self.title = title
        self.themes = themes


class EsBench(Application[Any]):
    pass


def es_env(dsn: str, clients: int) -> dict[str, str]:
    url = urlparse(dsn)
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": url.path.lstrip("/"),
        "POSTGRES_HOST": url.hostname or "127.0.0.1",
        "POSTGRES_PORT": str(url.port or 5432),
        "POSTGRES_USER": url.username or "postgres",
        "POSTGRES_PASSWORD": url.password or passfile_password(dsn),
        "POSTGRES_SCHEMA": ES_SCHEMA,
        "POSTGRES_ENABLE_DB_FUNCTIONS": "y",
        "POSTGRES_POOL_SIZE": str(clients),
        "POSTGRES_MAX_OVERFLOW": "0",
    }


def passfile_password(dsn: str) -> str:
    """The password libpq would take for `dsn` from the password file its `passfile` names (the dev stack's
    URLs hold none: devstack.py), for eventsourcing, which passes POSTGRES_PASSWORD to psycopg itself."""
    url = urlparse(dsn)
    passfile = parse_qs(url.query).get("passfile", [""])[0]
    if not passfile:
        return ""
    wanted = (url.hostname or "", str(url.port or 5432), url.path.lstrip("/"), url.username or "postgres")
    for line in Path(passfile).read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        fields = [f.replace("\\:", ":").replace("\\\\", "\\") for f in re.split(r"(?<!\\):", line)]
        if len(fields) == 5 and all(f in ("*", w) for f, w in zip(fields[:4], wanted, strict=True)):
            return fields[4]
    return ""


class EventSourcing:
    """Synchronous: the client threads run in a worker thread, off the event loop."""

    name = "eventsourcing"

    async def start(self, dsn: str, clients: int) -> None:
        self.clients = clients
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {ES_SCHEMA}")
        finally:
            await conn.close()
        self.app = await asyncio.to_thread(EsBench, env=es_env(dsn, clients))
        self.fields = {k: v for k, v in sample_data("").items() if k != "request_id"}

    def op(self, _client: int) -> None:
        self.app.save(EsRequest(**self.fields))

    async def rate(self, window: Window) -> float:
        return await asyncio.to_thread(drive_threads, self.clients, self.op, window)

    async def close(self) -> None:
        await asyncio.to_thread(self.app.close)


async def checkpoint(dsn: str) -> None:
    """Start each window with clean buffers, so one contender's dirty pages are not flushed in another's."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


async def run(dsn: str, clients: int, window: Window, rounds: int) -> dict[str, Any]:
    """Events per second of each contender at one client count: the median of `rounds` turns."""
    contenders: list[Contender] = [Mieux(), EventSourcing(), Raw()]
    for c in contenders:
        await c.start(dsn, clients)
    samples: dict[str, list[float]] = {c.name: [] for c in contenders}
    try:
        for _ in range(rounds):
            for c in contenders:
                await checkpoint(dsn)
                samples[c.name].append(round(await c.rate(window), 1))
    finally:
        for c in contenders:
            await c.close()
        await drop_tables(dsn)
    return {**{name: statistics.median(s) for name, s in samples.items()}, "rounds": samples}


async def drop_tables(dsn: str) -> None:
    """The contenders' tables go after each run, so that the next figure starts from empty tables and
    pays neither for their dirty pages nor for autovacuum passes over them."""
    conn = await asyncpg.connect(dsn)
    try:
        for schema in (MIEUX_SCHEMA, ES_SCHEMA, "bench_raw"):
            await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()
