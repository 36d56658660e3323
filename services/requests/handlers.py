"""Application layer of the requests service: one plain function per command."""

from __future__ import annotations

from services.kernel.application import execute
from services.kernel.store import AppendResult, EventStore
from services.requests.commands import (
    ApproveRequest,
    AssessEligibility,
    RejectRequest,
    SubmitRequest,
    WithdrawRequest,
)
from services.requests.domain import Request


async def submit_request(store: EventStore, cmd: SubmitRequest) -> AppendResult:
    return await execute(
        store,
        Request,
        cmd.request_id,
        lambda r: r.submit(cmd),
        cmd,
        must_exist=False,
    )


async def assess_eligibility(store: EventStore, cmd: AssessEligibility) -> AppendResult:
    return await execute(store, Request, cmd.request_id, lambda r: r.assess_eligibility(cmd), cmd)


async def approve_request(store: EventStore, cmd: ApproveRequest) -> AppendResult:
    return await execute(store, Request, cmd.request_id, lambda r: r.approve(cmd), cmd)


async def reject_request(store: EventStore, cmd: RejectRequest) -> AppendResult:
    return await execute(store, Request, cmd.request_id, lambda r: r.reject(cmd), cmd)


async def withdraw_request(store: EventStore, cmd: WithdrawRequest) -> AppendResult:
    return await execute(store, Request, cmd.request_id, lambda r: r.withdraw(cmd), cmd)
