"""Projections: read models built from events, idempotent and checkpointed.

A projection declares its tables and how it applies events. `apply_batch` is the one place where
events touch a read model: in ONE PostgreSQL transaction it records `(projection, event_id)` in the
tracking table (duplicates are dropped there) and applies the new events, for every projection of a
service whose topics the batch came from, so a redelivered event can never be applied twice. Kafka
offsets are committed only after that transaction (see runner.py).
Unknown event types are skipped (tolerant reader); a message that cannot be decoded or applied is
handed back as dead, with the reason, for the dead-letter queue.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
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
-- projections that joined their service's consumer group after it had read past the start of their
-- topics, so they lack the events before; only a rebuild clears the flag (see runner.flag_joined_late)
CREATE TABLE IF NOT EXISTS projections.needs_rebuild (
    projection  text PRIMARY KEY,
    since       timestamptz NOT NULL DEFAULT now(),
    reason      text NOT NULL
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
    projection: str = ""  # the projection that could not apply it; empty when it could not be decoded
    topic: str = ""  # where it came from


@dataclass
class BatchResult:
    applied: int = 0
    duplicates: int = 0
    skipped: int = 0
    dead: list[Dead] = field(default_factory=list)

    def add(self, counts: tuple[int, int, int]) -> None:
        applied, duplicates, skipped = counts
        self.applied += applied
        self.duplicates += duplicates
        self.skipped += skipped


Message = tuple[str, bytes | None]  # (topic, value) as the bus delivered it
Routed = Sequence[tuple["Projection", Sequence[tuple[Envelope, Event]]]]  # each projection with its events


def decode(messages: Sequence[Message]) -> tuple[list[tuple[str, Envelope, Event]], list[Dead]]:
    good: list[tuple[str, Envelope, Event]] = []
    dead: list[Dead] = []
    for topic, raw in messages:
        try:
            env = parse_message(raw)
            good.append((topic, env, registry.decode(env)))
        except DecodeError as e:
            dead.append(Dead(raw, str(e), topic=topic))
    return good, dead


def route(projections: Sequence[Projection], good: Sequence[tuple[str, Envelope, Event]]) -> Routed:
    """Each projection with the events of its own topics, in delivery order."""
    routed = []
    for p in projections:
        mine = [(env, ev) for topic, env, ev in good if topic in p.topics]
        if mine:
            routed.append((p, mine))
    return routed


AsyncSource = Callable[[], AsyncIterator[Envelope]]


async def _apply_in_tx(conn: asyncpg.Connection, routed: Routed) -> tuple[int, int, int]:
    """One transaction for every projection of the batch: track, drop duplicates, apply.
    Returns (applied, duplicates, skipped) summed over the projections.

    BEGIN and the projections' rebuild locks go in one round trip (a simple query), so a batch costs
    BEGIN, one tracking insert, each projection's statements and COMMIT. A failed or cancelled batch
    leaves the connection in its transaction only if ROLLBACK cannot be sent, and the pool then closes it."""
    locks = ", ".join(f"pg_advisory_xact_lock_shared(hashtext({literal(lock_key(p))}))" for p, _ in routed)
    await conn.execute(f"BEGIN; SELECT {locks}")
    try:
        counts = await _apply_items(conn, routed)
    except Exception:
        await conn.execute("ROLLBACK")
        raise
    await conn.execute("COMMIT")
    return counts


def literal(text: str) -> str:
    """A SQL string literal (standard_conforming_strings is on since PostgreSQL 9.1)."""
    return "'" + text.replace("'", "''") + "'"


async def _apply_items(conn: asyncpg.Connection, routed: Routed) -> tuple[int, int, int]:
    """Track every (projection, event id) in one statement, then apply what is new to each projection."""
    names = [p.name for p, items in routed for _ in items]
    ids = [env.event_id for _, items in routed for env, _ in items]
    fresh = {
        (r["projection"], r["event_id"])
        for r in await conn.fetch(
            "INSERT INTO projections.tracking (projection, event_id) SELECT * FROM unnest($1::text[], $2::uuid[]) "
            "ON CONFLICT DO NOTHING RETURNING projection, event_id",
            names,
            ids,
        )
    }
    applied = duplicates = skipped = 0
    for p, items in routed:
        todo = []
        for env, ev in items:
            if (p.name, env.event_id) in fresh:
                fresh.discard((p.name, env.event_id))  # the same event twice in one batch counts once
                todo.append((env, ev))
        known = [(env, ev) for env, ev in todo if not isinstance(ev, UnknownEvent)]
        if known:
            await p.apply_many(conn, known)
        applied += len(known)
        duplicates += len(items) - len(todo)
        skipped += len(todo) - len(known)
    return applied, duplicates, skipped


async def apply_batch(pool: Pool, projections: Sequence[Projection], messages: Sequence[Message]) -> BatchResult:
    """Decode a batch and apply it to every projection of its topics in one transaction. A batch that
    fails is retried one event and one projection at a time, to isolate the poison: the projection
    that cannot apply an event hands it back as dead, and the others still apply it."""
    good, dead = decode(messages)
    result = BatchResult(dead=dead)
    routed = route(projections, good)
    if not routed:
        return result
    async with pool.acquire() as conn:
        try:
            result.add(await _apply_in_tx(conn, routed))
            return result
        except (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError):
            raise
        except Exception as e:  # one of them is poison: find it
            names = ",".join(p.name for p, _ in routed)
            log.warning("projections %s: batch failed (%s); applying one by one", names, e)
        came_from = {id(env): topic for topic, env, _ in good}
        for p, items in routed:
            for env, ev in items:
                try:
                    result.add(await _apply_in_tx(conn, [(p, [(env, ev)])]))
                except (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError):
                    raise
                except Exception as e:
                    reason = f"apply failed: {type(e).__name__}: {e}"
                    dead.append(Dead(env.to_bytes(), reason, p.name, came_from[id(env)]))
    return result


def lock_key(projection: Projection) -> str:
    return f"mieux-projection:{projection.name}"


async def rebuild(pool: Pool, projection: Projection, sources: Sequence[AsyncSource], batch: int = 2000) -> int:
    """Empty the read model and refill it from the sources' event logs, in ONE transaction.

    The live runner takes the same advisory lock for each batch, so it waits while the rebuild runs
    and then finds every event it brings already tracked: nothing is applied twice. Readers of the
    tables wait for the commit (TRUNCATE locks them) and never see a half-built model. A projection
    flagged as needing a rebuild is unflagged in the same transaction.
    """
    total = 0
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", lock_key(projection))
        for table in projection.tables:
            await conn.execute(f"TRUNCATE {table}")
        await conn.execute("DELETE FROM projections.tracking WHERE projection = $1", projection.name)
        await conn.execute("DELETE FROM projections.needs_rebuild WHERE projection = $1", projection.name)
        for source in sources:
            chunk: list[tuple[Envelope, Event]] = []
            async for env in source():
                chunk.append((env, registry.decode(env)))
                if len(chunk) >= batch:
                    total += (await _apply_items(conn, [(projection, chunk)]))[0]
                    chunk = []
            if chunk:
                total += (await _apply_items(conn, [(projection, chunk)]))[0]
    return total
