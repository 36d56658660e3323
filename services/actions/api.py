"""gRPC servicer of the actions service: proto <-> pydantic; errors become status codes in the kit."""

from __future__ import annotations

import asyncpg
import grpc
from mieux.actions.v1 import actions_pb2, actions_pb2_grpc
from mieux.common.v1 import common_pb2

from services.actions import handlers
from services.actions.commands import (
    AgreeActionFiche,
    CancelActivity,
    CloseAction,
    PlanActivity,
    RecordActivityHeld,
    RecordDeliverable,
    RecordParticipantFeedback,
    SubmitPartnerAssessment,
)
from services.actions.domain import CODE_RE, Action, ActivityState, parse_activity_id
from services.actions.queries import ActionFilter, ActionsQueries, ActivityFilter
from services.kernel.errors import FieldViolation, InvalidArgument
from services.kernel.grpckit import COMMANDERS, READERS, Registrar
from services.kernel.paging import page_size
from services.kernel.protos import ack, date_pb, fields
from services.kernel.store import EventStore

SERVICE_NAME = "mieux.actions.v1.Actions"
COMMANDS = (
    "AgreeActionFiche",
    "PlanActivity",
    "RecordActivityHeld",
    "CancelActivity",
    "CloseAction",
    "RecordParticipantFeedback",
    "SubmitPartnerAssessment",
    "RecordDeliverable",
)
QUERIES = ("GetAction", "ListActions", "GetActivity", "ListActivities")
ACCESS = {
    **{f"/{SERVICE_NAME}/{m}": COMMANDERS for m in COMMANDS},
    **{f"/{SERVICE_NAME}/{m}": READERS for m in QUERIES},
}


def activity_pb(a: ActivityState) -> actions_pb2.Activity:
    p = a.planned
    held = a.held
    fb = a.feedback
    return actions_pb2.Activity(
        activity_id=p.activity_id,
        action_code=p.action_code,
        status=a.status,
        title=p.title,
        activity_type=p.activity_type,
        starts_on=date_pb(held.starts_on if held else p.starts_on),
        ends_on=date_pb(held.ends_on if held else p.ends_on),
        country=p.country,
        city=p.city,
        airport=p.airport,
        participants_male=held.participants_male if held else 0,
        participants_female=held.participants_female if held else 0,
        participants_other=held.participants_other if held else 0,
        planned_version=a.planned_version,
        number=p.number,
        partner=p.partner,
        region=p.region,
        cancelled_on=date_pb(a.cancelled.cancelled_on if a.cancelled else None),
        feedback_respondents=fb.respondents if fb else 0,
        feedback_skills_enhanced=fb.skills_enhanced if fb else 0,
        feedback_makes_a_difference=fb.makes_a_difference if fb else 0,
    )


def action_pb(action: Action) -> actions_pb2.Action:
    o, s = action.opened, action.state
    acts = list(s.activities.values())
    return actions_pb2.Action(
        action_code=o.action_code,
        request_id=o.request_id,
        partner=o.partner,
        partner_kind=o.partner_kind,
        partner_name=o.partner_name,
        region=o.region,
        themes=list(s.themes),  # the fiche's once it names any, else the request's
        title=o.title,
        follow_up=o.follow_up,
        year=o.year,
        opened_on=date_pb(o.opened_on),
        status=action.status,
        fiche_agreed_on=date_pb(s.fiche_agreed_on),
        closed_on=date_pb(s.closed_on),
        activities_planned=sum(1 for a in acts if a.status == "planned"),
        activities_held=sum(1 for a in acts if a.status == "held"),
        activities_cancelled=sum(1 for a in acts if a.status == "cancelled"),
        activities=[activity_pb(a) for a in acts],
        pillars=list(s.pillars),
        fiche_themes=list(s.themes) if s.fiche_agreed_on is not None else [],
        partner_rating=s.assessment.rating if s.assessment else "",
        assessed_on=date_pb(s.assessment.submitted_on if s.assessment else None),
        deliverables=[
            actions_pb2.Deliverable(
                deliverable_id=d.deliverable_id, kind=d.kind, title=d.title, delivered_on=date_pb(d.delivered_on)
            )
            for d in s.deliverables
        ],
    )


def action_row_pb(r: asyncpg.Record) -> actions_pb2.Action:
    return actions_pb2.Action(
        action_code=r["action_code"],
        request_id=r["request_id"],
        partner=r["partner"],
        partner_kind=r["partner_kind"],
        partner_name=r["partner_name"],
        region=r["region"],
        themes=list(r["themes"]),
        title=r["title"],
        follow_up=r["follow_up"],
        year=r["year"],
        opened_on=date_pb(r["opened_on"]),
        status=r["status"],
        fiche_agreed_on=date_pb(r["fiche_agreed_on"]),
        closed_on=date_pb(r["closed_on"]),
        activities_planned=r["activities_planned"],
        activities_held=r["activities_held"],
        activities_cancelled=r["activities_cancelled"],
    )


def activity_row_pb(r: asyncpg.Record) -> actions_pb2.Activity:
    return actions_pb2.Activity(
        activity_id=r["activity_id"],
        action_code=r["action_code"],
        status=r["status"],
        title=r["title"],
        activity_type=r["activity_type"],
        starts_on=date_pb(r["starts_on"]),
        ends_on=date_pb(r["ends_on"]),
        country=r["country"],
        city=r["city"],
        airport=r["airport"],
        participants_male=r["participants_male"],
        participants_female=r["participants_female"],
        participants_other=r["participants_other"],
        planned_version=r["planned_version"],
        number=r["number"],
        partner=r["partner"],
        region=r["region"],
        cancelled_on=date_pb(r["cancelled_on"]),
    )


def action_code_of(code: str, field: str = "action_code") -> str:
    if not CODE_RE.match(code):
        raise InvalidArgument(FieldViolation(field, "not an action code like 2017-03"))
    return code


def activity_id_of(activity_id: str) -> tuple[str, str]:
    try:
        return activity_id, parse_activity_id(activity_id)[0]
    except ValueError as e:
        raise InvalidArgument(FieldViolation("activity_id", str(e))) from None


class ActionsServicer(actions_pb2_grpc.ActionsServicer):
    def __init__(self, store: EventStore, queries: ActionsQueries) -> None:
        self.store = store
        self.queries = queries

    # --- commands ---

    async def AgreeActionFiche(
        self, request: actions_pb2.AgreeActionFicheCommand, context: grpc.aio.ServicerContext
    ) -> common_pb2.CommandAck:
        return ack(await handlers.agree_action_fiche(self.store, AgreeActionFiche.model_validate(fields(request))))

    async def PlanActivity(
        self, request: actions_pb2.PlanActivityCommand, context: grpc.aio.ServicerContext
    ) -> common_pb2.CommandAck:
        return ack(await handlers.plan_activity(self.store, PlanActivity.model_validate(fields(request))))

    async def RecordActivityHeld(
        self, request: actions_pb2.RecordActivityHeldCommand, context: grpc.aio.ServicerContext
    ) -> common_pb2.CommandAck:
        cmd = RecordActivityHeld.model_validate(fields(request))
        return ack(await handlers.record_activity_held(self.store, cmd))

    async def CancelActivity(
        self, request: actions_pb2.CancelActivityCommand, context: grpc.aio.ServicerContext
    ) -> common_pb2.CommandAck:
        return ack(await handlers.cancel_activity(self.store, CancelActivity.model_validate(fields(request))))

    async def CloseAction(
        self, request: actions_pb2.CloseActionCommand, context: grpc.aio.ServicerContext
    ) -> common_pb2.CommandAck:
        return ack(await handlers.close_action(self.store, CloseAction.model_validate(fields(request))))

    async def RecordParticipantFeedback(
        self, request: actions_pb2.RecordParticipantFeedbackCommand, context: grpc.aio.ServicerContext
    ) -> common_pb2.CommandAck:
        cmd = RecordParticipantFeedback.model_validate(fields(request))
        return ack(await handlers.record_participant_feedback(self.store, cmd))

    async def SubmitPartnerAssessment(
        self, request: actions_pb2.SubmitPartnerAssessmentCommand, context: grpc.aio.ServicerContext
    ) -> common_pb2.CommandAck:
        cmd = SubmitPartnerAssessment.model_validate(fields(request))
        return ack(await handlers.submit_partner_assessment(self.store, cmd))

    async def RecordDeliverable(
        self, request: actions_pb2.RecordDeliverableCommand, context: grpc.aio.ServicerContext
    ) -> common_pb2.CommandAck:
        return ack(await handlers.record_deliverable(self.store, RecordDeliverable.model_validate(fields(request))))

    # --- queries ---

    async def GetAction(
        self, request: actions_pb2.GetActionQuery, context: grpc.aio.ServicerContext
    ) -> actions_pb2.Action:
        code = action_code_of(request.action_code)
        return action_pb(await handlers.get_action(self.store, code))

    async def GetActivity(
        self, request: actions_pb2.GetActivityQuery, context: grpc.aio.ServicerContext
    ) -> actions_pb2.Activity:
        activity_id, code = activity_id_of(request.activity_id)
        action = await handlers.get_action(self.store, code)
        return activity_pb(action.activity(activity_id))

    async def ListActions(
        self, request: actions_pb2.ListActionsQuery, context: grpc.aio.ServicerContext
    ) -> actions_pb2.ListActionsReply:
        if not 0 <= request.active_in <= 9999:
            raise InvalidArgument(FieldViolation("active_in", "must be a year (or 0: any)"))
        f = ActionFilter(
            year=request.year,
            region=request.region,
            partner=request.partner,
            status=request.status,
            theme=request.theme,
            size=page_size(request.page_size),
            page_token=request.page_token,
            active_in=request.active_in,
        )
        rows, token = await self.queries.list_actions(f)
        return actions_pb2.ListActionsReply(actions=[action_row_pb(r) for r in rows], next_page_token=token)

    async def ListActivities(
        self, request: actions_pb2.ListActivitiesQuery, context: grpc.aio.ServicerContext
    ) -> actions_pb2.ListActivitiesReply:
        f = ActivityFilter(
            year=request.year,
            region=request.region,
            partner=request.partner,
            status=request.status,
            action_code=request.action_code,
            activity_type=request.activity_type,
            country=request.country,
            size=page_size(request.page_size),
            page_token=request.page_token,
        )
        rows, token = await self.queries.list_activities(f)
        return actions_pb2.ListActivitiesReply(activities=[activity_row_pb(r) for r in rows], next_page_token=token)


def registrar(store: EventStore, queries: ActionsQueries) -> Registrar:
    def add(server: grpc.aio.Server) -> None:
        actions_pb2_grpc.add_ActionsServicer_to_server(ActionsServicer(store, queries), server)

    return add
