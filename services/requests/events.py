"""Events the requests service publishes on `mieux.requests.events`: its public contract."""

from __future__ import annotations

from datetime import date
from typing import ClassVar, Literal

from services.kernel.envelope import Event, event

PartnerKind = Literal["country", "regional_organisation"]


class RequestEvent(Event):
    source: ClassVar[str] = "requests"
    request_id: str


@event
class RequestReceived(RequestEvent):
    event_type: ClassVar[str] = "RequestReceived"
    partner: str
    partner_kind: PartnerKind
    partner_name: str
    institution: str
    institution_type: str
    received_on: date
    title: str
    themes: tuple[str, ...] = ()


@event
class RequestEligibilityAssessed(RequestEvent):
    event_type: ClassVar[str] = "RequestEligibilityAssessed"
    eligible: bool
    # the instrument that makes the partner eligible (DCI, EDF, ENI, OAD) or "regional_organisation"
    instrument: str | None
    reasons: tuple[str, ...] = ()
    assessed_on: date


@event
class RequestApproved(RequestEvent):
    """The request becomes an Action: the actions service opens one on this event."""

    event_type: ClassVar[str] = "RequestApproved"
    partner: str
    partner_kind: PartnerKind
    partner_name: str
    region: str
    title: str
    themes: tuple[str, ...] = ()
    approved_on: date


@event
class RequestRejected(RequestEvent):
    event_type: ClassVar[str] = "RequestRejected"
    reason: str
    rejected_on: date


@event
class RequestWithdrawn(RequestEvent):
    event_type: ClassVar[str] = "RequestWithdrawn"
    reason: str
    withdrawn_on: date
