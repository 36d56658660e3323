"""Faults are not poison (DESIGN.md section 11), against the real PostgreSQL and broker: a passing fault in a
projection's apply is retried until it is gone and never parked; what can never be applied is parked in
order with its stream's later events behind it, listed, retried and dropped with `mieux parked`; the parked
set survives a broker restart; a runner cannot die quietly, and its service says NOT_SERVING meanwhile."""

from __future__ import annotations

import asyncio
import getpass
import json
import logging
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import ClassVar

import asyncpg
import grpc
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaConnectionError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY
from support import eventually, make_envelope, publish

from services.kernel import bus
from services.kernel.db import Pool
from services.kernel.envelope import Envelope, Event, topic_for
from services.kernel.projection import Projection
from services.kernel.runner import ProjectionRunner
from services.kernel.schemas import kernel_tables
from services.kernel.service import Service
from services.kernel.settings import Settings
from services.ops.devstack import free_port

pytestmark = pytest.mark.integration


class ParkingTestTicked(Event):
    source: ClassVar[str] = "test"
    n: int


def envelope(stream: str, version: int, n: int) -> Envelope:
    return make_envelope("ParkingTestTicked", {"n": n}, stream_id=stream, version=version)


class Ordered(Projection):
    """Per stream, the sum of n and the versions in the order they were applied; its table refuses a sum of
    13 (the CHECK constraint `no_13`): an event that makes it 13 can never be applied, until the constraint
    is dropped."""

    tables: ClassVar[tuple[str, ...]]

    def __init__(self, schema: str) -> None:
        self.name = f"ordered_{schema}"  # type: ignore[misc]
        self.service = schema  # type: ignore[misc]  # its tracking and parking: <schema>_projections, _parking
        self.topics = (topic_for(schema),)  # type: ignore[misc]
        self.table = f"{schema}_views.ordered"
        self.tables = (self.table,)  # type: ignore[misc]
        self.setup_sql = f"""
        CREATE SCHEMA IF NOT EXISTS {schema}_views;
        CREATE TABLE IF NOT EXISTS {self.table} (
            stream_id text PRIMARY KEY,
            total bigint NOT NULL CONSTRAINT no_13 CHECK (total <> 13),
            versions text NOT NULL);
        """  # type: ignore[misc]
        self.statement = (
            f"INSERT INTO {self.table} AS o VALUES ($1, $2, $3) ON CONFLICT (stream_id) DO UPDATE "
            "SET total = o.total + EXCLUDED.total, versions = o.versions || ',' || EXCLUDED.versions"
        )

    async def apply(self, conn: asyncpg.Connection, env: Envelope, event: Event) -> None:
        assert isinstance(event, ParkingTestTicked)
        await conn.execute(self.statement, env.stream_id, event.n, str(env.stream_version))


def expected(events: Sequence[Envelope]) -> dict[str, tuple[int, str]]:
    """The model a projection without the constraint gives: every event applied once, in order."""
    out: dict[str, tuple[int, str]] = {}
    for e in events:
        total, versions = out.get(e.stream_id, (0, ""))
        out[e.stream_id] = (total + e.data["n"], f"{versions},{e.stream_version}".lstrip(","))
    return out


async def model(pool: Pool, projection: Ordered) -> dict[str, tuple[int, str]]:
    rows = await pool.fetch(f"SELECT stream_id, total, versions FROM {projection.table}")
    return {r["stream_id"]: (r["total"], r["versions"]) for r in rows}


async def produce(settings: Settings, topic: str, events: Sequence[Envelope]) -> None:
    """As the topic's producer publishes them: signed (the consumers park what is not)."""
    await publish(settings, topic, events)


@asynccontextmanager
async def running(pool: Pool, runner: ProjectionRunner) -> AsyncIterator[ProjectionRunner]:
    async with pool.acquire() as conn:
        for p in runner.projections:
            await p.setup(conn)
    await runner.start()
    try:
        yield runner
    finally:
        await runner.stop()


async def mieux(stack_env: dict[str, str], *args: str) -> tuple[int, str]:
    """`mieux <args>` as a person runs it (a process of its own): its exit code and output."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.ops.cli",
        *args,
        env={**stack_env, "COLUMNS": "250"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode()


async def parked_rows(stack_env: dict[str, str], group: str, *more: str) -> list[dict]:
    code, out = await mieux(stack_env, "parked", "list", group, "--json", *more)
    assert code == 0, out
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


async def dead_letters(settings: Settings, group: str) -> int:
    return sum((await bus.end_offsets(settings, bus.dlq_topic(group))).values())


# --- passing faults ---------------------------------------------------------------------------------------


class Faulty(Ordered):
    """Ordered, with a fault on the runner's side while `fault` is set: a lock timeout or a statement timeout
    (real ones, while the test holds a lock on the table), or a deadlock raised as asyncpg raises it."""

    fault = ""
    deadlocks = 0

    async def apply(self, conn: asyncpg.Connection, env: Envelope, event: Event) -> None:
        if self.fault == "lock_timeout":
            await conn.execute("SET LOCAL lock_timeout = '100ms'")
        elif self.fault == "statement_timeout":
            await conn.execute("SET LOCAL statement_timeout = '100ms'")
        elif self.fault == "deadlock" and self.deadlocks > 0:
            self.deadlocks -= 1
            raise asyncpg.DeadlockDetectedError("deadlock detected")
        await super().apply(conn, env, event)


@pytest.mark.parametrize("fault", ["lock_timeout", "statement_timeout", "deadlock"])
async def test_a_passing_fault_in_an_apply_is_retried_until_it_is_gone_and_never_parked(pool, schema, fault) -> None:
    settings = Settings()
    projection = Faulty(schema)
    projection.fault = fault
    group = f"test.{schema}.faulty"
    events = [envelope("s1", 1, 5), envelope("s2", 1, 3), envelope("s1", 2, 7)]
    async with running(pool, ProjectionRunner([projection], pool, settings, group)) as runner:
        async with pool.acquire() as held:
            tx = held.transaction()
            await tx.start()
            try:
                if fault == "deadlock":
                    projection.deadlocks = 4  # one more than the retries awaited below: none applied meanwhile
                else:  # the runner's statements wait for this lock until their timeout
                    await held.execute(f"LOCK TABLE {projection.table} IN ACCESS EXCLUSIVE MODE")
                await produce(settings, topic_for(schema), events)

                async def retrying() -> bool:
                    return runner.retries >= 3 and sample("mieux_consumer_retrying", group=group) == 1

                await eventually(retrying, what=f"the runner to retry the {fault} three times")
                assert runner.applied == 0
            finally:
                await tx.rollback()

        async def applied() -> bool:
            return runner.applied == len(events)

        await eventually(applied, what="the events applied once the fault is gone")
        assert sample("mieux_consumer_retrying", group=group) == 0
        assert (sample("mieux_consumer_retries_total", group=group, kind="transient") or 0) >= 3
        assert runner.dead == 0 and runner.health.up
    assert await model(pool, projection) == expected(events)
    assert (
        await pool.fetchval(f"SELECT count(*) FROM {kernel_tables(schema).parked} WHERE consumer_group = $1", group)
        == 0
    )
    assert await dead_letters(settings, group) == 0


# --- parking, in order, and ops' retry and drop ------------------------------------------------------------


async def test_a_poison_event_parks_its_stream_behind_it_and_retry_applies_them_in_order(
    pool, schema, stack_env
) -> None:
    settings = Settings()
    projection = Ordered(schema)
    group = f"test.{schema}.parking"
    first = [
        envelope("s1", 1, 5),
        envelope("s2", 1, 13),  # the table refuses it: parked, and s2's later events behind it
        envelope("s2", 2, 1),
        envelope("s3", 1, 2),
        envelope("s2", 3, 4),
        envelope("s1", 2, 7),
    ]
    async with running(pool, ProjectionRunner([projection], pool, settings, group)) as runner:
        await produce(settings, topic_for(schema), first)

        async def settled() -> bool:
            return runner.dead == 3 and runner.applied == 3

        await eventually(settled, what="s1 and s3 applied, s2 parked")
        assert await model(pool, projection) == {"s1": (12, "1,2"), "s3": (2, "1")}
        rows = await parked_rows(stack_env, group)
        head = rows[0]["id"]
        assert [(r["stream_id"], r["consumer"], r["event_type"], r["reason"]) for r in rows] == [
            ("s2", projection.name, "ParkingTestTicked", "apply failed: CheckViolationError (SQLSTATE 23514)"),
            ("s2", projection.name, "ParkingTestTicked", f"behind parked #{head}"),
            ("s2", projection.name, "ParkingTestTicked", f"behind parked #{head}"),
        ]
        assert sample("mieux_parked_events", group=group, consumer=projection.name) == 3
        code, table = await mieux(stack_env, "parked", "list", group)
        assert code == 0 and f"behind parked #{head}" in table and "ParkingTestTicked" in table, table
        code, shown = await mieux(stack_env, "parked", "show", str(head), "--group", group, "--json")
        assert code == 0, shown
        assert json.loads(shown)["envelope"]["event_id"] == str(first[1].event_id)
        dead = await read_dead_letters(settings, group, 3)
        assert [h["reason"] for h in dead] == [r["reason"] for r in rows]
        assert [h["parked"] for h in dead] == [str(r["id"]) for r in rows]

        later = [envelope("s2", 4, 10)]  # a live event of the parked stream waits behind it too
        await produce(settings, topic_for(schema), later)

        async def behind() -> bool:
            return runner.dead == 4

        await eventually(behind, what="the live event of s2 parked behind")
        code, out = await mieux(stack_env, "parked", "retry", group, "--stream", "s2")  # not fixed yet
        assert code == 1 and "applied 0, still parked 4" in out, out
        assert await model(pool, projection) == {"s1": (12, "1,2"), "s3": (2, "1")}

        await pool.execute(f"ALTER TABLE {projection.table} DROP CONSTRAINT no_13")  # the cause, fixed
        code, out = await mieux(stack_env, "parked", "retry", group)
        assert code == 0 and "applied 4" in out, out
        assert await model(pool, projection) == expected(first + later)  # as if there had been no poison
        assert await parked_rows(stack_env, group) == []
        settled_rows = await parked_rows(stack_env, group, "--all")
        assert {r["state"] for r in settled_rows} == {"retried"}
        assert sample("mieux_parked_events", group=group, consumer=projection.name) == 0

        last = [envelope("s2", 5, 1)]  # the stream flows again
        await produce(settings, topic_for(schema), last)

        async def flowing() -> bool:
            return (await model(pool, projection)).get("s2") == expected(first + later + last)["s2"]

        await eventually(flowing, what="s2's next event applied")
    tracked = await pool.fetchval(
        f"SELECT count(*) FROM {projection.kernel.tracking} WHERE projection = $1", projection.name
    )
    assert tracked == len(first + later + last)


async def read_dead_letters(settings: Settings, group: str, n: int) -> list[dict[str, str]]:
    from support import read_topic

    letters = await read_topic(settings, bus.dlq_topic(group), lambda seen: len(seen) >= n, raw=True)
    return [{k: v.decode() for k, v in m.headers} for m in letters]


async def test_a_drop_records_who_and_why_and_the_stream_behind_it_is_retried(pool, schema, stack_env, tokens) -> None:
    settings = Settings()
    projection = Ordered(schema)
    group = f"test.{schema}.drop"
    events = [envelope("s5", 1, 13), envelope("s5", 2, 3), envelope("s6", 1, 13), envelope("s6", 2, 1)]
    async with running(pool, ProjectionRunner([projection], pool, settings, group)) as runner:
        await produce(settings, topic_for(schema), events)

        async def parked() -> bool:
            return runner.dead == 4

        await eventually(parked, what="s5 and s6 parked")
        rows = await parked_rows(stack_env, group)
        s5 = [r["id"] for r in rows if r["stream_id"] == "s5"]
        code, out = await mieux(
            stack_env, "parked", "drop", str(s5[0]), "--group", group, "--reason", "refunded by hand"
        )
        assert code == 0 and "dropped 1, applied 1" in out, out
        assert await model(pool, projection) == {"s5": (3, "2")}  # the one behind it, applied

        code, out = await mieux(stack_env, "parked", "drop", group, "--stream", "s6", "--reason", "stream abandoned")
        assert code == 0 and "dropped 2, applied 0" in out, out
        await produce(settings, topic_for(schema), [envelope("s6", 3, 2)])  # no longer parked: applied

        async def s6_flows() -> bool:
            return (await model(pool, projection)).get("s6") == (2, "3")

        await eventually(s6_flows, what="s6's next event applied")

    principal = Settings().tokens().authenticate(tokens["admin"]).name  # redriving is admin's
    settled = {r["id"]: r for r in await parked_rows(stack_env, group, "--all")}
    assert settled[s5[0]]["state"] == "dropped"
    assert settled[s5[0]]["settled_by"] == f"{principal} (os user {getpass.getuser()})"
    assert settled[s5[0]]["settled_why"] == "refunded by hand"
    assert settled[s5[1]]["state"] == "retried"
    assert [r["settled_why"] for r in settled.values() if r["stream_id"] == "s6"] == ["stream abandoned"] * 2


async def test_the_parked_set_survives_a_broker_restart(pool, schema, stack, stack_env) -> None:
    settings = Settings()
    projection = Ordered(schema)
    group = f"test.{schema}.restart"
    topic = topic_for(schema)
    before = [envelope("s7", 1, 13), envelope("s7", 2, 1)]
    async with running(pool, ProjectionRunner([projection], pool, settings, group)) as runner:
        await produce(settings, topic, before)

        async def parked() -> bool:
            return runner.dead == 2

        await eventually(parked, what="s7 parked")
        await asyncio.to_thread(stack.restart_broker)  # Tansu keeps messages in memory: they are gone
        await bus.ensure_topics(settings, [topic])
        after = [envelope("s7", 3, 2), envelope("s8", 1, 4)]
        await produce(settings, topic, after)

        async def back() -> bool:
            return runner.dead == 3 and (await model(pool, projection)).get("s8") == (4, "1")

        await eventually(back, 90, "the runner back: s8 applied, s7's new event parked behind its head")
        rows = await parked_rows(stack_env, group)
        assert [r["stream_id"] for r in rows] == ["s7"] * 3
        assert rows[2]["reason"] == f"behind parked #{rows[0]['id']}"

        await pool.execute(f"ALTER TABLE {projection.table} DROP CONSTRAINT no_13")
        code, out = await mieux(stack_env, "parked", "retry", group, "--stream", "s7")
        assert code == 0 and "applied 3" in out, out
        assert await model(pool, projection) == expected(before + after)


# --- consumers that cannot die quietly --------------------------------------------------------------------


@dataclass
class ConsumerFaults:
    """What the consumers of a FaultyRunner do: `commit_times_out` (as during a broker pause), then `stop()`
    raising the CancelledError aiokafka's fetcher raises (`cancel_on_stop`); `cancel_in_fetch` once, a
    CancelledError out of getmany; `broken`, a broker that cannot be reached (start and fetch fail)."""

    commit_times_out: bool = False
    cancel_on_stop: bool = False
    cancel_in_fetch: bool = False
    broken: bool = False
    stops_cancelled: int = 0


class FaultyConsumer(AIOKafkaConsumer):
    faults: ConsumerFaults

    async def start(self) -> None:
        if self.faults.broken:
            raise KafkaConnectionError("the broker cannot be reached (test)")
        await super().start()

    async def getmany(self, *partitions, timeout_ms=0, max_records=None):  # type: ignore[no-untyped-def]
        if self.faults.broken:
            raise KafkaConnectionError("the broker cannot be reached (test)")
        if self.faults.cancel_in_fetch:
            self.faults.cancel_in_fetch = False
            raise asyncio.CancelledError()
        return await super().getmany(*partitions, timeout_ms=timeout_ms, max_records=max_records)

    async def commit(self, offsets=None) -> None:  # type: ignore[no-untyped-def]
        if self.faults.commit_times_out:
            raise TimeoutError()
        await super().commit(offsets)

    async def stop(self) -> None:
        await super().stop()
        if self.faults.cancel_on_stop:
            self.faults.stops_cancelled += 1
            raise asyncio.CancelledError()


class FaultyRunner(ProjectionRunner):
    faults = ConsumerFaults()

    def _new_consumer(self) -> AIOKafkaConsumer:
        consumer = super()._new_consumer()
        consumer.__class__ = FaultyConsumer
        consumer.faults = self.faults  # type: ignore[attr-defined]
        return consumer


async def test_a_runner_whose_consumer_raises_cancelled_error_is_started_again(pool, schema, caplog) -> None:
    """The broker-pause chain: a commit times out, the loop ends, and the consumer's stop() raises
    CancelledError from inside aiokafka; then a CancelledError out of a fetch. Neither is the runner's own
    stop: each time the supervisor logs it and starts the loop again, and nothing is lost or applied twice."""
    settings = Settings()
    projection = Ordered(schema)
    runner = FaultyRunner([projection], pool, settings, f"test.{schema}.cancelled")
    runner.faults = faults = ConsumerFaults()
    sent: list[Envelope] = []

    async def send(e: Envelope) -> None:
        sent.append(e)
        await produce(settings, topic_for(schema), [e])

    async def all_applied() -> bool:
        return await model(pool, projection) == expected(sent)

    async with running(pool, runner):
        await send(envelope("c1", 1, 1))
        await eventually(all_applied, what="the first event applied")
        faults.commit_times_out = faults.cancel_on_stop = True
        await send(envelope("c1", 2, 2))

        async def restarted() -> bool:
            return faults.stops_cancelled >= 1 and runner.restarts >= 1

        await eventually(restarted, what="the loop ended by the commit, its consumer's stop cancelled")
        faults.commit_times_out = faults.cancel_on_stop = False
        await send(envelope("c1", 3, 3))
        await eventually(all_applied, what="the runner consuming again")

        faults.cancel_in_fetch = True
        restarts = runner.restarts

        async def restarted_again() -> bool:
            return runner.restarts > restarts

        await eventually(restarted_again, what="the supervisor to start the loop again after a fetch's CancelledError")
        await send(envelope("c1", 4, 4))
        await eventually(all_applied, what="the runner consuming again")
        assert runner._task is not None and not runner._task.done()
    assert await model(pool, projection) == {"c1": (10, "1,2,3,4")}  # every event once, in order
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("CancelledError while stopping" in m for m in logged), logged
    assert any("a CancelledError raised inside a client library" in m for m in logged), logged


async def test_a_service_whose_consumer_is_down_says_not_serving_then_serving_again(pool, schema) -> None:
    faults = ConsumerFaults()
    port = free_port()

    class FaultyService(Service):
        @property
        def port(self) -> int:
            return port

        def projection_runner(self) -> ProjectionRunner:
            runner = FaultyRunner(self.projections, self.pool, self.settings, f"test.{schema}.service")
            runner.faults = faults
            runner.health.down_after_s = 1.0
            return runner

    svc = FaultyService(
        name=schema, grpc_services=[], access={}, registrars=lambda s: [], projections=[Ordered(schema)]
    )
    await svc.start()
    try:
        group = svc.runners[0].group
        assert svc.server is not None
        async with grpc.aio.insecure_channel(f"127.0.0.1:{svc.server.port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)

            def says(status: int):  # type: ignore[no-untyped-def]
                async def check() -> bool:
                    reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                    return reply.status == status and sample("mieux_consumer_up", group=group) == (
                        1 if status == health_pb2.HealthCheckResponse.SERVING else 0
                    )

                return check

            await eventually(says(health_pb2.HealthCheckResponse.SERVING), what="SERVING at start")
            faults.broken = True  # its loop ends, and cannot start again
            await eventually(says(health_pb2.HealthCheckResponse.NOT_SERVING), what="NOT_SERVING")
            faults.broken = False
            await eventually(says(health_pb2.HealthCheckResponse.SERVING), what="SERVING again")
    finally:
        await svc.stop()
