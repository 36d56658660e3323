"""The outbox relay against the real PostgreSQL and broker: order, pauses, crashes, rivals, replay."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from typing import ClassVar

import pytest
from support import Child, eventually, first_occurrences_in_order, read_topic

from services.kernel.envelope import Event, topic_for
from services.kernel.relay import Relay, lock_holder, request_replay
from services.kernel.settings import Settings
from services.kernel.store import EventStore, Metadata

pytestmark = pytest.mark.integration
META = Metadata(actor="tester")


class Ticked(Event, register=False):
    source: ClassVar[str] = "test"
    n: int


@contextlib.asynccontextmanager
async def running(relay: Relay):
    task = asyncio.create_task(relay.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def append_many(store: EventStore, streams: int, per_stream: int) -> None:
    for v in range(per_stream):
        await asyncio.gather(*[store.append(f"s{s}", v, [Ticked(n=v)], META) for s in range(streams)])


def all_ids(events) -> set:
    return {e.event_id for e in events}


async def test_events_reach_the_topic_in_stream_order_keyed_by_stream(store: EventStore) -> None:
    settings = Settings()
    async with running(Relay(store, settings)):
        await append_many(store, streams=5, per_stream=20)
        stored = await store.read_all(0, limit=10_000)
        seen = await read_topic(settings, topic_for(store.service), lambda s: all_ids(stored) <= all_ids(s))
    assert first_occurrences_in_order(seen)
    assert {e.stream_id for e in seen} == {f"s{i}" for i in range(5)}


async def test_broker_paused_for_10s_while_appending_loses_nothing(stack, store: EventStore) -> None:
    settings = Settings()
    relay = Relay(store, settings)
    async with running(relay):
        await append_many(store, streams=4, per_stream=5)
        await eventually(lambda: _published(relay, 20), what="first events published")
        stack.pause_broker()
        try:
            loop = asyncio.get_running_loop()
            end = loop.time() + 10
            v = 5
            while loop.time() < end:
                await asyncio.gather(*[store.append(f"s{s}", v, [Ticked(n=v)], META) for s in range(4)])
                v += 1
                await asyncio.sleep(0.05)
        finally:
            stack.resume_broker()
        stored = await store.read_all(0, limit=100_000)
        assert len(stored) > 40
        seen = await read_topic(settings, topic_for(store.service), lambda s: all_ids(stored) <= all_ids(s), 90)
    assert all_ids(stored) <= all_ids(seen)
    assert first_occurrences_in_order(seen)


async def _published(relay: Relay, n: int) -> bool:
    return relay.published >= n


async def test_two_relays_only_one_publishes(store: EventStore) -> None:
    settings = Settings()
    a, b = Relay(store, settings), Relay(store, settings)
    async with running(a), running(b):
        await eventually(lambda: _any_active(a, b), what="a relay to take the lock")
        await append_many(store, streams=3, per_stream=30)
        stored = await store.read_all(0, limit=10_000)
        seen = await read_topic(settings, topic_for(store.service), lambda s: all_ids(stored) <= all_ids(s))
        assert a.active.is_set() != b.active.is_set()
        idle = b if a.active.is_set() else a
        assert idle.published == 0
    assert len(seen) == len(stored)  # no duplicates: the idle relay never published


async def test_an_append_on_a_standby_replica_wakes_the_active_relay(store: EventStore) -> None:
    """Two replicas' relays: what the standby's process appends is published by the active one at once (the
    standby's NOTIFY), not at its next poll, which this test puts 60 s away."""
    settings = Settings().model_copy(update={"relay_poll_interval_s": 60.0})
    other = EventStore(store.pool, store.service)  # the second replica's store: its own append hooks
    a, b = Relay(store, settings), Relay(other, settings)
    async with running(a), running(b):
        await eventually(lambda: _any_active(a, b), what="a relay to take the lock")
        active, standby_store = (a, other) if a.active.is_set() else (b, store)

        async def standing_by() -> bool:  # the standby listens to its store's appends
            return len(standby_store.on_append) == 1

        await eventually(standing_by, what="the standby relay to listen to its replica's appends")
        # the first append may be found by the active relay's first read; the next two only by a wake-up
        for v in range(3):
            appended = await standby_store.append("s-standby", v, [Ticked(n=v)], META)
            started = asyncio.get_running_loop().time()
            position = appended.last_position
            await eventually(lambda p=position: _published(active, p), 10.0, "the active relay to publish")
            print(f"published {asyncio.get_running_loop().time() - started:.3f} s after the standby's append")


async def _any_active(*relays: Relay) -> bool:
    return any(r.active.is_set() for r in relays)


async def test_relay_killed_mid_batch_and_restarted_loses_nothing(stack_env, store: EventStore) -> None:
    settings = Settings()
    await append_many(store, streams=50, per_stream=60)  # 3,000 events
    stored = await store.read_all(0, limit=100_000)
    env = {**stack_env, "MIEUX_RELAY_BATCH_SIZE": "50"}
    first = Child(["-m", "services.kernel.relay", store.service], env)
    try:
        await eventually(lambda: _checkpoint_between(store, 1, len(stored) - 1), what="the relay to be mid-way")
        first.kill()
    finally:
        first.stop()
    mid = await _checkpoint(store)
    assert 0 < mid < stored[-1].position
    second = Child(["-m", "services.kernel.relay", store.service], env)
    try:
        await eventually(
            lambda: _checkpoint_between(store, stored[-1].position, stored[-1].position),
            60,
            "the second relay to finish",
        )
    finally:
        assert second.stop() == 0
    seen = await read_topic(settings, topic_for(store.service), lambda s: all_ids(stored) <= all_ids(s))
    assert all_ids(stored) <= all_ids(seen)
    assert first_occurrences_in_order(seen)


async def _checkpoint(store: EventStore) -> int:
    v = await store.pool.fetchval(f"SELECT position FROM {store.schema}.relay_state")
    return int(v or 0)


async def _checkpoint_between(store: EventStore, low: int, high: int) -> bool:
    return low <= await _checkpoint(store) <= high


async def test_replay_without_a_running_relay_republishes_from_a_position(store: EventStore) -> None:
    settings = Settings()
    relay = Relay(store, settings)
    async with running(relay):
        await append_many(store, streams=2, per_stream=10)
        stored = await store.read_all(0, limit=10_000)
        await read_topic(settings, topic_for(store.service), lambda s: all_ids(stored) <= all_ids(s))
    before = len(await read_topic(settings, topic_for(store.service), lambda s: len(s) >= len(stored)))
    outcome = await request_replay(store, settings, from_position=stored[10].position)
    assert outcome == "republished"
    again = await read_topic(settings, topic_for(store.service), lambda s: len(s) >= before + 10)
    assert len(again) == before + 10
    copies = Counter(e.event_id for e in again)
    assert {copies[e.event_id] for e in stored[10:]} == {2}
    assert {copies[e.event_id] for e in stored[:10]} == {1}


async def test_a_standby_relay_takes_over_within_5s_of_the_active_one_being_killed(
    stack_env, store: EventStore
) -> None:
    """Two relay processes of one service: one holds the lock and publishes; SIGKILLed, the other holds it
    within 5 s (PostgreSQL frees a dead session's lock) and publishes what came after, nothing lost."""
    settings = Settings()
    args = ["-m", "services.kernel.relay", store.service]
    a = Child(args, stack_env)
    b: Child | None = None
    try:
        async with store.pool.acquire() as conn:
            await eventually(lambda: _held(conn, store.service), what="the first relay to take the lock")
            first = await lock_holder(conn, store.service)
            b = Child(args, stack_env)  # a standby: the lock is taken
            await append_many(store, streams=3, per_stream=5)
            await eventually(lambda: _checkpoint_between(store, 15, 15), what="the first relay to publish")
            assert await lock_holder(conn, store.service) == first
            a.kill()
            killed = asyncio.get_running_loop().time()
            await eventually(lambda: _held_by_another(conn, store.service, first), 5.0, "a standby to take the lock")
            took = asyncio.get_running_loop().time() - killed
            assert b.proc.poll() is None
            for v in range(5):  # more events, on streams of their own, for the new holder to publish
                await asyncio.gather(*[store.append(f"t{s}", v, [Ticked(n=v)], META) for s in range(3)])
            stored = await store.read_all(0, limit=10_000)
            last = stored[-1].position
            await eventually(lambda: _checkpoint_between(store, last, last), 30, "the new holder to publish")
            seen = await read_topic(settings, topic_for(store.service), lambda s: all_ids(stored) <= all_ids(s))
            assert all_ids(stored) <= all_ids(seen) and len(stored) == 30
            assert first_occurrences_in_order(seen)
    finally:
        a.stop()
        if b is not None:
            b.stop()
    print(f"standby relay took the lock {took:.2f} s after the active one was SIGKILLed")


async def _held(conn, service: str) -> bool:  # type: ignore[no-untyped-def]
    return await lock_holder(conn, service) is not None


async def _held_by_another(conn, service: str, pid: int) -> bool:  # type: ignore[no-untyped-def]
    holder = await lock_holder(conn, service)
    return holder is not None and holder != pid
