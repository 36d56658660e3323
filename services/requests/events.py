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
