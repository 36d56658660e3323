"""The kernel's connection pool against the real PostgreSQL: a connection goes back only when idle."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
from support import eventually

from services.kernel.db import Pool, create_pool
from services.ops.devstack import DevStack

pytestmark = pytest.mark.integration

PID = "SELECT pg_backend_pid()"


@pytest.fixture
async def small(stack: DevStack) -> AsyncIterator[Pool]:
    p = await create_pool(stack.database_url, min_size=1, max_size=2)
    yield p
    await p.close()


async def gone(pool: Pool, pid: int) -> bool:
    return not await pool.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid)


async def test_reuses_one_connection_and_jsonb_is_decoded(small: Pool) -> None:
    first = await small.fetchval(PID)
    assert await small.fetchval(PID) == first
    assert await small.fetchval("""SELECT '{"a": [1, 2]}'::jsonb""") == {"a": [1, 2]}
    assert small.size == 1


async def test_never_opens_more_than_max_size(small: Pool) -> None:
    pids = await asyncio.gather(*(small.fetchval("SELECT pg_backend_pid() FROM pg_sleep(0.05)") for _ in range(6)))
    assert len(set(pids)) == 2 and small.size == 2


async def test_a_statement_error_keeps_the_connection(small: Pool) -> None:
    pid = await small.fetchval(PID)
    with pytest.raises(asyncpg.DivisionByZeroError):
        await small.fetchval("SELECT 1 / 0")
    with pytest.raises(ValueError):
        async with small.acquire() as conn:
            async with conn.transaction():
                await conn.execute("SELECT 1")
                raise ValueError("the caller's own error, after its transaction rolled back")
    assert await small.fetchval(PID) == pid


async def test_a_cancelled_statement_closes_its_connection(small: Pool) -> None:
    task = asyncio.create_task(small.fetchval("SELECT pg_backend_pid() FROM pg_sleep(5)"))

    async def sleeping() -> bool:
        n = await small.fetchval("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%FROM pg_sleep(5)'")
        return n == 1

    await eventually(sleeping, 10, "the statement to run")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert small.size == 1 and len(small.free) == 1  # only the connection that did the polling is left
    assert await small.fetchval("SELECT 41 + 1") == 42  # a new connection, no "operation in progress"


async def test_a_transaction_left_open_closes_the_connection(small: Pool) -> None:
    async with small.acquire() as conn:
        pid = await conn.fetchval(PID)
        await conn.execute("BEGIN")
    assert small.size == 0
    assert await small.fetchval(PID) != pid
    await eventually(lambda: gone(small, pid), 10, "the old backend, and its open transaction, to end")


async def test_a_waiter_gets_the_connection_given_back_and_a_cancelled_waiter_loses_none(small: Pool) -> None:
    a, b = await small.take(), await small.take()
    waiting = asyncio.create_task(small.take())
    cancelled = asyncio.create_task(small.take())
    await asyncio.sleep(0)
    assert len(small.waiters) == 2
    cancelled.cancel()
    small.give(a)
    got = await waiting
    assert got is a
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    small.give(got)
    small.give(b)
    assert small.size == 2 and len(small.free) == 2


async def test_a_connection_discarded_lets_a_waiter_open_one(small: Pool) -> None:
    a, b = await small.take(), await small.take()
    waiting = asyncio.create_task(small.take())
    await asyncio.sleep(0)
    small.give(a, asyncio.CancelledError())  # closed, not given back: the waiter opens a new one
    c = await waiting
    assert c is not a and not c.is_closed() and a.is_closed()
    assert await c.fetchval("SELECT 1") == 1
    small.give(b)
    small.give(c)
    assert small.size == 2


async def test_closed_pool_refuses(stack: DevStack) -> None:
    p = await create_pool(stack.database_url)
    await p.close()
    with pytest.raises(asyncpg.InterfaceError):
        await p.fetchval("SELECT 1")
