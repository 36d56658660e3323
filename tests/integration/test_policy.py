"""The policy runner (faust agent): an event becomes a command whose id derives from the event id."""

from __future__ import annotations

from typing import ClassVar

import pytest
from support import eventually, make_envelope

from services.kernel import bus
from services.kernel.envelope import Envelope, Event, topic_for
from services.kernel.policy import Policy, PolicyRunner, command_id_for
from services.kernel.settings import Settings
from services.kernel.store import EventStore, Metadata

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


async def test_redelivered_event_issues_its_command_once(pool, schema) -> None:
    settings = Settings()
    store = EventStore(pool, schema)
    await store.setup()
    topic = topic_for(f"{schema}_src")
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
            for e in [*envs, *envs]:  # every event delivered twice
                await producer.send_and_wait(topic, e.to_bytes(), key=e.stream_id.encode())
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
