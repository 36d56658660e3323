"""The commands of the requests service: what may be asked of a request, validated at the edge (pydantic).

Malformed input (a partner that is neither an ISO 3166-1 alpha-2 country nor a known regional
organisation, an unknown theme or institution type, a missing date or reason) is refused here
(INVALID_ARGUMENT); the rules a request's history decides on are the aggregate's (domain.py).
"""

from __future__ import annotations

from pydantic import field_validator

from services.kernel import reference
from services.kernel.command import Command
from services.kernel.limits import Day, Id, Name, Reason, Title, capped, shown
from services.requests.domain import INSTITUTION_TYPES, partner_of, request_id_for

MAX_THEMES = 20


class SubmitRequest(Command):
    partner: Id
    institution: Name
    institution_type: Id
    received_on: Day
    title: Title
    themes: capped(Id, MAX_THEMES) = ()  # type: ignore[valid-type]

    @field_validator("partner")
    @classmethod
    def known_partner(cls, v: str) -> str:
        """The canonical code: `cr` becomes `CR`, so one partner is never counted twice."""
        canonical = v.upper() if len(v) == 2 else v
        if partner_of(canonical) is None:
            raise ValueError("not an ISO 3166-1 alpha-2 country code nor a known regional organisation")
        return canonical

    @field_validator("themes")
    @classmethod
    def known_themes(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [t for t in v if t not in reference.themes()]
        if unknown:
            raise ValueError(f"unknown theme(s) {shown(', '.join(unknown))}; known: {', '.join(reference.themes())}")
        return v

    @field_validator("institution_type")
    @classmethod
    def known_institution_type(cls, v: str) -> str:
        if v not in INSTITUTION_TYPES:
            raise ValueError(f"must be one of {', '.join(INSTITUTION_TYPES)}")
        return v

    @property
    def request_id(self) -> str:
        """Derived from the command id, so a retried submission lands on the same stream."""
        return request_id_for(self.command_id)


class RequestCommand(Command):
    """A command on a request already submitted."""

    request_id: Id


class AssessEligibility(RequestCommand):
    assessed_on: Day


class ApproveRequest(RequestCommand):
    approved_on: Day


class RejectRequest(RequestCommand):
    rejected_on: Day
    reason: Reason


class WithdrawRequest(RequestCommand):
    withdrawn_on: Day
    reason: Reason
