"""The relay publishes only what a crash of PostgreSQL cannot take back, says when it is stuck, and a
replay creates the whole topic catalogue before it publishes: against the real PostgreSQL and broker."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import ClassVar

import asyncpg
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client import REGISTRY
from support import eventually, read_topic

from services.kernel import bus
from services.kernel import relay as relay_module
from services.kernel.db import Pool, init_connection
from services.kernel.envelope import Event, topic_for
from services.kernel.relay import Relay
from services.kernel.settings import Settings
from services.kernel.store import EventStore, HighWaterMark, Metadata
from services.ops import catalog

pytestmark = pytest.mark.integration
META = Metadata(actor="tester")


class Ticked(Event, register=False):
    source: ClassVar[str] = "test"
    n: int


@contextlib.asynccontextmanager
async def running(relay: Relay) -> AsyncIterator[asyncio.Task]:
    task = asyncio.create_task(relay.run())
    try:
        await eventually(_active(relay), what="the relay to take its lock")
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _active(relay: Relay) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return relay.active.is_set()

    return check


def _published(relay: Relay, position: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return relay.published >= position

    return check


async def stays_false(check: Callable[[], Awaitable[bool]], seconds: float, what: str) -> None:
    """Fail if `check()` becomes true within `seconds` (a bounded wait: the caller says why it is enough)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert not await check(), what
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def async_commit_store(database_url: str, service: str) -> AsyncIterator[EventStore]:
    """The service's store on connections that commit with synchronous_commit off: a commit is acknowledged
    (and visible) before its WAL is flushed, whatever the server's default."""

    async def init(conn: asyncpg.Connection) -> None:
        await init_connection(conn)
        await conn.execute("SET synchronous_commit TO off")

    pool = await Pool(database_url, 1, 2, init=init).open()
    try:
        yield EventStore(pool, service)
    finally:
        await pool.close()


@contextlib.asynccontextmanager
async def wal_writer_paused(conn: asyncpg.Connection) -> AsyncIterator[None]:
    """The WAL writer stopped (SIGSTOP), so that only a synchronous commit, a checkpoint or a WAL switch
    flushes the WAL. Deterministic where `ALTER SYSTEM SET wal_writer_delay` is not: the dev stack sets it
    on the command line, which ALTER SYSTEM does not override, and when the WAL writer flushes next
    depends on its last flush and on whether it hibernates. Always resumed."""
    pid = await conn.fetchval("SELECT pid FROM pg_stat_activity WHERE backend_type = 'walwriter'")
    assert pid, "no WAL writer found"
    deadline = time.monotonic() + 10
    try:
        while True:
            os.kill(pid, signal.SIGSTOP)
            # stopped while it waits for work, not while it writes (it would hold the lock on writing the
            # WAL, which a synchronous commit then waits for)
            if await conn.fetchval("SELECT wait_event FROM pg_stat_activity WHERE pid = $1", pid) == "WalWriterMain":
                break
            os.kill(pid, signal.SIGCONT)
            assert time.monotonic() < deadline, "the WAL writer was never found waiting for work"
            await asyncio.sleep(0.001)
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def flush_wal(conn: asyncpg.Connection) -> None:
    """A synchronous commit: PostgreSQL flushes the WAL up to it, and so every commit before it. (A
    transaction must have written WAL besides its commit record for its commit to be synchronous: here a
    message in the WAL.)"""
    async with conn.transaction():
        await conn.execute("SET LOCAL synchronous_commit TO on")
        await conn.execute("SELECT pg_logical_emit_message(true, 'mieux-test', 'flush')")


async def wal_positions(conn: asyncpg.Connection) -> tuple[int, int]:
    return tuple(await conn.fetchrow("SELECT pg_current_wal_insert_lsn(), pg_current_wal_flush_lsn()"))


async def test_an_event_is_published_only_once_its_commit_is_flushed(stack, store: EventStore) -> None:
    settings = Settings()
    relay = Relay(store, settings)
    conn = await asyncpg.connect(stack.database_url)
    try:
        async with running(relay), async_commit_store(stack.database_url, store.service) as writer:
            # first, with the WAL writer at work: appended and published, as always
            first = await writer.append("s1", 0, [Ticked(n=1)], META)
            await eventually(_published(relay, first.last_position), 10, "the first event to be published")
            async with wal_writer_paused(conn):
                second = await writer.append("s1", 1, [Ticked(n=2)], META)
                inserted, flushed = await wal_positions(conn)
                assert flushed < inserted, "the append's commit should not be flushed yet"
                # committed and visible, so a relay that did not wait for the flush would publish it at once:
                # it finds appends of other processes by a 50 ms poll, and published the first one above
                # that way; 1 s is twenty of those polls
                assert await conn.fetchval(
                    f"SELECT count(*) FROM {store.schema}.events WHERE position = $1", second.last_position
                )
                await stays_false(
                    _published(relay, second.last_position), 1.0, "published before its commit was flushed"
                )
                assert relay.published == first.last_position
                await flush_wal(conn)
                await eventually(_published(relay, second.last_position), 10, "the event to be published once flushed")
    finally:
        await conn.close()
    seen = await read_topic(settings, topic_for(store.service), lambda s: len(s) >= 2)
    assert [e.data["n"] for e in seen] == [1, 2]


async def test_wal_that_no_commit_follows_does_not_hold_the_relay_back(stack, store: EventStore) -> None:
    """The end of the WAL a mark waits for may lie in WAL that nobody will flush soon (here another
    session's open transaction, on an otherwise idle server): the relay nudges PostgreSQL with a commit
    of its own instead of waiting until that transaction ends."""
    settings = Settings()
    conn = await asyncpg.connect(stack.database_url)
    other = await asyncpg.connect(stack.database_url)
    try:
        await conn.execute(f"CREATE TABLE {store.schema}.scratch (n integer)")
        async with async_commit_store(stack.database_url, store.service) as writer:
            appended = await writer.append("s1", 0, [Ticked(n=1)], META)
        await flush_wal(conn)  # the append's commit is flushed ...
        # ... but not the WAL of a transaction that has not committed, which ends the WAL now: the WAL writer
        # flushes what asynchronous commits wrote, and nothing commits after it here
        tx = other.transaction()
        await tx.start()
        try:
            await other.execute(f"INSERT INTO {store.schema}.scratch SELECT generate_series(1, 100)")
            inserted, flushed = await wal_positions(conn)
            assert flushed < inserted
            relay = Relay(store, settings)
            async with running(relay):
                await eventually(_published(relay, appended.last_position), 10, "the event to be published")
            assert not other.is_closed() and other.is_in_transaction()
        finally:
            await tx.rollback()
    finally:
        await other.close()
        await conn.close()


async def test_a_mark_at_a_wal_page_boundary_is_durable_at_once(stack, store: EventStore) -> None:
    """After a WAL switch (as at any page boundary) the insert position points past the next page's
    header while the flush position stops at the boundary: position_horizon counts the WAL as written up
    to the boundary, or a reader would wait for a flush that an idle server never does."""
    async with async_commit_store(stack.database_url, store.service) as writer:
        await writer.append("s1", 0, [Ticked(n=1)], META)
    async with store.pool.acquire() as conn:
        await conn.fetchval("SELECT pg_switch_wal()")  # flushes everything, and starts a new segment
        inserted, flushed = await wal_positions(conn)
        hwm = HighWaterMark(store.schema)
        await hwm.advance(conn)
    assert inserted > flushed  # the new segment's first page header
    assert hwm.safe > 0
    assert hwm.durable == hwm.safe


async def test_where_commits_are_synchronous_a_reader_flushes_rather_than_waits(stack, store: EventStore) -> None:
    """Where sessions commit synchronously by default (not the test stack, hence the flag set by hand), what
    the WAL flush lacks is WAL other sessions wrote after the writers' commits: a read flushes it in its own
    round trip (its statement commits synchronously) instead of waiting for them."""
    conn = await asyncpg.connect(stack.database_url)
    try:
        await init_connection(conn)
        async with async_commit_store(stack.database_url, store.service) as writer, wal_writer_paused(conn):
            appended = await writer.append("s1", 0, [Ticked(n=1)], META)
            hwm = HighWaterMark(store.schema)
            await hwm.advance(conn)
            assert hwm.unflushed and hwm.durable == 0  # nothing flushes it while the WAL writer is stopped
            hwm_written = hwm.unflushed[-1][1]
            hwm.flush_when_behind = True
            events = await store.read_all(0, 10, hwm, conn)
            assert [e.position for e in events] == [appended.last_position]
            assert (await wal_positions(conn))[1] >= hwm.flushed >= hwm_written
            assert hwm.durable == hwm.safe == appended.last_position
    finally:
        await conn.close()


def _stuck_seconds(service: str) -> float:
    return REGISTRY.get_sample_value("mieux_relay_stuck_seconds", {"service": service}) or 0.0


async def test_a_relay_stuck_behind_a_paused_broker_says_so(stack, store: EventStore, caplog) -> None:
    caplog.set_level(logging.INFO, logger=relay_module.__name__)
    settings = Settings()
    relay = Relay(store, settings)
    relay.stuck_after_s, relay.stuck_log_every_s = 1.0, 2.0  # the defaults are 5 s and 30 s
    async with running(relay):
        for v in range(3):
            last = await store.append("s1", v, [Ticked(n=v)], META)
        await eventually(_published(relay, last.last_position), 10, "the first events to be published")
        assert _stuck_seconds(store.service) == 0
        stack.pause_broker()
        paused_at = time.monotonic()
        try:
            await store.append("s1", 3, [Ticked(n=987654321)], META)

            async def stuck_and_said_so() -> bool:
                return _stuck_seconds(store.service) >= 1.0 and any(r.levelno == logging.ERROR for r in caplog.records)

            await eventually(stuck_and_said_so, 30, "the stuck gauge and an ERROR")
            await eventually(lambda: _errors_at_least(caplog, 2), 30, "the ERROR to be repeated")
        finally:
            stack.resume_broker()
        paused_for = time.monotonic() - paused_at
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        for message in errors:
            assert store.service in message
            assert f"at position {last.last_position} " in message
            assert message.rsplit(": ", 1)[-1]  # the reason
        # repeated at a bounded rate: at most one ERROR per stuck_log_every_s, the first after stuck_after_s
        assert len(errors) <= 1 + paused_for / relay.stuck_log_every_s
        await eventually(_published(relay, last.last_position + 1), 60, "the relay to publish again")
        await eventually(lambda: _gauge_is(store.service, 0), 10, "the stuck gauge back at 0")
    assert any("publishes again" in r.getMessage() for r in caplog.records)
    # no event data in the relay's log
    assert not any("987654321" in r.getMessage() for r in caplog.records)


async def _errors_at_least(caplog, n: int) -> bool:
    return sum(r.levelno == logging.ERROR for r in caplog.records) >= n


async def _gauge_is(service: str, value: float) -> bool:
    return _stuck_seconds(service) == value


async def _layout(settings: Settings) -> dict[str, int]:
    """Every topic on the broker with its partition count (one metadata request for all topics: asking for
    named topics could have the broker create them)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap())
    await admin.start()
    try:
        return {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics() if t["error_code"] == 0}
    finally:
        await admin.close()


async def test_replay_onto_an_empty_broker_creates_the_catalogue_before_publishing(
    stack, store: EventStore, monkeypatch
) -> None:
    from services.ops import projections_cli

    settings = Settings()
    for v in range(3):
        await store.append("s1", v, [Ticked(n=v)], META)
    stack.restart_broker()  # Tansu keeps everything in memory: a new, empty broker
    assert not [t for t in await _layout(settings) if t.startswith("mieux.")]

    at_first_publish: dict[str, int] = {}
    publish = relay_module.publish

    async def recording_publish(producer, topic, events) -> None:
        if not at_first_publish:
            at_first_publish.update(await _layout(settings))
        await publish(producer, topic, events)

    monkeypatch.setattr(relay_module, "publish", recording_publish)
    args = argparse.Namespace(service=store.service, from_position=1)
    # `mieux replay <service>`: its own event loop
    assert (
        await asyncio.to_thread(projections_cli.cmd_replay, args) == 0
    )  # `mieux replay <service>`: its own event loop

    groups = catalog.consumer_groups()
    expected = {
        **{topic: settings.topic_partitions for _, topics in groups for topic in topics},
        **{bus.dlq_topic(group): bus.DLQ_PARTITIONS for group, _ in groups},
    }
    assert {f"mieux.{c}.events" for c in ("requests", "actions", "experts", "logistics", "carbon")} <= set(expected)
    assert {t: at_first_publish.get(t) for t in expected} == expected
    assert at_first_publish[topic_for(store.service)] == settings.topic_partitions
    seen = await read_topic(settings, topic_for(store.service), lambda s: len(s) >= 3)
    assert [e.data["n"] for e in seen] == [0, 1, 2]
