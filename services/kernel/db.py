"""PostgreSQL connections for the kernel: asyncpg connections lent from a small pool.

asyncpg's own pool wraps every connection in a proxy and every release in `asyncio.shield` (a task of
its own, one more turn of the event loop, on every statement: the README's benchmark section says what
that cost). This pool lends plain `asyncpg.Connection`s: taking one is a list pop, giving it back a push.

A connection comes back to the pool only when it is certainly idle: the block that borrowed it ended
normally or with an ordinary error, outside a transaction. A cancelled or timed-out statement, a lost
connection or a transaction left open closes it instead, and the next borrower opens a new one.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from services.kernel.faults import PoolTimeout

# InternalClientError: asyncpg's protocol state left broken by a connection lost mid-statement (seen when
# PostgreSQL restarts); such a connection is never lent again.
CLOSE_ON = (asyncio.TimeoutError, OSError, asyncpg.InterfaceError, asyncpg.exceptions.InternalClientError)


async def init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


class Pool:
    def __init__(
        self,
        dsn: str,
        min_size: int = 1,
        max_size: int = 10,
        init: Callable[[asyncpg.Connection], Awaitable[None]] = init_connection,
        acquire_timeout: float = 5.0,
    ) -> None:
        if not 0 <= min_size <= max_size or max_size < 1:
            raise ValueError(
                f"pool sizes: need 0 <= min_size <= max_size and max_size >= 1, got {min_size}, {max_size}"
            )
        self.dsn = dsn
        self.min_size = min_size
        self.max_size = max_size
        self.init = init
        # a borrower waits at most this long for a connection (a free one, or a new one opened), then
        # PoolTimeout: a caller hears UNAVAILABLE rather than waiting without a deadline
        self.acquire_timeout = acquire_timeout
        self.size = 0  # connections open or being opened
        self.free: list[asyncpg.Connection] = []
        # borrowers waiting: each gets a connection, or None meaning "a place is free: open one"
        self.waiters: deque[asyncio.Future[asyncpg.Connection | None]] = deque()
        self.closed = False

    async def open(self) -> Pool:
        conns = await asyncio.gather(*(self._connect() for _ in range(self.min_size)))
        self.free.extend(conns)
        return self

    async def _connect(self) -> asyncpg.Connection:
        self.size += 1
        try:
            conn = await asyncpg.connect(self.dsn, timeout=self.acquire_timeout)
            try:
                await self.init(conn)
            except BaseException:
                conn.terminate()
                raise
            return conn
        except BaseException:
            self._discarded()
            raise

    async def take(self) -> asyncpg.Connection:
        if self.closed:
            raise asyncpg.InterfaceError("the pool is closed")
        while self.free:
            conn = self.free.pop()
            if not conn.is_closed():
                return conn
            self._discarded()
        if self.size < self.max_size:
            return await self._connect()
        waiter: asyncio.Future[asyncpg.Connection | None] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        try:
            conn = await asyncio.wait_for(asyncio.shield(waiter), self.acquire_timeout)
        except (asyncio.CancelledError, TimeoutError) as e:
            if waiter.done() and not waiter.cancelled():  # handed over as we gave up: pass it on
                self._handed_back(waiter.result())
            else:
                waiter.cancel()
            if isinstance(e, TimeoutError):
                raise PoolTimeout(f"no database connection free within {self.acquire_timeout:g} s") from None
            raise
        return conn if conn is not None else await self._connect()

    def give(self, conn: asyncpg.Connection, error: BaseException | None = None) -> None:
        """Back to the pool if certainly idle, else closed (see the module's docstring)."""
        idle = (error is None or (isinstance(error, Exception) and not isinstance(error, CLOSE_ON))) and not (
            conn.is_closed() or conn.is_in_transaction()
        )
        if idle and not self.closed:
            self._handed_back(conn)
        else:
            conn.terminate()
            self._discarded()

    def _handed_back(self, conn: asyncpg.Connection | None) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        if conn is not None:
            self.free.append(conn)

    def _discarded(self) -> None:
        self.size -= 1
        self._handed_back(None)  # a waiter may open a connection in its place

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[asyncpg.Connection]:
        conn = await self.take()
        try:
            yield conn
        except BaseException as e:
            self.give(conn, e)
            raise
        self.give(conn)

    async def _run(self, method: str, query: str, args: tuple[Any, ...]) -> Any:
        conn = await self.take()
        try:
            result = await getattr(conn, method)(query, *args)
        except BaseException as e:
            self.give(conn, e)
            raise
        self.give(conn)
        return result

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        return await self._run("fetch", query, args)

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        return await self._run("fetchrow", query, args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        return await self._run("fetchval", query, args)

    async def execute(self, query: str, *args: Any) -> str:
        return await self._run("execute", query, args)

    async def close(self) -> None:
        """Close the idle connections now; the lent ones are closed as they come back."""
        self.closed = True
        free, self.free = self.free, []
        await asyncio.gather(*(c.close() for c in free), return_exceptions=True)
        self.size -= len(free)
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(asyncpg.InterfaceError("the pool is closed"))


async def create_pool(dsn: str, min_size: int = 1, max_size: int = 10, acquire_timeout: float = 5.0) -> Pool:
    return await Pool(dsn, min_size, max_size, acquire_timeout=acquire_timeout).open()
