"""Bulk import and export of a service's events (`mieux import`, `mieux export events`; DESIGN.md section 4).

**What is moved.** The store's rows as they are stored (`EventRow`): the envelope's fields and the command
columns (a command's id, payload hash and event count on its first event, so a retried command still gets
its first result after a migration). Personal fields travel sealed, as they are stored (personal.py): an
export holds no clear name and an import seals nothing; the keys stay in `<service>.subject_keys`. Nothing
is signed: the relay signs what it publishes (signing.py), imported events like any other.

**One batch, one transaction, every invariant of `EventStore.append`:**

* positions from the store's sequence, in the batch's order, taken after the writers' shared advisory lock
  (horizon.py), so the relay's high-water mark waits for the import as for any append, and then publishes
  the imported events as usual (the events table is the outbox);
* expected versions: per stream, the batch's versions follow one another by one in the batch's order, and
  the first follows the stream's last stored version (a new stream starts at 1);
* command ids: never stored before, never twice in the batch (the store's unique index), and a command's
  events all in the batch;
* event ids: never twice in the batch nor in what the same importer imported before, nor already stored in
  a stream the batch continues (the store keeps no index on event ids: `append` draws them at random, so an
  id stored in another stream is not looked for);
* an event's data is a JSON object of at most MAX_EVENT_BYTES.

The rows go in with one COPY into the events table itself, so the indexes that refuse a second writer of a
version or a reused command id are the ones every append meets. What needs no index (the order of versions
within the batch, duplicate event ids in it) is checked in one pass before; what needs the store (a
continued stream's last version, its event ids) in one set-based statement, for the streams the importer has
not written itself (those it knows). A refused batch changes nothing (it is one transaction) and
`ImportRefused` names its first offending event.

Imported rows keep their `recorded_at` (history stays dated as it happened); their positions are new.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, NamedTuple

import asyncpg

from services.kernel.horizon import WRITERS_LOCK, HighWaterMark

if TYPE_CHECKING:
    from services.kernel.store import EventStore

COLUMNS = (
    "position",
    "event_id",
    "stream_id",
    "stream_version",
    "event_type",
    "schema_version",
    "data",
    "occurred_at",
    "recorded_at",
    "correlation_id",
    "causation_id",
    "actor",
    "command_id",
    "command_hash",
    "command_events",
)


DATA_KEY = ', "data": '  # an exported line ends with its data: `to_line`, `from_line`


class EventRow(NamedTuple):
    """One event as the store keeps it, its columns in the table's order after the position (a tuple, so
    that COPY takes it as it is); `data` is its JSON text (personal fields sealed)."""

    event_id: uuid.UUID
    stream_id: str
    stream_version: int
    event_type: str
    schema_version: int
    data: str
    occurred_at: datetime
    recorded_at: datetime
    correlation_id: str
    causation_id: str
    actor: str
    command_id: str | None = None
    command_hash: str | None = None
    command_events: int | None = None

    def to_line(self, source: str, position: int) -> str:
        """The export format: one JSON object per line, the envelope's fields (with `source` and the
        position it had) and the command columns; `data` spliced in as stored."""
        head = self._asdict()
        del head["data"]
        head.update(event_id=str(self.event_id), occurred_at=self.occurred_at.isoformat())
        head.update(recorded_at=self.recorded_at.isoformat(), source=source, position=position)
        return json.dumps(head)[:-1] + DATA_KEY + self.data + "}"

    @classmethod
    def from_line(cls, line: str) -> tuple[str, EventRow]:
        """A line of an export -> (its source, the event). KeyError/ValueError when it is not one.

        `data` last, as `to_line` writes it, is taken as the text it is, not parsed (the store's jsonb input
        parses it, and a batch it refuses is looked at again event by event): the rest of the line must then
        be a JSON object without `data`, which it cannot be when the split fell inside `data` (a brace of it
        would be left open; a quote inside a JSON string is escaped). Any other line is parsed whole."""
        at, o = line.rfind(DATA_KEY), None
        if at > 0 and line.rstrip().endswith("}"):
            with contextlib.suppress(ValueError):
                o = json.loads(line[:at] + "}")
        if isinstance(o, dict) and "data" not in o:
            data = line[at + len(DATA_KEY) :].rstrip()[:-1]
        else:
            o = json.loads(line)
            if not isinstance(o, dict) or not isinstance(o.get("data"), dict):
                raise ValueError("data is not a JSON object")
            data = json.dumps(o["data"])
        return o["source"], cls(
            uuid.UUID(o["event_id"]),
            str(o["stream_id"]),
            int(o["stream_version"]),
            str(o["event_type"]),
            int(o["schema_version"]),
            data,
            datetime.fromisoformat(o["occurred_at"]),
            datetime.fromisoformat(o["recorded_at"]),
            str(o["correlation_id"]),
            str(o["causation_id"]),
            str(o["actor"]),
            o.get("command_id"),
            o.get("command_hash"),
            o.get("command_events"),
        )


assert EventRow._fields == COLUMNS[1:], "an EventRow's fields are the events table's columns after the position"


class ImportRefused(Exception):
    """The batch was refused, nothing stored: `index` is the first offending event's place in the batch."""

    def __init__(self, index: int, event: EventRow, reason: str) -> None:
        self.index, self.event, self.reason = index, event, reason
        super().__init__(
            f"event {index} of the batch (id {event.event_id}, stream {event.stream_id} "
            f"version {event.stream_version}): {reason}; nothing was imported"
        )


@dataclass(frozen=True)
class ImportResult:
    count: int
    last_position: int | None  # the position of the batch's last event


@dataclass
class _Plan:
    """What the pass over a batch found."""

    first: dict[str, int]  # stream -> index of its first event in the batch
    last: dict[str, int]  # stream -> its last version in the batch
    ids: set[uuid.UUID]  # the batch's event ids


def plan(events: Sequence[EventRow], max_bytes: int) -> _Plan:
    """The checks that need no database, in one pass (the rare cases looked at again one by one):
    ImportRefused on the first event that fails one."""
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    command_ids: list[str] = []
    odd: list[int] = []  # a command of more or less than one event, data to look at closely
    short = max_bytes // 4  # UTF-8's widest character is 4 bytes: data this long or less fits
    for i, (_, s, v, _, _, data, _, _, _, _, _, cid, chash, cevents) in enumerate(events):
        prev = last.get(s)
        if prev is None:
            first[s] = i
            if v < 1:
                raise ImportRefused(i, events[i], "stream versions start at 1")
        elif v != prev + 1:
            raise ImportRefused(i, events[i], f"the stream's previous event in the batch has version {prev}")
        last[s] = v
        if cid is not None:
            command_ids.append(cid)
            if cevents != 1:
                odd.append(i)
        elif chash is not None or cevents is not None:
            raise ImportRefused(i, events[i], "a command hash or event count without a command id")
        if len(data) > short or data[:1] != "{":
            odd.append(i)
    for i in sorted(odd):
        e = events[i]
        if len(e.data.encode()) > max_bytes:
            raise ImportRefused(i, e, f"its data is over {max_bytes:,} bytes")
        if not e.data.lstrip().startswith("{"):
            raise ImportRefused(i, e, "its data is not a JSON object")
        if e.command_id is not None:
            if e.command_events is None or e.command_events < 1:
                raise ImportRefused(i, e, "a command's first event must say how many events it appended")
            if last[e.stream_id] < (needed := e.stream_version + e.command_events - 1):
                raise ImportRefused(i, e, f"the command's events up to version {needed} are not all in the batch")
    if len(set(command_ids)) != len(command_ids):
        seen: set[str] = set()
        for i, e in enumerate(events):
            if e.command_id is not None and (e.command_id in seen or seen.add(e.command_id)):
                raise ImportRefused(i, e, f"command id {e.command_id} is in the batch twice")
    if len(ids := {e.event_id for e in events}) != len(events):
        seen: set[uuid.UUID] = set()
        for i, e in enumerate(events):
            if e.event_id in seen or seen.add(e.event_id):
                raise ImportRefused(i, e, "this event id is in the batch twice")
    return _Plan(first, last, ids)


class Importer:
    """Imports batches on a connection of its own (jsonb as the JSON text it is given, not re-encoded):
    `async with store.importer() as imp: await imp.import_batch(events)`."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        s = store.schema
        self._lock = f"SELECT pg_advisory_xact_lock_shared({WRITERS_LOCK}, hashtext('{s}.events'))"
        self._last = f"SELECT currval('{s}.events_position_seq')"
        # one round trip over the streams the batch continues: the first whose version before the batch's
        # first is not stored (one stored after it is refused by the unique index as the COPY meets it), and
        # the event ids stored in them. Index lookups, never a scan of the table (whatever its statistics)
        self._continued = (
            f"SELECT (SELECT u.i FROM unnest($1::text[], $2::integer[], $3::integer[]) AS u(s, v, i) "
            f"LEFT JOIN {s}.events e ON e.stream_id = u.s AND e.stream_version = u.v - 1 "
            "WHERE e.stream_id IS NULL ORDER BY u.i LIMIT 1), "
            f"(SELECT array_agg(e.event_id) FROM {s}.events e WHERE e.stream_id = ANY($1::text[]))"
        )
        self._index_lookups = "SET LOCAL enable_mergejoin = off; SET LOCAL enable_hashjoin = off"
        self._stored_version = (
            f"SELECT u.i FROM unnest($1::text[], $2::integer[], $3::integer[]) AS u(s, v, i) WHERE EXISTS "
            f"(SELECT FROM {s}.events e WHERE e.stream_id = u.s AND e.stream_version >= u.v) ORDER BY u.i LIMIT 1"
        )
        self._stored_command = (
            f"SELECT u.i FROM unnest($1::text[], $2::integer[]) AS u(c, i) WHERE EXISTS "
            f"(SELECT FROM {s}.events e WHERE e.command_id = u.c) ORDER BY u.i LIMIT 1"
        )
        self.conn: asyncpg.Connection | None = None
        # what this importer has committed: each stream's last version and every event id. A stream it wrote
        # up to version v is at v in the store or further (then the unique index refuses the batch's v + 1),
        # and holds no other ids than those it had when the importer first continued it (checked then) and
        # these: its next batches are checked here, without a round trip
        self.versions: dict[str, int] = {}
        self.ids: set[uuid.UUID] = set()

    async def __aenter__(self) -> Importer:
        self.conn = await asyncpg.connect(self.store.pool.dsn)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.conn is not None:
            await self.conn.close()
            self.conn = None

    async def import_batch(self, events: Sequence[EventRow]) -> ImportResult:
        """Append `events` (in their order) as one transaction, or refuse them all (ImportRefused)."""
        from services.kernel.store import MAX_EVENT_BYTES

        assert self.conn is not None, "use the importer as `async with`"
        if not events:
            return ImportResult(0, None)
        p = plan(events, MAX_EVENT_BYTES)
        conn = self.conn
        try:
            async with conn.transaction():
                await conn.execute(self._lock)  # before any position: the high-water mark waits for us
                await self._check_continued(conn, events, p)
                # each row's position is the column's default, nextval of the store's sequence, taken in the
                # batch's order as COPY reads the rows
                await conn.copy_records_to_table(
                    "events", schema_name=self.store.schema, columns=COLUMNS[1:], records=events
                )
                last = await conn.fetchval(self._last)
        except asyncpg.UniqueViolationError as e:
            raise await self._why(events, p, e) from e
        except asyncpg.DataError as e:  # jsonb's input refused an event's data (taken from the file unparsed)
            raise _bad_data(events) or e from e
        self.versions.update(p.last)
        self.ids |= p.ids
        for wake in self.store.on_append:
            wake()
        return ImportResult(len(events), last)

    async def _check_continued(self, conn: asyncpg.Connection, events: Sequence[EventRow], p: _Plan) -> None:
        """The streams the batch continues: each at the version before its first in the batch, and none of
        their stored events with an id of the batch (nor any event this importer stored)."""
        if not self.ids.isdisjoint(p.ids):
            i = next(i for i, e in enumerate(events) if e.event_id in self.ids)
            raise ImportRefused(i, events[i], "an event of this id was imported before")
        later = []
        for s, i in p.first.items():
            if (v := events[i].stream_version) > 1 and (known := self.versions.get(s)) != v - 1:
                if known is not None:
                    raise ImportRefused(i, events[i], f"stream {s} is not at the expected version {v - 1}")
                later.append((s, v, i))
        if not later:
            return
        await conn.execute(self._index_lookups)
        i, stored = await conn.fetchrow(self._continued, *map(list, zip(*later, strict=True)))
        if i is not None:
            e = events[i]
            raise ImportRefused(i, e, f"stream {e.stream_id} is not at the expected version {e.stream_version - 1}")
        if stored:
            ids = set(stored)
            for i, e in enumerate(events):
                if e.event_id in ids:
                    raise ImportRefused(i, e, "an event of this id is stored already")

    async def _why(self, events: Sequence[EventRow], p: _Plan, error: asyncpg.UniqueViolationError) -> Exception:
        """The COPY met a unique index (the batch rolled back): which event, found after the fact."""
        conn = self.conn
        assert conn is not None
        firsts = [(s, events[i].stream_version, i) for s, i in p.first.items()]
        i = await conn.fetchval(self._stored_version, *map(list, zip(*firsts, strict=True)))
        if i is not None:
            e = events[i]
            return ImportRefused(i, e, f"stream {e.stream_id} is not at the expected version {e.stream_version - 1}")
        commands = [(e.command_id, i) for i, e in enumerate(events) if e.command_id is not None]
        if commands:
            i = await conn.fetchval(self._stored_command, *map(list, zip(*commands, strict=True)))
            if i is not None:
                return ImportRefused(i, events[i], f"command id {events[i].command_id} is stored already")
        # the row it met is not found after the fact (its writer's transaction did not commit after all):
        # the batch may be tried again
        from services.kernel.store import ConcurrencyError

        return ConcurrencyError(f"the import met a concurrent writer ({error.detail or error}); nothing was imported")


def _bad_data(events: Sequence[EventRow]) -> ImportRefused | None:
    for i, e in enumerate(events):
        try:
            json.loads(e.data)
        except ValueError as error:
            return ImportRefused(i, e, f"its data is not JSON ({error})")
    return None


async def export(store: EventStore, after: int = 0, page: int = 10_000) -> AsyncIterator[tuple[int, EventRow]]:
    """The store's events after position `after`, in position order, as far as `read_all` would read them
    now (committed, flushed, no writer still running below them): (position, event) pairs."""
    conn = await asyncpg.connect(store.pool.dsn)
    try:
        hwm = HighWaterMark(store.schema)
        await hwm.advance(conn)
        await hwm.wait_flushed(conn)
        end = await hwm.advance(conn)
        sql = (
            f"SELECT {', '.join(COLUMNS)} FROM {store.schema}.events WHERE position > $1 AND position <= $2 "
            "ORDER BY position LIMIT $3"
        )
        while True:
            rows = await conn.fetch(sql, after, end, page)
            for r in rows:
                yield r[0], EventRow(*r[1:])
            if len(rows) < page:
                return
            after = rows[-1][0]
    finally:
        await conn.close()
