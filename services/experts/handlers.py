"""Application layer of the experts service: one plain function per command.

The commands that write a name seal it with the expert's key (`keys.key_for`, made with the first event) and
hash it keyed (`PersonalCommand.keyed`); ForgetExpert destroys the key before it records ExpertForgotten, so
a failure between the two leaves the person forgotten (a retry with the same command id records it)."""

from __future__ import annotations

from services.experts.actions import ActivityLookup
from services.experts.commands import (
    CancelDeployment,
    DeactivateExpert,
    DeployExpert,
    ForgetExpert,
    RegisterExpert,
    SubmitEvaluation,
    UpdateExpertProfile,
)
from services.experts.domain import Expert
from services.kernel.application import execute, first_result, load
from services.kernel.errors import NotFound
from services.kernel.personal import Forgotten, Keyring
from services.kernel.store import AppendResult, EventStore


async def register_expert(store: EventStore, keys: Keyring, cmd: RegisterExpert) -> AppendResult:
    key = await keys.key_for(cmd.expert_id)
    cmd = cmd.keyed(key)
    return await execute(store, Expert, cmd.expert_id, lambda e: e.register(cmd, key), cmd, must_exist=False)


async def update_expert_profile(store: EventStore, keys: Keyring, cmd: UpdateExpertProfile) -> AppendResult:
    key = await keys.find(cmd.expert_id)
    if key is None:  # no such expert (NOT_FOUND), or forgotten (FAILED_PRECONDITION, a retry too)
        (await get_expert(store, cmd.expert_id)).check_not_forgotten("updated")
        raise Forgotten(cmd.expert_id)
    cmd = cmd.keyed(key)
    return await execute(store, Expert, cmd.expert_id, lambda e: e.update_profile(cmd, key), cmd)


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


async def forget_expert(store: EventStore, keys: Keyring, cmd: ForgetExpert) -> AppendResult:
    """Decide first (refusals destroy nothing), then destroy the key, then record ExpertForgotten."""
    first = await first_result(store, cmd)
    if first is not None:
        return first
    expert = await load(store, Expert, cmd.expert_id)
    if not expert.exists:
        raise NotFound(f"expert {cmd.expert_id} does not exist")
    key = await keys.find(cmd.expert_id)
    assert expert.profile is not None
    expert.forget(cmd, key.reveal(expert.profile.name) if key is not None else None)
    await keys.destroy(cmd.expert_id)
    return await execute(store, Expert, cmd.expert_id, lambda e: e.forget(cmd, None), cmd)


async def get_expert(store: EventStore, expert_id: str) -> Expert:
    """The expert folded from its stream: consistent with every acknowledged command."""
    expert = await load(store, Expert, expert_id)
    if not expert.exists:
        raise NotFound(f"expert {expert_id} does not exist")
    return expert
