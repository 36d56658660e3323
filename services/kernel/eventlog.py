"""The `mieux.common.v1.EventLog` servicer every service serves: ReadAll for rebuilds."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import grpc
from mieux.common.v1 import eventlog_pb2, eventlog_pb2_grpc

from services.kernel.envelope import Envelope
from services.kernel.errors import FieldViolation, InvalidArgument
from services.kernel.grpckit import call_metadata, channel
from services.kernel.horizon import HighWaterMark
from services.kernel.projection import AsyncSource, Projection
from services.kernel.settings import Role, Settings, service_address
from services.kernel.store import EventStore

SERVICE_NAME = "mieux.common.v1.EventLog"
READ_ALL = f"/{SERVICE_NAME}/ReadAll"


def to_proto(e: Envelope) -> eventlog_pb2.StoredEvent:
    return eventlog_pb2.StoredEvent(
        event_id=str(e.event_id),
        event_type=e.event_type,
        schema_version=e.schema_version,
        source=e.source,
        stream_id=e.stream_id,
        stream_version=e.stream_version,
        position=e.position,
        occurred_at=e.occurred_at.isoformat(),
        recorded_at=e.recorded_at.isoformat(),
        correlation_id=e.correlation_id,
        causation_id=e.causation_id,
        actor=e.actor,
        data_json=json.dumps(e.data),
    )


def from_proto(p: eventlog_pb2.StoredEvent) -> Envelope:
    return Envelope(
        event_id=p.event_id,
        event_type=p.event_type,
        schema_version=p.schema_version,
        source=p.source,
        stream_id=p.stream_id,
        stream_version=p.stream_version,
        position=p.position,
        occurred_at=p.occurred_at,
        recorded_at=p.recorded_at,
        correlation_id=p.correlation_id,
        causation_id=p.causation_id,
        actor=p.actor,
        data=json.loads(p.data_json),
    )


class EventLogServicer(eventlog_pb2_grpc.EventLogServicer):
    def __init__(self, store: EventStore) -> None:
        self.store = store

    async def ReadAll(
        self, request: eventlog_pb2.ReadAllRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[eventlog_pb2.StoredEvent]:
        bad = [f for f in ("after_position", "limit") if getattr(request, f) < 0]
        if bad:
            raise InvalidArgument(*(FieldViolation(f, "must not be negative") for f in bad))
        end = await self.store.last_position()
        position, sent = request.after_position, 0
        hwm = HighWaterMark(self.store.schema)
        while position < end and (request.limit == 0 or sent < request.limit):
            batch = await self.store.read_all(position, 1000, hwm)
            if not batch:
                await asyncio.sleep(0.001)  # a writer below `end` is still committing
                continue
            for e in batch:
                if e.position > end or (request.limit and sent >= request.limit):
                    return
                yield to_proto(e)
                sent += 1
                position = e.position


def register(store: EventStore):  # type: ignore[no-untyped-def]
    def add(server: grpc.aio.Server) -> None:
        eventlog_pb2_grpc.add_EventLogServicer_to_server(EventLogServicer(store), server)

    return add


def read_all_source(service: str, settings: Settings, role: Role) -> AsyncSource:
    """Events of a service, read over its gRPC EventLog.ReadAll (never its database)."""

    async def source() -> AsyncIterator[Envelope]:
        async with channel(service_address(service)) as ch:
            stub = eventlog_pb2_grpc.EventLogStub(ch)
            request = eventlog_pb2.ReadAllRequest(after_position=0)
            async for p in stub.ReadAll(request, metadata=call_metadata(settings.client_token(role))):
                yield from_proto(p)

    return source


def sources_of(projection: Projection, settings: Settings, role: Role) -> list[AsyncSource]:
    """What a rebuild of `projection` reads: the event log of each service whose topic it follows."""
    return [read_all_source(topic.split(".")[1], settings, role) for topic in projection.topics]
