"""A typed client of the requests service, for the CLI, the demo, tests and other services."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from google.protobuf.message import Message
from mieux.common.v1 import common_pb2
from mieux.requests.v1 import requests_pb2, requests_pb2_grpc

from services.kernel.grpckit import call_metadata, channel
from services.kernel.protos import date_pb
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
                received_on=date_pb(received_on),
                title=title,
                themes=list(themes),
            ),
            metadata=call_metadata(self.token),
            timeout=self.deadline,
        )

    async def _call(self, rpc: Any, msg: Message) -> Any:
        return await rpc(msg, metadata=call_metadata(self.token), timeout=self.deadline)

    async def assess(self, *, command_id: str, request_id: str, assessed_on: str) -> common_pb2.CommandAck:
        return await self._call(
            self.stub.AssessEligibility,
            requests_pb2.AssessEligibilityCommand(
                command_id=command_id, request_id=request_id, assessed_on=date_pb(assessed_on)
            ),
        )

    async def approve(self, *, command_id: str, request_id: str, approved_on: str) -> common_pb2.CommandAck:
        return await self._call(
            self.stub.ApproveRequest,
            requests_pb2.ApproveRequestCommand(
                command_id=command_id, request_id=request_id, approved_on=date_pb(approved_on)
            ),
        )

    async def reject(self, *, command_id: str, request_id: str, rejected_on: str, reason: str) -> common_pb2.CommandAck:
        return await self._call(
            self.stub.RejectRequest,
            requests_pb2.RejectRequestCommand(
                command_id=command_id,
                request_id=request_id,
                rejected_on=date_pb(rejected_on),
                reason=reason,
            ),
        )

    async def withdraw(
        self, *, command_id: str, request_id: str, withdrawn_on: str, reason: str
    ) -> common_pb2.CommandAck:
        return await self._call(
            self.stub.WithdrawRequest,
            requests_pb2.WithdrawRequestCommand(
                command_id=command_id,
                request_id=request_id,
                withdrawn_on=date_pb(withdrawn_on),
                reason=reason,
            ),
        )

    async def get(self, request_id: str) -> requests_pb2.Request:
        return await self._call(self.stub.GetRequest, requests_pb2.GetRequestQuery(request_id=request_id))

    async def list(self, **filters: Any) -> requests_pb2.RequestPage:
        return await self._call(self.stub.ListRequests, requests_pb2.ListRequestsQuery(**filters))

    async def per_year(self) -> requests_pb2.RequestsPerYear:
        return await self.stub.GetRequestsPerYear(
            requests_pb2.GetRequestsPerYearQuery(), metadata=call_metadata(self.token), timeout=self.deadline
        )
