"""Application layer of the requests service: one plain function per command."""

from __future__ import annotations

from services.kernel.application import execute
from services.kernel.store import AppendResult, EventStore
from services.requests.domain import Request, SubmitRequest


async def submit_request(store: EventStore, cmd: SubmitRequest) -> AppendResult:
    return await execute(
        store,
        Request,
        cmd.request_id,
        lambda r: r.submit(cmd),
        command_id=cmd.command_id,
        payload=cmd,
        must_exist=False,
    )
