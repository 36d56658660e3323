"""Parked events: what a consumer could never apply, kept in PostgreSQL in order, with redrive (DESIGN.md
section 11; KurrentDB's parked messages, Axon's sequenced dead-letter queue).

A consumer is a projection (of its service's projection group) or a policy (of its own group). What it can
never apply is parked: a message that is not an envelope, an event of an unknown schema version or shape, an
apply that fails in a way that is not a passing fault (and fails the same way alone), a command a policy's
handle had refused, or a policy's non-final error once its attempts are spent. Once an event of stream S is
parked for a consumer, the later events of S for that consumer are parked behind it (reason "behind parked
#<id>"); other streams flow. Every parked row also goes to the group's `<group>.dlq` topic, as before.

The parked set is the table `<service>_parking.parked` of the consuming service (schemas.py), so it survives a
broker restart; `<service>_parking.requests` holds what ops asked (`mieux parked retry|drop`, services/ops/
parked.py). A request names a partition (topic, partition) of the group, and the consumer that holds that
partition performs it between two batches, in its own loop: so its view of the parked streams
(`Parking.heads`) never goes stale, and a live event of a stream cannot overtake the stream's parked ones (it
waits for the request to end, then finds the stream parked or not). Rows are never deleted: a row ends
`retried` (applied again) or `dropped` (with who and why); only `parked` rows count.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer

from services.kernel import bus, metrics
from services.kernel.db import Pool
from services.kernel.envelope import Envelope
from services.kernel.faults import describe
from services.kernel.schemas import KernelTables, kernel_tables

log = logging.getLogger(__name__)

# the service's own (schemas.py): format with its KernelTables
PARKING_SQL = """
CREATE SCHEMA IF NOT EXISTS {k.parking_schema};
CREATE TABLE IF NOT EXISTS {k.parked} (
    id              bigserial PRIMARY KEY,
    consumer_group  text NOT NULL,
    consumer        text NOT NULL,          -- the projection, or the policy
    kind            text NOT NULL,          -- projection | policy
    stream_id       text NOT NULL,          -- '' for a message that is not an envelope
    topic           text NOT NULL,
    kafka_partition integer NOT NULL,
    kafka_offset    bigint NOT NULL,
    event_id        uuid,                   -- NULL for a message that is not an envelope
    event_type      text NOT NULL DEFAULT '',
    envelope        bytea NOT NULL,         -- the message as it was delivered
    reason          text NOT NULL,
    behind          bigint,                 -- the parked event of its stream it waits behind
    parked_at       timestamptz NOT NULL DEFAULT now(),
    attempts        integer NOT NULL DEFAULT 1,
    state           text NOT NULL DEFAULT 'parked' CHECK (state IN ('parked', 'retried', 'dropped')),
    settled_at      timestamptz,
    settled_by      text,
    settled_why     text,
    dead_lettered   boolean NOT NULL DEFAULT false
);
CREATE UNIQUE INDEX IF NOT EXISTS parked_event ON {k.parked} (consumer_group, consumer, event_id)
    WHERE event_id IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS parked_message
    ON {k.parked} (consumer_group, consumer, topic, kafka_partition, kafka_offset, md5(envelope))
    WHERE event_id IS NULL;
CREATE INDEX IF NOT EXISTS parked_open ON {k.parked} (consumer_group, stream_id, id) WHERE state = 'parked';
CREATE TABLE IF NOT EXISTS {k.requests} (
    id              bigserial PRIMARY KEY,
    consumer_group  text NOT NULL,
    action          text NOT NULL CHECK (action IN ('retry', 'drop')),
    topic           text NOT NULL,          -- the partition whose consumer performs it
    kafka_partition integer NOT NULL,
    stream_id       text,                   -- retry or drop this stream's parked events (NULL: every stream)
    parked_id       bigint,                 -- drop this parked event, then retry its stream's later ones
    requested_by    text NOT NULL,
    why             text NOT NULL DEFAULT '',
    requested_at    timestamptz NOT NULL DEFAULT now(),
    done_at         timestamptz,
    outcome         text
);
CREATE INDEX IF NOT EXISTS requests_open ON {k.requests} (consumer_group, id) WHERE done_at IS NULL;
-- the message's mieux-signature header as it was delivered (signing.py): a retry verifies it again
ALTER TABLE {k.parked} ADD COLUMN IF NOT EXISTS signature bytea;
"""

REQUESTS_EVERY_S = 0.5  # how often a consumer looks for ops' requests (between two batches)


def retried_sql(k: KernelTables) -> str:
    """A parked event applied again, in the same transaction as its apply."""
    return (
        f"UPDATE {k.parked} SET state = 'retried', settled_at = now(), settled_by = $2, settled_why = $3 "
        "WHERE id = $1 AND state = 'parked'"
    )


@dataclass(frozen=True)
class Delivery:
    """A message as the bus delivered it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    signature: bytes | None = None  # its mieux-signature header (signing.py)


@dataclass(eq=False)
class ToPark:
    """A message to park for a consumer: `behind` is the parked event of its stream it waits behind (a row id,
    or another ToPark of the same batch); `letter` says whether it goes to the DLQ (a message that could not
    be decoded goes once, though it is parked for each projection of its topic)."""

    consumer: str
    delivery: Delivery
    env: Envelope | None
    reason: str
    behind: ToPark | int | None = None
    letter: bool = True
    names_consumer: bool = True  # its dead letter names the projection (not when it could not be decoded)
    # False: its producer's signature is missing or does not verify (signing.py). Its event id is not
    # recorded (it may be a real event's, claimed), its stream is: the stream's later events wait behind it
    verified: bool = True


@dataclass(frozen=True)
class Parked:
    """A parked row as a consumer reads it back to apply it again."""

    id: int
    consumer: str
    stream_id: str
    topic: str
    partition: int
    envelope: bytes
    reason: str
    signature: bytes | None = None


@dataclass(frozen=True)
class Request:
    id: int
    group: str
    action: str
    topic: str
    partition: int
    stream_id: str | None
    parked_id: int | None
    requested_by: str
    why: str


# what a consumer does with a parked event when asked to retry it: None once applied (and marked retried by
# RETRIED_SQL, in the apply's transaction where there is one), else why it stays parked; a passing fault raises
Reapply = Callable[[Parked, Request], Awaitable[str | None]]


async def setup(pool: Pool, service: str) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('mieux-schema-setup'))")
        await conn.execute(PARKING_SQL.format(k=kernel_tables(service)))


def behind_reason(head: int) -> str:
    return f"behind parked #{head}"


class Parking:
    """The parked set of one consumer group of `service`, and this process's view of which streams are parked
    (`heads`: (consumer, stream) -> the first parked event of the stream)."""

    def __init__(self, pool: Pool, group: str, consumers: Sequence[str], kind: str, service: str) -> None:
        self.pool = pool
        self.k = k = kernel_tables(service)
        self.retried_sql = retried_sql(k)
        self.group = group
        self.kind = kind
        self.heads: dict[tuple[str, str], int] = {}
        self._gauges = {c: metrics.PARKED.labels(group, c) for c in consumers}
        self._requests_at = 0.0
        # a behind event already applied (a redelivery) is not parked: the tracking table says so
        tracked = f"AND EXISTS (SELECT FROM {k.tracking} t WHERE t.projection = $2 AND t.event_id = $7)"
        insert = (
            f"INSERT INTO {k.parked} (consumer_group, consumer, kind, stream_id, topic, kafka_partition, "
            "kafka_offset, event_id, event_type, envelope, reason, behind, dead_lettered, signature) "
            f"SELECT $1, $2, '{kind}', $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $14 "
            f"WHERE NOT ($13 {tracked if kind == 'projection' else 'AND false'}) ON CONFLICT "
        )
        returning = " DO UPDATE SET consumer_group = EXCLUDED.consumer_group RETURNING id, state, xmax = 0 AS inserted"
        self._insert_event = insert + "(consumer_group, consumer, event_id) WHERE event_id IS NOT NULL" + returning
        self._insert_message = (
            insert + "(consumer_group, consumer, topic, kafka_partition, kafka_offset, md5(envelope)) "
            "WHERE event_id IS NULL" + returning
        )

    async def load(self) -> None:
        """Read the parked streams of the group (at every (re)start, and whenever the partitions change)."""
        rows = await self.pool.fetch(
            f"SELECT DISTINCT ON (consumer, stream_id) consumer, stream_id, id FROM {self.k.parked} "
            "WHERE consumer_group = $1 AND state = 'parked' AND stream_id <> '' ORDER BY consumer, stream_id, id",
            self.group,
        )
        self.heads = {(r["consumer"], r["stream_id"]): r["id"] for r in rows}
        await self.count()

    async def count(self) -> None:
        rows = await self.pool.fetch(
            f"SELECT consumer, count(*) AS n FROM {self.k.parked} WHERE consumer_group = $1 AND state = 'parked' "
            "GROUP BY consumer",
            self.group,
        )
        counts = {r["consumer"]: r["n"] for r in rows}
        for consumer in set(self._gauges) | set(counts):
            if consumer not in self._gauges:
                self._gauges[consumer] = metrics.PARKED.labels(self.group, consumer)
            self._gauges[consumer].set(counts.get(consumer, 0))

    async def park(self, items: Sequence[ToPark]) -> list[tuple[ToPark, int, str]]:
        """Park `items` in their order, in one transaction, and note the streams they park. Returns the rows
        that are new, with their id and reason (a redelivered message finds its row, and an event that was
        applied or dropped since is not parked again)."""
        ids: dict[int, int] = {}
        new: list[tuple[ToPark, int, str]] = []
        heads: dict[tuple[str, str], int] = {}
        async with self.pool.acquire() as conn, conn.transaction():
            for item in items:
                behind = item.behind if isinstance(item.behind, int) else ids.get(id(item.behind))
                reason = behind_reason(behind) if behind is not None else item.reason
                env, d = item.env, item.delivery
                event_id = env.event_id if env is not None and item.verified else None
                row = await conn.fetchrow(
                    self._insert_event if event_id is not None else self._insert_message,
                    self.group,
                    item.consumer,
                    env.stream_id if env is not None else "",
                    d.topic,
                    d.partition,
                    d.offset,
                    event_id,
                    env.event_type if env is not None else "",
                    d.value or b"",
                    reason,
                    behind,
                    not item.letter,
                    item.behind is not None,
                    d.signature,
                )
                if row is None:  # behind, but applied before (a redelivery)
                    continue
                ids[id(item)] = row["id"]
                if row["state"] != "parked":
                    log.warning("%s: #%s came again once %s: not parked again", self.group, row["id"], row["state"])
                    continue
                if env is not None:  # the stream's first parked row is its head (as `load` reads it)
                    heads.setdefault((item.consumer, env.stream_id), row["id"])
                if row["inserted"]:
                    new.append((item, row["id"], reason))
        for key, head in heads.items():
            self.heads.setdefault(key, head)
        if new:
            try:
                await self.count()
            except Exception as e:  # parked all the same: the gauge follows at the next change
                log.warning("%s: could not count the parked events: %s", self.group, describe(e))
        return new

    async def send_letters(self, producer: AIOKafkaProducer, new: Sequence[tuple[ToPark, int, str]]) -> None:
        """The new parked rows onto the group's dead-letter topic (those whose letter is theirs to send)."""
        sent = []
        for item, row_id, reason in new:
            if item.letter:
                await bus.send_parked(
                    producer,
                    self.group,
                    item.delivery.value,
                    reason,
                    item.delivery.topic,
                    row_id,
                    item.consumer if self.kind == "projection" and item.names_consumer else "",
                )
                sent.append(row_id)
        if sent:
            await self.pool.execute(f"UPDATE {self.k.parked} SET dead_lettered = true WHERE id = ANY($1)", sent)

    async def send_unsent(self, producer: AIOKafkaProducer) -> None:
        """Dead letters of rows parked by a run that ended before it could send them."""
        rows = await self.pool.fetch(
            f"SELECT id, consumer, topic, envelope, reason FROM {self.k.parked} "
            "WHERE consumer_group = $1 AND NOT dead_lettered ORDER BY id",
            self.group,
        )
        for r in rows:
            await bus.send_parked(
                producer,
                self.group,
                r["envelope"],
                r["reason"],
                r["topic"],
                r["id"],
                r["consumer"] if self.kind == "projection" else "",
            )
            await self.pool.execute(f"UPDATE {self.k.parked} SET dead_lettered = true WHERE id = $1", r["id"])

    # --- ops' requests ---------------------------------------------------------------------------------

    def requests_due(self) -> bool:
        """Whether it is time to look for requests again (at most every REQUESTS_EVERY_S)."""
        now = time.monotonic()
        if now < self._requests_at:
            return False
        self._requests_at = now + REQUESTS_EVERY_S
        return True

    async def pending(self, owned: Callable[[str, int], bool]) -> list[Request]:
        """The requests for the group not performed yet whose partition this process holds, oldest first."""
        rows = await self.pool.fetch(
            "SELECT id, consumer_group, action, topic, kafka_partition, stream_id, parked_id, requested_by, why "
            f"FROM {self.k.requests} WHERE consumer_group = $1 AND done_at IS NULL ORDER BY id",
            self.group,
        )
        return [Request(*r.values()) for r in rows if owned(r["topic"], r["kafka_partition"])]

    async def perform(self, request: Request, reapply: Reapply) -> str:
        """Perform one request: drop what it drops, then apply again the parked events it covers, stream by
        stream in their order, each consumer's until one fails again (it stays parked with its new reason, and
        its stream's later ones stay behind it). Performing it again after a passing fault is harmless."""
        parts = []
        scope: list[tuple[str, str]] | None = None  # (consumer, stream) to retry; None: all the request covers
        if request.action == "drop":
            dropped, scope = await self._drop(request)
            parts.append(f"dropped {dropped}")
        rows = await self.pool.fetch(
            f"SELECT id, consumer, stream_id, topic, kafka_partition, envelope, reason, signature FROM {self.k.parked} "
            "WHERE consumer_group = $1 AND state = 'parked' AND topic = $2 AND kafka_partition = $3 "
            "AND ($4::text IS NULL OR stream_id = $4) ORDER BY id",
            self.group,
            request.topic,
            request.partition,
            request.stream_id,
        )
        sequences: dict[tuple[str, str], list[Parked]] = {}
        for r in rows:
            key = (r["consumer"], r["stream_id"] or f"#{r['id']}")  # a non-envelope stands alone
            if scope is None or (r["consumer"], r["stream_id"]) in scope:
                sequences.setdefault(key, []).append(Parked(*r.values()))
        applied = kept = 0
        failed = []
        for sequence in sequences.values():
            for i, row in enumerate(sequence):
                reason = await reapply(row, request)
                if reason is None:
                    applied += 1
                    continue
                await self._keep(row, reason, sequence[i + 1 :])
                kept += len(sequence) - i
                failed.append(f"#{row.id}: {reason}")
                break
        await self.load()
        parts.append(f"applied {applied}")
        if kept:
            parts.append(f"still parked {kept} ({'; '.join(failed)})")
        outcome = ", ".join(parts)
        await self.pool.execute(
            f"UPDATE {self.k.requests} SET done_at = now(), outcome = $2 WHERE id = $1", request.id, outcome
        )
        log.info(
            "%s: request #%s (%s by %s): %s", self.group, request.id, request.action, request.requested_by, outcome
        )
        return outcome

    async def give_up(self, request: Request, error: Exception) -> None:
        """A request that failed for a reason that is not a passing fault (a bug): done, saying so."""
        await self.pool.execute(
            f"UPDATE {self.k.requests} SET done_at = now(), outcome = $2 WHERE id = $1",
            request.id,
            f"failed: {describe(error)} (the service's log has the details)",
        )

    async def _drop(self, request: Request) -> tuple[int, list[tuple[str, str]]]:
        """Drop the request's parked event (then its stream's later ones are retried) or its stream's."""
        settle = (
            f"UPDATE {self.k.parked} SET state = 'dropped', settled_at = now(), settled_by = $2, settled_why = $3 "
            "WHERE consumer_group = $1 AND state = 'parked' "
        )
        by, why = request.requested_by, request.why
        if request.parked_id is not None:
            status = await self.pool.execute(settle + "AND id = $4", self.group, by, why, request.parked_id)
            row = await self.pool.fetchrow(
                f"SELECT consumer, stream_id FROM {self.k.parked} WHERE id = $1", request.parked_id
            )
            scope = [(row["consumer"], row["stream_id"])] if row is not None and row["stream_id"] else []
        else:
            status = await self.pool.execute(
                settle + "AND stream_id = $4 AND topic = $5 AND kafka_partition = $6",
                self.group,
                by,
                why,
                request.stream_id,
                request.topic,
                request.partition,
            )
            scope = []
        return int(status.split()[-1]), scope

    async def _keep(self, head: Parked, reason: str, rest: Sequence[Parked]) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                f"UPDATE {self.k.parked} SET reason = $2, attempts = attempts + 1, behind = NULL WHERE id = $1",
                head.id,
                reason,
            )
            if rest:
                await conn.execute(
                    f"UPDATE {self.k.parked} SET reason = $2, behind = $1 WHERE id = ANY($3)",
                    head.id,
                    behind_reason(head.id),
                    [r.id for r in rest],
                )
