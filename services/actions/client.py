"""A typed client of the actions service, for the CLI, the demo, tests and other services (experts asks
GetActivity before a deployment; logistics may too)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from mieux.actions.v1 import actions_pb2, actions_pb2_grpc
from mieux.common.v1 import common_pb2

from services.kernel.grpckit import call_metadata, channel
from services.kernel.protos import date_pb
from services.kernel.settings import Role, Settings, service_address


class ActionsClient:
    def __init__(self, stub: actions_pb2_grpc.ActionsStub, token: str, deadline: float) -> None:
        self.stub = stub
        self.token = token
        self.deadline = deadline

    @classmethod
    @asynccontextmanager
    async def connect(cls, settings: Settings, role: Role = "ops") -> AsyncIterator[ActionsClient]:
        async with channel(service_address("actions")) as ch:
            yield cls(actions_pb2_grpc.ActionsStub(ch), settings.client_token(role), settings.grpc_deadline_s)

    def _kw(self) -> dict[str, Any]:
        return {"metadata": call_metadata(self.token), "timeout": self.deadline}

    async def agree_fiche(
        self,
        *,
        command_id: str,
        action_code: str,
        agreed_on: str,
        summary: str = "",
        pillars: Sequence[str] = (),
        themes: Sequence[str] = (),
    ) -> common_pb2.CommandAck:
        return await self.stub.AgreeActionFiche(
            actions_pb2.AgreeActionFicheCommand(
                command_id=command_id,
                action_code=action_code,
                agreed_on=date_pb(agreed_on or None),
                summary=summary,
                pillars=list(pillars),
                themes=list(themes),
            ),
            **self._kw(),
        )

    async def plan_activity(
        self,
        *,
        command_id: str,
        action_code: str,
        title: str,
        activity_type: str,
        starts_on: str,
        ends_on: str,
        country: str,
        city: str = "",
        airport: str = "",
    ) -> tuple[common_pb2.CommandAck, str]:
        """Plan an activity; returns the ack and the new activity's id."""
        ack = await self.stub.PlanActivity(
            actions_pb2.PlanActivityCommand(
                command_id=command_id,
                action_code=action_code,
                title=title,
                activity_type=activity_type,
                starts_on=date_pb(starts_on or None),
                ends_on=date_pb(ends_on or None),
                country=country,
                city=city,
                airport=airport,
            ),
            **self._kw(),
        )
        action = await self.get_action(action_code)
        activity_id = next(a.activity_id for a in action.activities if a.planned_version == ack.first_version)
        return ack, activity_id

    async def record_held(
        self,
        *,
        command_id: str,
        activity_id: str,
        male: int = 0,
        female: int = 0,
        other: int = 0,
        starts_on: str | None = None,
        ends_on: str | None = None,
    ) -> common_pb2.CommandAck:
        return await self.stub.RecordActivityHeld(
            actions_pb2.RecordActivityHeldCommand(
                command_id=command_id,
                activity_id=activity_id,
                participants_male=male,
                participants_female=female,
                participants_other=other,
                starts_on=date_pb(starts_on or None),
                ends_on=date_pb(ends_on or None),
            ),
            **self._kw(),
        )

    async def cancel_activity(
        self, *, command_id: str, activity_id: str, cancelled_on: str, reason: str
    ) -> common_pb2.CommandAck:
        return await self.stub.CancelActivity(
            actions_pb2.CancelActivityCommand(
                command_id=command_id,
                activity_id=activity_id,
                cancelled_on=date_pb(cancelled_on or None),
                reason=reason,
            ),
            **self._kw(),
        )

    async def close(
        self, *, command_id: str, action_code: str, closed_on: str, summary: str = ""
    ) -> common_pb2.CommandAck:
        return await self.stub.CloseAction(
            actions_pb2.CloseActionCommand(
                command_id=command_id, action_code=action_code, closed_on=date_pb(closed_on or None), summary=summary
            ),
            **self._kw(),
        )

    async def record_feedback(
        self,
        *,
        command_id: str,
        activity_id: str,
        respondents: int,
        skills_enhanced: int,
        makes_a_difference: int,
        recorded_on: str,
    ) -> common_pb2.CommandAck:
        return await self.stub.RecordParticipantFeedback(
            actions_pb2.RecordParticipantFeedbackCommand(
                command_id=command_id,
                activity_id=activity_id,
                respondents=respondents,
                skills_enhanced=skills_enhanced,
                makes_a_difference=makes_a_difference,
                recorded_on=date_pb(recorded_on or None),
            ),
            **self._kw(),
        )

    async def assess(
        self, *, command_id: str, action_code: str, rating: str, submitted_on: str, comment: str = ""
    ) -> common_pb2.CommandAck:
        """The partner's assessment of the action (poor, fair, good, excellent)."""
        return await self.stub.SubmitPartnerAssessment(
            actions_pb2.SubmitPartnerAssessmentCommand(
                command_id=command_id,
                action_code=action_code,
                rating=rating,
                submitted_on=date_pb(submitted_on or None),
                comment=comment,
            ),
            **self._kw(),
        )

    async def record_deliverable(
        self, *, command_id: str, action_code: str, kind: str, title: str, delivered_on: str
    ) -> common_pb2.CommandAck:
        return await self.stub.RecordDeliverable(
            actions_pb2.RecordDeliverableCommand(
                command_id=command_id,
                action_code=action_code,
                kind=kind,
                title=title,
                delivered_on=date_pb(delivered_on or None),
            ),
            **self._kw(),
        )

    async def get_action(self, action_code: str) -> actions_pb2.Action:
        return await self.stub.GetAction(actions_pb2.GetActionQuery(action_code=action_code), **self._kw())

    async def get_activity(self, activity_id: str) -> actions_pb2.Activity:
        return await self.stub.GetActivity(actions_pb2.GetActivityQuery(activity_id=activity_id), **self._kw())

    async def list_actions(self, **filters: Any) -> actions_pb2.ListActionsReply:
        return await self.stub.ListActions(actions_pb2.ListActionsQuery(**filters), **self._kw())

    async def list_activities(self, **filters: Any) -> actions_pb2.ListActivitiesReply:
        return await self.stub.ListActivities(actions_pb2.ListActivitiesQuery(**filters), **self._kw())
