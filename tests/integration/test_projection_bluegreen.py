"""A rebuild without downtime (kernel/bluegreen.py) against the real PostgreSQL and broker: the requests
register, rebuilt beside the live one from its source's ReadAll (served by the kernel's EventLog servicer,
read with the kernel's client) while its live runner applies events from the bus and a reader queries it
through the service's query code (requests/queries.py) on one connection, so its prepared statements outlive
the swap. The hooks of `rebuild_beside` make the interleaving deterministic: the live events come while it
waits before holding the live projection, and a query is made to wait on the swap before it commits.

Each test has a database of its own (`own_database`): the register's tables are the service's own."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import asyncpg
import pytest
from mieux.common.v1 import eventlog_pb2_grpc
from support import eventually, grpc_double, own_database, publish

from services.kernel import bus
from services.kernel.bluegreen import RebuildRunning, RepeatedEvents, rebuild_beside
from services.kernel.db import Pool, create_pool
from services.kernel.envelope import Envelope, topic_for
from services.kernel.eventlog import EventLogServicer, sources_of
from services.kernel.projection import Projection, apply_batch, rebuild
from services.kernel.runner import ProjectionRunner
from services.kernel.settings import SERVICE_PORTS, Settings
from services.kernel.store import EventStore, Metadata
from services.ops.devstack import DevStack
from services.requests.events import RequestApproved, RequestReceived
from services.requests.projections import RequestRegister
from services.requests.queries import RequestsQueries

pytestmark = pytest.mark.integration

BEFORE = 3000  # requests in the model before the rebuild
PER_APPEND = 500


def register_on(schema: str) -> Projection:
    """The requests register as the service runs it, following this test's topic (the store of its own)."""

    class Register(RequestRegister):
        topics = (topic_for(schema),)

    return Register()


def received(n: int) -> RequestReceived:
    return RequestReceived(
        request_id=f"req-{n:05}",
        partner="MG",
        partner_kind="country",
        partner_name="Madagascar",
        institution="ministry",
        institution_type="ministry",
        received_on=date(2017, 1, 1) + timedelta(days=n % 365),
        title=f"request {n}",
        themes=("energy",),
    )


async def append(store: EventStore, first: int, count: int) -> None:
    """Requests `first`..`first + count - 1` received, PER_APPEND to a stream (the register keys on the id)."""
    for start in range(first, first + count, PER_APPEND):
        events = [received(n) for n in range(start, min(start + PER_APPEND, first + count))]
        await store.append(f"batch-{start}", 0, events, Metadata(actor="tester"))


async def stored_after(store: EventStore, position: int) -> list[Envelope]:
    out: list[Envelope] = []
    while batch := await store.read_all(position, 1000):
        out.extend(batch)
        position = batch[-1].position
    return out


async def rows(pool: Pool) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in await pool.fetch("SELECT * FROM requests_views.requests ORDER BY request_id")]


@dataclass
class Reader:
    """Queries the register without pause through the service's query code until stopped: every answer must
    come, and never with fewer requests than the one before. Answers are counted per phase."""

    queries: RequestsQueries
    phase: str = "before"
    totals: dict[str, list[int]] = field(default_factory=dict)
    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    answers: int = 0  # in all phases

    def start(self) -> None:
        self.task = asyncio.create_task(self.run())

    def saw(self, phase: str, total: int | None = None) -> bool:
        """Whether a query starting in `phase` was answered (with `total` requests, the last one); a failed
        query fails here at once."""
        if self.task is not None and self.task.done():
            self.task.result()
            raise AssertionError("the reader stopped")
        answers = self.totals.get(phase)
        return bool(answers) and (total is None or answers[-1] == total)

    async def run(self) -> None:
        last = 0
        while not self.stopped.is_set():
            phase = self.phase  # as the query starts
            # the service's page (prepared; its total is an estimate past one page) and an exact count, both
            # statements prepared on the one connection before the swap
            page, _, _ = await self.queries.page({}, "", 20)
            total = await self.queries.pool.fetchval("SELECT count(*) FROM requests_views.requests")
            assert total >= last, f"{total} requests after {last} ({self.phase})"
            assert len(page) == min(total, 20)
            self.totals.setdefault(phase, []).append(total)
            self.answers += 1
            last = total


@contextlib.asynccontextmanager
async def the_stack(
    stack: DevStack, schema: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Pool, EventStore]]:
    """A database of its own with the test's event store, the register set up, and the store's ReadAll served
    where the kernel's client looks for the service `schema`."""
    async with own_database(stack.database_url) as dsn:
        pool = await create_pool(dsn, max_size=10)
        try:
            store = EventStore(pool, schema)
            await store.setup()
            async with grpc_double(eventlog_pb2_grpc.add_EventLogServicer_to_server, EventLogServicer(store)) as port:
                monkeypatch.setenv(f"MIEUX_{schema.upper()}_ADDR", f"127.0.0.1:{port}")
                monkeypatch.setitem(SERVICE_PORTS, schema, port)  # a service of the test's own
                yield pool, store
        finally:
            await pool.close()


async def waiting_on_a_lock(pool: Pool, sql: str) -> bool:
    """Whether a session of this database is waiting on a lock in a statement containing `sql`."""
    return await pool.fetchval(
        "SELECT count(*) > 0 FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock' AND position($1 in query) > 0",
        sql,
    )


async def test_queries_answer_all_through_a_rebuild_and_the_swap_gives_what_a_fresh_rebuild_gives(
    stack: DevStack, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings()
    topic = topic_for(schema)
    async with the_stack(stack, schema, monkeypatch) as (pool, store):
        projection = register_on(schema)
        sources = sources_of(projection, settings, "ops")
        await append(store, 0, BEFORE)
        async with pool.acquire() as conn:
            await projection.setup(conn)
        assert await rebuild(pool, projection, sources) == BEFORE  # the model as it is before
        await bus.ensure_topics(settings, [topic])
        runner = ProjectionRunner([projection], pool, settings, group=f"test.{schema}.bluegreen")
        reading = await create_pool(pool.dsn, max_size=1)  # one connection: its prepared statements outlive the swap
        reader = Reader(RequestsQueries(reading))
        await runner.start()
        reader.start()
        try:
            await eventually(lambda: answered(reader, "before"), what="a query before the rebuild")
            live: list[Envelope] = []
            unpublished: list[Envelope] = []

            async def built() -> None:
                """The shadow is full: live events reach the live model meanwhile, and some stay in the store
                only (the bus has not brought them yet), for the catch-up to bring."""
                reader.phase = "built"
                at = await store.last_position()
                await append(store, BEFORE, 200)
                await store.append(
                    "req-00007", 0, [approved(7)], Metadata(actor="tester")
                )  # a change to a row the shadow has
                live.extend(await stored_after(store, at))
                await publish(settings, topic, live)

                async def applied_live() -> bool:
                    return runner.applied >= len(live) and reader.saw("built", BEFORE + 200)

                await eventually(applied_live, what="the live events applied to the live model and read")
                at = await store.last_position()
                await append(store, BEFORE + 200, 100)
                unpublished.extend(await stored_after(store, at))

            waited: list[int] = []  # answers before the one to the query that waited on the swap

            async def swapping() -> None:
                """Swapped, not committed: the reader's query waits on the swap."""
                await eventually(
                    lambda: waiting_on_a_lock(pool, "requests_views.requests"), what="the reader waiting on the swap"
                )
                waited.append(reader.answers)
                reader.phase = "after"

            reader.phase = "building"
            done = await rebuild_beside(pool, projection, sources, 700, built=built, swapping=swapping)
            assert (done.events, done.caught_up) == (BEFORE + 301, 301)
            await eventually(lambda: answered(reader, "after"), what="a query after the swap")
            assert reader.answers > waited[0]  # the query that waited on the swap got its answer
            assert reader.totals["after"][0] == BEFORE + 300  # the new version, caught up past the live one

            # the events the catch-up brought come from the bus now: already applied; a new one is applied
            await publish(settings, topic, unpublished)
            await eventually(
                lambda: at_least(runner.duplicates, len(unpublished)), what="the caught-up events found applied"
            )
            await store.append("req-late", 0, [received(99999)], Metadata(actor="tester"))
            late = await stored_after(store, unpublished[-1].position)
            await publish(settings, topic, late)
            await eventually(lambda: answered(reader, "after", BEFORE + 301), what="a live event after the swap")
        finally:
            reader.stopped.set()
            if reader.task is not None:
                await asyncio.wait({reader.task})
            await runner.stop()
            await reading.close()
        assert reader.task is not None
        reader.task.result()  # every answer came, none with fewer requests than the one before
        for phase in ("before", "building", "built", "after"):
            assert reader.totals.get(phase), f"no query answered while {phase}"
        assert reader.totals["built"][0] == BEFORE  # the live version while the shadow was full, not swapped
        assert min(reader.totals["building"]) == BEFORE

        after = await rows(pool)
        assert len(after) == BEFORE + 301
        assert {r[0]: r[10] for r in after}["req-00007"] == "approved"
        tracked = await pool.fetchval(
            f"SELECT count(*) FROM {projection.kernel.tracking} WHERE projection = $1", projection.name
        )
        assert await rebuild(pool, projection, sources) == BEFORE + 302 == tracked  # a fresh rebuild ...
        assert await rows(pool) == after  # ... gives the same rows
        assert await pool.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'mieux_next_%'") == 0


def approved(n: int) -> RequestApproved:
    return RequestApproved(
        request_id=f"req-{n:05}",
        partner="MG",
        partner_kind="country",
        partner_name="Madagascar",
        region="africa_ces",
        title=f"request {n}",
        approved_on=date(2017, 6, 1),
    )


async def answered(reader: Reader, phase: str, total: int | None = None) -> bool:
    return reader.saw(phase, total)


async def at_least(value: int, target: int) -> bool:
    return value >= target


@pytest.mark.parametrize("where", ["built", "swapping"])
async def test_a_rebuild_cancelled_midway_leaves_the_live_model_as_it_was(
    stack: DevStack, schema: str, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """Cancelled with the shadow full, or with the tables swapped but not committed: the live model, its
    tracking rows and its rebuild flag are as they were, no shadow is left, and the next rebuild runs. While
    one rebuild runs, another of the same projection is refused."""
    settings = Settings()
    async with the_stack(stack, schema, monkeypatch) as (pool, store):
        projection = register_on(schema)
        sources = sources_of(projection, settings, "ops")
        await append(store, 0, 500)
        async with pool.acquire() as conn:
            await projection.setup(conn)
        await rebuild(pool, projection, sources)
        await append(store, 500, 100)  # the rebuild would bring them
        await pool.execute(
            f"INSERT INTO {projection.kernel.needs_rebuild} (projection, reason) VALUES ($1, 'test')", projection.name
        )
        # a leftover shadow (as if made by hand): the rebuild drops it
        await pool.execute(
            f"CREATE SCHEMA mieux_next_{projection.name}; CREATE TABLE mieux_next_{projection.name}.x ()"
        )
        before, tracked = await rows(pool), await tracking(pool, projection)
        reached = asyncio.Event()

        async def stop_here() -> None:
            reached.set()
            await asyncio.Event().wait()  # until cancelled

        hooks: dict[str, Callable[[], Awaitable[None]]] = {where: stop_here}
        task = asyncio.create_task(rebuild_beside(pool, projection, sources, **hooks))
        await asyncio.wait_for(reached.wait(), 60)
        with pytest.raises(RebuildRunning):
            await rebuild_beside(pool, projection, sources)
        task.cancel()
        await asyncio.wait({task})
        assert task.cancelled()

        assert await rows(pool) == before
        assert await tracking(pool, projection) == tracked
        assert await pool.fetchval(f"SELECT count(*) FROM {projection.kernel.needs_rebuild}") == 1
        assert await pool.fetchval("SELECT to_regnamespace($1) IS NULL", f"mieux_next_{projection.name}") is False

        done = await rebuild_beside(pool, projection, sources)
        assert done.events == 600 and len(await rows(pool)) == 600
        assert await pool.fetchval(f"SELECT count(*) FROM {projection.kernel.needs_rebuild}") == 0
        assert await pool.fetchval("SELECT to_regnamespace($1) IS NULL", f"mieux_next_{projection.name}") is True


async def test_a_source_that_repeats_an_event_fails_the_rebuild_and_changes_nothing(
    stack: DevStack, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new version's tracking rows are inserted as new (each position is read once) and keyed once it is
    filled: an event delivered twice by the sources (here a second source of the same log under other
    positions) is refused by that key, the rebuild rolls back, and the live model and its tracking are as
    they were."""
    async with the_stack(stack, schema, monkeypatch) as (pool, store):
        projection = register_on(schema)
        await append(store, 0, 300)
        async with pool.acquire() as conn:
            await projection.setup(conn)
        log = await stored_after(store, 0)
        await rebuild(pool, projection, [listed(log)])
        before, tracked = await rows(pool), await tracking(pool, projection)
        again = [env.model_copy(update={"position": env.position + len(log)}) for env in log[:1]]
        with pytest.raises(RepeatedEvents, match=f"{log[0].event_id} \\(2 times\\)"):
            await rebuild_beside(pool, projection, [listed(log), listed(again)])
        assert await rows(pool) == before
        assert await tracking(pool, projection) == tracked
        assert await pool.fetchval("SELECT to_regnamespace($1) IS NULL", f"mieux_next_{projection.name}") is True
        assert (await rebuild_beside(pool, projection, [listed(log)])).events == 300


def listed(envelopes: list[Envelope]) -> Callable[[], AsyncIterator[Envelope]]:
    async def source() -> AsyncIterator[Envelope]:
        for env in envelopes:
            yield env

    return source


async def tracking(pool: Pool, projection: Projection) -> set[Any]:
    return {
        r[0]
        for r in await pool.fetch(
            f"SELECT event_id FROM {projection.kernel.tracking} WHERE projection = $1",
            projection.name,
        )
    }


@dataclass
class StoreSource:
    """A source that starts past a position, as the ReadAll client's can (`after_position`): what the
    catch-up asks of it is recorded."""

    store: EventStore
    asked: list[int]
    after_position: int = 0

    async def __call__(self) -> AsyncIterator[Envelope]:
        self.asked.append(self.after_position)
        for env in await stored_after(self.store, self.after_position):
            yield env


@pytest.mark.parametrize("live_applied", [0, 4])
async def test_the_held_catch_up_reads_only_when_the_live_projection_is_ahead(
    stack: DevStack, schema: str, monkeypatch: pytest.MonkeyPatch, live_applied: int
) -> None:
    """Ten events are stored once the shadow is built. When the live runner has applied some of them, the
    rebuild reads the source again while it holds the live projection, from where it stopped (a source that
    can start past a position is not read from the start), and the swapped model has all ten. When it has
    applied none, the source is not read again: the ten are left to the live runner, which applies them
    after the swap to the new tables."""
    async with the_stack(stack, schema, monkeypatch) as (pool, store):
        projection = register_on(schema)
        topic = projection.topics[0]
        await append(store, 0, 500)
        asked: list[int] = []
        end: list[int] = []
        later: list[Envelope] = []
        foreign = Envelope.model_validate(
            {**(await stored_after(store, 0))[0].model_dump(), "event_id": uuid.uuid4(), "position": 0}
        )

        async def built() -> None:
            end.append(await store.last_position())
            await append(store, 500, 10)
            later.extend(await stored_after(store, end[0]))
            # the live runner's path, for the first `live_applied` of them, and an event on the topic that is
            # not in the store (another producer's, a test's): the rebuild cannot bring it
            delivered = later[:live_applied] + [foreign] * bool(live_applied)
            await apply_batch(pool, [projection], [(topic, e.to_bytes()) for e in delivered])

        done = await rebuild_beside(pool, projection, [StoreSource(store, asked)], built=built)
        caught_up = 10 if live_applied else 0
        assert (done.events, done.caught_up) == (500 + caught_up, caught_up)
        assert asked == ([0, end[0], end[0]] if live_applied else [0, end[0]])  # the build, the catch-ups
        assert len(await rows(pool)) == 500 + caught_up
        # the tracking rows are the new version's: the foreign event's is gone with what it did
        stored = {e.event_id for e in await stored_after(store, 0)}
        assert await tracking(pool, projection) == (stored if live_applied else stored - set(e.event_id for e in later))
        # what the bus brings next: applied if the rebuild did not catch it up, else found applied
        result = await apply_batch(pool, [projection], [(topic, e.to_bytes()) for e in later])
        assert (result.applied, result.duplicates) == (10 - caught_up, caught_up)
        assert len(await rows(pool)) == 510


async def test_the_swapped_tables_keep_the_live_ones_owner_and_grants(
    stack: DevStack, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As deployed (deploy/postgres): a service's role owns its read models and grants reading them; the
    rebuild, run by an operator's role (here the superuser), creates the next version as the live tables'
    owner, which it may (and must) be to drop them, and gives it the live tables' grants."""
    owner, reader = f"{schema}_owner", f"{schema}_reader"
    try:
        async with the_stack(stack, schema, monkeypatch) as (pool, store):
            projection = register_on(schema)
            k = projection.kernel
            sources = sources_of(projection, Settings(), "ops")
            await append(store, 0, 50)
            async with pool.acquire() as conn:
                await projection.setup(conn)
                db = await conn.fetchval("SELECT current_database()")
                await conn.execute(
                    f"CREATE ROLE {owner}; CREATE ROLE {reader}; GRANT CREATE ON DATABASE {db} TO {owner}; "
                    f"GRANT USAGE, CREATE ON SCHEMA requests_views TO {owner}; "
                    f"GRANT USAGE ON SCHEMA {k.projections_schema} TO {owner}; "
                    f"GRANT SELECT, INSERT, DELETE ON {k.tracking}, {k.needs_rebuild} TO {owner}; "
                    f"ALTER TABLE requests_views.requests OWNER TO {owner}; "
                    f"GRANT SELECT ON requests_views.requests TO {reader}"
                )
            done = await rebuild_beside(pool, projection, sources)
            assert done.events == 50 and len(await rows(pool)) == 50
            table = await pool.fetchrow(
                "SELECT relowner::regrole::text AS owner, has_table_privilege($1, oid, 'SELECT') AS reads, "
                "has_table_privilege($1, oid, 'INSERT') AS writes FROM pg_class "
                "WHERE oid = 'requests_views.requests'::regclass",
                reader,
            )
            assert (table["owner"], table["reads"], table["writes"]) == (owner, True, False)
            assert await pool.fetchval("SELECT current_user") != owner  # the role was set for the rebuild only
    finally:
        admin = await asyncpg.connect(stack.database_url)
        try:
            await admin.execute(f"DROP ROLE IF EXISTS {owner}, {reader}")  # their database is gone
        finally:
            await admin.close()
