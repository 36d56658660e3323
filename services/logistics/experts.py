"""The experts service as logistics sees it: is this traveller an (active) expert? Asked over gRPC."""

from __future__ import annotations

from typing import Protocol

import grpc
from mieux.experts.v1 import experts_pb2, experts_pb2_grpc

from services.kernel.grpckit import call_metadata, channel
from services.kernel.settings import Settings, service_address
from services.logistics.domain import ExpertRecord


class ExpertsUnavailable(Exception):
    """The experts service could not answer (down, deadline exceeded, refused our call)."""


class ExpertDirectory(Protocol):
    async def get(self, expert_id: str) -> ExpertRecord | None: ...


# the one call the logistics service makes (a traveller who is an expert must be one): its principal's allow-list
CALLS = ("/mieux.experts.v1.Experts/GetExpert",)


class GrpcExpertDirectory:
    """`mieux.experts.v1.Experts/GetExpert` with the `service` token and a deadline.

    NOT_FOUND or INVALID_ARGUMENT (the id is not even of an expert's form) -> None; anything else ->
    ExpertsUnavailable (the caller answers UNAVAILABLE: nothing is stored, the client may retry)."""

    def __init__(self, settings: Settings, address: str | None = None) -> None:
        self.settings = settings
        self.address = address or service_address("experts")
        self._channel: grpc.aio.Channel | None = None

    def _stub(self) -> experts_pb2_grpc.ExpertsStub:
        if self._channel is None:  # made lazily, inside the server's event loop
            self._channel = channel(self.address)
        return experts_pb2_grpc.ExpertsStub(self._channel)

    async def get(self, expert_id: str) -> ExpertRecord | None:
        try:
            reply = await self._stub().GetExpert(
                experts_pb2.GetExpertQuery(expert_id=expert_id),
                metadata=call_metadata(self.settings.client_token("logistics")),  # its own principal
                timeout=self.settings.grpc_deadline_s,
            )
        except grpc.aio.AioRpcError as e:
            if e.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                return None  # unknown, or not even the form of an expert id there: not an expert
            raise ExpertsUnavailable(f"the experts service did not answer: {e.code().name} {e.details()}") from e
        return ExpertRecord(expert_id=reply.expert_id or expert_id, active=reply.active, forgotten=reply.forgotten)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
