"""The projection runner: a service's projections on one consumer group, applied in batches.

A service runs all its projections on one consumer group, `mieux.<service>.projections`. Each poll takes
up to `projection_batch_size` messages (aiokafka `getmany`), applies them to every projection of their
topics in one PostgreSQL transaction with their tracking rows (projection.apply_batch), sends what cannot
be decoded or applied to `<group>.dlq` with the reason (and the projection, in a `projection` header),
and only then commits the Kafka offsets (in the background, see Offsets). A crash anywhere before the
commit means redelivery, which the tracking table turns into a no-op. Lag (events behind the partitions'
ends) is kept per partition, exposed by `lag()` and per projection as a Prometheus gauge (metrics.py).

Projections read with aiokafka rather than as faust agents because they need batches: faust's stream
path handles one event at a time (the README's benchmark section has the figures). One group for all of
a service's projections polls, decodes and commits once for all of them; a projection keeps its own
tracking rows, rebuild lock and lag. What one group gives up: a projection added later starts from the
group's committed offsets and lacks the history, so the runner flags it at start (`flag_joined_late`)
until `mieux projections rebuild` fills it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from services.kernel import bus, metrics
from services.kernel.bus import group_offsets
from services.kernel.db import Pool
from services.kernel.projection import Projection, apply_batch
from services.kernel.settings import Settings

log = logging.getLogger(__name__)

COMMIT_EVERY_S = 0.1  # Kafka offsets of applied batches (Kafka Streams' default is the same)
LAG_EVERY_S = 0.5  # lag of every assigned partition; the partitions of each applied batch at once


def projection_group(service: str) -> str:
    """The consumer group that runs every projection of a service."""
    return f"mieux.{service}.projections"


class ProjectionRunner:
    """One consumer group applying a batch to several projections (a service's) in one transaction."""

    def __init__(self, projections: Sequence[Projection], pool: Pool, settings: Settings, group: str) -> None:
        self.projections = tuple(projections)
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
        self.dead = 0
        self._lag: dict[TopicPartition, int] = {}
        self._applied_to: dict[TopicPartition, int] = {}  # per partition, the next offset to apply
        self._task: asyncio.Task | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self.assigned = asyncio.Event()

    async def start(self) -> None:
        await bus.ensure_topics(self.settings, self.topics)
        await bus.ensure_dlq(self.settings, self.group)
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
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def flag_joined_late(self) -> list[str]:
        """Flag the projections that joined this group late, and return every flagged one of this runner.

        A projection joins late when it is added to a service that ran before: it has never applied an
        event (no tracking row) while the group has committed offsets past the start of its topics, so
        the group will not bring it the events behind them. The flag (projections.needs_rebuild) stays
        until `mieux projections rebuild` refills it: it survives restarts, and the live events the
        projection applies meanwhile do not hide it. The rebuild is not started from here: while a
        rolling update still runs the old version, its instances consume for the group without this
        projection, and a rebuild before they are gone would miss what they take."""
        names = [p.name for p in self.projections]
        untracked = await self.pool.fetchval(
            "SELECT coalesce(array_agg(p), '{}') FROM unnest($1::text[]) p "
            "WHERE NOT EXISTS (SELECT FROM projections.tracking t WHERE t.projection = p)",
            names,
        )
        new = [p for p in self.projections if p.name in untracked]
        topics = sorted({t for p in new for t in p.topics})
        offsets = await group_offsets(self.settings, self.group, topics) if topics else {}
        for p in new:
            if any(committed > 0 for tp, (committed, _) in offsets.items() if tp.topic in p.topics):
                await self.pool.execute(
                    "INSERT INTO projections.needs_rebuild (projection, reason) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    p.name,
                    f"joined {self.group} after it had read past the start of {', '.join(p.topics)}",
                )
        return await self.pool.fetchval(
            "SELECT coalesce(array_agg(projection ORDER BY projection), '{}') FROM projections.needs_rebuild "
            "WHERE projection = ANY($1::text[])",
            names,
        )

    def lag(self) -> int:
        """Events on the bus this runner has not applied yet (over its assigned partitions)."""
        return sum(self._lag.values())

    def _export_lag(self) -> None:
        for p, gauge in self._lag_gauges:
            gauge.set(sum(n for tp, n in self._lag.items() if tp.topic in p.topics))

    async def _supervise(self) -> None:
        backoff = 0.2
        while True:
            try:
                await self._run()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("projection %s: %s; resuming from committed offsets in %.1fs", self.group, e, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _run(self) -> None:
        consumer = bus.consumer(self.settings, *self.topics, group_id=self.group)
        producer = bus.producer(self.settings)
        await consumer.start()
        await producer.start()
        offsets = Offsets(consumer, self.settings.kafka_request_timeout_ms / 1000)
        self._applied_to = {}
        watch = asyncio.create_task(self._watch_lag(consumer))
        try:
            while True:
                offsets.tick()
                if watch.done():
                    watch.result()  # its error, if any: the runner then rejoins and re-reads
                batches = await consumer.getmany(
                    timeout_ms=offsets.wait_ms(500), max_records=self.settings.projection_batch_size
                )
                self.assigned.set() if consumer.assignment() else self.assigned.clear()
                if not batches:
                    continue
                records = [m for msgs in batches.values() for m in msgs]
                result = await apply_batch(self.pool, self.projections, [(m.topic, m.value) for m in records])
                for d in result.dead:
                    await bus.send_dead(producer, self.group, d.raw, d.reason, d.topic, d.projection)
                applied_to = {tp: msgs[-1].offset + 1 for tp, msgs in batches.items()}
                offsets.done(applied_to)
                self._applied_to.update(applied_to)
                self.applied += result.applied
                self.duplicates += result.duplicates
                self.dead += len(result.dead)
                for outcome, n in [
                    ("applied", result.applied),
                    ("duplicate", result.duplicates),
                    ("skipped", result.skipped),
                    ("dead", len(result.dead)),
                ]:
                    if n:
                        self._counted[outcome].inc(n)
                for tp in applied_to:
                    hw = consumer.highwater(tp)
                    if hw is not None:
                        self._lag[tp] = max(hw - applied_to[tp], 0)
                self._export_lag()
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watch
            with contextlib.suppress(Exception):
                await offsets.flush()
            with contextlib.suppress(Exception):
                await consumer.stop()
            with contextlib.suppress(Exception):
                await producer.stop()

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
