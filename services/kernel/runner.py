"""The projection runner: a service's projections on one consumer group, applied in batches.

A service runs all its projections on one consumer group, `mieux.<service>.projections`. Each poll takes
up to `projection_batch_size` messages (aiokafka `getmany`), applies them to every projection of their
topics in one PostgreSQL transaction with their tracking rows (projection.apply_batch), once its producer's
signature verifies (signing.py: what is unsigned or does not verify is parked with the reason, its stream's
later events behind it, and a parked event is verified again when it is retried), parks what can never
be applied (parking.py: in PostgreSQL, with the stream's later events behind it, and on `<group>.dlq` with
the reason and the projection), and only then commits the Kafka offsets (in the background, see Offsets). A
crash anywhere before the commit means redelivery, which the tracking table turns into a no-op. A passing
fault (consuming.py) is retried with backoff for as long as it lasts, never parked. Between batches the
runner performs ops' requests to retry or drop parked events of the partitions it holds. Lag (events behind
the partitions' ends) is kept per partition, exposed by `lag()` and per projection as a Prometheus gauge.

The loop runs under a supervisor that ends only when the runner is stopped: whatever ends the loop (a
commit that timed out during a broker pause, a CancelledError raised from inside aiokafka while it stops)
is logged and the loop starts again (topics ensured first) from the committed offsets. `health` says
whether it consumes, for the service's gRPC health and `mieux_consumer_up`.

Projections read with aiokafka rather than as faust agents because they need batches: faust's stream
path handles one event at a time (the README's benchmark section has the figures). One group for all of
a service's projections polls, decodes and commits once for all of them; a projection keeps its own
tracking rows, rebuild lock and lag. What one group gives up: a projection added later starts from the
group's committed offsets and lacks the history, so the runner flags it at start (`flag_joined_late`)
until `mieux projections rebuild` fills it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

from services.kernel import bus, metrics, parking
from services.kernel.consuming import (
    BACKOFF_CAP_S,
    BACKOFF_FIRST_S,
    ConsumerHealth,
    Retrying,
    own_cancellation,
    quietly,
)
from services.kernel.db import Pool
from services.kernel.envelope import DecodeError, parse_message, registry
from services.kernel.faults import describe, is_transient
from services.kernel.parking import Delivery, Parked, Parking, Request, ToPark
from services.kernel.projection import BatchResult, Dead, Projection, apply_alone, apply_batch
from services.kernel.schemas import kernel_tables
from services.kernel.settings import Settings
from services.kernel.signing import Verifier, signature_of

log = logging.getLogger(__name__)

COMMIT_EVERY_S = 0.1  # Kafka offsets of applied batches (Kafka Streams' default is the same)
LAG_EVERY_S = 0.5  # lag of every assigned partition; the partitions of each applied batch at once
STOP_TIMEOUT_S = 30.0
RAN_LONG_S = 30.0  # a loop that ran this long before it ended starts again after the shortest backoff


def projection_group(service: str) -> str:
    """The consumer group that runs every projection of a service."""
    return f"mieux.{service}.projections"


class ProjectionRunner:
    """One consumer group applying a batch to several projections (a service's) in one transaction."""

    def __init__(self, projections: Sequence[Projection], pool: Pool, settings: Settings, group: str) -> None:
        self.projections = tuple(projections)
        # one service's projections: its kernel tables (tracking, needs_rebuild, parking) are that service's
        services = {p.service for p in self.projections}
        if len(services) != 1:
            raise ValueError(f"a projection runner runs one service's projections, not those of {sorted(services)}")
        self.service = services.pop()
        self.kernel = kernel_tables(self.service)
        self.needs_rebuild: list[str] = []  # flagged as lacking the events before they joined (at start)
        self._counted = {
            outcome: metrics.PROJECTION_EVENTS.labels(group, outcome)
            for outcome in ("applied", "duplicate", "skipped", "dead")
        }
        self._lag_gauges = [(p, metrics.PROJECTION_LAG.labels(group, p.name)) for p in self.projections]
        self.topics = sorted({t for p in self.projections for t in p.topics})
        self.pool = pool
        self.settings = settings
        self.group = group
        self.applied = 0
        self.duplicates = 0
        self.dead = 0  # (projection, message) pairs parked (each also on the DLQ)
        self.restarts = 0  # times the supervisor started the loop again
        self.health = ConsumerHealth(group)
        self._retrying = Retrying(group, self.health)
        self.parking = Parking(pool, group, [p.name for p in self.projections], "projection", self.service)
        # every message is verified before it is applied (signing.py); what does not verify is parked
        self.verifier = Verifier.from_settings(settings)
        self._by_name = {p.name: p for p in self.projections}
        self._lag: dict[TopicPartition, int] = {}
        self._applied_to: dict[TopicPartition, int] = {}  # per partition, the next offset to apply
        self._task: asyncio.Task | None = None
        self._stopping = False
        self.assigned = asyncio.Event()

    async def start(self) -> None:
        await bus.ensure_topics(self.settings, self.topics)
        await bus.ensure_dlq(self.settings, self.group)
        await parking.setup(self.pool, self.service)
        # before anything is applied: a projection that joined late has no tracking row yet
        self.needs_rebuild = await self.flag_joined_late()
        for name in self.needs_rebuild:
            log.error(
                "projection %s lacks the events its group %s had read before it joined: run "
                "`mieux projections rebuild %s` once every instance of the service runs this version",
                name,
                self.group,
                name,
            )
        self._task = asyncio.create_task(self._supervise())

    async def stop(self) -> None:
        self._stopping = True
        self.health.ended = True
        if self._task:
            self._task.cancel()
            done, _ = await asyncio.wait({self._task}, timeout=STOP_TIMEOUT_S)
            if not done:
                log.error("projection runner %s did not stop within %.0fs", self.group, STOP_TIMEOUT_S)

    @property
    def retries(self) -> int:
        """Passing faults retried so far."""
        return self._retrying.retries

    async def flag_joined_late(self) -> list[str]:
        """Flag the projections that joined this group late, and return every flagged one of this runner.

        A projection joins late when it is added to a service that ran before: it has never applied an
        event (no tracking row) while the group has committed offsets past the start of its topics, so
        the group will not bring it the events behind them. The flag (<service>_projections.needs_rebuild) stays
        until `mieux projections rebuild` refills it: it survives restarts, and the live events the
        projection applies meanwhile do not hide it. The rebuild is not started from here: while a
        rolling update still runs the old version, its instances consume for the group without this
        projection, and a rebuild before they are gone would miss what they take."""
        names = [p.name for p in self.projections]
        untracked = await self.pool.fetchval(
            "SELECT coalesce(array_agg(p), '{}') FROM unnest($1::text[]) p "
            f"WHERE NOT EXISTS (SELECT FROM {self.kernel.tracking} t WHERE t.projection = p)",
            names,
        )
        new = [p for p in self.projections if p.name in untracked]
        topics = sorted({t for p in new for t in p.topics})
        offsets = await bus.group_offsets(self.settings, self.group, topics) if topics else {}
        for p in new:
            if any(committed > 0 for tp, (committed, _) in offsets.items() if tp.topic in p.topics):
                await self.pool.execute(
                    f"INSERT INTO {self.kernel.needs_rebuild} (projection, reason) VALUES ($1, $2) "
                    "ON CONFLICT DO NOTHING",
                    p.name,
                    f"joined {self.group} after it had read past the start of {', '.join(p.topics)}",
                )
        return await self.pool.fetchval(
            f"SELECT coalesce(array_agg(projection ORDER BY projection), '{{}}') FROM {self.kernel.needs_rebuild} "
            "WHERE projection = ANY($1::text[])",
            names,
        )

    def lag(self) -> int:
        """Events on the bus this runner has not applied yet (over its assigned partitions)."""
        return sum(self._lag.values())

    def partitions(self) -> int:
        """Partitions of the group's topics this process holds, as the lag watch last saw its assignment."""
        return len(self._applied_to)

    def _export_lag(self) -> None:
        for p, gauge in self._lag_gauges:
            gauge.set(sum(n for tp, n in self._lag.items() if tp.topic in p.topics))

    async def _supervise(self) -> None:
        """Run the loop until the runner is stopped: it ends only then, whatever ends the loop."""
        backoff = BACKOFF_FIRST_S
        while not self._stopping:
            began = time.monotonic()
            try:
                await self._run()
                log.error("projection runner %s: its loop returned; starting it again", self.group)
            except asyncio.CancelledError:
                if self._stopping or own_cancellation():
                    raise
                log.error(
                    "projection runner %s: a CancelledError raised inside a client library (not a stop) ended its "
                    "loop; starting it again from the committed offsets in %.1fs",
                    self.group,
                    backoff,
                )
            except Exception as e:
                log.error(
                    "projection runner %s: %s ended its loop; starting it again from the committed offsets in %.1fs",
                    self.group,
                    describe(e),
                    backoff,
                    exc_info=None if is_transient(e) else e,
                )
            self.restarts += 1
            self.health.fail()
            if time.monotonic() - began > RAN_LONG_S:
                backoff = BACKOFF_FIRST_S
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_CAP_S)

    def _new_consumer(self) -> AIOKafkaConsumer:
        return bus.consumer(self.settings, *self.topics, group_id=self.group)

    async def _run(self) -> None:
        consumer = self._new_consumer()
        producer = bus.producer(self.settings)
        offsets = Offsets(consumer, self.settings.kafka_request_timeout_ms / 1000)
        watch: asyncio.Task | None = None
        self.health.started()
        try:
            # before anything is consumed, at every (re)start: a broker that restarted has lost them
            await bus.ensure_topics(self.settings, self.topics)
            await bus.ensure_dlq(self.settings, self.group)
            await consumer.start()
            await producer.start()
            await self._retrying("reading the parked streams", self.parking.load)
            await self._retrying("sending dead letters", lambda: self.parking.send_unsent(producer))
            self._applied_to = {}
            watch = asyncio.create_task(self._watch_lag(consumer))
            assignment: set[TopicPartition] = set()
            while True:
                offsets.tick()
                if watch.done():
                    watch.result()  # its error, if any: the runner then rejoins and re-reads
                batches = await consumer.getmany(
                    timeout_ms=offsets.wait_ms(500), max_records=self.settings.projection_batch_size
                )
                if consumer.assignment() != assignment:  # partitions (and their parked streams) came or went
                    assignment = consumer.assignment()
                    self.assigned.set() if assignment else self.assigned.clear()
                    await self._retrying("reading the parked streams", self.parking.load)
                if batches:
                    await self._apply(batches, consumer, producer, offsets)
                if self.parking.requests_due():
                    await self._serve_requests(assignment)
                self.health.ok()
        finally:
            self.health.stopped()
            if watch is not None:
                watch.cancel()
                await asyncio.wait({watch})
            await quietly(f"{self.group}: committing offsets", offsets.flush())
            await quietly(f"{self.group}: the consumer", consumer.stop())
            await quietly(f"{self.group}: the producer", producer.stop())

    async def _apply(
        self, batches: dict, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer, offsets: Offsets
    ) -> None:
        records = [m for msgs in batches.values() for m in msgs]
        messages = [(m.topic, m.value) for m in records]
        signatures = [signature_of(m.headers) for m in records]

        async def apply() -> tuple[BatchResult, list]:
            result = await apply_batch(
                self.pool, self.projections, messages, self.parking.heads, self.verifier, signatures
            )
            new = await self.parking.park(self._to_park(result.dead, records)) if result.dead else []
            return result, new

        result, new = await self._retrying("applying a batch", apply)
        self.applied += result.applied
        self.duplicates += result.duplicates
        self.dead += len(new)
        if new:
            await self._retrying("sending dead letters", lambda: self.parking.send_letters(producer, new))
        applied_to = {tp: msgs[-1].offset + 1 for tp, msgs in batches.items()}
        offsets.done(applied_to)
        self._applied_to.update(applied_to)
        for outcome, n in [
            ("applied", result.applied),
            ("duplicate", result.duplicates),
            ("skipped", result.skipped),
            ("dead", len(new)),
        ]:
            if n:
                self._counted[outcome].inc(n)
        for tp in applied_to:
            hw = consumer.highwater(tp)
            if hw is not None:
                self._lag[tp] = max(hw - applied_to[tp], 0)
        self._export_lag()

    @staticmethod
    def _to_park(dead: list[Dead], records: list) -> list[ToPark]:
        parked: dict[int, ToPark] = {}
        for d in dead:  # in batch order: an event comes after the one it waits behind
            m = records[d.index]
            behind = parked[id(d.behind)] if isinstance(d.behind, Dead) else d.behind
            delivery = Delivery(m.topic, m.partition, m.offset, m.key, m.value, signature_of(m.headers))
            item = ToPark(d.projection, delivery, d.env, d.reason)
            item.behind, item.letter, item.names_consumer = behind, d.letter, not d.decoding
            item.verified = d.verified
            parked[id(d)] = item
        return list(parked.values())

    async def _serve_requests(self, assignment: set[TopicPartition]) -> None:
        """Ops' requests (`mieux parked retry|drop`) for the partitions this runner holds, between two batches:
        no live event of a stream is applied meanwhile, so none overtakes the stream's parked ones."""
        owned = {(tp.topic, tp.partition) for tp in assignment}
        requests = await self._retrying("reading requests", lambda: self.parking.pending(lambda t, p: (t, p) in owned))
        for request in requests:
            try:
                await self._retrying(
                    f"performing request #{request.id}", lambda r=request: self.parking.perform(r, self._reapply)
                )
            except Exception as e:
                log.error("%s: request #%s failed", self.group, request.id, exc_info=e)
                await self._retrying("recording a failed request", lambda r=request, e=e: self.parking.give_up(r, e))

    async def _reapply(self, row: Parked, request: Request) -> str | None:
        """Apply a parked event again, with the projection's apply and tracking, and mark it retried in the
        same transaction; None once done, else why it stays parked (a passing fault raises)."""
        projection = self._by_name.get(row.consumer)
        if projection is None:
            return f"no projection {row.consumer} in {self.group}"
        try:
            env = parse_message(row.envelope)
            self.verifier.verify(row.topic, row.envelope, env, row.signature)
            event = registry.decode(env)
        except DecodeError as e:  # Unverified too: it stays parked, with the reason
            return str(e)
        why = f"{request.action} request #{request.id}"
        async with self.pool.acquire() as conn:
            try:
                await apply_alone(
                    conn, projection, env, event, (self.parking.retried_sql, row.id, request.requested_by, why)
                )
            except Exception as e:
                if is_transient(e):
                    raise
                log.warning("projection %s could not apply parked #%s again", projection.name, row.id, exc_info=e)
                return f"apply failed: {describe(e)}"
        return None

    async def _watch_lag(self, consumer: AIOKafkaConsumer) -> None:
        """Every LAG_EVERY_S, each assigned partition's lag: its high watermark minus the next offset to
        apply (from the last applied batch, else the group's committed offset). It runs beside the loop,
        so a projection stuck in a batch that keeps failing, or waiting for a rebuild, shows its lag
        growing instead of the consumer's fetch position, which is past the batch it cannot apply."""
        while True:
            assignment = consumer.assignment()
            for tp in set(self._applied_to) - assignment:  # revoked in a rebalance: another member has it
                del self._applied_to[tp]
            lag = {}
            for tp in assignment:
                if tp not in self._applied_to:
                    self._applied_to[tp] = await consumer.committed(tp) or 0
                hw = consumer.highwater(tp)
                if hw is not None:
                    lag[tp] = max(hw - self._applied_to[tp], 0)
            self._lag = lag
            self._export_lag()
            await asyncio.sleep(LAG_EVERY_S)


class Offsets:
    """Commits the offsets of applied batches in the background, at most every COMMIT_EVERY_S, one
    commit in flight at a time.

    The next batch does not wait for the broker's answer, and a busy runner commits a few times a second
    rather than once per batch. Only offsets whose transaction has committed are ever committed, so a
    crash means redelivery of at most the last COMMIT_EVERY_S, which the tracking table turns into a
    no-op.
    """

    def __init__(self, consumer: AIOKafkaConsumer, timeout: float) -> None:
        self.consumer = consumer
        self.timeout = timeout
        self.pending: dict[TopicPartition, int] = {}
        self.task: asyncio.Task[None] | None = None
        self.at = time.monotonic()

    def done(self, offsets: dict[TopicPartition, int]) -> None:
        self.pending.update(offsets)
        self.tick()

    def tick(self) -> None:
        """Start a commit of what is pending if the last one is over and COMMIT_EVERY_S has passed;
        raise the last commit's error (the runner then rejoins and re-reads)."""
        if self.task is not None and self.task.done():
            error = None if self.task.cancelled() else self.task.exception()
            self.task = None
            if error is not None:
                raise error
        if self.pending and self.task is None and time.monotonic() - self.at >= COMMIT_EVERY_S:
            self.at = time.monotonic()
            self.task = asyncio.create_task(self._commit())

    def wait_ms(self, longest: int) -> int:
        """How long the next poll may wait without holding back a commit that is due."""
        if not self.pending:
            return longest
        return max(1, min(longest, int((self.at + COMMIT_EVERY_S - time.monotonic()) * 1000) + 1))

    async def _commit(self) -> None:
        while self.pending:
            offsets, self.pending = self.pending, {}
            # a broker that lost its state makes commit retry for ever: give up, rejoin, re-read
            await asyncio.wait_for(self.consumer.commit(offsets), self.timeout)

    async def flush(self) -> None:
        if self.task is not None and not self.task.done():
            await self.task
        if self.pending:
            await self._commit()
