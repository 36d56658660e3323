"""Events, the envelope they travel in, and the registry that decodes and upcasts them.

Pydantic models are the single source of truth of every event schema: a context declares its events
as subclasses of `Event` in its `events.py`; `mieux events schema` prints the catalogue from them.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError


class Event(BaseModel):
    """Base of every domain event: a subclass named in the past tense is an event type of that name,
    registered in the global registry as it is declared. A base class of a context's events says
    `abstract=True`; a test's event that must stay out of the global registry says `register=False`.
    Subclasses set `source` and, once their data change shape, `schema_version` (with an upcaster)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    event_type: ClassVar[str]
    schema_version: ClassVar[int] = 1
    source: ClassVar[str]

    def __init_subclass__(cls, abstract: bool = False, register: bool = True, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)  # the two flags are read once pydantic has built the class, below

    @classmethod
    def __pydantic_init_subclass__(cls, abstract: bool = False, register: bool = True, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if abstract:
            return
        declared = cls.__dict__.get("event_type")
        if declared is not None and declared != cls.__name__:
            raise TypeError(f"{cls.__name__}: an event's type is its class name; it may not declare {declared!r}")
        cls.event_type = cls.__name__
        if register:
            registry.register(cls)


class Envelope(BaseModel):
    """What is stored and what goes on the bus (as JSON)."""

    model_config = ConfigDict(frozen=True)
    event_id: uuid.UUID
    event_type: str
    schema_version: int
    source: str
    stream_id: str
    stream_version: int
    position: int
    occurred_at: datetime
    recorded_at: datetime
    correlation_id: str
    causation_id: str
    actor: str
    data: dict[str, Any]
    # which key of its producer signed it, as the relay published it (signing.py); "" as it is stored
    key_id: str = ""

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Envelope:
        return cls.model_validate_json(raw)


class DecodeError(Exception):
    """The message cannot be turned into a known event: it goes to the dead-letter queue."""


class UnknownEvent(Event, abstract=True):
    """An event type this reader does not know: skipped by projections (tolerant reader)."""

    event_type: ClassVar[str] = "<unknown>"
    source: ClassVar[str] = "<unknown>"
    model_config = ConfigDict(frozen=True, extra="allow")


Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


E = TypeVar("E", bound=type[Event])


class Registry:
    def __init__(self) -> None:
        self.types: dict[str, type[Event]] = {}
        self.upcasters: dict[tuple[str, int], Upcaster] = {}

    def register(self, cls: E) -> E:
        if cls.event_type in self.types and self.types[cls.event_type] is not cls:
            raise ValueError(f"event type {cls.event_type} registered twice")
        self.types[cls.event_type] = cls
        return cls

    def upcaster(self, event_type: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
        """Declare how data of `from_version` becomes data of `from_version + 1`."""

        def deco(fn: Upcaster) -> Upcaster:
            self.upcasters[(event_type, from_version)] = fn
            return fn

        return deco

    def decode(self, env: Envelope) -> Event:
        cls = self.types.get(env.event_type)
        if cls is None:
            return UnknownEvent(**env.data)
        version, data = env.schema_version, dict(env.data)
        if version > cls.schema_version or version < 1:
            raise DecodeError(
                f"{env.event_type} schema version {version} is not known (this reader knows up to {cls.schema_version})"
            )
        while version < cls.schema_version:
            up = self.upcasters.get((env.event_type, version))
            if up is None:
                raise DecodeError(f"no upcaster for {env.event_type} from version {version}")
            data, version = up(data), version + 1
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise DecodeError(f"{env.event_type} v{version} does not match its schema: {errors_of(e)}") from e

    def catalogue(self) -> dict[str, Any]:
        return {
            name: {
                "source": cls.source,
                "schema_version": cls.schema_version,
                "topic": topic_for(cls.source),
                "schema": cls.model_json_schema(),
            }
            for name, cls in sorted(self.types.items())
        }


registry = Registry()


def topic_for(service: str) -> str:
    return f"mieux.{service}.events"


def parse_message(raw: bytes | None) -> Envelope:
    """Bytes from the bus -> envelope, or DecodeError with the reason (parsed once, by pydantic)."""
    if raw is None:
        raise DecodeError("empty message")
    try:
        return Envelope.from_bytes(raw)
    except ValidationError as e:
        if any(err["type"] == "json_invalid" for err in e.errors()):
            raise DecodeError("not JSON") from e
        raise DecodeError(f"not an envelope: {errors_of(e)}") from e


def errors_of(e: ValidationError) -> str:
    """What a validation error found, by field and kind, without the values (a reason may reach a dead
    letter or a log, and must not carry what was in the event)."""
    found = [f"{'.'.join(str(p) for p in err['loc']) or 'data'} ({err['type']})" for err in e.errors()[:10]]
    more = f" and {e.error_count() - 10} more" if e.error_count() > 10 else ""
    return ", ".join(found) + more


def utcnow() -> datetime:
    return datetime.now(UTC)
