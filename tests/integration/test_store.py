"""The event store against the real PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import ClassVar

import pytest

from services.kernel.envelope import Event
from services.kernel.store import AppendResult, CommandReused, ConcurrencyError, EventStore, Metadata

pytestmark = pytest.mark.integration


class Noted(Event, register=False):
    source: ClassVar[str] = "test"
    text: str


META = Metadata(actor="tester")


async def test_append_and_read_stream(store: EventStore) -> None:
    r = await store.append("s-1", 0, [Noted(text="a"), Noted(text="b")], META)
    assert (r.first_version, r.last_version) == (1, 2)
    events = await store.read_stream("s-1")
    assert [e.data["text"] for e in events] == ["a", "b"]
    assert [e.stream_version for e in events] == [1, 2]
    assert events[0].actor == "tester" and events[0].event_type == "Noted"


async def test_two_writers_same_expected_version_exactly_one_wins(store: EventStore) -> None:
    await store.append("s-2", 0, [Noted(text="base")], META)
    results = await asyncio.gather(
        store.append("s-2", 1, [Noted(text="left")], META),
        store.append("s-2", 1, [Noted(text="right")], META),
        return_exceptions=True,
    )
    wins = [r for r in results if isinstance(r, AppendResult)]
    losses = [r for r in results if isinstance(r, ConcurrencyError)]
    assert len(wins) == 1 and len(losses) == 1
    texts = [e.data["text"] for e in await store.read_stream("s-2")]
    assert len(texts) == 2 and texts[0] == "base"
    loser = "right" if texts[1] == "left" else "left"
    assert loser not in texts


async def test_wrong_expected_version_is_refused(store: EventStore) -> None:
    await store.append("s-3", 0, [Noted(text="a")], META)
    with pytest.raises(ConcurrencyError):
        await store.append("s-3", 0, [Noted(text="again")], META)
    with pytest.raises(ConcurrencyError):
        await store.append("s-3", 5, [Noted(text="ahead")], META)
    assert len(await store.read_stream("s-3")) == 1


async def test_same_command_id_twice_gives_one_set_and_the_first_result(store: EventStore) -> None:
    first = await store.append("s-4", 0, [Noted(text="x")], META, command_id="cmd-1", command_hash="h")
    again = await store.append("s-4", 0, [Noted(text="x")], META, command_id="cmd-1", command_hash="h")
    assert again.duplicate and not first.duplicate
    assert (again.stream_id, again.first_version, again.last_version, again.first_position) == (
        first.stream_id,
        first.first_version,
        first.last_version,
        first.first_position,
    )
    assert len(await store.read_stream("s-4")) == 1
    with pytest.raises(CommandReused):
        await store.append("s-4", 1, [Noted(text="y")], META, command_id="cmd-1", command_hash="other")
    assert len(await store.read_stream("s-4")) == 1


async def test_same_command_id_concurrently_appends_once(store: EventStore) -> None:
    results = await asyncio.gather(
        *[store.append("s-5", 0, [Noted(text="x")], META, command_id="cmd-c", command_hash="h") for _ in range(5)]
    )
    assert sum(not r.duplicate for r in results) == 1
    assert len({(r.first_position, r.last_position) for r in results}) == 1
    assert len(await store.read_stream("s-5")) == 1


async def test_eight_writers_and_a_tailing_reader_see_every_event_once_in_order(store: EventStore) -> None:
    writers, per_writer = 8, 1000
    total = writers * per_writer
    seen: list[int] = []

    async def write(w: int) -> None:
        for i in range(per_writer):
            await store.append(f"w{w}-{i % 10}", i // 10, [Noted(text=f"{w}:{i}")], META)

    async def read() -> None:
        position = 0
        while len(seen) < total:
            batch = await store.read_all(position, limit=500, hwm=hwm)
            if batch:
                seen.extend(e.position for e in batch)
                position = batch[-1].position
            else:
                await asyncio.sleep(0)

    from services.kernel.store import HighWaterMark

    hwm = HighWaterMark(store.schema)
    reader = asyncio.create_task(read())
    await asyncio.gather(*[write(w) for w in range(writers)])
    await asyncio.wait_for(reader, 60)
    assert len(seen) == total
    assert len(set(seen)) == total
    assert seen == sorted(seen)
    stored = await store.pool.fetchval(f"SELECT count(*) FROM {store.schema}.events")
    assert stored == total
