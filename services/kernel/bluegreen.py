"""Rebuilding a projection without downtime (blue/green): the next version of its read model is built beside
the live one, then put in its place in one transaction.

`rebuild_beside` works in ONE PostgreSQL transaction, on one connection:

1. it creates a shadow schema (`mieux_next_<projection>`) holding the projection's tables, made by its own
   `setup_sql` with every table of `projection.tables` (and the tracking table) pointed at the shadow, and
   fills them from the sources' `ReadAll` through the projection's own apply code (`ShadowConnection`
   rewrites the statements' table names: the projections' code stays as it is). The live runner keeps
   applying to the live tables meanwhile, and readers keep reading them;
2. it catches up without holding anything: the sources again, applying only the events past what it read;
3. it takes the projection's rebuild lock exclusively (the live runner takes it shared around each batch,
   projection.lock_key), so the live projection is held only for: the sources' remainder up to their head
   if the live projection applied an event the shadow lacks (else what the shadow lacks is still to come
   to the live runner, which applies it after the swap), its tracking rows replaced by the shadow's, its
   `needs_rebuild` flag cleared, and each live table dropped and the shadow's moved into its schema (its
   indexes, constraints and privileges with it); then COMMIT.

Readers see the old version until the commit and the new one after it, never an empty or partial one: a
query that reaches a table during the swap waits for the commit (DROP TABLE locks it) and then reads the new
table, as does an asyncpg statement prepared before (PostgreSQL plans it again; the columns are the same).
A crash, a failure or a cancel anywhere rolls the transaction back: the live model and its tracking rows
are as they were and no shadow is left (a leftover shadow schema, say made by hand, is dropped at the next
rebuild). Events the rebuild applied that the live runner has not received yet are in the swapped tracking
rows, so the runner finds them already applied when they come.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import asyncpg

from services.kernel.db import Pool
from services.kernel.projection import AsyncSource, Projection, lock_key, refill

# the kernel's tracking and rebuild-flag tables are the projection's service's own (`projection.kernel`,
# kernel/schemas.py)
SHADOW_PREFIX = "mieux_next_"
SHADOW_TRACKING = "_tracking"  # the shadow's tracking table (a projection's tables never start with "_")

Hook = Callable[[], Awaitable[None]]


class RebuildRunning(RuntimeError):
    """Another rebuild of the same projection is under way."""


class RepeatedEvents(RuntimeError):
    """The sources gave an event id more than once: the rebuild is refused (and rolled back)."""


@dataclass
class Rebuilt:
    events: int  # events applied to the new version
    caught_up: int  # of which while the live projection was held
    held_s: float  # how long the live projection was held: the last catch-up, the swap and the commit


class Shadow:
    """A projection's next version: its schema and tables, and the rewriting of SQL that points statements
    naming the live tables (and the tracking table) at them."""

    def __init__(self, projection: Projection) -> None:
        self.schema = f"{SHADOW_PREFIX}{projection.name}"
        if len(self.schema) > 63:  # PostgreSQL's longest identifier
            raise ValueError(f"projection name {projection.name!r} too long for a shadow schema")
        # live table -> its bare name, which the shadow keeps so that the DDL's generated names (keys,
        # sequences) and the apply code's bare references (`ON CONFLICT ... SET n = counts.n + 1`) hold
        bare = [live.partition(".")[2] for live in projection.tables]
        if not all(bare) or len(set(bare)) != len(bare):
            raise ValueError(f"{projection.name}: tables must be schema-qualified with distinct names: {bare}")
        self.tables = dict(zip(projection.tables, bare, strict=True))
        self.tracking = f"{self.schema}.{SHADOW_TRACKING}"
        self.live_tracking = projection.kernel.tracking
        self.live_needs_rebuild = projection.kernel.needs_rebuild
        targets = {live: f"{self.schema}.{name}" for live, name in self.tables.items()}
        targets[self.live_tracking] = self.tracking
        self._targets = targets
        # a qualified name as a whole: not a part of a longer name, nor quoted
        self._pattern = re.compile(
            r'(?<![\w$."])(' + "|".join(re.escape(t) for t in sorted(targets, key=len, reverse=True)) + r')(?![\w$"])'
        )

    def sql(self, text: str) -> str:
        return self._pattern.sub(lambda m: self._targets[m.group(1)], text)


class ShadowConnection:
    """An asyncpg connection whose statements go to the shadow's tables: what the projection's apply code
    and the kernel's tracking insert are given while a rebuild builds. Only what they use is offered; any
    other method raises rather than write the live tables unseen."""

    def __init__(self, conn: asyncpg.Connection, shadow: Shadow) -> None:
        self._conn = conn
        self._shadow = shadow

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str:
        return await self._conn.execute(self._shadow.sql(query), *args, timeout=timeout)

    async def executemany(self, command: str, args: Any, *, timeout: float | None = None) -> None:
        await self._conn.executemany(self._shadow.sql(command), args, timeout=timeout)

    async def fetch(self, query: str, *args: Any, timeout: float | None = None) -> list[asyncpg.Record]:
        return await self._conn.fetch(self._shadow.sql(query), *args, timeout=timeout)

    async def fetchrow(self, query: str, *args: Any, timeout: float | None = None) -> asyncpg.Record | None:
        return await self._conn.fetchrow(self._shadow.sql(query), *args, timeout=timeout)

    async def fetchval(self, query: str, *args: Any, column: int = 0, timeout: float | None = None) -> Any:
        return await self._conn.fetchval(self._shadow.sql(query), *args, column=column, timeout=timeout)

    def transaction(self, **kwargs: Any) -> Any:
        return self._conn.transaction(**kwargs)  # a savepoint inside the rebuild's transaction

    def is_in_transaction(self) -> bool:
        return self._conn.is_in_transaction()

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"a projection rebuilding beside the live one cannot use connection.{name}")


async def rebuild_beside(
    pool: Pool,
    projection: Projection,
    sources: Sequence[AsyncSource],
    batch: int = 2000,
    *,
    built: Hook | None = None,
    swapping: Hook | None = None,
) -> Rebuilt:
    """Build the next version of `projection`'s read model beside the live one from `sources`, catch up and
    swap (see the module's docstring). `built` is awaited once the shadow is filled and caught up, before
    the live projection is held; `swapping` inside the swap's transaction, the tables swapped but not
    committed (hooks for tests and progress). Raises RebuildRunning when another rebuild of the projection
    is under way."""
    shadow = Shadow(projection)
    async with pool.acquire() as conn:
        if not all([await _exists(conn, live) for live in shadow.tables]):
            # a first deployment: the live tables exist before they are replaced. Not when they do, where a
            # rebuild swapping them would hold the setup's CREATE ... IF NOT EXISTS until it ends
            await projection.setup(conn)
        async with conn.transaction():
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock(hashtext($1))", rebuilding_key(projection)):
                raise RebuildRunning(f"a rebuild of {projection.name} is under way")
            await _create(conn, projection, shadow)
            on = ShadowConnection(conn, shadow)
            seen = [-1] * len(sources)  # per source, the last position applied
            events = await _fill(on, projection, sources, seen, batch)
            events += await _fill(on, projection, sources, seen, batch)  # what came meanwhile, still unheld
            await _key_tracking(conn, shadow)
            if built is not None:
                await built()
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", lock_key(projection))
            began = time.monotonic()
            caught_up = 0
            if await _lacks(conn, projection, shadow):
                caught_up = await _fill(on, projection, sources, seen, batch)
            await _swap(conn, projection, shadow)
            if swapping is not None:
                await swapping()
        held = time.monotonic() - began
    return Rebuilt(events + caught_up, caught_up, held)


def rebuilding_key(projection: Projection) -> str:
    """The advisory lock one rebuild of a projection holds (not the live runner's `lock_key`)."""
    return f"mieux-rebuilding:{projection.name}"


async def _create(conn: asyncpg.Connection, projection: Projection, shadow: Shadow) -> None:
    """The shadow schema, owned (as its tables) by the live tables' owner, the projection's DDL in it and an
    empty tracking table like the kernel's. The role is set for the transaction: an operator's role that is a
    member of the service's (deploy/postgres) creates what the service's own role would."""
    owner = await conn.fetchval(
        "SELECT relowner::regrole::text FROM pg_class WHERE oid = to_regclass($1)", next(iter(shadow.tables))
    )
    if owner != await conn.fetchval("SELECT current_user::text"):
        await conn.execute(f"SET LOCAL ROLE {owner}")
    await conn.execute(f"DROP SCHEMA IF EXISTS {shadow.schema} CASCADE")  # a leftover, if any
    await conn.execute(f"CREATE SCHEMA {shadow.schema}")
    # its key is built once the shadow is filled (`_key_tracking`): one sort instead of a million inserts into it
    await conn.execute(f"CREATE TABLE {shadow.tracking} (LIKE {shadow.live_tracking} INCLUDING DEFAULTS)")
    await conn.execute(shadow.sql(projection.setup_sql))
    missing = [live for live, name in shadow.tables.items() if not await _exists(conn, f"{shadow.schema}.{name}")]
    if missing:
        raise ValueError(f"{projection.name}: its setup_sql does not create {missing} where a rebuild can point it")


async def _lacks(conn: asyncpg.Connection, projection: Projection, shadow: Shadow) -> bool:
    """Whether the live projection applied an event the shadow has not: only then must the sources be read
    again while it is held. Else every event the shadow lacks is one the live runner has yet to apply: after
    the swap it finds it untracked and applies it to the new tables."""
    return await conn.fetchval(
        f"SELECT EXISTS (SELECT FROM {shadow.live_tracking} t WHERE t.projection = $1 AND NOT EXISTS "
        f"(SELECT FROM {shadow.tracking} s WHERE s.projection = t.projection AND s.event_id = t.event_id))",
        projection.name,
    )


async def _exists(conn: asyncpg.Connection, table: str) -> bool:
    return await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table)


async def _fill(
    conn: ShadowConnection, projection: Projection, sources: Sequence[AsyncSource], seen: list[int], batch: int
) -> int:
    """Apply to the shadow what each source holds past `seen` (moved on to the last position read): the
    kernel's rebuild loop (pages read and decoded ahead while a batch is applied, each batch folded by the
    projection's `apply_many`, its tracking rows inserted as new: each position is read once), on the shadow.
    A source that cannot start past a position is read from its start and what a pass before applied is
    skipped by position (ReadAll's order)."""
    started = [_after(source, seen[i]) for i, source in enumerate(sources)]
    return await refill(cast(asyncpg.Connection, conn), projection, started, batch, seen, fresh=True)


async def _key_tracking(conn: asyncpg.Connection, shadow: Shadow) -> None:
    """The shadow's tracking table gets the live one's key, built over the rows filled: the check that no event
    was applied twice to the new version, and the index the catch-up and the swap compare the live tracking
    rows with (with statistics for their plans). Sources that gave an event id twice fail the rebuild, which
    rolls back: RepeatedEvents names them (the live runner would have applied the first and dropped the rest
    as seen; a rebuild does not choose)."""
    try:
        async with conn.transaction():  # a savepoint: the ids are looked up after the key is refused
            await conn.execute(f"ALTER TABLE {shadow.tracking} ADD PRIMARY KEY (projection, event_id)")
    except asyncpg.UniqueViolationError:
        repeated = await conn.fetch(
            f"SELECT event_id, count(*) AS n FROM {shadow.tracking} GROUP BY projection, event_id "
            "HAVING count(*) > 1 ORDER BY event_id LIMIT 5"
        )
        shown = ", ".join(f"{r['event_id']} ({r['n']} times)" for r in repeated)
        raise RepeatedEvents(f"the sources gave the same event more than once: {shown}") from None
    await conn.execute(f"ANALYZE {shadow.tracking}")


def _after(source: AsyncSource, position: int) -> AsyncSource:
    """`source` from past `position` when it can start there (a dataclass with an `after_position`, as the
    ReadAll client's source, so a catch-up does not read the log again), else `source` as it is."""
    if position > 0 and dataclasses.is_dataclass(source) and hasattr(source, "after_position"):
        return cast(AsyncSource, dataclasses.replace(source, after_position=position))
    return source


async def _swap(conn: asyncpg.Connection, projection: Projection, shadow: Shadow) -> None:
    """Under the projection's rebuild lock: its tracking rows and flag, then each live table replaced by the
    shadow's, with the live table's privileges; the shadow schema dropped. The tables go last, so that readers
    wait on them for as short a time as can be."""
    # the shadow's tracking rows: mostly the live ones already, so only the difference is written
    await conn.execute(
        f"DELETE FROM {shadow.live_tracking} t WHERE t.projection = $1 AND NOT EXISTS "
        f"(SELECT FROM {shadow.tracking} s WHERE s.projection = t.projection AND s.event_id = t.event_id)",
        projection.name,
    )
    await conn.execute(
        f"INSERT INTO {shadow.live_tracking} SELECT * FROM {shadow.tracking} s WHERE NOT EXISTS "
        f"(SELECT FROM {shadow.live_tracking} t WHERE t.projection = s.projection AND t.event_id = s.event_id)"
    )
    await conn.execute(f"DELETE FROM {shadow.live_needs_rebuild} WHERE projection = $1", projection.name)
    for live, name in shadow.tables.items():
        grants = await conn.fetch(
            "SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(a.grantee::regrole::text) END AS grantee, "
            "a.privilege_type FROM pg_class c, aclexplode(c.relacl) a "
            "WHERE c.oid = to_regclass($1) AND a.grantee <> c.relowner",
            live,
        )
        for g in grants:
            await conn.execute(f"GRANT {g['privilege_type']} ON {shadow.schema}.{name} TO {g['grantee']}")
        await conn.execute(f"DROP TABLE {live}")
        await conn.execute(f"ALTER TABLE {shadow.schema}.{name} SET SCHEMA {live.split('.', 1)[0]}")
    await conn.execute(f"DROP SCHEMA {shadow.schema} CASCADE")
