"""Projections: read models built from events, idempotent and checkpointed.

A projection declares its tables and how it applies events. `apply_batch` is the one place where
events touch a read model: in ONE PostgreSQL transaction it records `(projection, event_id)` in the
tracking table (duplicates are dropped there) and applies the new events, so a redelivered event can
never be applied twice. Kafka offsets are committed only after that transaction (see runner.py).
Unknown event types are skipped (tolerant reader); a message that cannot be decoded or applied is
handed back as dead, with the reason, for the dead-letter queue.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import asyncpg

from services.kernel.db import Pool
from services.kernel.envelope import DecodeError, Envelope, Event, UnknownEvent, parse_message, registry

log = logging.getLogger(__name__)

TRACKING_SQL = """
CREATE SCHEMA IF NOT EXISTS projections;
CREATE TABLE IF NOT EXISTS projections.tracking (
    projection  text NOT NULL,
    event_id    uuid NOT NULL,
    PRIMARY KEY (projection, event_id)
);
"""


class Projection:
    """Subclass: set `name`, `topics`, `tables`; write `setup_sql` and `apply` (or `apply_many`)."""

    name: ClassVar[str]
    topics: ClassVar[tuple[str, ...]]
    tables: ClassVar[tuple[str, ...]]  # schema-qualified, dropped and rebuilt by `rebuild`
    setup_sql: ClassVar[str]

    async def setup(self, conn: asyncpg.Connection) -> None:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('mieux-schema-setup'))")
            await conn.execute(TRACKING_SQL)
            await conn.execute(self.setup_sql)

    async def apply(self, conn: asyncpg.Connection, env: Envelope, event: Event) -> None:
        raise NotImplementedError

    async def apply_many(self, conn: asyncpg.Connection, items: Sequence[tuple[Envelope, Event]]) -> None:
        """Apply new events in order; override to turn a batch into a few set-based statements."""
        for env, event in items:
            await self.apply(conn, env, event)

    async def reset(self, conn: asyncpg.Connection) -> None:
        """Empty the read model and forget what was applied (for a rebuild)."""
        async with conn.transaction():
            for table in self.tables:
                await conn.execute(f"TRUNCATE {table}")
            await conn.execute("DELETE FROM projections.tracking WHERE projection = $1", self.name)


@dataclass
class Dead:
    raw: bytes | None
    reason: str


@dataclass
class BatchResult:
    applied: int = 0
    duplicates: int = 0
    skipped: int = 0
    dead: list[Dead] | None = None


def decode(raws: Sequence[bytes | None]) -> tuple[list[tuple[Envelope, Event]], list[Dead]]:
    good: list[tuple[Envelope, Event]] = []
    dead: list[Dead] = []
    for raw in raws:
        try:
            env = parse_message(raw)
            good.append((env, registry.decode(env)))
        except DecodeError as e:
            dead.append(Dead(raw, str(e)))
    return good, dead


AsyncSource = Callable[[], AsyncIterator[Envelope]]


async def _apply_in_tx(
    conn: asyncpg.Connection, projection: Projection, items: Sequence[tuple[Envelope, Event]]
) -> tuple[int, int, int]:
    """One transaction: track, drop duplicates, apply. Returns (applied, duplicates, skipped).

    BEGIN and the rebuild lock go in one round trip (a simple query), so a batch costs BEGIN, the
    tracking insert, the projection's statements and COMMIT. A failed or cancelled batch leaves the
    connection in its transaction only if ROLLBACK cannot be sent, and the pool then closes it."""
    await conn.execute(f"BEGIN; SELECT pg_advisory_xact_lock_shared(hashtext({literal(lock_key(projection))}))")
    try:
        counts = await _apply_items(conn, projection, items)
    except Exception:
        await conn.execute("ROLLBACK")
        raise
    await conn.execute("COMMIT")
    return counts


def literal(text: str) -> str:
    """A SQL string literal (standard_conforming_strings is on since PostgreSQL 9.1)."""
    return "'" + text.replace("'", "''") + "'"


async def _apply_items(
    conn: asyncpg.Connection, projection: Projection, items: Sequence[tuple[Envelope, Event]]
) -> tuple[int, int, int]:
    fresh = {
        r["event_id"]
        for r in await conn.fetch(
            "INSERT INTO projections.tracking (projection, event_id) SELECT $1, unnest($2::uuid[]) "
            "ON CONFLICT DO NOTHING RETURNING event_id",
            projection.name,
            [env.event_id for env, _ in items],
        )
    }
    todo = []
    for env, ev in items:
        if env.event_id in fresh:
            fresh.discard(env.event_id)  # the same event twice in one batch counts once
            todo.append((env, ev))
    known = [(env, ev) for env, ev in todo if not isinstance(ev, UnknownEvent)]
    if known:
        await projection.apply_many(conn, known)
    return len(known), len(items) - len(todo), len(todo) - len(known)


async def apply_batch(pool: Pool, projection: Projection, raws: Sequence[bytes | None]) -> BatchResult:
    """Decode and apply a batch; a batch that fails is retried one event at a time to isolate poison."""
    good, dead = decode(raws)
    result = BatchResult(dead=dead)
    if not good:
        return result
    async with pool.acquire() as conn:
        try:
            result.applied, result.duplicates, result.skipped = await _apply_in_tx(conn, projection, good)
            return result
        except (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError):
            raise
        except Exception as e:  # one of them is poison: find it
            log.warning("projection %s: batch failed (%s); applying one by one", projection.name, e)
        for env, ev in good:
            try:
                a, d, s = await _apply_in_tx(conn, projection, [(env, ev)])
                result.applied, result.duplicates, result.skipped = (
                    result.applied + a,
                    result.duplicates + d,
                    result.skipped + s,
                )
            except (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError):
                raise
            except Exception as e:
                dead.append(Dead(env.to_bytes(), f"apply failed: {type(e).__name__}: {e}"))
    return result


def lock_key(projection: Projection) -> str:
    return f"mieux-projection:{projection.name}"


async def rebuild(pool: Pool, projection: Projection, sources: Sequence[AsyncSource], batch: int = 2000) -> int:
    """Empty the read model and refill it from the sources' event logs, in ONE transaction.

    The live runner takes the same advisory lock for each batch, so it waits while the rebuild runs
    and then finds every event it brings already tracked: nothing is applied twice, readers see the old
    model until the new one is committed.
    """
    total = 0
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", lock_key(projection))
        for table in projection.tables:
            await conn.execute(f"TRUNCATE {table}")
        await conn.execute("DELETE FROM projections.tracking WHERE projection = $1", projection.name)
        for source in sources:
            chunk: list[tuple[Envelope, Event]] = []
            async for env in source():
                chunk.append((env, registry.decode(env)))
                if len(chunk) >= batch:
                    total += (await _apply_items(conn, projection, chunk))[0]
                    chunk = []
            if chunk:
                total += (await _apply_items(conn, projection, chunk))[0]
    return total
