"""gRPC servicer of the requests service: proto <-> pydantic; errors become status codes in the kit."""

from __future__ import annotations

import grpc
from mieux.common.v1 import common_pb2
from mieux.requests.v1 import requests_pb2, requests_pb2_grpc

from services.kernel import paging, reference
from services.kernel.application import load
from services.kernel.errors import NotFound
from services.kernel.grpckit import COMMANDERS, FIGURES, READERS, Registrar
from services.kernel.protos import ack, date_pb, fields
from services.kernel.store import EventStore
from services.requests import handlers
from services.requests.commands import (
    ApproveRequest,
    AssessEligibility,
    RejectRequest,
    SubmitRequest,
    WithdrawRequest,
)
from services.requests.domain import Request
from services.requests.queries import RequestsQueries

SERVICE_NAME = "mieux.requests.v1.Requests"
COMMANDS = ("SubmitRequest", "AssessEligibility", "ApproveRequest", "RejectRequest", "WithdrawRequest")
QUERIES = ("GetRequest", "ListRequests", "GetRequestsPerYear")
ACCESS = {
    **{f"/{SERVICE_NAME}/{m}": COMMANDERS for m in COMMANDS},
    **{f"/{SERVICE_NAME}/{m}": READERS for m in QUERIES},
    f"/{SERVICE_NAME}/GetRequestsPerYear": FIGURES,  # a figure: finance reads it too
}


class RequestsServicer(requests_pb2_grpc.RequestsServicer):
    def __init__(self, store: EventStore, queries: RequestsQueries) -> None:
        self.store = store
        self.queries = queries

    async def SubmitRequest(
        self, request: requests_pb2.SubmitRequestCommand, context: grpc.aio.ServicerContext
    ) -> common_pb2.CommandAck:
        return ack(await handlers.submit_request(self.store, SubmitRequest.model_validate(fields(request))))

    async def AssessEligibility(
        self, request: requests_pb2.AssessEligibilityCommand, context: grpc.aio.ServicerContext
    ) -> common_pb2.CommandAck:
        return ack(await handlers.assess_eligibility(self.store, AssessEligibility.model_validate(fields(request))))

    async def ApproveRequest(
        self, request: requests_pb2.ApproveRequestCommand, context: grpc.aio.ServicerContext
    ) -> common_pb2.CommandAck:
        return ack(await handlers.approve_request(self.store, ApproveRequest.model_validate(fields(request))))

    async def RejectRequest(
        self, request: requests_pb2.RejectRequestCommand, context: grpc.aio.ServicerContext
    ) -> common_pb2.CommandAck:
        return ack(await handlers.reject_request(self.store, RejectRequest.model_validate(fields(request))))

    async def WithdrawRequest(
        self, request: requests_pb2.WithdrawRequestCommand, context: grpc.aio.ServicerContext
    ) -> common_pb2.CommandAck:
        return ack(await handlers.withdraw_request(self.store, WithdrawRequest.model_validate(fields(request))))

    async def GetRequest(
        self, request: requests_pb2.GetRequestQuery, context: grpc.aio.ServicerContext
    ) -> requests_pb2.Request:
        """Folded from the request's own events: always up to date with the last command."""
        r = await load(self.store, Request, request.request_id)
        if not r.exists or r.received is None:
            raise NotFound(f"request {request.request_id} does not exist")
        e, a = r.received, r.assessment
        return requests_pb2.Request(
            request_id=r.id,
            partner=e.partner,
            partner_kind=e.partner_kind,
            partner_name=e.partner_name,
            region=reference.region_of(e.partner) or "",
            institution=e.institution,
            institution_type=e.institution_type,
            received_on=date_pb(e.received_on),
            title=e.title,
            themes=list(e.themes),
            status=r.status,
            eligible=bool(a and a.eligible),
            instrument=(a.instrument or "") if a else "",
            ineligibility_reasons=list(a.reasons) if a else [],
            version=r.version,
        )

    async def ListRequests(
        self, request: requests_pb2.ListRequestsQuery, context: grpc.aio.ServicerContext
    ) -> requests_pb2.RequestPage:
        size = paging.page_size(request.page_size)
        filters = {
            "year": request.year,
            "region": request.region,
            "partner": request.partner,
            "status": request.status,
            "theme": request.theme,
        }
        rows, token, total = await self.queries.page(filters, request.page_token, size)
        return requests_pb2.RequestPage(
            requests=[
                requests_pb2.Request(
                    request_id=x["request_id"],
                    partner=x["partner"],
                    partner_kind=x["partner_kind"],
                    partner_name=x["partner_name"],
                    region=x["region"],
                    institution=x["institution"],
                    institution_type=x["institution_type"],
                    received_on=date_pb(x["received_on"]),
                    title=x["title"],
                    themes=x["themes"],
                    status=x["status"],
                    eligible=x["eligible"],
                    instrument=x["instrument"],
                    ineligibility_reasons=x["reasons"],
                )
                for x in rows
            ],
            next_page_token=token,
            total=total,
        )

    async def GetRequestsPerYear(
        self, request: requests_pb2.GetRequestsPerYearQuery, context: grpc.aio.ServicerContext
    ) -> requests_pb2.RequestsPerYear:
        rows = await self.queries.per_year()
        return requests_pb2.RequestsPerYear(years=[requests_pb2.YearCount(year=y, count=c) for y, c in rows])


def registrar(store: EventStore, queries: RequestsQueries) -> Registrar:
    def add(server: grpc.aio.Server) -> None:
        requests_pb2_grpc.add_RequestsServicer_to_server(RequestsServicer(store, queries), server)

    return add
