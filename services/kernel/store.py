"""The event store: PostgreSQL (asyncpg), one schema per service.

* `append` is one round trip: one INSERT statement (an autocommit transaction) checks the expected
  version and inserts the events; the unique indexes refuse a command id stored before, and only then
  is the command's first result looked up. The events table is the outbox: the relay reads it through
  `read_all`, and keeps its published position in `relay_state` (no second copy of every event).
* Writers are never serialised. Positions come from a sequence, so a writer may commit a higher
  position before another commits a lower one. `read_all` never skips a position all the same: it
  reads only up to a *high-water mark*: the last position handed out, once every writer that was
  running when it was read has ended. Each append takes a shared advisory lock (writers never wait for
  one another) before its positions, so the running writers are exactly the holders of that lock; every
  position at or below the mark is then committed (visible) or rolled back (a gap that stays a gap).
* `read_all` returns an event only once its commit is flushed to the WAL, whatever `synchronous_commit`
  its writer used: with it off a commit is visible before it is durable, and an event a reader (the relay,
  a rebuild) has seen must not vanish in a crash of PostgreSQL. The mark carries the end of the WAL
  written when it became safe, and is read up to once the flush position has passed it.
* `importer()` / `import_events` append stored rows in bulk (an export's, a migration's) at COPY speed with the
  same invariants, the same lock and positions from the same sequence (importing.py).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

import asyncpg

from services.kernel.db import Pool
from services.kernel.envelope import Envelope, Event, utcnow
from services.kernel.horizon import WRITERS_LOCK, HighWaterMark, horizon_sql

if TYPE_CHECKING:
    from services.kernel.importing import EventRow, Importer, ImportResult


class ConcurrencyError(Exception):
    """The stream is not at the expected version: someone else wrote first (gRPC ABORTED)."""


class CommandReused(Exception):
    """A command id seen before came back with a different payload (gRPC ALREADY_EXISTS)."""


MAX_EVENT_BYTES = 256 * 1024  # an event's data as JSON (DESIGN.md section 11): far below the bus's message cap


class EventTooLarge(Exception):
    """An event would be larger than MAX_EVENT_BYTES: refused before anything is stored (INVALID_ARGUMENT),
    naming the field of the event that made it large."""

    def __init__(self, event_type: str, field: str, size: int) -> None:
        self.field = field
        super().__init__(f"too large: the {event_type} event would be {size:,} bytes, over {MAX_EVENT_BYTES:,}")


def check_size(event: Event, data: str) -> None:
    if len(data) * 4 > MAX_EVENT_BYTES and len(size := data.encode()) > MAX_EVENT_BYTES:  # 4: UTF-8's widest
        sizes = {k: len(json.dumps(v, default=str)) for k, v in event.model_dump(mode="json").items()}
        raise EventTooLarge(event.event_type, max(sizes, key=sizes.__getitem__, default="data"), len(size))


@dataclass(frozen=True)
class AppendResult:
    stream_id: str
    first_version: int
    last_version: int
    first_position: int | None
    last_position: int | None
    duplicate: bool = False


@dataclass(frozen=True)
class Metadata:
    actor: str
    correlation_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    causation_id: str = ""


def schema_sql(schema: str) -> str:
    s = schema
    return f"""
CREATE SCHEMA IF NOT EXISTS {s};
CREATE SEQUENCE IF NOT EXISTS {s}.events_position_seq;
CREATE TABLE IF NOT EXISTS {s}.events (
    -- the default serves the bulk import's COPY (importing.py); `append` names its positions itself
    position        bigint PRIMARY KEY DEFAULT nextval('{s}.events_position_seq'),
    event_id        uuid NOT NULL,
    stream_id       text NOT NULL,
    stream_version  integer NOT NULL,
    event_type      text NOT NULL,
    schema_version  integer NOT NULL,
    data            jsonb NOT NULL,
    occurred_at     timestamptz NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    correlation_id  text NOT NULL,
    causation_id    text NOT NULL,
    actor           text NOT NULL,
    command_id      text,
    command_hash    text,
    command_events  integer,
    CONSTRAINT events_stream_version_key UNIQUE (stream_id, stream_version)
);
-- a command's id, payload hash and event count sit on the first event it appended: no second table
CREATE UNIQUE INDEX IF NOT EXISTS events_command_id_key ON {s}.events (command_id) WHERE command_id IS NOT NULL;
CREATE OR REPLACE VIEW {s}.commands AS
    SELECT e.command_id, e.command_hash, e.stream_id, e.stream_version AS first_version,
           e.stream_version + e.command_events - 1 AS last_version, e.position AS first_position,
           (SELECT max(x.position) FROM {s}.events x WHERE x.stream_id = e.stream_id
              AND x.stream_version BETWEEN e.stream_version AND e.stream_version + e.command_events - 1)
             AS last_position
    FROM {s}.events e WHERE e.command_id IS NOT NULL;
DO $$ BEGIN  -- the default, on a store made before it (checked first: ALTER TABLE locks out every writer)
    IF NOT EXISTS (SELECT FROM pg_attrdef d JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
                   WHERE d.adrelid = '{s}.events'::regclass AND a.attname = 'position') THEN
        ALTER TABLE {s}.events ALTER COLUMN position SET DEFAULT nextval('{s}.events_position_seq');
    END IF;
END $$;
CREATE TABLE IF NOT EXISTS {s}.relay_state (
    topic           text PRIMARY KEY,
    position        bigint NOT NULL
);
{horizon_sql(s)}"""


def append_sql(schema: str, single: bool) -> str:
    """One append as one statement (one round trip, no PL/pgSQL): $1 stream, $2 expected version,
    $3 command id, $4 command hash, $5 occurred at, $6 correlation id, $7 causation id, $8 actor; then
    either the events as one JSON array ($9), or for a single event (most commands) its type ($9),
    schema version ($10) and data as JSON text ($11), which spares unpacking an array. Event ids come
    from gen_random_uuid(). It returns the positions taken, or no row when the
    stream is not at the expected version. A command id stored before, or a concurrent writer of the
    same version, makes the unique indexes refuse it; `append` then answers with the command's first
    result or a ConcurrencyError. Checking the command id first would cost every append a lookup for the
    sake of the rare retry."""
    s = schema
    if single:
        rows = """SELECT nextval('{s}.events_position_seq'), gen_random_uuid(), $1::text, $2::integer + 1, $9::text,
       $10::integer, $11::text::jsonb, $5::timestamptz, $6::text, $7::text, $8::text, $3::text, $4::text,
       CASE WHEN $3::text IS NOT NULL THEN 1 END
FROM at_expected"""
    else:
        rows = """SELECT nextval('{s}.events_position_seq'), gen_random_uuid(), $1::text, $2::integer + u.ord::integer,
       u.e->>'type', (u.e->>'version')::integer, u.e->'data', $5::timestamptz, $6::text, $7::text, $8::text,
       CASE WHEN u.ord = 1 THEN $3::text END, CASE WHEN u.ord = 1 THEN $4::text END,
       CASE WHEN u.ord = 1 AND $3::text IS NOT NULL THEN jsonb_array_length($9::jsonb) END
FROM at_expected, jsonb_array_elements($9::jsonb) WITH ORDINALITY AS u(e, ord)"""
    return f"""
WITH writer AS (
    -- announce this writer before it takes any position: read_all's high-water mark waits for every
    -- transaction holding this lock (shared: writers never wait for each other)
    SELECT pg_advisory_xact_lock_shared({WRITERS_LOCK}, hashtext('{s}.events'))
), at_expected AS (
    -- version $2 exists (checked here) and version $2 + 1 does not (the unique key refuses it otherwise)
    SELECT FROM writer WHERE $2::integer = 0 OR EXISTS (
        SELECT FROM {s}.events e WHERE e.stream_id = $1::text AND e.stream_version = $2::integer)
)
INSERT INTO {s}.events (position, event_id, stream_id, stream_version, event_type, schema_version, data,
                       occurred_at, correlation_id, causation_id, actor, command_id, command_hash, command_events)
{rows.format(s=s)}
RETURNING position"""


EVENT_COLUMNS = (
    "position, event_id, stream_id, stream_version, event_type, schema_version, data, occurred_at, "
    "recorded_at, correlation_id, causation_id, actor"
)

# EVENT_COLUMNS as texts, for what sends them on as texts (EventLog.ReadAll): the data as the store holds them,
# the timestamps in ISO 8601 in UTC (as JSON writes them, whatever the session's time zone), formatted by
# PostgreSQL rather than by Python per event
TEXT_COLUMNS = (
    "position, event_id::text AS event_id, stream_id, stream_version, event_type, schema_version, "
    "data::text AS data, (to_json(occurred_at AT TIME ZONE 'UTC') #>> '{}') || '+00:00' AS occurred_at, "
    "(to_json(recorded_at AT TIME ZONE 'UTC') #>> '{}') || '+00:00' AS recorded_at, correlation_id, causation_id, "
    "actor"
)


def read_sqls(schema: str, columns: str) -> tuple[str, str, str]:
    """read_all's three statements (plain, flushing, flushed) selecting `columns` of the events."""
    plain = f"SELECT {columns} FROM {schema}.events WHERE position > $1 AND position <= $2 ORDER BY position LIMIT $3"
    flushing = (
        # the events up to $2, in a statement that commits synchronously, and flushes the WAL, if it is not
        # flushed past $4 yet: then it writes a message in the WAL (a transaction that wrote nothing commits
        # asynchronously whatever synchronous_commit says), with 'local' not to wait for standbys. The
        # subquery runs first (the events depend on it, so it is the outer side), even when there are no
        # events; the rows come back once the commit is flushed.
        "SELECT e.* FROM (SELECT set_config('synchronous_commit', 'local', true) AS sc, "
        "coalesce(CASE WHEN pg_current_wal_flush_lsn() < $4::pg_lsn "
        "THEN pg_logical_emit_message(true, 'mieux.read_all', '') END, '0/0'::pg_lsn) AS msg) f "
        f"CROSS JOIN LATERAL (SELECT {columns} FROM {schema}.events WHERE position > $1 "
        "AND position <= $2 AND f.msg IS NOT NULL ORDER BY position LIMIT $3) e"
    )
    flushed = (
        # a subquery, so the flush position is read once (an initplan), not row by row as it moves
        f"SELECT {columns} FROM {schema}.events WHERE position > $1 AND position <= "
        "(SELECT CASE WHEN pg_current_wal_flush_lsn() >= $5::pg_lsn THEN $4::bigint ELSE $2::bigint END) "
        "ORDER BY position LIMIT $3"
    )
    return plain, flushing, flushed


def _envelope(row: asyncpg.Record, source: str) -> Envelope:
    return Envelope(
        event_id=row["event_id"],
        event_type=row["event_type"],
        schema_version=row["schema_version"],
        source=source,
        stream_id=row["stream_id"],
        stream_version=row["stream_version"],
        position=row["position"],
        occurred_at=row["occurred_at"],
        recorded_at=row["recorded_at"],
        correlation_id=row["correlation_id"],
        causation_id=row["causation_id"],
        actor=row["actor"],
        data=row["data"],
    )


class EventStore:
    def __init__(self, pool: Pool, service: str) -> None:
        self.pool = pool
        self.service = service
        self.schema = service
        # called after every append that stored events: the relay in this process wakes at once
        # (a NOTIFY in the append would serialise all writers' commits on PostgreSQL's notify queue lock)
        self.on_append: list[Callable[[], None]] = []
        self._append_one = append_sql(self.schema, single=True)
        self._append_many = append_sql(self.schema, single=False)
        self._read = read_sqls(self.schema, EVENT_COLUMNS)
        # for EventLog.ReadAll: each event's data as the JSON text PostgreSQL holds, passed on as it is
        self._read_text = read_sqls(self.schema, TEXT_COLUMNS)

    async def setup(self) -> None:
        async with self.pool.acquire() as conn:
            # CREATE ... IF NOT EXISTS races with itself; one service instance at a time does it
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext('mieux-schema-setup'))")
                await conn.execute(schema_sql(self.schema))

    async def append(
        self,
        stream_id: str,
        expected_version: int,
        events: Sequence[Event],
        meta: Metadata,
        command_id: str | None = None,
        command_hash: str | None = None,
        occurred_at: datetime | None = None,
    ) -> AppendResult:
        """Append `events` if the stream is at `expected_version` (0 = new stream).

        A command id seen before appends nothing and returns the first result; with a different
        `command_hash` it raises CommandReused.
        """
        if not events:
            return await self._append_nothing(stream_id, expected_version, command_id, command_hash)
        n = len(events)
        head = (stream_id, expected_version, command_id, command_hash)
        tail = (occurred_at or utcnow(), meta.correlation_id, meta.causation_id, meta.actor)
        if n == 1:
            e = events[0]  # pydantic's own JSON encoder: faster than model_dump + json.dumps
            data = e.model_dump_json()
            check_size(e, data)
            sql, args = self._append_one, (*head, *tail, e.event_type, e.schema_version, data)
        else:
            for e in events:
                check_size(e, e.model_dump_json())
            payload = [
                {"type": e.event_type, "version": e.schema_version, "data": e.model_dump(mode="json")} for e in events
            ]
            sql, args = self._append_many, (*head, *tail, payload)
        try:
            rows = await self.pool.fetch(sql, *args)
        except asyncpg.UniqueViolationError as e:
            # the same command id stored before (return its first result), or a concurrent writer took
            # the version first
            if first := await self._retried(command_id, command_hash):
                return first
            raise ConcurrencyError(f"stream {stream_id} was changed concurrently") from e
        if not rows:
            # the stream is not at the expected version; a retried command answers with its first result
            if first := await self._retried(command_id, command_hash):
                return first
            raise ConcurrencyError(f"stream {stream_id} is not at the expected version {expected_version}")
        for wake in self.on_append:
            wake()
        positions = [r[0] for r in rows]
        return AppendResult(stream_id, expected_version + 1, expected_version + n, min(positions), max(positions))

    async def _append_nothing(
        self, stream_id: str, expected_version: int, command_id: str | None, command_hash: str | None
    ) -> AppendResult:
        """A command that decided on no events: nothing is stored, but it still answers a retry and
        still checks the expected version."""
        if first := await self._retried(command_id, command_hash):
            return first
        if expected_version > 0 and not await self.pool.fetchval(
            f"SELECT EXISTS (SELECT FROM {self.schema}.events WHERE stream_id = $1 AND stream_version = $2)",
            stream_id,
            expected_version,
        ):
            raise ConcurrencyError(f"stream {stream_id} is not at the expected version {expected_version}")
        return AppendResult(stream_id, expected_version + 1, expected_version, None, None)

    @staticmethod
    def _checked(row: asyncpg.Record, command_hash: str | None) -> AppendResult:
        if row["duplicate"] and row["command_hash"] != command_hash:
            raise CommandReused("this command id was used before with a different payload")
        return AppendResult(
            row["stream_id"],
            row["first_version"],
            row["last_version"],
            row["first_position"],
            row["last_position"],
            row["duplicate"],
        )

    async def command_result(self, command_id: str, command_hash: str | None) -> AppendResult | None:
        """The first result of a command id seen before (CommandReused if the payload differs)."""
        row = await self._command(command_id)
        return None if row is None else self._checked(row, command_hash)

    async def _retried(self, command_id: str | None, command_hash: str | None) -> AppendResult | None:
        """The first result when `command_id` was stored before (only looked up once an append is refused)."""
        return None if command_id is None else await self.command_result(command_id, command_hash)

    async def _command(self, command_id: str) -> asyncpg.Record | None:
        return await self.pool.fetchrow(
            f"SELECT stream_id, first_version, last_version, first_position, last_position, "
            f"true AS duplicate, command_hash FROM {self.schema}.commands WHERE command_id = $1",
            command_id,
        )

    async def read_stream(self, stream_id: str, after_version: int = 0) -> list[Envelope]:
        rows = await self.pool.fetch(
            f"SELECT {EVENT_COLUMNS} FROM {self.schema}.events WHERE stream_id = $1 AND stream_version > $2 "
            "ORDER BY stream_version",
            stream_id,
            after_version,
        )
        return [_envelope(r, self.service) for r in rows]

    async def read_all(
        self,
        after_position: int,
        limit: int = 1000,
        hwm: HighWaterMark | None = None,
        conn: asyncpg.Connection | None = None,
    ) -> list[Envelope]:
        """Events after `after_position` in position order, never skipping one that may still commit, and
        only once their commits are flushed (a PostgreSQL crash cannot take them back). A reader that reads
        on passes its `hwm` and looks again when it gets nothing; without one, this is one look: it waits
        for the flush of what was committed when it was called."""
        rows = await self.read_all_rows(after_position, limit, hwm, conn)
        return [_envelope(r, self.service) for r in rows]

    async def read_all_rows(
        self,
        after_position: int,
        limit: int = 1000,
        hwm: HighWaterMark | None = None,
        conn: asyncpg.Connection | None = None,
        data_as_text: bool = False,
    ) -> list[asyncpg.Record]:
        """`read_all`'s events as rows (EVENT_COLUMNS); with `data_as_text`, as texts (TEXT_COLUMNS): each one's
        data is its JSON text as stored, not parsed (EventLog.ReadAll passes it on as it is)."""
        if conn is None:
            async with self.pool.acquire() as c:
                return await self.read_all_rows(after_position, limit, hwm, c, data_as_text)
        if hwm is None:
            hwm = HighWaterMark(self.schema)
            await hwm.advance(conn)
            if not hwm.flush_when_behind:  # else _read_all flushes
                await hwm.wait_flushed(conn)
        return await self._read_all(conn, after_position, limit, hwm, self._read_text if data_as_text else self._read)

    async def _read_all(
        self, conn: asyncpg.Connection, after: int, limit: int, hwm: HighWaterMark, sqls: tuple[str, str, str]
    ) -> list[asyncpg.Record]:
        plain, flushing, flushed = sqls
        durable = await hwm.advance(conn)
        if hwm.safe <= after:
            return []
        if hwm.unflushed and hwm.flush_when_behind and not conn.is_in_transaction():
            # where commits are synchronous the writers' commits are flushed already: what is not is WAL other
            # sessions wrote after them (a projection's transaction still running), which the mark's end of
            # the WAL takes in. Their commits would flush it soon; rather than wait, this read flushes it (and
            # a writer's commit that was asynchronous all the same): its statement commits synchronously, and
            # its rows come back only once that commit is flushed
            rows = await conn.fetch(flushing, after, hwm.safe, limit, hwm.unflushed[-1][1])
            hwm.flushed_to(hwm.unflushed[-1][1])
        elif not hwm.unflushed:
            rows = await conn.fetch(plain, after, durable, limit)
        else:
            # the flush may have passed the newest safe mark since position_horizon looked: look again in
            # the round trip that reads the events, and read up to that mark if so, else to the durable one
            mark, wal_position = hwm.unflushed[-1]
            rows = await conn.fetch(flushed, after, durable, limit, mark, wal_position)
            if rows and rows[-1]["position"] > durable:
                hwm.flushed_to(wal_position)
            elif not rows:
                await hwm.stalled(conn)
        return rows

    def importer(self) -> Importer:
        """Bulk import at COPY speed, batch by batch, with the invariants of `append` (importing.py)."""
        from services.kernel.importing import Importer

        return Importer(self)

    async def import_events(self, events: Sequence[EventRow]) -> ImportResult:
        """One batch of stored rows appended in one transaction, or none of them (importing.py)."""
        async with self.importer() as imp:
            return await imp.import_batch(events)

    async def last_position(self) -> int:
        return await self.pool.fetchval(f"SELECT coalesce(max(position), 0) FROM {self.schema}.events")
