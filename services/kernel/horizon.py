"""How far a reader of the event store may read: the high-water mark (DESIGN.md section 4).

Positions come from a sequence, so writers may commit out of order. Each append first takes the writers'
lock (shared: writers never wait for each other), then its positions. `position_horizon()` returns the
last position handed out, the writers still holding the lock, and the end of the WAL written and flushed.
A reader (`HighWaterMark`) reads only up to a mark once every writer that held the lock when it was read
has ended (every position at or below it is then committed, or rolled back for good), and once the WAL is
flushed past that mark's commits (so a crash of PostgreSQL cannot take back what a reader has seen).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

import asyncpg

WRITERS_LOCK = 1297630293  # with hashtext('<schema>.events'): the advisory lock every writer holds shared


def horizon_sql(schema: str) -> str:
    """The function `<schema>.position_horizon()` (part of the store's schema)."""
    s = schema
    return f"""
CREATE OR REPLACE FUNCTION {s}.position_horizon(
    OUT handed_out bigint, OUT writers text[], OUT wal_written pg_lsn, OUT wal_flushed pg_lsn)
LANGUAGE plpgsql AS $fn$
DECLARE
    page integer;
    page_offset numeric;
BEGIN
    -- the order matters: the last position handed out, then the writers still running. Each writer
    -- takes the lock before its positions, so every position at or below `handed_out` belongs to a
    -- writer listed here or to one that has ended (committed and visible, or rolled back).
    SELECT CASE WHEN is_called THEN last_value ELSE 0 END INTO handed_out FROM {s}.events_position_seq;
    -- the cheap answer first: nobody holds the writers' lock (held here only until this statement ends)
    IF pg_try_advisory_xact_lock({WRITERS_LOCK}, hashtext('{s}.events')) THEN
        writers := '{{}}';
    ELSE
        SELECT coalesce(array_agg(l.virtualtransaction), '{{}}') INTO writers
        FROM pg_locks l
        WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
          AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())
          AND l.classid = {WRITERS_LOCK}::oid AND l.objid = hashtext('{s}.events')::oid;
    END IF;
    -- then the end of the WAL written so far. A transaction inserts its commit record before it releases
    -- its locks, so the commit of every writer that has ended ends at or before this point, whatever its
    -- synchronous_commit: once the WAL is flushed up to here, those commits survive a crash.
    wal_written := pg_current_wal_insert_lsn();
    -- at a page boundary the insert position points past the header of the next page (40 bytes on a
    -- segment's first page, else 24) while the flush position stops at the boundary: nothing was written
    -- after it, and waiting for the header to be flushed could be waiting for ever on an idle server.
    -- (Pages are 1 kB or a multiple: the settings are read only when the position may be such a one.)
    IF (wal_written - '0/0'::pg_lsn) % 1024 IN (24, 40) THEN
        page := current_setting('wal_block_size')::integer;
        page_offset := (wal_written - '0/0'::pg_lsn) % page;
        IF page_offset = (CASE WHEN (wal_written - '0/0'::pg_lsn) % pg_size_bytes(current_setting('wal_segment_size'))
                                   < page THEN 40 ELSE 24 END) THEN
            wal_written := wal_written - page_offset;
        END IF;
    END IF;
    wal_flushed := pg_current_wal_flush_lsn();
END
$fn$;
"""


class HighWaterMark:
    """Per reader: how far it may read.

    `safe`: no transaction can still add an event at or below it (each one is committed, or rolled back
    for good). `durable`: besides, the WAL is flushed past the commit of every event at or below it, so a
    crash of PostgreSQL cannot take back an event a reader has seen, whatever `synchronous_commit` its
    writer used (with it off, a commit is acknowledged and visible before the WAL writer flushes it, up to
    a few `wal_writer_delay` later). A mark becomes safe with the end of the WAL written at that moment
    (`position_horizon`), and durable once the flush position has passed that point."""

    MAX_UNFLUSHED = 64  # marks waiting for the flush; past this the newest is replaced (a later mark covers it)
    NUDGE_AFTER_S = 0.02  # a reader waiting this long for the flush nudges PostgreSQL (see `stalled`) ...
    NUDGE_EVERY_S = 0.25  # ... and again at most this often

    def __init__(self, schema: str) -> None:
        self.schema = schema
        self.safe = 0
        self.durable = 0
        # commits are synchronous by default here (read on the first look): see EventStore._read_all
        self.flush_when_behind: bool | None = None
        self.pending: tuple[int, frozenset[str]] | None = None
        # (mark, the end of the WAL when it became safe), oldest first: safe but not yet known flushed
        self.unflushed: deque[tuple[int, int]] = deque()
        self.flushed = 0  # the WAL flush position last seen
        self._waiting: tuple[int, float] | None = None  # (WAL position waited for, since when)
        self._nudged_at = 0.0

    async def advance(self, conn: asyncpg.Connection) -> int:
        """Look at the writers and the WAL again; returns the durable mark."""
        if self.flush_when_behind is None:
            self.flush_when_behind = await conn.fetchval(SYNCHRONOUS_BY_DEFAULT_SQL)
        handed_out, writers, written, flushed = await conn.fetchrow(f"SELECT * FROM {self.schema}.position_horizon()")
        running = set(writers)
        safe = self.safe
        # keep the oldest pending mark until its writers have all ended (replacing it on every call
        # could starve the reader while writers keep overlapping)
        if self.pending and not (self.pending[1] & running):
            safe = max(safe, self.pending[0])
            self.pending = None
        if not running:
            safe = max(safe, handed_out)
            self.pending = None
        elif self.pending is None:
            self.pending = (handed_out, frozenset(running))
        if safe > self.safe:
            # every writer of a position at or below `safe` has ended: its commit record is in the WAL
            # before `written`, read after the writers (position_horizon)
            self.safe = safe
            if len(self.unflushed) >= self.MAX_UNFLUSHED:
                self.unflushed.pop()
            self.unflushed.append((safe, written))
        self.flushed_to(flushed)
        return self.durable

    def flushed_to(self, wal_position: int) -> None:
        """The WAL is flushed up to `wal_position`: the marks that became safe before it are durable."""
        self.flushed = max(self.flushed, wal_position)
        while self.unflushed and self.unflushed[0][1] <= self.flushed:
            self.durable = self.unflushed.popleft()[0]
        if not self.unflushed:
            self._waiting = None

    async def stalled(self, conn: asyncpg.Connection) -> None:
        """The reader found nothing to read for want of a flush. Every synchronous commit flushes all the
        WAL before its own, and the WAL writer flushes what asynchronous commits wrote, but WAL that no
        commit follows (another session's open transaction, a page pruned by a query) waits for whichever
        comes next, and the end of the WAL a mark waits for may lie in it: on an idle server, for ever. So
        after NUDGE_AFTER_S the reader commits an empty transaction that took a transaction id. Having
        written nothing, it commits asynchronously whatever synchronous_commit says: it forces no flush,
        it only gives the WAL writer a commit to flush, within its wal_writer_delay."""
        if not self.unflushed:
            self._waiting = None
            return
        now = time.monotonic()
        target = self.unflushed[0][1]
        if self._waiting is None or self._waiting[0] != target:
            self._waiting = (target, now)
            return
        if (
            now - self._waiting[1] >= self.NUDGE_AFTER_S
            and now - self._nudged_at >= self.NUDGE_EVERY_S
            and not conn.is_in_transaction()
        ):
            self._nudged_at = now
            await conn.execute(NUDGE_SQL)

    async def wait_flushed(self, conn: asyncpg.Connection) -> None:
        """Wait until every mark safe so far is durable."""
        if not self.unflushed:
            return
        target, pause = self.unflushed[-1][1], 0.001
        while True:
            self.flushed_to(await conn.fetchval("SELECT pg_current_wal_flush_lsn()"))
            if self.flushed >= target:
                return
            await self.stalled(conn)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.01)


NUDGE_SQL = "SELECT pg_current_xact_id()"  # its own transaction: a commit record, and nothing else
# as the sessions of this role and database start, whatever this session set (the relay's sets it off)
SYNCHRONOUS_BY_DEFAULT_SQL = "SELECT reset_val <> 'off' FROM pg_settings WHERE name = 'synchronous_commit'"
