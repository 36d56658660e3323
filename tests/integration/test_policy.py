"""The policy runner (faust agent): an event becomes a command whose id derives from the event id; what it
cannot handle is retried (a non-final error, a bounded number of times) and parked, in order."""

from __future__ import annotations

from collections import Counter
from typing import ClassVar

import pytest
from prometheus_client import REGISTRY
from support import eventually, make_envelope, read_topic, signed

from services.kernel import bus
from services.kernel.bus import dlq_topic
from services.kernel.envelope import Envelope, Event, topic_for
from services.kernel.errors import RuleBroken
from services.kernel.policy import Policy, PolicyRunner, command_id_for
from services.kernel.settings import Settings
from services.kernel.store import EventStore, Metadata
from services.ops import parked as parked_ops

pytestmark = pytest.mark.integration


class PolicyTestApproved(Event):
    source: ClassVar[str] = "test"
    case: str


class PolicyTestOpened(Event):
    source: ClassVar[str] = "test"
    case: str


class OpenOnApproval(Policy):
    """Approved elsewhere -> open here (the shape of RequestApproved -> the actions service opens an Action)."""

    name = "open_on_approval"

    def __init__(self, store: EventStore, topic: str) -> None:
        self.store = store
        self.topics = (topic,)  # type: ignore[misc]
        self.calls = 0

    async def handle(self, env: Envelope, event: Event, command_id: str) -> None:
        assert isinstance(event, PolicyTestApproved)
        self.calls += 1
        first = await self.store.command_result(command_id, "h")
        if first is None:
            await self.store.append(
                f"case-{event.case}",
                0,
                [PolicyTestOpened(case=event.case)],
                Metadata(actor="policy"),
                command_id=command_id,
                command_hash="h",
                occurred_at=env.occurred_at,
            )


@pytest.fixture
def source_topic(stack, schema: str) -> str:
    """The topic of the service whose events the policy reacts to: a service of the test's own, with a signing
    key in the stack (made before the test's Settings() read the stack's keys)."""
    stack.new_signing_key(f"{schema}_src")
    return topic_for(f"{schema}_src")


async def test_redelivered_event_issues_its_command_once(pool, schema, source_topic) -> None:
    settings = Settings()
    store = EventStore(pool, schema)
    await store.setup()
    topic = source_topic
    await bus.ensure_topics(settings, [topic])
    policy = OpenOnApproval(store, topic)
    runner = PolicyRunner(policy, settings, group=f"test.{schema}.policy")
    await runner.start()
    try:
        envs = [
            make_envelope("PolicyTestApproved", {"case": str(i)}, stream_id=f"r{i}", position=i) for i in range(1, 6)
        ]
        producer = bus.producer(settings)
        await producer.start()
        try:
            for m in signed(topic, [*envs, *envs]):  # every event delivered twice
                await producer.send_and_wait(topic, m.value, key=m.key, headers=m.headers)
        finally:
            await producer.stop()

        async def handled_all() -> bool:
            return policy.calls >= 10

        await eventually(handled_all, 60, "the policy to see every delivery")
        stored = await store.read_all(0, limit=100)
        assert sorted(e.stream_id for e in stored) == [f"case-{i}" for i in range(1, 6)]
        ids = await pool.fetch(f"SELECT command_id FROM {schema}.commands")
        assert {r["command_id"] for r in ids} == {command_id_for(policy.name, e) for e in envs}
    finally:
        await runner.stop()


class Fussy(Policy):
    """Opens a case per approval, except: a case in `broken` fails with a non-final error (as a rotated token
    or a bug makes it), a case in `refused` is refused (a rule)."""

    name = "fussy_open"

    def __init__(self, store: EventStore, topic: str) -> None:
        self.store = store
        self.topics = (topic,)  # type: ignore[misc]
        self.calls: Counter[str] = Counter()
        self.broken = {"bad"}
        self.refused = {"no"}

    async def handle(self, env: Envelope, event: Event, command_id: str) -> None:
        assert isinstance(event, PolicyTestApproved) and self.store is not None
        self.calls[event.case] += 1
        if event.case in self.refused:
            raise RuleBroken(f"case {event.case} may not be opened")
        if event.case in self.broken:
            raise RuntimeError("unauthenticated: the token was rotated (test)")
        if await self.store.command_result(command_id, "h") is None:
            await self.store.append(
                f"case-{event.case}",
                0,
                [PolicyTestOpened(case=event.case)],
                Metadata(actor="policy"),
                command_id=command_id,
                command_hash="h",
            )


async def test_a_policy_retries_a_non_final_error_then_parks_it_and_parks_a_refusal_at_once(
    pool, schema, source_topic
) -> None:
    """A non-final error is retried max_attempts times, then parked with its reason, and the stream's later
    event behind it; a refused command is parked at once; other streams flow. Once the cause is fixed, a
    retry handles the parked stream in order."""
    settings = Settings()
    store = EventStore(pool, schema)
    await store.setup()
    topic = source_topic
    await bus.ensure_topics(settings, [topic])
    policy = Fussy(store, topic)
    group = f"test.{schema}.fussy"
    runner = PolicyRunner(policy, settings, group, pool, max_attempts=3, max_backoff_s=0.2)
    await runner.start()
    try:
        envs = [
            make_envelope("PolicyTestApproved", {"case": "bad"}, stream_id="r1", version=1),
            make_envelope("PolicyTestApproved", {"case": "after"}, stream_id="r1", version=2),
            make_envelope("PolicyTestApproved", {"case": "no"}, stream_id="r2", version=1),
            make_envelope("PolicyTestApproved", {"case": "ok"}, stream_id="r3", version=1),
        ]
        producer = bus.producer(settings)
        await producer.start()
        try:
            for m in signed(topic, envs):
                await producer.send_and_wait(topic, m.value, key=m.key, headers=m.headers)
        finally:
            await producer.stop()

        async def settled() -> bool:
            return runner.dead == 3 and runner.handled == 1

        await eventually(settled, 60, "r1 and r2 parked, r3 handled")
        assert policy.calls == Counter({"bad": 3, "no": 1, "ok": 1})  # "after" waits behind "bad", unhandled
        rows = await pool.fetch(
            f"SELECT id, stream_id, reason, attempts FROM {runner.parking.k.parked} WHERE consumer_group = $1 "
            "ORDER BY id",
            group,
        )
        by_stream = {r["stream_id"]: r for r in rows if r["reason"].startswith(("failed", "refused"))}
        assert by_stream["r1"]["reason"] == "failed 3 times: RuntimeError"
        assert by_stream["r2"]["reason"] == "refused: case no may not be opened"
        assert [r["reason"] for r in rows if r["stream_id"] == "r1"][1] == f"behind parked #{by_stream['r1']['id']}"
        errors = REGISTRY.get_sample_value("mieux_consumer_retries_total", {"group": group, "kind": "error"})
        assert errors is not None and errors >= 2
        assert REGISTRY.get_sample_value("mieux_parked_events", {"group": group, "consumer": policy.name}) == 3
        dead = await read_topic(settings, dlq_topic(group), lambda s: len(s) >= 3, raw=True)
        assert sorted(dict(m.headers)["reason"].decode() for m in dead) == sorted(r["reason"] for r in rows)

        policy.broken.clear()  # the cause, fixed
        async with pool.acquire() as conn:
            ids = await parked_ops.request(conn, "retry", "tester", group=group, stream="r1")
            done = await parked_ops.wait_done(conn, ids, 60)
        assert [r["outcome"] for r in done] == ["applied 2"]
        stored = await store.read_all(0, limit=100)
        assert [e.stream_id for e in stored] == ["case-ok", "case-bad", "case-after"]  # r1 in its order
        assert REGISTRY.get_sample_value("mieux_parked_events", {"group": group, "consumer": policy.name}) == 1
    finally:
        await runner.stop()


async def test_a_policy_whose_consumer_crashed_is_started_again(pool, schema, source_topic) -> None:
    settings = Settings()
    store = EventStore(pool, schema)
    await store.setup()
    topic = source_topic
    await bus.ensure_topics(settings, [topic])
    policy = OpenOnApproval(store, topic)
    runner = PolicyRunner(policy, settings, group=f"test.{schema}.crash")
    await runner.start()
    try:
        first = runner.app
        await first.crash(RuntimeError("the consumer crashed (test)"))

        async def restarted() -> bool:
            return runner.restarts == 1 and runner.app is not None and runner.app is not first

        await eventually(restarted, 60, "the supervisor to start a new faust app")
        env = make_envelope("PolicyTestApproved", {"case": "x"}, stream_id="rx")
        producer = bus.producer(settings)
        await producer.start()
        try:
            [m] = signed(topic, [env])
            await producer.send_and_wait(topic, m.value, key=m.key, headers=m.headers)
        finally:
            await producer.stop()

        async def handled() -> bool:
            return runner.handled == 1

        await eventually(handled, 60, "the event handled by the new app")
        assert runner.health.up
    finally:
        await runner.stop()
