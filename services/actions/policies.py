"""Reactions of the actions service to other contexts' events."""

from __future__ import annotations

import logging
from typing import ClassVar

from services.actions import handlers
from services.actions.commands import OpenAction
from services.kernel.envelope import Envelope, Event, topic_for
from services.kernel.policy import Policy
from services.requests.events import RequestApproved

log = logging.getLogger(__name__)


class OpenActionOnApproval(Policy):
    """RequestApproved -> ActionOpened, with the next code of the approval year and a title counting the
    partner's follow-ups. The command id derives from the event id: a redelivery opens nothing new."""

    name = "open_action_on_approval"
    topics: ClassVar[tuple[str, ...]] = (topic_for("requests"),)

    def __init__(self) -> None:
        self.opened = 0

    async def handle(self, env: Envelope, event: Event, command_id: str) -> None:
        if not isinstance(event, RequestApproved):
            return
        if self.store is None:
            raise RuntimeError("the policy is not bound to the actions event store yet")
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
        # a malformed approval raises ValidationError: the runner sends it to the dead-letter queue
        result = await handlers.open_action(self.store, cmd, causation_id=str(env.event_id))
        if result is not None and not result.duplicate:
            self.opened += 1
            log.info("request %s approved: action %s opened", event.request_id, result.stream_id)
