"""Application layer of the actions service: one plain function per command.

Opening an action (`open_action`, called by the policy on RequestApproved) needs two facts no single
stream holds: the codes already given in the year and how many actions the partner already has. It reads
them from this service's own event store under a PostgreSQL advisory lock, so two openings never count
the same follow-up; the code itself is also protected by appending to the stream `code` at expected
version 0: if that code was taken meanwhile (ConcurrencyError), it tries the next free one.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import asyncpg

from services.actions.commands import (
    AgreeActionFiche,
    CancelActivity,
    CloseAction,
    OpenAction,
    PlanActivity,
    RecordActivityHeld,
    RecordDeliverable,
    RecordParticipantFeedback,
    SubmitPartnerAssessment,
)
from services.actions.domain import Action, Register
from services.kernel.application import execute, first_result, load
from services.kernel.errors import ConcurrencyError, NotFound, RuleBroken
from services.kernel.store import AppendResult, EventStore

log = logging.getLogger(__name__)
OPEN_LOCK = "mieux-actions-open"
OPEN_ATTEMPTS = 20


async def read_register(conn: asyncpg.Connection, schema: str, cmd: OpenAction) -> Register:
    rows = await conn.fetch(
        f"SELECT stream_id, data->>'partner' AS partner, data->>'request_id' AS request_id "
        f"FROM {schema}.events WHERE event_type = 'ActionOpened'"
    )
    return Register(
        codes=tuple(r["stream_id"] for r in rows),
        partner_actions=sum(1 for r in rows if r["partner"] == cmd.partner),
        request_action=next((r["stream_id"] for r in rows if r["request_id"] == cmd.request_id), None),
    )


async def open_action(store: EventStore, cmd: OpenAction, causation_id: str = "") -> AppendResult | None:
    """Open the action of an approved request; None if that request already has one (opened by another
    delivery path). A redelivered event (same command id) answers with the first result."""
    first = await first_result(store, cmd)
    if first is not None:
        return first
    async with store.pool.acquire() as conn, conn.transaction():
        # held until this transaction ends, i.e. after the append below has committed
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"{OPEN_LOCK}:{store.schema}")
        taken: set[str] = set()  # codes found taken although no ActionOpened names them (yet)
        for _ in range(OPEN_ATTEMPTS):
            register = await read_register(conn, store.schema, cmd)
            if register.request_action is not None:
                log.info("request %s already has action %s", cmd.request_id, register.request_action)
                return None
            code, follow_up = replace(register, codes=(*register.codes, *taken)).numbering(cmd.approved_on.year)
            try:
                return await execute(
                    store,
                    Action,
                    code,
                    lambda a, n=follow_up: a.open(cmd, n),
                    cmd,
                    must_exist=False,
                    causation_id=causation_id,
                )
            except ConcurrencyError:
                log.info("action code %s was taken meanwhile; trying the next", code)
                taken.add(code)
            except RuleBroken:
                if not (await load(store, Action, code)).exists:
                    raise
                log.info("action code %s is taken; trying the next", code)
                taken.add(code)
    raise ConcurrencyError(f"no free action code for {cmd.request_id} after {OPEN_ATTEMPTS} attempts")


async def agree_action_fiche(store: EventStore, cmd: AgreeActionFiche) -> AppendResult:
    return await execute(store, Action, cmd.action_code, lambda a: a.agree_fiche(cmd), cmd)


async def plan_activity(store: EventStore, cmd: PlanActivity) -> AppendResult:
    return await execute(store, Action, cmd.action_code, lambda a: a.plan_activity(cmd), cmd)


async def record_activity_held(store: EventStore, cmd: RecordActivityHeld) -> AppendResult:
    return await execute(store, Action, cmd.action_code, lambda a: a.record_held(cmd), cmd)


async def cancel_activity(store: EventStore, cmd: CancelActivity) -> AppendResult:
    return await execute(store, Action, cmd.action_code, lambda a: a.cancel_activity(cmd), cmd)


async def close_action(store: EventStore, cmd: CloseAction) -> AppendResult:
    return await execute(store, Action, cmd.action_code, lambda a: a.close(cmd), cmd)


async def record_participant_feedback(store: EventStore, cmd: RecordParticipantFeedback) -> AppendResult:
    return await execute(store, Action, cmd.action_code, lambda a: a.record_feedback(cmd), cmd)


async def submit_partner_assessment(store: EventStore, cmd: SubmitPartnerAssessment) -> AppendResult:
    return await execute(store, Action, cmd.action_code, lambda a: a.submit_assessment(cmd), cmd)


async def record_deliverable(store: EventStore, cmd: RecordDeliverable) -> AppendResult:
    return await execute(store, Action, cmd.action_code, lambda a: a.record_deliverable(cmd), cmd)


async def get_action(store: EventStore, code: str) -> Action:
    """The action folded from its stream (read-your-writes: other services check activities with it)."""
    action = await load(store, Action, code)
    if not action.exists:
        raise NotFound(f"action {code} does not exist")
    return action
