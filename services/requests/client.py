"""A typed client of the requests service, for the CLI, the demo, tests and other services."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from mieux.common.v1 import common_pb2
from mieux.requests.v1 import requests_pb2, requests_pb2_grpc

from services.kernel.grpckit import call_metadata, channel
from services.kernel.settings import Role, Settings, service_address


class RequestsClient:
    def __init__(self, stub: requests_pb2_grpc.RequestsStub, token: str, deadline: float) -> None:
        self.stub = stub
        self.token = token
        self.deadline = deadline

    @classmethod
    @asynccontextmanager
    async def connect(cls, settings: Settings, role: Role = "ops") -> AsyncIterator[RequestsClient]:
        async with channel(service_address("requests")) as ch:
            yield cls(requests_pb2_grpc.RequestsStub(ch), settings.client_token(role), settings.grpc_deadline_s)

    async def submit(
        self,
        *,
        command_id: str,
        partner: str,
        institution: str,
        institution_type: str,
        received_on: str,
        title: str,
        themes: list[str] | tuple[str, ...] = (),
    ) -> common_pb2.CommandAck:
        return await self.stub.SubmitRequest(
            requests_pb2.SubmitRequestCommand(
                command_id=command_id,
                partner=partner,
                institution=institution,
                institution_type=institution_type,
                received_on=common_pb2.Date(iso=received_on),
                title=title,
                themes=list(themes),
            ),
            metadata=call_metadata(self.token),
            timeout=self.deadline,
        )

    async def per_year(self) -> requests_pb2.RequestsPerYear:
        return await self.stub.GetRequestsPerYear(
            requests_pb2.GetRequestsPerYearQuery(), metadata=call_metadata(self.token), timeout=self.deadline
        )
