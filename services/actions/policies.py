"""Reactions of the actions service to other contexts' events."""

from __future__ import annotations

import logging
from typing import ClassVar

from pydantic import ValidationError

from services.actions import handlers
from services.actions.domain import OpenAction
from services.kernel.envelope import Envelope, Event, topic_for
from services.kernel.errors import from_validation_error
from services.kernel.grpckit import correlation_var, principal_var
from services.kernel.runner import Policy
from services.kernel.settings import Principal
from services.kernel.store import EventStore
from services.requests.events import RequestApproved

log = logging.getLogger(__name__)


class OpenActionOnApproval(Policy):
    """RequestApproved -> ActionOpened, with the next code of the approval year and a title counting the
    partner's follow-ups. The command id derives from the event id: a redelivery opens nothing new."""

    name = "open_action_on_approval"
    topics: ClassVar[tuple[str, ...]] = (topic_for("requests"),)

    def __init__(self) -> None:
        self.store: EventStore | None = None
        self.opened = 0

    def bind(self, store: EventStore) -> None:
        self.store = store

    async def handle(self, env: Envelope, event: Event, command_id: str) -> None:
        if not isinstance(event, RequestApproved):
            return
        if self.store is None:
            raise RuntimeError("the policy is not bound to the actions event store yet")
        try:
            cmd = OpenAction(
                command_id=command_id,
                request_id=event.request_id,
                partner=event.partner,
                partner_kind=event.partner_kind,
                partner_name=event.partner_name,
                region=event.region,
                themes=event.themes,
                approved_on=event.approved_on,
            )
        except ValidationError as e:  # a refusal (to the dead-letter queue), not a failure to retry
            raise from_validation_error(e) from None
        # the events record who acted (this policy) and carry the approval's correlation id on
        who = principal_var.set(Principal(name=f"policy:{self.name}", roles=frozenset({"service"})))
        why = correlation_var.set(env.correlation_id)
        try:
            result = await handlers.open_action(self.store, cmd, causation_id=str(env.event_id))
        finally:
            correlation_var.reset(why)
            principal_var.reset(who)
        if result is not None and not result.duplicate:
            self.opened += 1
            log.info("request %s approved: action %s opened", event.request_id, result.stream_id)
