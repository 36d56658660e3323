"""Application layer of the experts service: one plain function per command."""

from __future__ import annotations

from services.experts.actions import ActivityLookup
from services.experts.commands import (
    CancelDeployment,
    DeactivateExpert,
    DeployExpert,
    RegisterExpert,
    SubmitEvaluation,
    UpdateExpertProfile,
)
from services.experts.domain import Expert
from services.kernel.application import execute, first_result, load
from services.kernel.errors import NotFound
from services.kernel.store import AppendResult, EventStore


async def register_expert(store: EventStore, cmd: RegisterExpert) -> AppendResult:
    return await execute(
        store,
        Expert,
        cmd.expert_id,
        lambda e: e.register(cmd),
        cmd,
        must_exist=False,
    )


async def update_expert_profile(store: EventStore, cmd: UpdateExpertProfile) -> AppendResult:
    return await execute(store, Expert, cmd.expert_id, lambda e: e.update_profile(cmd), cmd)


async def deploy_expert(store: EventStore, actions: ActivityLookup, cmd: DeployExpert) -> AppendResult:
    """Asks the actions service about the activity, then decides on the expert's stream.

    A retried command is answered from the store without asking the actions service again; what can be
    refused without the activity (unknown or deactivated expert) is refused before asking. The append
    expects the version the decision was made on, so a concurrent deployment of the same expert makes
    one of the two fail (ABORTED) rather than overlap.
    """
    first = await first_result(store, cmd)
    if first is not None:
        return first
    expert = await load(store, Expert, cmd.expert_id)
    if not expert.exists:
        raise NotFound(f"expert {cmd.expert_id} does not exist")
    expert.check_deployable()
    activity = await actions.get_activity(cmd.activity_id)
    return await execute(store, Expert, cmd.expert_id, lambda e: e.deploy(cmd, activity), cmd)


async def cancel_deployment(store: EventStore, cmd: CancelDeployment) -> AppendResult:
    return await execute(store, Expert, cmd.expert_id, lambda e: e.cancel_deployment(cmd), cmd)


async def submit_evaluation(store: EventStore, cmd: SubmitEvaluation) -> AppendResult:
    return await execute(store, Expert, cmd.expert_id, lambda e: e.submit_evaluation(cmd), cmd)


async def deactivate_expert(store: EventStore, cmd: DeactivateExpert) -> AppendResult:
    return await execute(store, Expert, cmd.expert_id, lambda e: e.deactivate(cmd), cmd)


async def get_expert(store: EventStore, expert_id: str) -> Expert:
    """The expert folded from its stream: consistent with every acknowledged command."""
    expert = await load(store, Expert, expert_id)
    if not expert.exists:
        raise NotFound(f"expert {expert_id} does not exist")
    return expert
