"""Consumers: the projection runner (batched, aiokafka) and the policy runner (faust-streaming agents).

Projection runner. A service runs all its projections on one consumer group, `mieux.<service>.projections`
(see `projection_group`). Each poll takes up to `projection_batch_size` messages (`getmany`), applies
them to every projection of their topics in one PostgreSQL transaction with their tracking rows
(projection.apply_batch), sends what cannot be decoded or applied to `<group>.dlq` with the reason
(and the projection, in a `projection` header), and only then commits the Kafka offsets (in the
background, at most every 100 ms: see Offsets). A crash anywhere before the commit means redelivery,
which the tracking table turns into a no-op. Lag (events behind the partitions' ends) is kept per
partition, exposed by `lag()` and, per projection, as the Prometheus gauge `mieux_projection_lag_events`
(metrics.py).

Why not a faust agent for projections: measured here (2 cores, Tansu), faust's stream path delivers
8-13k events/s whatever the batching (`take`), against 94-149k/s for a plain `getmany` loop, because it
spends a few event-loop turns and tasks on every message. The projection targets (>= 10k events/s and
>= half of the raw getmany+executemany ceiling) are out of its reach, so projections read batches with
aiokafka directly.

Why one group for all of a service's projections rather than one each: every consumer polls the broker
(an idle Tansu fetch returns after half of fetch_max_wait, so about 200 fetches a second each) and
decodes every event; every transaction commits with a WAL flush. With the requests service's two
projections on one group instead of two (two A/B pairs of 20 s at 200 commands/s, fresh stacks):
end-to-end p50 12.3-12.5 ms against 13.5-14.6, p99 27.9-28.9 against 28.8-33.1, and the service's CPU
3.1 against 3.3-3.4 ms a command. A projection keeps its own tracking rows, its own rebuild lock and
its own lag (the group's lag over its topics). A rebuild holds its projection's lock, so the group's
other projections wait for it too. The runner's counters (applied, duplicates, dead) count
(projection, event) pairs. What one group gives up, a group per projection had for free: a projection
added later starts from the group's committed offsets and lacks the history. The runner flags it at
start (see `flag_joined_late`) and `mieux projections rebuild` fills it (as in Axon, where a handler
added to an existing processor needs a reset).

Policies handle one event at a time and call other services over gRPC, which is what
faust agents do well (p50 ~4 ms produce->handle with the fetch-wait fix below), so they run on faust.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Sequence
from typing import ClassVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition
from pydantic import ValidationError

from services.kernel import bus, metrics
from services.kernel.db import Pool
from services.kernel.envelope import DecodeError, Envelope, Event, UnknownEvent, parse_message, registry
from services.kernel.grpckit import correlation_var, principal_var
from services.kernel.projection import Projection, apply_batch
from services.kernel.settings import Principal, Settings
from services.kernel.store import EventStore

log = logging.getLogger(__name__)

COMMIT_EVERY_S = 0.1  # Kafka offsets of applied batches (Kafka Streams' default is the same)
LAG_EVERY_S = 0.5  # lag of every assigned partition; the partitions of each applied batch at once


def dlq_topic(group: str) -> str:
    return f"{group}.dlq"


def projection_group(service: str) -> str:
    """The consumer group that runs every projection of a service."""
    return f"mieux.{service}.projections"


def policy_group(service: str, policy: Policy) -> str:
    return f"mieux.{service}.{policy.name}"


async def send_dead(
    producer: AIOKafkaProducer, group: str, raw: bytes | None, reason: str, origin: str, projection: str = ""
) -> None:
    """`origin`: the topic the message came from; `projection`: the one that could not apply it, if any."""
    headers = [("reason", reason.encode()[:4000]), ("origin", origin.encode())]
    if projection:
        headers.append(("projection", projection.encode()))
    await producer.send_and_wait(dlq_topic(group), value=raw or b"", headers=headers)


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
        await bus.ensure_topics(self.settings, [dlq_topic(self.group)], partitions=1)
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
                    await send_dead(producer, self.group, d.raw, d.reason, d.topic, d.projection)
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

    The next batch does not wait for the broker's answer (a commit took 3-4 ms of every loop turn
    here, and the events behind it waited as long), and a busy runner commits a few times a second
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


async def group_offsets(settings: Settings, group: str, topics: Sequence[str]) -> dict[TopicPartition, tuple[int, int]]:
    """Each partition of `topics` with (committed offset of `group`, end offset); 0 if never committed."""
    c = bus.consumer(settings, group_id=group)
    await c.start()
    try:
        out = {}
        for topic in topics:
            for tp, end in (await bus.end_offsets(settings, topic)).items():
                out[tp] = (await c.committed(tp) or 0, end)
        return out
    finally:
        await c.stop()


async def group_lag(settings: Settings, group: str, topics: Sequence[str]) -> int:
    """Lag of a consumer group as Kafka defines it: end offsets minus committed offsets."""
    return sum(max(end - committed, 0) for committed, end in (await group_offsets(settings, group, topics)).values())


# --- policies --------------------------------------------------------------------------------------

POLICY_NAMESPACE = uuid.UUID("0b8f5a0e-7d0c-4a55-b8f3-2f6c2f0f4c11")


def command_id_for(policy: str, env: Envelope) -> str:
    """The command a policy issues for an event has an id derived from the event id: redelivery is harmless."""
    return str(uuid.uuid5(POLICY_NAMESPACE, f"{policy}:{env.event_id}"))


class Policy:
    """A process manager: reacts to other contexts' events by issuing its own commands.

    `handle` runs as the principal `policy:<name>` (role `service`), with the event's correlation id, so
    the events it causes record who acted and why; `store` is the owning service's event store, bound
    by the service before the policy starts."""

    name: ClassVar[str]
    topics: ClassVar[tuple[str, ...]]
    store: EventStore | None = None

    async def handle(self, env: Envelope, event: Event, command_id: str) -> None:
        raise NotImplementedError


def _faust_transport(fetch_max_wait_ms: int) -> str:
    """A faust transport whose consumer uses our fetch wait (faust hard-codes 1500 ms, and Tansu answers
    a waiting fetch only after half of it: 750 ms per event). Registered as the `mieux://` scheme."""
    from faust.transport import drivers
    from faust.transport.drivers import aiokafka as fa

    class ConsumerThread(fa.AIOKafkaConsumerThread):
        def _create_worker_consumer(self, transport):  # type: ignore[no-untyped-def]
            c = super()._create_worker_consumer(transport)
            c._fetch_max_wait_ms = fetch_max_wait_ms
            return c

    class MieuxConsumer(fa.Consumer):
        def _new_consumer_thread(self):  # type: ignore[no-untyped-def]
            return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    class Transport(fa.Transport):
        Consumer = MieuxConsumer

    globals()["MieuxTransport"] = Transport
    drivers.TRANSPORTS.aliases["mieux"] = f"{__name__}:MieuxTransport"
    return "mieux"


class PolicyRunner:
    """Runs one policy as a faust agent in this process's event loop."""

    def __init__(self, policy: Policy, settings: Settings, group: str) -> None:
        self.policy = policy
        self.settings = settings
        self.group = group
        self.handled = 0
        self.app = None
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        import faust

        await bus.ensure_topics(self.settings, [*self.policy.topics])
        await bus.ensure_topics(self.settings, [dlq_topic(self.group)], partitions=1)
        scheme = _faust_transport(self.settings.kafka_fetch_max_wait_ms)
        datadir = self.settings.mieux_home / "faust" / self.group
        datadir.mkdir(parents=True, exist_ok=True)
        app = faust.App(
            self.group,
            broker=f"{scheme}://{self.settings.bootstrap()}",
            store="memory://",
            web_enabled=False,
            datadir=str(datadir),
            topic_allow_declare=False,
            topic_disable_leader=True,
            broker_session_timeout=self.settings.kafka_session_timeout_ms / 1000,
            broker_heartbeat_interval=self.settings.kafka_heartbeat_interval_ms / 1000,
            broker_rebalance_timeout=self.settings.kafka_session_timeout_ms / 1000,
            broker_commit_interval=0.5,
            consumer_auto_offset_reset="earliest",
        )
        self._producer = bus.producer(self.settings)
        await self._producer.start()
        topic = app.topic(*self.policy.topics, value_serializer="raw")

        @app.agent(topic, name=f"{self.group}.agent")
        async def agent(stream):  # type: ignore[no-untyped-def]
            async for raw in stream:
                await self._handle(raw)

        self.app = app
        await app.start()

    async def _handle(self, raw: bytes | None) -> None:
        try:
            env = parse_message(raw)
            event = registry.decode(env)
        except DecodeError as e:
            await send_dead(self._producer, self.group, raw, str(e), ",".join(self.policy.topics))  # type: ignore[arg-type]
            return
        if isinstance(event, UnknownEvent):
            return
        principal_var.set(Principal(name=f"policy:{self.policy.name}", roles=frozenset({"service"})))
        correlation_var.set(env.correlation_id or str(env.event_id))
        backoff = 0.2
        while True:
            try:
                await self.policy.handle(env, event, command_id_for(self.policy.name, env))
                self.handled += 1
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:
                # a refused command is a decision, not a failure: it goes to the DLQ for a person to see
                from services.kernel.errors import InvalidArgument, NotFound, RuleBroken

                if isinstance(e, RuleBroken | InvalidArgument | NotFound | ValidationError) or _is_final_grpc_error(e):
                    await send_dead(self._producer, self.group, raw, f"refused: {e}", ",".join(self.policy.topics))  # type: ignore[arg-type]
                    return
                log.warning("policy %s: %s; retrying in %.1fs", self.group, e, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def stop(self) -> None:
        if self.app is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.app.stop(), 15)
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await self._producer.stop()


def _is_final_grpc_error(e: Exception) -> bool:
    import grpc

    final = {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.PERMISSION_DENIED,
    }
    return isinstance(e, grpc.aio.AioRpcError) and e.code() in final
