"""gRPC servicer of the experts service: proto <-> pydantic; errors become status codes in the kit."""

from __future__ import annotations

from typing import Any

import asyncpg
import grpc
from mieux.common.v1 import common_pb2
from mieux.experts.v1 import experts_pb2, experts_pb2_grpc

from services.experts import handlers
from services.experts.actions import ActionsUnavailable, ActivityLookup
from services.experts.commands import (
    CancelDeployment,
    DeactivateExpert,
    DeployExpert,
    ForgetExpert,
    RegisterExpert,
    SubmitEvaluation,
    UpdateExpertProfile,
)
from services.experts.domain import Deployment, Expert
from services.experts.queries import ExpertsQueries, GetExpertQuery, ListDeploymentsQuery, ListExpertsQuery
from services.kernel.grpckit import ADMINS, COMMANDERS, READERS, Registrar
from services.kernel.personal import FORGOTTEN, Keyring
from services.kernel.protos import ack, date_pb
from services.kernel.store import EventStore

SERVICE_NAME = "mieux.experts.v1.Experts"
COMMANDS = (
    "RegisterExpert",
    "UpdateExpertProfile",
    "DeployExpert",
    "CancelDeployment",
    "SubmitEvaluation",
    "DeactivateExpert",
)
QUERIES = ("GetExpert", "ListExperts", "ListDeployments")
ACCESS = {
    **{f"/{SERVICE_NAME}/{name}": COMMANDERS for name in COMMANDS},
    **{f"/{SERVICE_NAME}/{name}": READERS for name in QUERIES},
    f"/{SERVICE_NAME}/ForgetExpert": ADMINS,
}


def iso(msg: Any, name: str) -> str:
    """A Date field as its ISO string ("" when unset: the command model then names the field)."""
    return getattr(msg, name).iso if msg.HasField(name) else ""


def deployment_pb(expert_id: str, d: Deployment) -> experts_pb2.Deployment:
    return experts_pb2.Deployment(
        deployment_id=d.deployment_id,
        expert_id=expert_id,
        action_code=d.action_code,
        activity_id=d.activity_id,
        starts_on=date_pb(d.starts_on),
        ends_on=date_pb(d.ends_on),
        status="cancelled" if d.cancelled_on else "deployed",
        cancelled_on=date_pb(d.cancelled_on),
        evaluated=d.evaluation_id is not None,
    )


def shown_name(clear: str | None, forgotten: bool) -> str:
    """The name a reply gives: the clear one, or a placeholder once the person was forgotten (or
    "(unreadable)", personal.UNREADABLE, when it does not open although they were not)."""
    return FORGOTTEN if forgotten or clear is None else clear


def expert_pb(e: Expert, clear: dict[str, str | None]) -> experts_pb2.Expert:
    """`clear`: the sealed names opened (Keyring.reveal_all); a destroyed key opens to None."""
    assert e.profile is not None
    forgotten = e.forgotten_on is not None or clear.get(e.profile.name, "") is None
    return experts_pb2.Expert(
        expert_id=e.id,
        name=shown_name(clear.get(e.profile.name), forgotten),
        gender=e.profile.gender,
        background=e.profile.background,
        nationality=e.profile.nationality,
        active=e.active,
        registered_on=date_pb(e.registered_on),
        deactivated_on=date_pb(e.deactivated_on),
        themes=list(e.profile.themes),
        deployments=[
            deployment_pb(e.id, d) for d in sorted(e.deployments.values(), key=lambda d: (d.starts_on, d.deployment_id))
        ],
        version=e.version,
        forgotten=forgotten,
        forgotten_on=date_pb(e.forgotten_on),
    )


def expert_row_pb(r: asyncpg.Record, clear: dict[str, str | None]) -> experts_pb2.Expert:
    forgotten = r["forgotten_on"] is not None or clear.get(r["name"], "") is None
    return experts_pb2.Expert(
        expert_id=r["expert_id"],
        name=shown_name(clear.get(r["name"]), forgotten),
        gender=r["gender"],
        background=r["background"],
        nationality=r["nationality"],
        active=r["deactivated_on"] is None,
        registered_on=date_pb(r["registered_on"]),
        deactivated_on=date_pb(r["deactivated_on"]),
        themes=list(r["themes"]),
        forgotten=forgotten,
        forgotten_on=date_pb(r["forgotten_on"]),
    )


def deployment_row_pb(r: asyncpg.Record) -> experts_pb2.Deployment:
    return experts_pb2.Deployment(
        deployment_id=r["deployment_id"],
        expert_id=r["expert_id"],
        action_code=r["action_code"],
        activity_id=r["activity_id"],
        starts_on=date_pb(r["starts_on"]),
        ends_on=date_pb(r["ends_on"]),
        status="cancelled" if r["cancelled_on"] else "deployed",
        cancelled_on=date_pb(r["cancelled_on"]),
        evaluated=r["evaluated"],
    )


class ExpertsServicer(experts_pb2_grpc.ExpertsServicer):
    def __init__(self, store: EventStore, queries: ExpertsQueries, actions: ActivityLookup, keys: Keyring) -> None:
        self.store = store
        self.queries = queries
        self.actions = actions
        self.keys = keys

    # --- commands --------------------------------------------------------------------------------

    async def RegisterExpert(
        self, request: experts_pb2.RegisterExpertCommand, context: grpc.aio.ServicerContext
    ) -> common_pb2.CommandAck:
        cmd = RegisterExpert.model_validate(
            {
                "command_id": request.command_id,
                "name": request.name,
                "gender": request.gender,
                "background": request.background,
                "nationality": request.nationality,
                "registered_on": iso(request, "registered_on"),
                "themes": list(request.themes),
            }
        )
        return ack(await handlers.register_expert(self.store, self.keys, cmd))

    async def UpdateExpertProfile(
        self, request: experts_pb2.UpdateExpertProfileCommand, context: grpc.aio.ServicerContext
    ) -> common_pb2.CommandAck:
        fields: dict[str, Any] = {
            "command_id": request.command_id,
            "expert_id": request.expert_id,
            "updated_on": iso(request, "updated_on"),
        }
        for name in ("name", "gender", "background", "nationality"):
            if request.HasField(name):
                fields[name] = getattr(request, name)
        if request.HasField("themes"):
            fields["themes"] = list(request.themes.values)
        cmd = UpdateExpertProfile.model_validate(fields)
        return ack(await handlers.update_expert_profile(self.store, self.keys, cmd))

    async def DeployExpert(
        self, request: experts_pb2.DeployExpertCommand, context: grpc.aio.ServicerContext
    ) -> common_pb2.CommandAck:
        cmd = DeployExpert.model_validate(
            {"command_id": request.command_id, "expert_id": request.expert_id, "activity_id": request.activity_id}
        )
        try:
            return ack(await handlers.deploy_expert(self.store, self.actions, cmd))
        except ActionsUnavailable as e:  # nothing stored: the caller may retry with the same command id
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
            raise  # abort raises; this line is never reached

    async def CancelDeployment(
        self, request: experts_pb2.CancelDeploymentCommand, context: grpc.aio.ServicerContext
    ) -> common_pb2.CommandAck:
        cmd = CancelDeployment.model_validate(
            {
                "command_id": request.command_id,
                "expert_id": request.expert_id,
                "deployment_id": request.deployment_id,
                "reason": request.reason,
                "cancelled_on": iso(request, "cancelled_on"),
            }
        )
        return ack(await handlers.cancel_deployment(self.store, cmd))

    async def SubmitEvaluation(
        self, request: experts_pb2.SubmitEvaluationCommand, context: grpc.aio.ServicerContext
    ) -> common_pb2.CommandAck:
        cmd = SubmitEvaluation.model_validate(
            {
                "command_id": request.command_id,
                "expert_id": request.expert_id,
                "deployment_id": request.deployment_id,
                "answers": [{"question": a.question, "score": a.score} for a in request.answers],
                "submitted_on": iso(request, "submitted_on"),
            }
        )
        return ack(await handlers.submit_evaluation(self.store, cmd))

    async def DeactivateExpert(
        self, request: experts_pb2.DeactivateExpertCommand, context: grpc.aio.ServicerContext
    ) -> common_pb2.CommandAck:
        cmd = DeactivateExpert.model_validate(
            {
                "command_id": request.command_id,
                "expert_id": request.expert_id,
                "reason": request.reason,
                "deactivated_on": iso(request, "deactivated_on"),
            }
        )
        return ack(await handlers.deactivate_expert(self.store, cmd))

    async def ForgetExpert(
        self, request: experts_pb2.ForgetExpertCommand, context: grpc.aio.ServicerContext
    ) -> common_pb2.CommandAck:
        cmd = ForgetExpert.model_validate(
            {
                "command_id": request.command_id,
                "expert_id": request.expert_id,
                "reason": request.reason,
                "forgotten_on": iso(request, "forgotten_on"),
            }
        )
        return ack(await handlers.forget_expert(self.store, self.keys, cmd))

    # --- queries ---------------------------------------------------------------------------------

    async def GetExpert(
        self, request: experts_pb2.GetExpertQuery, context: grpc.aio.ServicerContext
    ) -> experts_pb2.Expert:
        q = GetExpertQuery.model_validate({"expert_id": request.expert_id})
        expert = await handlers.get_expert(self.store, q.expert_id)
        assert expert.profile is not None
        return expert_pb(expert, await self.keys.reveal_all([expert.profile.name]))

    async def ListExperts(
        self, request: experts_pb2.ListExpertsQuery, context: grpc.aio.ServicerContext
    ) -> experts_pb2.ListExpertsResponse:
        q = ListExpertsQuery.model_validate(
            {
                "background": request.background,
                "gender": request.gender,
                "active": request.active if request.HasField("active") else None,
                "nationality": request.nationality,
                "theme": request.theme,
                "page_size": request.page_size,
                "page_token": request.page_token,
            }
        )
        rows, token = await self.queries.list_experts(q)
        clear = await self.keys.reveal_all(r["name"] for r in rows)
        return experts_pb2.ListExpertsResponse(experts=[expert_row_pb(r, clear) for r in rows], next_page_token=token)

    async def ListDeployments(
        self, request: experts_pb2.ListDeploymentsQuery, context: grpc.aio.ServicerContext
    ) -> experts_pb2.ListDeploymentsResponse:
        q = ListDeploymentsQuery.model_validate(
            {
                "year": request.year,
                "action_code": request.action_code,
                "expert_id": request.expert_id,
                "status": request.status,
                "page_size": request.page_size,
                "page_token": request.page_token,
            }
        )
        rows, token = await self.queries.list_deployments(q)
        return experts_pb2.ListDeploymentsResponse(
            deployments=[deployment_row_pb(r) for r in rows], next_page_token=token
        )


def registrar(store: EventStore, queries: ExpertsQueries, actions: ActivityLookup, keys: Keyring) -> Registrar:
    def add(server: grpc.aio.Server) -> None:
        experts_pb2_grpc.add_ExpertsServicer_to_server(ExpertsServicer(store, queries, actions, keys), server)

    return add
