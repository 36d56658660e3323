"""Aggregates and the application layer: load a stream, decide, append.

An aggregate does no I/O: it is folded from its events (`when_<EventType>` methods) and its command
methods return new events or raise (`check_...` guards raise RuleBroken). `execute` is the one place
that loads, decides and appends, so every handler is a plain function of a few lines.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Self, TypeVar, get_type_hints

from services.kernel.command import Command
from services.kernel.envelope import Envelope, Event, Registry, registry
from services.kernel.errors import NotFound
from services.kernel.grpckit import correlation_var, current_actor
from services.kernel.store import AppendResult, EventStore, Metadata


class UnhandledEvent(TypeError):
    """An aggregate was given an event it has no handler for: a bug, never skipped silently."""


class Aggregate:
    """Fold of one stream's events. `version` is the number of events folded so far.

    A subclass says which events its stream holds (`folds`, their abstract base class) and handles
    each with a method `when_<EventType>(self, e: <EventType>)`; the fold dispatches by the event's
    class. An event of the stream that changes nothing the aggregate decides on is listed in `ignores`.
    A handler whose name and annotation disagree is refused when the class is declared, and
    `unhandled()` names the events of `folds` that have neither a handler nor an ignore (a unit test
    runs it over every aggregate); folding such an event raises UnhandledEvent."""

    folds: ClassVar[type[Event]]
    ignores: ClassVar[tuple[type[Event], ...]] = ()
    handlers: ClassVar[dict[type[Event], Callable[[Any, Any], None]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        handlers = dict(cls.handlers)
        for name, fn in vars(cls).items():
            if not name.startswith("when_"):
                continue
            hints = get_type_hints(fn)
            handled = next(iter(v for k, v in hints.items() if k != "return"), None)
            if not (isinstance(handled, type) and issubclass(handled, Event)):
                raise TypeError(f"{cls.__name__}.{name}: annotate its event parameter with the event class")
            if name != f"when_{handled.__name__}":
                raise TypeError(f"{cls.__name__}.{name} handles {handled.__name__}: name it when_{handled.__name__}")
            handlers[handled] = fn
        cls.handlers = handlers
        if handlers and not hasattr(cls, "folds"):
            raise TypeError(f"{cls.__name__} handles events but does not say which stream's it folds (`folds`)")

    @classmethod
    def unhandled(cls) -> list[str]:
        """The event types of this aggregate's stream that it neither handles nor ignores."""
        return sorted(
            name
            for name, t in registry.types.items()
            if issubclass(t, cls.folds) and t not in cls.handlers and t not in cls.ignores
        )

    def __init__(self, stream_id: str) -> None:
        self.id = stream_id
        self.version = 0

    def apply(self, event: Event) -> None:
        handler = self.handlers.get(type(event))
        if handler is not None:
            handler(self, event)
        elif isinstance(event, self.folds) and not isinstance(event, self.ignores):
            raise UnhandledEvent(f"{type(self).__name__} has no handler for {event.event_type}")
        # an event of another stream, or of a type this build does not know (UnknownEvent), changes nothing
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


async def first_result(store: EventStore, cmd: Command) -> AppendResult | None:
    """The first result of a command id seen before (for handlers that must ask another service before
    deciding: a retry is answered without asking again). CommandReused if the payload differs."""
    return await store.command_result(cmd.command_id, cmd.digest())


async def execute(
    store: EventStore,
    cls: type[A],
    stream_id: str,
    decide: Callable[[A], Sequence[Event]],
    cmd: Command,
    *,
    must_exist: bool = True,
    causation_id: str = "",
) -> AppendResult:
    """Run one command: a retried command id answers with its first result, appending nothing.

    Two round trips, load and append: the command id is looked up only when the command is refused
    (a retry may be refused by the state its first run made: it answers with its first result) or when
    the append finds the id stored (the store answers with the first result then)."""
    digest = cmd.digest()
    agg = await load(store, cls, stream_id)
    try:
        if must_exist and not agg.exists:
            raise NotFound(f"{cls.__name__.lower()} {stream_id} does not exist")
        events = decide(agg)
    except Exception:
        first = await store.command_result(cmd.command_id, digest)
        if first is not None:
            return first
        raise
    return await store.append(
        stream_id, agg.version, events, metadata(causation_id), command_id=cmd.command_id, command_hash=digest
    )
