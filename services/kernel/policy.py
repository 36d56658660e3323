"""Policies (process managers): another context's event becomes a command of this one.

A policy runs as a faust-streaming agent, one event at a time: it calls other services over gRPC and
appends through its service's event store. The command it issues has an id derived from the event id
(`command_id_for`), so a redelivered event is answered with the first result and appends nothing. A
refused command is a decision, not a failure: the event goes to the group's dead-letter topic with the
reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import ClassVar

import grpc
from aiokafka import AIOKafkaProducer
from pydantic import ValidationError

from services.kernel import bus
from services.kernel.envelope import DecodeError, Envelope, Event, UnknownEvent, parse_message, registry
from services.kernel.errors import InvalidArgument, NotFound, RuleBroken
from services.kernel.grpckit import correlation_var, principal_var
from services.kernel.settings import Principal, Settings
from services.kernel.store import EventStore

log = logging.getLogger(__name__)


def policy_group(service: str, policy: Policy) -> str:
    """The consumer group of one policy of a service."""
    return f"mieux.{service}.{policy.name}"


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
        from services.kernel.faust_transport import SCHEME, PolicyApp

        await bus.ensure_topics(self.settings, [*self.policy.topics])
        await bus.ensure_dlq(self.settings, self.group)
        datadir = self.settings.mieux_home / "faust" / self.group
        datadir.mkdir(parents=True, exist_ok=True)
        app = PolicyApp(
            self.group,
            self.settings.kafka_fetch_max_wait_ms,
            broker=f"{SCHEME}://{self.settings.bootstrap()}",
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
            await bus.send_dead(self._producer, self.group, raw, str(e), ",".join(self.policy.topics))  # type: ignore[arg-type]
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
                if isinstance(e, RuleBroken | InvalidArgument | NotFound | ValidationError) or _is_final_grpc_error(e):
                    await bus.send_dead(self._producer, self.group, raw, f"refused: {e}", ",".join(self.policy.topics))  # type: ignore[arg-type]
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
    final = {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.PERMISSION_DENIED,
    }
    return isinstance(e, grpc.aio.AioRpcError) and e.code() in final
