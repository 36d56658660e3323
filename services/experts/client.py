"""A typed client of the experts service, for the CLI, the demo, tests and other services."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

from mieux.common.v1 import common_pb2
from mieux.experts.v1 import experts_pb2, experts_pb2_grpc

from services.kernel.grpckit import call_metadata, channel
from services.kernel.protos import date_pb
from services.kernel.settings import Role, Settings, service_address


class ExpertsClient:
    def __init__(self, stub: experts_pb2_grpc.ExpertsStub, token: str, deadline: float) -> None:
        self.stub = stub
        self.token = token
        self.deadline = deadline

    @classmethod
    @asynccontextmanager
    async def connect(cls, settings: Settings, role: Role = "ops") -> AsyncIterator[ExpertsClient]:
        async with channel(service_address("experts")) as ch:
            yield cls(experts_pb2_grpc.ExpertsStub(ch), settings.client_token(role), settings.grpc_deadline_s)

    def _kw(self) -> dict[str, Any]:
        return {"metadata": call_metadata(self.token), "timeout": self.deadline}

    async def register(
        self,
        *,
        command_id: str,
        name: str,
        gender: str,
        background: str,
        nationality: str,
        registered_on: str,
        themes: Iterable[str] = (),
    ) -> common_pb2.CommandAck:
        return await self.stub.RegisterExpert(
            experts_pb2.RegisterExpertCommand(
                command_id=command_id,
                name=name,
                gender=gender,
                background=background,
                nationality=nationality,
                registered_on=date_pb(registered_on),
                themes=list(themes),
            ),
            **self._kw(),
        )

    async def update_profile(
        self,
        *,
        command_id: str,
        expert_id: str,
        updated_on: str,
        name: str | None = None,
        gender: str | None = None,
        background: str | None = None,
        nationality: str | None = None,
        themes: Iterable[str] | None = None,
    ) -> common_pb2.CommandAck:
        msg = experts_pb2.UpdateExpertProfileCommand(
            command_id=command_id,
            expert_id=expert_id,
            updated_on=date_pb(updated_on),
            name=name,
            gender=gender,
            background=background,
            nationality=nationality,
            themes=None if themes is None else experts_pb2.Themes(values=list(themes)),
        )
        return await self.stub.UpdateExpertProfile(msg, **self._kw())

    async def deploy(self, *, command_id: str, expert_id: str, activity_id: str) -> common_pb2.CommandAck:
        return await self.stub.DeployExpert(
            experts_pb2.DeployExpertCommand(command_id=command_id, expert_id=expert_id, activity_id=activity_id),
            **self._kw(),
        )

    async def cancel_deployment(
        self, *, command_id: str, expert_id: str, deployment_id: str, reason: str, cancelled_on: str
    ) -> common_pb2.CommandAck:
        return await self.stub.CancelDeployment(
            experts_pb2.CancelDeploymentCommand(
                command_id=command_id,
                expert_id=expert_id,
                deployment_id=deployment_id,
                reason=reason,
                cancelled_on=date_pb(cancelled_on),
            ),
            **self._kw(),
        )

    async def submit_evaluation(
        self, *, command_id: str, expert_id: str, deployment_id: str, answers: dict[str, int], submitted_on: str
    ) -> common_pb2.CommandAck:
        return await self.stub.SubmitEvaluation(
            experts_pb2.SubmitEvaluationCommand(
                command_id=command_id,
                expert_id=expert_id,
                deployment_id=deployment_id,
                answers=[experts_pb2.Answer(question=q, score=s) for q, s in answers.items()],
                submitted_on=date_pb(submitted_on),
            ),
            **self._kw(),
        )

    async def deactivate(
        self, *, command_id: str, expert_id: str, reason: str, deactivated_on: str
    ) -> common_pb2.CommandAck:
        return await self.stub.DeactivateExpert(
            experts_pb2.DeactivateExpertCommand(
                command_id=command_id, expert_id=expert_id, reason=reason, deactivated_on=date_pb(deactivated_on)
            ),
            **self._kw(),
        )

    async def forget(self, *, command_id: str, expert_id: str, reason: str, forgotten_on: str) -> common_pb2.CommandAck:
        """Admin only (connect with role="admin")."""
        return await self.stub.ForgetExpert(
            experts_pb2.ForgetExpertCommand(
                command_id=command_id, expert_id=expert_id, reason=reason, forgotten_on=date_pb(forgotten_on)
            ),
            **self._kw(),
        )

    async def get(self, expert_id: str) -> experts_pb2.Expert:
        return await self.stub.GetExpert(experts_pb2.GetExpertQuery(expert_id=expert_id), **self._kw())

    async def list_experts(self, **filters: object) -> experts_pb2.ListExpertsResponse:
        return await self.stub.ListExperts(experts_pb2.ListExpertsQuery(**filters), **self._kw())

    async def list_deployments(self, **filters: object) -> experts_pb2.ListDeploymentsResponse:
        return await self.stub.ListDeployments(experts_pb2.ListDeploymentsQuery(**filters), **self._kw())
