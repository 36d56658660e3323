"""Events the requests service publishes on `mieux.requests.events`: its public contract."""

from __future__ import annotations

from datetime import date
from typing import ClassVar, Literal

from services.kernel.envelope import Event

PartnerKind = Literal["country", "regional_organisation"]


class RequestEvent(Event, abstract=True):
    source: ClassVar[str] = "requests"
    request_id: str


class RequestReceived(RequestEvent):
    partner: str
    partner_kind: PartnerKind
    partner_name: str
    institution: str
    institution_type: str
    received_on: date
    title: str
    themes: tuple[str, ...] = ()


class RequestEligibilityAssessed(RequestEvent):
    eligible: bool
    # the instrument that makes the partner eligible (DCI, EDF, ENI, OAD) or "regional_organisation"
    instrument: str | None
    reasons: tuple[str, ...] = ()
    assessed_on: date


class RequestApproved(RequestEvent):
    """The request becomes an Action: the actions service opens one on this event."""

    partner: str
    partner_kind: PartnerKind
    partner_name: str
    region: str
    title: str
    themes: tuple[str, ...] = ()
    approved_on: date


class RequestRejected(RequestEvent):
    reason: str
    rejected_on: date


class RequestWithdrawn(RequestEvent):
    reason: str
    withdrawn_on: date
