"""The `mieux.common.v1.EventLog` servicer every service serves: ReadAll for rebuilds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import grpc
from mieux.common.v1 import eventlog_pb2, eventlog_pb2_grpc
from pydantic_core import from_json

from services.kernel.envelope import Envelope
from services.kernel.errors import FieldViolation, InvalidArgument
from services.kernel.grpckit import call_metadata, channel
from services.kernel.horizon import HighWaterMark
from services.kernel.projection import Projection
from services.kernel.settings import Role, Settings, service_address
from services.kernel.store import EventStore

SERVICE_NAME = "mieux.common.v1.EventLog"
READ_ALL = f"/{SERVICE_NAME}/ReadAll"


def to_proto(row: asyncpg.Record, source: str) -> eventlog_pb2.StoredEvent:
    """A stored event (a row of `EventStore.read_all_rows` as texts) as it goes over the wire: its JSON text is
    passed on as PostgreSQL holds it, neither parsed nor encoded again here."""
    return eventlog_pb2.StoredEvent(
        position=row[0],
        event_id=row[1],
        stream_id=row[2],
        stream_version=row[3],
        event_type=row[4],
        schema_version=row[5],
        data_json=row[6],
        occurred_at=row[7],
        recorded_at=row[8],
        correlation_id=row[9],
        causation_id=row[10],
        actor=row[11],
        source=source,
    )


def from_proto(p: eventlog_pb2.StoredEvent) -> Envelope:
    """The envelope of a stored event off the wire: its JSON parsed once, by pydantic's parser (the event's own
    validation, when it is decoded, works on that dict), the envelope's fields checked from the strings sent."""
    return Envelope.model_validate(
        {
            "event_id": p.event_id,
            "event_type": p.event_type,
            "schema_version": p.schema_version,
            "source": p.source,
            "stream_id": p.stream_id,
            "stream_version": p.stream_version,
            "position": p.position,
            "occurred_at": p.occurred_at,
            "recorded_at": p.recorded_at,
            "correlation_id": p.correlation_id,
            "causation_id": p.causation_id,
            "actor": p.actor,
            "data": from_json(p.data_json),
        }
    )


class EventLogServicer(eventlog_pb2_grpc.EventLogServicer):
    """ReadAll in pages: up to `page_size` events, and no more once their data reach `page_bytes` (a page
    holds at least one event; an event is at most MAX_EVENT_BYTES, far below gRPC's message cap)."""

    def __init__(self, store: EventStore, page_size: int = 1000, page_bytes: int = 1024 * 1024) -> None:
        self.store = store
        self.page_size = page_size
        self.page_bytes = page_bytes

    async def ReadAll(
        self, request: eventlog_pb2.ReadAllRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[eventlog_pb2.EventPage]:
        bad = [f for f in ("after_position", "limit") if getattr(request, f) < 0]
        if bad:
            raise InvalidArgument(*(FieldViolation(f, "must not be negative") for f in bad))
        end = await self.store.last_position()
        position, left = request.after_position, request.limit or end  # no more than `end` events are after 0
        hwm = HighWaterMark(self.store.schema)
        source = self.store.service
        page: list[eventlog_pb2.StoredEvent] = []  # a page fills across reads: it ends full, or at the end
        size = 0
        while position < end and left > 0:
            rows = await self.store.read_all_rows(position, min(self.page_size, left), hwm, data_as_text=True)
            if not rows:
                await asyncio.sleep(0.001)  # a writer below `end` is still committing
                continue
            for row in rows:
                if row[0] > end:
                    left = 0
                    break
                page.append(to_proto(row, source))
                size += len(row[6])
                position = row[0]
                left -= 1
                if size >= self.page_bytes or len(page) >= self.page_size:
                    yield eventlog_pb2.EventPage(events=page)
                    page, size = [], 0
        if page:
            yield eventlog_pb2.EventPage(events=page)


def register(store: EventStore, settings: Settings | None = None):  # type: ignore[no-untyped-def]
    settings = settings if settings is not None else Settings()
    servicer = EventLogServicer(store, settings.read_all_page_size, settings.read_all_page_bytes)

    def add(server: grpc.aio.Server) -> None:
        eventlog_pb2_grpc.add_EventLogServicer_to_server(servicer, server)

    return add


@dataclass(frozen=True)
class ReadAllSource:
    """The events of a service, read over its gRPC EventLog.ReadAll (never its database): called, one by one
    (an `AsyncSource`); `pages()`, in pages as ReadAll sends them, which a rebuild reads. Each event must
    come from `service` (its source is checked). Signatures are not verified: see signing.py (Rebuilds),
    the events come from the producer's own store over an authenticated call."""

    service: str
    settings: Settings
    role: Role
    after_position: int = 0

    async def pages(self) -> AsyncIterator[list[Envelope]]:
        async with channel(service_address(self.service), self.settings) as ch:
            stub = eventlog_pb2_grpc.EventLogStub(ch)
            request = eventlog_pb2.ReadAllRequest(after_position=self.after_position)
            metadata = call_metadata(self.settings.client_token(self.role))
            async for page in stub.ReadAll(request, metadata=metadata):
                envelopes = [from_proto(p) for p in page.events]
                if any(e.source != self.service for e in envelopes):
                    raise ValueError(f"ReadAll of {self.service} sent an event of another source")
                yield envelopes

    async def __call__(self) -> AsyncIterator[Envelope]:
        async for page in self.pages():
            for env in page:
                yield env


def read_all_source(service: str, settings: Settings, role: Role) -> ReadAllSource:
    """Events of a service, read over its gRPC EventLog.ReadAll (never its database)."""
    return ReadAllSource(service, settings, role)


def sources_of(projection: Projection, settings: Settings, role: Role) -> list[ReadAllSource]:
    """What a rebuild of `projection` reads: the event log of each service whose topic it follows."""
    return [read_all_source(topic.split(".")[1], settings, role) for topic in projection.topics]
