"""The projection runner against the real broker and PostgreSQL: duplicates, poison, crashes, rebuild."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import ClassVar

import asyncpg
import pytest
from prometheus_client import REGISTRY
from support import eventually, make_envelope, read_topic, signed

from services.kernel import bus
from services.kernel.bus import dlq_topic, group_lag
from services.kernel.db import Pool
from services.kernel.envelope import Envelope, Event, parse_message, topic_for
from services.kernel.projection import Projection, lock_key, rebuild
from services.kernel.runner import ProjectionRunner
from services.kernel.settings import Settings
from services.ops import parked as parked_ops
from services.requests.projections import text_array

pytestmark = pytest.mark.integration


class ProjectionTestTicked(Event):
    source: ClassVar[str] = "test"
    n: int


def counting_projection(schema: str) -> Projection:
    class StreamCounts(Projection):
        name = f"counts_{schema}"
        service = schema  # its tracking and parking: <schema>_projections, <schema>_parking
        topics = (topic_for(schema),)
        tables = (f"{schema}_views.counts",)
        setup_sql = f"""
        CREATE SCHEMA IF NOT EXISTS {schema}_views;
        CREATE TABLE IF NOT EXISTS {schema}_views.counts (
            stream_id text PRIMARY KEY, events integer NOT NULL, total bigint NOT NULL);
        """

        async def apply(self, conn: asyncpg.Connection, env: Envelope, event: Event) -> None:
            assert isinstance(event, ProjectionTestTicked)
            await conn.execute(
                f"INSERT INTO {schema}_views.counts VALUES ($1, 1, $2) ON CONFLICT (stream_id) DO UPDATE "
                "SET events = counts.events + 1, total = counts.total + EXCLUDED.total",
                env.stream_id,
                event.n,
            )

    return StreamCounts()


def envelope(stream: str, version: int, n: int, schema_version: int = 1) -> Envelope:
    return make_envelope(
        "ProjectionTestTicked", {"n": n}, stream_id=stream, version=version, schema_version=schema_version
    )


async def produce(
    settings: Settings, topic: str, items: Sequence[Envelope | bytes], keys: Sequence[str] | None = None
) -> None:
    """In order: an envelope signed as the topic's producer signs it (support.signed), keyed by its stream; bytes
    (junk) as they are, keyed by `keys` (by position)."""
    sealed = iter(signed(topic, [i for i in items if isinstance(i, Envelope)]))
    p = bus.producer(settings)
    await p.start()
    try:
        for i, item in enumerate(items):
            if isinstance(item, Envelope):
                m = next(sealed)
                await p.send(topic, value=m.value, key=m.key, headers=m.headers)
            else:
                assert keys is not None
                await p.send(topic, value=item, key=keys[i].encode())
        await p.flush()
    finally:
        await p.stop()


async def counts(pool: Pool, schema: str) -> dict[str, tuple[int, int]]:
    rows = await pool.fetch(f"SELECT stream_id, events, total FROM {schema}_views.counts")
    return {r["stream_id"]: (r["events"], r["total"]) for r in rows}


@pytest.fixture
async def runner(pool, schema):
    settings = Settings()
    projection = counting_projection(schema)
    async with pool.acquire() as conn:
        await projection.setup(conn)
    await bus.ensure_topics(settings, [topic_for(schema)])
    r = ProjectionRunner([projection], pool, settings, group=f"test.{schema}")
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


async def test_every_event_delivered_twice_gives_the_single_delivery_read_model(pool, schema, runner) -> None:
    settings = Settings()
    events = [envelope(f"s{s}", v, n=s * 100 + v) for s in range(10) for v in range(1, 21)]
    twice = events + events[::-1]
    await produce(settings, topic_for(schema), twice)

    async def done() -> bool:
        return runner.applied + runner.duplicates >= len(twice)

    await eventually(done, what="both deliveries handled")
    expected: dict[str, tuple[int, int]] = {}
    for e in events:
        c, t = expected.get(e.stream_id, (0, 0))
        expected[e.stream_id] = (c + 1, t + e.data["n"])
    assert await counts(pool, schema) == expected
    assert (runner.applied, runner.duplicates) == (len(events), len(events))


async def test_poison_messages_are_parked_and_dead_lettered_and_the_other_streams_flow(pool, schema, runner) -> None:
    """What can never be applied goes to the DLQ with its reason and is parked; an event of a stream parked
    behind an unknown schema version waits (in order), the other streams flow; once the poison is dropped, the
    event behind it is applied."""
    settings = Settings()
    good1, good2, other = envelope("a", 1, 5), envelope("a", 4, 7), envelope("b", 1, 3)
    unknown_version = envelope("a", 3, 9, schema_version=99)
    values = [good1, b"{not json", unknown_version, json.dumps({"x": 1}).encode(), good2, other]
    await produce(settings, topic_for(schema), values, ["a"] * 5 + ["b"])

    dead = await read_topic(settings, dlq_topic(runner.group), lambda s: len(s) >= 4, raw=True)
    reasons = [dict(m.headers)["reason"].decode() for m in dead]
    assert len(dead) == 4
    assert any("not JSON" in r for r in reasons)
    assert any("schema version 99" in r for r in reasons)
    assert any("not an envelope" in r for r in reasons)
    parked = {
        r["event_id"]: r
        for r in await pool.fetch(f"SELECT * FROM {runner.kernel.parked} WHERE consumer_group = $1", runner.group)
    }
    head = parked[unknown_version.event_id]
    assert f"behind parked #{head['id']}" in reasons
    assert parked[good2.event_id]["reason"] == f"behind parked #{head['id']}"
    assert parked[good2.event_id]["behind"] == head["id"]
    assert len(parked) == 3 and sum(1 for r in parked.values() if r["stream_id"] == "") == 1  # two non-envelopes
    assert await counts(pool, schema) == {"a": (1, 5), "b": (1, 3)}  # good2 waits behind the unknown version
    assert runner.dead == 4

    async with pool.acquire() as conn:
        ids = await parked_ops.request(
            conn, "drop", "tester", parked_id=head["id"], group=runner.group, why="a version nobody reads"
        )
        done = await parked_ops.wait_done(conn, ids, 30)
    assert done[0]["outcome"] == "dropped 1, applied 1"
    assert await counts(pool, schema) == {"a": (2, 12), "b": (1, 3)}


def picky_projection(schema: str, topics: tuple[str, ...]) -> Projection:
    """Sums n per stream, but its table refuses n = 13 (a CHECK constraint): that event cannot be applied."""

    class Picky(Projection):
        name = f"picky_{schema}"
        service = schema
        tables = (f"{schema}_views.picky",)
        setup_sql = f"""
        CREATE SCHEMA IF NOT EXISTS {schema}_views;
        CREATE TABLE IF NOT EXISTS {schema}_views.picky (
            stream_id text PRIMARY KEY, total bigint NOT NULL CHECK (total <> 13));
        """

        async def apply(self, conn: asyncpg.Connection, env: Envelope, event: Event) -> None:
            assert isinstance(event, ProjectionTestTicked)
            await conn.execute(
                f"INSERT INTO {schema}_views.picky VALUES ($1, $2) ON CONFLICT (stream_id) DO UPDATE "
                "SET total = picky.total + EXCLUDED.total",
                env.stream_id,
                event.n,
            )

    Picky.topics = topics
    return Picky()


async def test_projections_sharing_a_group_each_get_their_topics_and_their_own_poison(pool, schema, stack) -> None:
    """One runner, two projections: each applies the events of its own topics; an event one of them
    cannot apply is parked for that projection and goes to the group's DLQ naming it, and the other still
    applies it."""
    stack.new_signing_key(f"{schema}_other")  # the other topic's producer, a service of the test's own
    settings = Settings()
    main, other = topic_for(schema), topic_for(f"{schema}_other")
    counting, picky = counting_projection(schema), picky_projection(schema, (main, other))
    async with pool.acquire() as conn:
        await counting.setup(conn)
        await picky.setup(conn)
    await bus.ensure_topics(settings, [main, other])
    runner = ProjectionRunner([counting, picky], pool, settings, group=f"test.{schema}.shared")
    await runner.start()
    try:
        on_main = [envelope("s1", 1, 5), envelope("s2", 1, 13), envelope("s1", 2, 7)]
        on_other = envelope("s3", 1, 100)
        await produce(settings, main, on_main)
        await produce(settings, other, [on_other])

        async def handled() -> bool:
            return runner.applied >= 6 and runner.dead >= 1  # counts: 3 applied; picky: 3 of 4, 1 dead

        await eventually(handled, what="every event handled by both projections")
        assert await counts(pool, schema) == {"s1": (2, 12), "s2": (1, 13)}
        picky_rows = await pool.fetch(f"SELECT stream_id, total FROM {schema}_views.picky")
        assert {r["stream_id"]: r["total"] for r in picky_rows} == {"s1": 12, "s3": 100}
        dead = await read_topic(settings, dlq_topic(runner.group), lambda s: len(s) >= 1, raw=True)
        assert len(dead) == 1
        headers = {k: v.decode() for k, v in dead[0].headers}
        assert headers["projection"] == picky.name
        assert headers["origin"] == main
        assert "apply failed" in headers["reason"]
        assert parse_message(dead[0].value).event_id == on_main[1].event_id
        parked = await pool.fetch(
            f"SELECT consumer, event_id, state FROM {runner.kernel.parked} WHERE consumer_group = $1", runner.group
        )
        assert [tuple(r.values()) for r in parked] == [(picky.name, on_main[1].event_id, "parked")]
        assert headers["parked"] == str(
            await pool.fetchval(f"SELECT id FROM {runner.kernel.parked} WHERE consumer_group = $1", runner.group)
        )
        tracked = await pool.fetch(
            f"SELECT projection, count(*) AS n FROM {runner.kernel.tracking} WHERE projection = ANY($1::text[]) "
            "GROUP BY 1",
            [counting.name, picky.name],
        )
        assert {r["projection"]: r["n"] for r in tracked} == {counting.name: 3, picky.name: 3}
        assert (runner.applied, runner.dead) == (6, 1)
    finally:
        await runner.stop()


async def test_a_projection_added_to_a_group_that_ran_before_is_flagged_until_rebuilt(pool, schema) -> None:
    """A new group reads its topics from the beginning; a projection that joins a group whose offsets
    are already committed lacks the events behind them. The runner flags it at start, the flag
    survives restarts and live events, and a rebuild fills it and clears the flag."""
    settings = Settings()
    topic, group = topic_for(schema), f"test.{schema}.late"
    counting, picky = counting_projection(schema), picky_projection(schema, (topic,))
    async with pool.acquire() as conn:
        await counting.setup(conn)
        await picky.setup(conn)
    await bus.ensure_topics(settings, [topic])
    event_log = [envelope("s1", v, n=v) for v in range(1, 6)]  # what the source service's ReadAll serves

    async def read_all() -> AsyncIterator[Envelope]:
        for e in event_log:
            yield e

    async def picky_total() -> int | None:
        return await pool.fetchval(f"SELECT total FROM {schema}_views.picky WHERE stream_id = 's1'")

    first = ProjectionRunner([counting], pool, settings, group=group)
    await first.start()
    try:
        assert first.needs_rebuild == []  # a new group starts at the beginning
        await produce(settings, topic, event_log)

        async def committed() -> bool:
            return first.applied == 5 and await group_lag(settings, group, [topic]) == 0

        await eventually(committed, what="the first five events applied and their offsets committed")
    finally:
        await first.stop()

    later = envelope("s1", 6, 100)
    event_log.append(later)
    for _ in range(2):  # the flag outlives a restart, and the live event picky applied meanwhile
        second = ProjectionRunner([counting, picky], pool, settings, group=group)
        await second.start()
        try:
            assert second.needs_rebuild == [picky.name]
            if await picky_total() is None:
                await produce(settings, topic, [later])

            async def live_applied() -> bool:
                return await picky_total() == 100 and (await counts(pool, schema)).get("s1") == (6, 115)

            await eventually(live_applied, what="the live event applied to both projections")
        finally:
            await second.stop()

    assert await rebuild(pool, picky, [read_all]) == 6
    assert await picky_total() == 115
    third = ProjectionRunner([counting, picky], pool, settings, group=group)
    await third.start()
    try:
        assert third.needs_rebuild == []
    finally:
        await third.stop()
    assert (await counts(pool, schema)).get("s1") == (6, 115)  # the other projection was left as it was


async def test_lag_counts_the_events_a_held_back_projection_has_not_applied(pool, schema, runner) -> None:
    """While a rebuild holds the projection's lock, the batch the runner fetched waits: its events are
    lag, though the consumer has fetched past them."""
    settings = Settings()
    projection = runner.projections[0]
    labels = {"group": runner.group, "projection": projection.name}

    def lag() -> float | None:
        return REGISTRY.get_sample_value("mieux_projection_lag_events", labels)

    events = [envelope("held", v, n=v) for v in range(1, 6)]
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", lock_key(projection))  # as a rebuild does

        async def behind() -> bool:
            return lag() == len(events)

        await produce(settings, topic_for(schema), events)
        await eventually(behind, what="the lag to count the five held-back events")
        assert runner.applied == 0

    async def caught_up() -> bool:
        return runner.applied == len(events) and lag() == 0

    await eventually(caught_up, what="the events applied once the lock is released, and the lag back to 0")


class PagedLog:
    """A source read in pages (as a ReadAll source is): `pages` pages of `size` events (streams of one event
    each), then it fails if told to."""

    def __init__(self, pages: int, size: int, fails: bool = False) -> None:
        self.count, self.size, self.fails = pages, size, fails

    async def pages(self) -> AsyncIterator[list[Envelope]]:
        for p in range(self.count):
            yield [envelope(f"p{p}-{i}", 1, n=1) for i in range(self.size)]
        if self.fails:
            raise ConnectionError("the source went away")

    async def __call__(self) -> AsyncIterator[Envelope]:
        async for page in self.pages():
            for env in page:
                yield env


async def test_a_rebuild_whose_source_fails_raises_and_leaves_the_model_as_it_was(pool, schema) -> None:
    """The rebuild's reading loop reads ahead in a task of its own: its error ends the rebuild, whose
    transaction is rolled back, after batches were applied in it."""
    projection = counting_projection(schema)
    async with pool.acquire() as conn:
        await projection.setup(conn)
    log = [envelope("s1", v, n=v) for v in range(1, 4)]

    async def read_all() -> AsyncIterator[Envelope]:
        for e in log:
            yield e

    assert await rebuild(pool, projection, [read_all]) == 3
    before = await counts(pool, schema)
    tracked = f"SELECT count(*) FROM {projection.kernel.tracking} WHERE projection = $1"
    assert await pool.fetchval(tracked, projection.name) == 3
    with pytest.raises(ConnectionError):
        await rebuild(pool, projection, [read_all, PagedLog(pages=5, size=1000, fails=True)], batch=2000)
    assert await counts(pool, schema) == before
    assert await pool.fetchval(tracked, projection.name) == 3
    # a source read in pages and one read event by event, one after the other
    assert await rebuild(pool, projection, [PagedLog(pages=3, size=5), read_all], batch=4) == 18
    after = await counts(pool, schema)
    assert (len(after), after["s1"], after["p2-4"]) == (16, (3, 6), (1, 1))


async def test_a_text_array_literal_gives_back_the_texts(pool) -> None:
    """RequestRegister passes each row's texts into unnest as one array literal."""
    texts = ["plain", "", "NULL", 'a "quoted", {braced} word', "back\\slash\\", "é ü", " spaced "]
    assert await pool.fetchval("SELECT $1::text::text[]", text_array(texts)) == texts
    assert await pool.fetchval("SELECT $1::text::text[]", text_array([])) == []
