"""gRPC servicer of the requests service: proto <-> pydantic; errors become status codes in the kit."""

from __future__ import annotations

import grpc
from google.protobuf.json_format import MessageToDict
from mieux.common.v1 import common_pb2
from mieux.requests.v1 import requests_pb2, requests_pb2_grpc

from services.kernel.grpckit import COMMANDERS, READERS, Access
from services.kernel.store import AppendResult, EventStore
from services.requests import handlers
from services.requests.domain import SubmitRequest
from services.requests.projections import RequestsPerYear

SERVICE_NAME = "mieux.requests.v1.Requests"
ACCESS = {
    f"/{SERVICE_NAME}/SubmitRequest": COMMANDERS,
    f"/{SERVICE_NAME}/GetRequestsPerYear": READERS,
}


def ack(r: AppendResult) -> common_pb2.CommandAck:
    return common_pb2.CommandAck(
        stream_id=r.stream_id,
        first_version=r.first_version,
        last_version=r.last_version,
        position=r.last_position or 0,
        duplicate=r.duplicate,
    )


def fields(msg) -> dict:  # type: ignore[no-untyped-def]
    """A command message as a plain dict, dates flattened (Date {iso} -> "YYYY-MM-DD")."""
    d = MessageToDict(msg, preserving_proto_field_name=True)
    return {k: (v.get("iso", "") if isinstance(v, dict) and set(v) <= {"iso"} else v) for k, v in d.items()}


class RequestsServicer(requests_pb2_grpc.RequestsServicer):
    def __init__(self, store: EventStore, per_year: RequestsPerYear) -> None:
        self.store = store
        self.per_year = per_year

    async def SubmitRequest(self, request, context: grpc.aio.ServicerContext) -> common_pb2.CommandAck:
        cmd = SubmitRequest.model_validate(fields(request))
        return ack(await handlers.submit_request(self.store, cmd))

    async def GetRequestsPerYear(self, request, context: grpc.aio.ServicerContext):
        rows = await self.per_year.query(self.store.pool)
        return requests_pb2.RequestsPerYear(years=[requests_pb2.YearCount(year=y, count=c) for y, c in rows])


def registrar(store: EventStore, per_year: RequestsPerYear):  # type: ignore[no-untyped-def]
    def add(server: grpc.aio.Server) -> None:
        requests_pb2_grpc.add_RequestsServicer_to_server(RequestsServicer(store, per_year), server)

    return add


ACCESS_RULES = Access(ACCESS)
