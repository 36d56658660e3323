"""Projections: read models built from events, idempotent and checkpointed.

A projection declares its tables and how it applies events. `apply_batch` is the one place where
events touch a read model: in ONE PostgreSQL transaction it records `(projection, event_id)` in the
tracking table (duplicates are dropped there) and applies the new events, for every projection of a
service whose topics the batch came from, so a redelivered event can never be applied twice. Kafka
offsets are committed only after that transaction (see runner.py).
Unknown event types are skipped (tolerant reader). A passing fault (faults.is_transient: connection lost,
deadlock, lock timeout, cancelled statement, out of resources) is raised for the runner to retry the batch;
only what can never be applied is handed back as dead, with the reason, for the runner to park (parking.py):
a message that cannot be decoded or whose producer's signature is missing or does not verify (the runner
passes its `Verifier`, signing.py), and an event a projection fails to apply alone in a way that is not a
passing fault. Order is kept per stream: once an event of a stream is dead for a projection, the stream's
later events are dead behind it for that projection (as are those of a stream already parked, `heads`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import asyncpg

from services.kernel.db import Pool
from services.kernel.envelope import DecodeError, Envelope, Event, UnknownEvent, parse_message, registry
from services.kernel.faults import describe, is_transient
from services.kernel.parking import behind_reason
from services.kernel.schemas import KernelTables, kernel_tables
from services.kernel.signing import Unverified, Verifier

log = logging.getLogger(__name__)

# the service's own (schemas.py): format with its KernelTables
TRACKING_SQL = """
CREATE SCHEMA IF NOT EXISTS {k.projections_schema};
CREATE TABLE IF NOT EXISTS {k.tracking} (
    projection  text NOT NULL,
    event_id    uuid NOT NULL,
    PRIMARY KEY (projection, event_id)
);
-- projections that joined their service's consumer group after it had read past the start of their
-- topics, so they lack the events before; only a rebuild clears the flag (see runner.flag_joined_late)
CREATE TABLE IF NOT EXISTS {k.needs_rebuild} (
    projection  text PRIMARY KEY,
    since       timestamptz NOT NULL DEFAULT now(),
    reason      text NOT NULL
);
"""


class Projection:
    """Subclass: set `name`, `service`, `topics`, `tables`; write `setup_sql` and `apply` (or `apply_many`)."""

    name: ClassVar[str]
    service: ClassVar[str]  # the owning service: its tracking table is this service's (schemas.py)
    topics: ClassVar[tuple[str, ...]]
    tables: ClassVar[tuple[str, ...]]  # schema-qualified, dropped and rebuilt by `rebuild`
    setup_sql: ClassVar[str]

    async def setup(self, conn: asyncpg.Connection) -> None:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('mieux-schema-setup'))")
            await conn.execute(TRACKING_SQL.format(k=self.kernel))
            await conn.execute(self.setup_sql)

    @property
    def kernel(self) -> KernelTables:
        """Its service's kernel tables (tracking, needs_rebuild)."""
        return kernel_tables(self.service)

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
            await conn.execute(f"DELETE FROM {self.kernel.tracking} WHERE projection = $1", self.name)


@dataclass(eq=False)
class Dead:
    """A message a projection cannot apply, to be parked (and dead-lettered) for that projection."""

    raw: bytes | None
    reason: str
    projection: str = ""  # the projection that cannot apply it
    topic: str = ""  # where it came from
    index: int = -1  # its place in the batch it came in
    env: Envelope | None = None  # None: not an envelope
    behind: Dead | int | None = None  # the parked event of its stream it waits behind: in this batch, or a row id
    letter: bool = True  # its own dead letter (a message that cannot be decoded has one, not one per projection)
    decoding: bool = False  # it could not be decoded (no projection is to blame)
    verified: bool = True  # False: its producer's signature is missing or does not verify


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
BEHIND = "behind a parked event of its stream"  # until it is parked and its head has an id
Heads = Mapping[tuple[str, str], int]  # (projection, stream) -> the parked event the stream waits behind
Entry = tuple[int, str, Envelope | None, Event | None, str]  # (index, topic, envelope, event, why not decoded)


def decode(
    messages: Sequence[Message], verifier: Verifier | None = None, signatures: Sequence[bytes | None] = ()
) -> tuple[list[tuple[str, Envelope, Event]], list[Dead]]:
    """The messages that decode, as (topic, envelope, event) in order, and those that do not (no projection
    named yet: `route_parking` parks them for each projection of their topic). With a `verifier`, a message
    is decoded only once its producer's signature (`signatures`, each message's header) verifies."""
    good: list[tuple[str, Envelope, Event]] = []
    dead: list[Dead] = []
    for i, (topic, raw) in enumerate(messages):
        env = None
        try:
            env = parse_message(raw)
            if verifier is not None:
                verifier.verify(topic, raw, env, signatures[i])
            good.append((topic, env, registry.decode(env)))
        except Unverified as e:
            dead.append(Dead(raw, str(e), topic=topic, index=i, env=env, decoding=True, verified=False))
        except DecodeError as e:
            dead.append(Dead(raw, str(e), topic=topic, index=i, env=env, decoding=True))
    return good, dead


def route(projections: Sequence[Projection], good: Sequence[tuple[str, Envelope, Event]]) -> Routed:
    """Each projection with the events of its own topics, in delivery order."""
    routed = []
    for p in projections:
        mine = [(env, ev) for topic, env, ev in good if topic in p.topics]
        if mine:
            routed.append((p, mine))
    return routed


def entries(
    messages: Sequence[Message], good: Sequence[tuple[str, Envelope, Event]], bad: Sequence[Dead]
) -> list[Entry]:
    """Every message of a batch in order, decoded or not (for the slow lane only)."""
    undecoded = {d.index: d for d in bad}
    decoded = iter(good)
    out: list[Entry] = []
    for i in range(len(messages)):
        if i in undecoded:
            d = undecoded[i]
            out.append((i, d.topic, d.env, None, d.reason))
        else:
            topic, env, ev = next(decoded)
            out.append((i, topic, env, ev, ""))
    return out


def route_parking(
    projections: Sequence[Projection],
    messages: Sequence[Message],
    batch: Sequence[Entry],
    heads: Heads,
    unverified: frozenset[int] = frozenset(),
) -> tuple[Routed, list[Dead]]:
    """`route` when a message cannot be decoded or a stream is parked: each projection with the events it can
    apply now, and what it parks: the undecodable (an envelope's stream is parked behind it) and the events of
    the streams parked already."""
    routed: list[tuple[Projection, list[tuple[Envelope, Event]]]] = []
    dead: list[Dead] = []
    lettered: set[int] = set()
    for p in projections:
        mine = []
        local: dict[str, Dead] = {}
        for i, topic, env, ev, why in batch:
            if topic not in p.topics:
                continue
            raw = messages[i][1]
            head: Dead | int | None = None
            if env is not None:
                head = local.get(env.stream_id)
                if head is None:
                    head = heads.get((p.name, env.stream_id))
            if head is not None:
                reason = behind_reason(head) if isinstance(head, int) else BEHIND
                dead.append(Dead(raw, reason, p.name, topic, i, env, head, verified=i not in unverified))
            elif ev is None:
                d = Dead(raw, why, p.name, topic, i, env, letter=i not in lettered, decoding=True)
                d.verified = i not in unverified
                lettered.add(i)
                dead.append(d)
                if env is not None:
                    local[env.stream_id] = d
            else:
                mine.append((env, ev))
        if mine:
            routed.append((p, mine))
    return routed, dead


AsyncSource = Callable[[], AsyncIterator[Envelope]]


async def _apply_in_tx(conn: asyncpg.Connection, routed: Routed, also: tuple[Any, ...] = ()) -> tuple[int, int, int]:
    """One transaction for every projection of the batch: track, drop duplicates, apply.
    Returns (applied, duplicates, skipped) summed over the projections.

    BEGIN and the projections' rebuild locks go in one round trip (a simple query), so a batch costs
    BEGIN, one tracking insert, each projection's statements and COMMIT. A failed or cancelled batch
    leaves the connection in its transaction only if ROLLBACK cannot be sent, and the pool then closes it."""
    locks = ", ".join(f"pg_advisory_xact_lock_shared(hashtext({literal(lock_key(p))}))" for p, _ in routed)
    await conn.execute(f"BEGIN; SELECT {locks}")
    try:
        counts = await _apply_items(conn, routed)
        if also:
            await conn.execute(*also)
    except Exception:
        await conn.execute("ROLLBACK")
        raise
    await conn.execute("COMMIT")
    return counts


def literal(text: str) -> str:
    """A SQL string literal (standard_conforming_strings is on since PostgreSQL 9.1)."""
    return "'" + text.replace("'", "''") + "'"


async def _apply_items(conn: asyncpg.Connection, routed: Routed) -> tuple[int, int, int]:
    """Track every (projection, event id) in one statement, then apply what is new to each projection. The
    projections are one service's (a runner's, a rebuild's one), so their tracking table is one."""
    if not routed:
        return 0, 0, 0
    first = routed[0][0]
    if any(p.service != first.service for p, _ in routed):
        raise ValueError(f"one batch applies one service's projections, not {sorted({p.service for p, _ in routed})}")
    tracking = first.kernel.tracking
    fresh = {
        (r["projection"], r["event_id"])
        for r in await conn.fetch(
            f"INSERT INTO {tracking} (projection, event_id) SELECT * FROM unnest($1::text[], $2::uuid[]) "
            "ON CONFLICT DO NOTHING RETURNING projection, event_id",
            [p.name for p, items in routed for _ in items],
            [env.event_id for _, items in routed for env, _ in items],
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


async def _apply_fresh(
    conn: asyncpg.Connection, projection: Projection, items: Sequence[tuple[Envelope, Event]]
) -> int:
    """A batch none of whose events the projection's tracking holds (a new version's tracking table, filled
    from the sources once per position): their tracking rows in one plain insert, no conflict to look up and
    no rows sent back, then the projection's `apply_many`. Returns how many were applied (unknown event types
    are tracked and skipped). A repeated event id is caught by the tracking table's key once it is built."""
    await conn.execute(
        f"INSERT INTO {projection.kernel.tracking} (projection, event_id) SELECT * FROM unnest($1::text[], $2::uuid[])",
        [projection.name] * len(items),
        [env.event_id for env, _ in items],
    )
    known = [(env, ev) for env, ev in items if not isinstance(ev, UnknownEvent)]
    if known:
        await projection.apply_many(conn, known)
    return len(known)


async def apply_batch(
    pool: Pool,
    projections: Sequence[Projection],
    messages: Sequence[Message],
    heads: Heads | None = None,
    verifier: Verifier | None = None,
    signatures: Sequence[bytes | None] = (),
) -> BatchResult:
    """Decode a batch and apply it to every projection of its topics in one transaction. A passing fault is
    raised (the runner retries the batch). A batch that fails otherwise is retried one event and one
    projection at a time, to isolate the poison: the projection that cannot apply an event alone hands it
    back as dead, with its stream's later events behind it, and the others still apply it. `heads` are the
    streams parked already: their events are handed back as dead behind them. With a `verifier` (the
    runner's), a message whose producer's signature (`signatures`) is missing or does not verify is handed
    back as dead with the reason, its stream's later events behind it."""
    good, bad = decode(messages, verifier, signatures)
    batch: list[Entry] = []
    if bad or heads:
        batch = entries(messages, good, bad)
        unverified = frozenset(d.index for d in bad if not d.verified)
        routed, dead = route_parking(projections, messages, batch, heads or {}, unverified)
    else:
        routed, dead = route(projections, good), []
    result = BatchResult(dead=dead)
    if not routed:
        return result
    async with pool.acquire() as conn:
        try:
            result.add(await _apply_in_tx(conn, routed))
            return result
        except Exception as e:
            if is_transient(e):
                raise
            names = ",".join(p.name for p, _ in routed)
            log.warning("projections %s: batch failed (%s); applying one by one", names, describe(e))
        where = {id(env): i for i, _, env, ev, _ in batch or entries(messages, good, bad) if ev is not None}
        for p, items in routed:
            local: dict[str, Dead] = {}
            for env, ev in items:
                i = where[id(env)]
                topic, raw = messages[i]
                head = local.get(env.stream_id)
                if head is not None:
                    dead.append(Dead(raw, BEHIND, p.name, topic, i, env, head))
                    continue
                try:
                    result.add(await _apply_in_tx(conn, [(p, [(env, ev)])]))
                except Exception as e:
                    if is_transient(e):
                        raise
                    log.warning("projection %s could not apply %s", p.name, env.event_id, exc_info=e)
                    local[env.stream_id] = Dead(raw, f"apply failed: {describe(e)}", p.name, topic, i, env)
                    dead.append(local[env.stream_id])
    dead.sort(key=lambda d: d.index)
    return result


async def apply_alone(
    conn: asyncpg.Connection, projection: Projection, env: Envelope, event: Event, also: tuple[Any, ...] = ()
) -> tuple[int, int, int]:
    """One event to one projection in a transaction of its own (its tracking row, under the rebuild lock), with
    `also` (a statement and its arguments) in the same transaction: how a parked event is applied again."""
    return await _apply_in_tx(conn, [(projection, [(env, event)])], also)


def lock_key(projection: Projection) -> str:
    return f"mieux-projection:{projection.name}"


async def rebuild(pool: Pool, projection: Projection, sources: Sequence[AsyncSource], batch: int = 2000) -> int:
    """Empty the read model and refill it from the sources' event logs, in ONE transaction.

    The live runner takes the same advisory lock for each batch, so it waits while the rebuild runs
    and then finds every event it brings already tracked: nothing is applied twice. Readers of the
    tables wait for the commit (TRUNCATE locks them) and never see a half-built model. A projection
    flagged as needing a rebuild is unflagged in the same transaction. Signatures are not verified here: the
    sources are the producers' own stores, read over their authenticated `ReadAll`, not the bus, and a
    signature is made when a relay publishes (signing.py).
    """
    total = 0
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", lock_key(projection))
        for table in projection.tables:
            await conn.execute(f"TRUNCATE {table}")
        k = projection.kernel
        await conn.execute(f"DELETE FROM {k.tracking} WHERE projection = $1", projection.name)
        await conn.execute(f"DELETE FROM {k.needs_rebuild} WHERE projection = $1", projection.name)
        total += await refill(conn, projection, sources, batch)
    return total


async def _pages(source: AsyncSource, size: int) -> AsyncIterator[list[Envelope]]:
    """A source's events in lists: the pages it reads (a ReadAll source's `pages`), else `size` at a time."""
    pages = getattr(source, "pages", None)
    if pages is not None:
        async for page in pages():
            yield page
        return
    chunk: list[Envelope] = []
    async for env in source():
        chunk.append(env)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


async def refill(
    conn: asyncpg.Connection,
    projection: Projection,
    sources: Sequence[AsyncSource],
    batch: int,
    seen: list[int] | None = None,
    fresh: bool = False,
) -> int:
    """A rebuild's reading loop: the sources' events, decoded, applied `batch` at a time (each batch folded by
    the projection's `apply_many`). A task reads and decodes the next batches while this one is applied (a
    few ahead at most), so reading the sources and PostgreSQL's work overlap; its error is raised here. With
    `seen` (per source, the last position applied before: a blue/green catch-up), a source's events at or
    before it are skipped, and it is moved on to the last position read. `fresh`: the projection's tracking
    holds none of the events yet (a new version's, filled once per position: `_apply_fresh`)."""
    ahead: asyncio.Queue[list[tuple[Envelope, Event]] | None] = asyncio.Queue(maxsize=READ_AHEAD)

    async def read() -> None:
        try:
            for i, source in enumerate(sources):
                chunk: list[tuple[Envelope, Event]] = []
                after = seen[i] if seen is not None else None  # what an earlier pass applied, fixed for this one
                async for page in _pages(source, batch):
                    if seen is not None:
                        page = [env for env in page if env.position > after]
                        if not page:
                            continue
                        seen[i] = max(seen[i], *(env.position for env in page))
                    chunk.extend((env, registry.decode(env)) for env in page)
                    if len(chunk) >= batch:
                        await ahead.put(chunk)
                        chunk = []
                if chunk:
                    await ahead.put(chunk)
        finally:
            await ahead.put(None)

    total = 0
    with fewer_collections():
        reader = asyncio.create_task(read())
        try:
            while (chunk := await ahead.get()) is not None:
                if fresh:
                    total += await _apply_fresh(conn, projection, chunk)
                else:
                    total += (await _apply_items(conn, [(projection, chunk)]))[0]
            await reader  # its error, if it failed
        finally:
            if not reader.done():
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
    return total


READ_AHEAD = 4  # batches decoded ahead of the one being applied
YOUNG_COLLECTION_EVERY = 100_000  # allocations, while a rebuild reads (Python's default is 700)


@contextlib.contextmanager
def fewer_collections() -> Iterator[None]:
    """Python's cyclic garbage collector, tuned for a rebuild while it runs (the whole process's, put back at
    the end). A rebuild allocates millions of short-lived objects (envelopes, events, rows), none in a cycle,
    that freeing by reference count reclaims; with the default thresholds the batches read ahead outlive a
    few young collections and reach the old generation, so full collections keep scanning every object of
    the process. Collections are made rarer, and what lived before the rebuild is left out of them (frozen,
    then given back at the end), unless the process settled its heap already (then only the rarer
    collections: what it froze stays frozen)."""
    threshold = gc.get_threshold()
    # a process that settled its heap (service.settle_heap) keeps it frozen: freezing again would keep for good
    # whatever it holds now, and unfreezing would give back what it froze at its start
    settled = gc.get_freeze_count() > 0
    if not settled:
        gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION_EVERY, *threshold[1:])
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        if not settled:
            gc.unfreeze()
