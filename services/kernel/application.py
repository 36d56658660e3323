"""Aggregates and the application layer: load a stream, decide, append.

An aggregate does no I/O: it is folded from its events (`when_<EventType>` methods) and its command
methods return new events or raise (`check_...` guards raise RuleBroken). `execute` is the one place
that loads, decides and appends, so every handler is a plain function of a few lines.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Self, TypeVar

from pydantic import BaseModel

from services.kernel.envelope import Envelope, Event, Registry, registry
from services.kernel.errors import NotFound
from services.kernel.grpckit import correlation_var, current_actor
from services.kernel.store import AppendResult, EventStore, Metadata, payload_hash


class Aggregate:
    """Fold of one stream's events. `version` is the number of events folded so far."""

    def __init__(self, stream_id: str) -> None:
        self.id = stream_id
        self.version = 0

    def apply(self, event: Event) -> None:
        handler = getattr(self, f"when_{event.event_type}", None)
        if handler is not None:
            handler(event)
        self.version += 1

    @classmethod
    def fold(cls, stream_id: str, events: Sequence[Event]) -> Self:
        agg = cls(stream_id)
        for e in events:
            agg.apply(e)
        return agg

    @property
    def exists(self) -> bool:
        return self.version > 0


A = TypeVar("A", bound=Aggregate)


def decode_all(envs: Sequence[Envelope], reg: Registry = registry) -> list[Event]:
    return [reg.decode(e) for e in envs]


async def load(store: EventStore, cls: type[A], stream_id: str) -> A:
    return cls.fold(stream_id, decode_all(await store.read_stream(stream_id)))


def metadata(causation_id: str = "") -> Metadata:
    return Metadata(actor=current_actor(), correlation_id=correlation_var.get() or "", causation_id=causation_id)


async def first_result(store: EventStore, command_id: str, payload: BaseModel | dict[str, Any]) -> AppendResult | None:
    """The first result of a command id seen before (for handlers that must ask another service before
    deciding: a retry is answered without asking again). CommandReused if the payload differs."""
    body = payload.model_dump(mode="json") if isinstance(payload, BaseModel) else payload
    return await store.command_result(command_id, payload_hash(body))


async def execute(
    store: EventStore,
    cls: type[A],
    stream_id: str,
    decide: Callable[[A], Sequence[Event]],
    *,
    command_id: str,
    payload: BaseModel | dict[str, Any],
    must_exist: bool = True,
    causation_id: str = "",
) -> AppendResult:
    """Run one command: a retried command id answers with its first result, appending nothing.

    Two round trips, load and append: the command id is looked up only when the command is refused
    (a retry may be refused by the state its first run made: it answers with its first result) or when
    the append finds the id stored (the store answers with the first result then)."""
    body = payload.model_dump(mode="json") if isinstance(payload, BaseModel) else payload
    digest = payload_hash(body)
    agg = await load(store, cls, stream_id)
    try:
        if must_exist and not agg.exists:
            raise NotFound(f"{cls.__name__.lower()} {stream_id} does not exist")
        events = decide(agg)
    except Exception:
        first = await store.command_result(command_id, digest)
        if first is not None:
            return first
        raise
    return await store.append(
        stream_id, agg.version, events, metadata(causation_id), command_id=command_id, command_hash=digest
    )
