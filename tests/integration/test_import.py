"""Bulk import (importing.py) against the real PostgreSQL and broker: what it stores equals what `append`
stores, the relay publishes it once, and every invariant of `append` refuses a batch with nothing stored."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import ClassVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import eventually, read_topic

from services.kernel.db import Pool
from services.kernel.envelope import Event, topic_for
from services.kernel.importing import EventRow, ImportRefused, export
from services.kernel.relay import Relay
from services.kernel.settings import Settings
from services.kernel.store import EventStore, Metadata
from services.ops.devstack import DevStack

pytestmark = pytest.mark.integration
META = Metadata(actor="tester")
AT = datetime(2012, 5, 1, tzinfo=UTC)


class Counted(Event, register=False):
    source: ClassVar[str] = "test"
    n: int


@contextlib.asynccontextmanager
async def fresh_store(pool: Pool, stack: DevStack) -> AsyncIterator[EventStore]:
    """Another empty store of a schema of its own (with a signing key, for its relay), dropped at the end."""
    name = f"t_{uuid.uuid4().hex[:10]}"
    stack.new_signing_key(name)
    store = EventStore(pool, name)
    await store.setup()
    try:
        yield store
    finally:
        await pool.execute(f"DROP SCHEMA {name} CASCADE")


def row(stream: str, version: int, n: int = 0, command: str | None = None, count: int = 1) -> EventRow:
    return EventRow(
        uuid.uuid4(), stream, version, "Counted", 1, f'{{"n": {n}}}', AT, AT, "corr", "", "importer",
        command, None if command is None else "hash", None if command is None else count,
    )  # fmt: skip


async def rows_of(store: EventStore) -> list[tuple[int, EventRow]]:
    return [pe async for pe in export(store)]


async def stored_count(store: EventStore) -> int:
    return await store.pool.fetchval(f"SELECT count(*) FROM {store.schema}.events")


async def test_imported_events_equal_the_appended_ones_and_the_relay_publishes_each_once(
    store: EventStore, pool: Pool, stack: DevStack
) -> None:
    # the source: appended as commands do, one event and several per command, streams interleaved
    for v in range(3):
        for s in range(4):
            await store.append(f"s{s}", v, [Counted(n=v)], META, command_id=f"c{s}-{v}", command_hash=f"h{s}{v}")
    await store.append("multi", 0, [Counted(n=1), Counted(n=2), Counted(n=3)], META, "cm", "hm")
    await store.append("plain", 0, [Counted(n=9)], META)
    source = await rows_of(store)
    assert len(source) == 16
    lines = [e.to_line(store.service, p) for p, e in source]

    async with fresh_store(pool, stack) as target:
        parsed = [EventRow.from_line(line) for line in lines]
        assert {src for src, _ in parsed} == {store.service}
        events = [e for _, e in parsed]
        async with target.importer() as imp:  # two batches: the second continues streams of the first
            first = await imp.import_batch(events[:7])
            second = await imp.import_batch(events[7:])
        assert (first.count, first.last_position, second.count, second.last_position) == (7, 7, 9, 16)

        imported = await rows_of(target)
        assert [p for p, _ in imported] == list(range(1, 17))  # gap-free, in the file's order
        assert [e for _, e in imported] == [e for _, e in source]  # every column, command ones included
        for s in ("s0", "multi", "plain"):
            assert [e.model_dump(exclude={"source"}) for e in await target.read_stream(s)] == [
                e.model_dump(exclude={"source"}) for e in await store.read_stream(s)
            ]
        # a command retried after the migration answers with its first result, as it would have before
        again = await target.append("multi", 0, [Counted(n=1)], META, "cm", "hm")
        assert again.duplicate and (again.first_version, again.last_version) == (1, 3)

        # the relay publishes the imported events as any other, each once, onto the target's topic
        settings = Settings()
        relay = Relay(target, settings)
        task = asyncio.create_task(relay.run())
        try:
            saved = f"SELECT position FROM {target.schema}.relay_state"
            await eventually(lambda: _published(pool, saved, 16), what="the relay's checkpoint at 16")
            ids = {e.event_id for _, e in imported}
            seen = await read_topic(settings, topic_for(target.service), lambda s: ids <= {e.event_id for e in s})
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert Counter(e.event_id for e in seen) == Counter(ids)
    assert [(e.stream_id, e.stream_version) for e in seen if e.stream_id == "multi"] == [
        ("multi", v) for v in (1, 2, 3)
    ]


async def _published(pool: Pool, sql: str, position: int) -> bool:
    return await pool.fetchval(sql) == position


async def refused(store: EventStore, events: list[EventRow], index: int, reason: str) -> None:
    """The batch is refused naming event `index`, and the store is as it was."""
    before = await rows_of(store)
    with pytest.raises(ImportRefused, match=reason) as refusal:
        await store.import_events(events)
    assert refusal.value.index == index and refusal.value.event == events[index]
    assert await rows_of(store) == before


async def test_a_version_conflict_is_refused_with_nothing_stored(store: EventStore) -> None:
    await store.append("a", 0, [Counted(n=1), Counted(n=2)], META)
    fine = [row("new", 1), row("new", 2)]
    # the stream is further on than the batch's first version (the unique index, found after the fact)
    await refused(store, [*fine, row("a", 2)], 2, "not at the expected version 1")
    # a gap after the stored version, a new stream not starting at 1
    await refused(store, [*fine, row("a", 4)], 2, "not at the expected version 3")
    await refused(store, [*fine, row("b", 2)], 2, "not at the expected version 1")
    # within the batch: a gap, a version twice, versions out of the batch's order
    await refused(store, [*fine, row("a", 3), row("a", 5)], 3, "previous event in the batch has version 3")
    await refused(store, [row("new", 1), row("new", 1)], 1, "previous event in the batch has version 1")
    await refused(store, [row("new", 2), row("new", 1)], 1, "previous event in the batch has version 2")
    result = await store.import_events([*fine, row("a", 3)])  # the same, right, goes in
    assert result.count == 3 and [e.stream_version for e in await store.read_stream("a")] == [1, 2, 3]


async def test_a_reused_command_id_is_refused_with_nothing_stored(store: EventStore) -> None:
    await store.append("a", 0, [Counted(n=1)], META, command_id="cmd-1", command_hash="h")
    await refused(store, [row("x", 1, command="cmd-2"), row("y", 1, command="cmd-1")], 1, "cmd-1 is stored already")
    await refused(store, [row("x", 1, command="cmd-2"), row("y", 1, command="cmd-2")], 1, "in the batch twice")
    # a command's events all in the batch, and a count only with a command id
    await refused(store, [row("x", 1, command="cmd-3", count=2)], 0, "not all in the batch")
    bad = row("x", 1)._replace(command_events=1)
    await refused(store, [bad], 0, "without a command id")


async def test_a_duplicate_event_id_is_refused_with_nothing_stored(store: EventStore) -> None:
    await store.append("a", 0, [Counted(n=1)], META)
    stored_id = (await store.read_stream("a"))[0].event_id
    twice = row("x", 1)
    await refused(store, [twice, row("x", 2)._replace(event_id=twice.event_id)], 1, "in the batch twice")
    await refused(store, [row("x", 1), row("a", 2)._replace(event_id=stored_id)], 1, "stored already")
    async with store.importer() as imp:  # one importer remembers what it imported in its earlier batches
        await imp.import_batch([twice])
        with pytest.raises(ImportRefused, match="imported before"):
            await imp.import_batch([row("x", 2)._replace(event_id=twice.event_id)])
    assert await stored_count(store) == 2


async def test_data_must_be_a_json_object_of_bounded_size(store: EventStore) -> None:
    await refused(store, [row("x", 1)._replace(data="[1, 2]")], 0, "not a JSON object")
    # data taken from a file as text: jsonb's input refuses it, and the event is named all the same
    await refused(store, [row("x", 1), row("x", 2)._replace(data='{"a": }')], 1, "not JSON")
    huge = '{"text": "' + "x" * (256 * 1024) + '"}'
    await refused(store, [row("x", 1), row("x", 2)._replace(data=huge)], 1, "over 262,144 bytes")


async def test_an_import_beside_appends_one_writer_wins_and_a_reader_skips_nothing(store: EventStore) -> None:
    await store.append("shared", 0, [Counted(n=0)], META)
    big = [row(f"bulk-{k % 500}", k // 500 + 1, k) for k in range(5_000)]
    outcome = await asyncio.gather(
        store.import_events([*big, row("shared", 2)]),
        *(store.append(f"single-{k}", 0, [Counted(n=k)], META) for k in range(40)),
        store.append("shared", 1, [Counted(n=1)], META),
        return_exceptions=True,
    )
    imported, shared = outcome[0], outcome[-1]
    # the same version of one stream, by an import and an append at once: exactly one of them has it
    assert isinstance(imported, Exception) != isinstance(shared, Exception), outcome
    assert not [r for r in outcome[1:-1] if isinstance(r, Exception)]
    assert [e.stream_version for e in await store.read_stream("shared")] == [1, 2]
    expected = 42 + (0 if isinstance(imported, Exception) else 5_000)
    assert await stored_count(store) == expected


async def test_a_reader_following_the_store_during_imports_and_appends_skips_nothing(store: EventStore) -> None:
    from services.kernel.horizon import HighWaterMark

    read: list[int] = []
    end: list[int] = []  # the store's last position, once every writer has ended

    async def follow() -> None:  # as the relay reads: up to the high-water mark, position after position
        hwm = HighWaterMark(store.schema)
        async with store.pool.acquire() as conn:
            while not (end and read and read[-1] >= end[0]):
                got = await store.read_all(read[-1] if read else 0, 1000, hwm, conn)
                read.extend(e.position for e in got)
                await asyncio.sleep(0 if got else 0.005)

    async def imports() -> None:
        async with store.importer() as imp:
            for b in range(6):
                await imp.import_batch([row(f"bulk-{b}-{k % 50}", k // 50 + 1, k) for k in range(1_000)])

    async def appends() -> None:
        for k in range(60):
            await store.append(f"single-{k}", 0, [Counted(n=k)], META)

    reader = asyncio.create_task(follow())
    await asyncio.gather(imports(), appends())
    end.append(await store.last_position())
    await asyncio.wait_for(reader, 60)
    stored = [p for p, _ in await rows_of(store)]
    assert len(stored) == 6_060
    assert read == stored  # every position, once, in order: none passed over while a writer still held it


# --- a property: random batches, some spoilt, imported batch by batch -------------------------------------------


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[EventRow], list[int], tuple[str, int] | None]:
    """Events of a few streams interleaved at random (each event its own command, some without), cut into
    batches at random; perhaps one event spoilt (its version, or an id or command id taken from another)."""
    lengths = draw(st.lists(st.integers(1, 6), min_size=1, max_size=5))
    order = draw(st.permutations([s for s, n in enumerate(lengths) for _ in range(n)]))
    versions: Counter[int] = Counter()
    events = []
    for k, s in enumerate(order):
        versions[s] += 1
        command = f"c{k}" if draw(st.booleans()) else None
        events.append(row(f"s{s}", versions[s], k, command))
    cuts = sorted(draw(st.sets(st.integers(1, len(events) - 1), max_size=3))) if len(events) > 1 else []
    spoil = draw(st.none() | st.tuples(st.sampled_from(["version", "id", "command"]), st.integers(0, len(events) - 1)))
    if spoil is not None:
        kind, i = spoil
        other = events[(i + 1) % len(events)]
        if kind == "version":
            events[i] = events[i]._replace(stream_version=events[i].stream_version + 1)
        elif kind == "id" and len(events) > 1:
            events[i] = events[i]._replace(event_id=other.event_id)
        elif kind == "command" and len(events) > 1 and other.command_id and events[i].command_id:
            events[i] = events[i]._replace(command_id=other.command_id)
        else:
            spoil = None
    return events, cuts, spoil


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=histories())
async def test_random_batches_are_stored_whole_or_not_at_all(
    history: tuple[list[EventRow], list[int], tuple[str, int] | None], pool: Pool, stack: DevStack
) -> None:
    events, cuts, spoil = history
    bounds = [0, *cuts, len(events)]
    batches = [events[a:b] for a, b in itertools.pairwise(bounds)]
    async with fresh_store(pool, stack) as store:
        stored: list[EventRow] = []
        async with store.importer() as imp:
            for batch in batches:
                try:
                    await imp.import_batch(batch)
                except ImportRefused:
                    break
                stored.extend(batch)
        imported = await rows_of(store)
        assert [e for _, e in imported] == stored  # the batches before the refused one, in order
        assert [p for p, _ in imported] == list(range(1, len(stored) + 1)) or stored == []
        last: dict[str, int] = {}
        for e in stored:  # every stream's versions follow one another from 1
            assert e.stream_version == last.get(e.stream_id, 0) + 1
            last[e.stream_id] = e.stream_version
        assert len({e.event_id for e in stored}) == len(stored)
        commands = [e.command_id for e in stored if e.command_id]
        assert len(set(commands)) == len(commands)
        if spoil is None:
            assert stored == events
        else:
            assert stored != events
