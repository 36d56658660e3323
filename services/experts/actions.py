"""The experts service's view of the actions service: one gRPC call, GetActivity.

Called with the `service` role token and a deadline. The callee's NOT_FOUND becomes the rule "activity X
does not exist" (FAILED_PRECONDITION); when the actions service cannot answer, the command fails with
`ActionsUnavailable` (UNAVAILABLE: safe to retry with the same command id) and stores nothing.
"""

from __future__ import annotations

from typing import Protocol

import grpc
from mieux.actions.v1 import actions_pb2, actions_pb2_grpc

from services.experts.domain import ActivityFacts
from services.kernel.errors import RuleBroken
from services.kernel.grpckit import call_metadata, channel
from services.kernel.protos import date_of
from services.kernel.settings import Settings, service_address


class ActionsUnavailable(Exception):
    """The actions service did not answer (down, deadline exceeded, refused our token)."""


class ActivityLookup(Protocol):
    async def get_activity(self, activity_id: str) -> ActivityFacts: ...


def facts_of(a: actions_pb2.Activity, asked: str) -> ActivityFacts:
    return ActivityFacts(
        activity_id=a.activity_id or asked,
        action_code=a.action_code or asked.split("/", 1)[0],
        status=a.status,
        starts_on=date_of(a.starts_on),
        ends_on=date_of(a.ends_on),
    )


# the one call the experts service makes (a deployment's activity must exist): its principal's allow-list
CALLS = ("/mieux.actions.v1.Actions/GetActivity",)


class ActionsClient:
    """Asks `mieux.actions.v1.Actions/GetActivity` at service_address("actions")."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def get_activity(self, activity_id: str) -> ActivityFacts:
        try:
            token = self.settings.client_token("experts")  # its own principal
        except Exception as e:  # no token configured: the call could only be refused
            raise ActionsUnavailable(f"no service token to call the actions service: {e}") from e
        async with channel(service_address("actions")) as ch:
            try:
                reply = await actions_pb2_grpc.ActionsStub(ch).GetActivity(
                    actions_pb2.GetActivityQuery(activity_id=activity_id),
                    metadata=call_metadata(token),
                    timeout=self.settings.grpc_deadline_s,
                )
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.NOT_FOUND:
                    raise RuleBroken(f"activity {activity_id} does not exist") from e
                raise ActionsUnavailable(
                    f"the actions service could not say whether activity {activity_id} exists: "
                    f"{e.code().name} {e.details() or ''}".strip()
                ) from e
        return facts_of(reply, activity_id)
