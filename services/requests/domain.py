"""The request aggregate, its rules (`check_...` guards) and what it decides with: the partners MIEUX
knows (regional organisations from `data/`, countries from ISO 3166-1), the eligibility assessment and the
naming of a request's stream. Pure: no I/O. Its commands are in commands.py."""

from __future__ import annotations

import uuid
from datetime import date
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from services.kernel import reference
from services.kernel.application import Aggregate
from services.kernel.errors import RuleBroken
from services.requests.events import (
    PartnerKind,
    RequestApproved,
    RequestEligibilityAssessed,
    RequestEvent,
    RequestReceived,
    RequestRejected,
    RequestWithdrawn,
)

if TYPE_CHECKING:
    from services.requests.commands import (
        ApproveRequest,
        AssessEligibility,
        RejectRequest,
        SubmitRequest,
        WithdrawRequest,
    )

INSTITUTION_TYPES = (
    "ministry",
    "agency",
    "local_authority",
    "ombudsperson",
    "parliament",
    "judiciary",
    "cso",
    "regional_organisation",
)
REQUEST_NAMESPACE = uuid.UUID("6f1c2b1e-52b3-4f5e-9a39-6d0c1a4a2f10")


@cache
def regional_organisations() -> dict[str, str]:
    """code -> name of the regional organisations that may request assistance."""
    return yaml.safe_load((Path(__file__).parent / "data" / "regional_organisations.yaml").read_text())


@cache
def eligibility() -> dict[str, Any]:
    """The countries each instrument covers and the institutions that may request only from a date."""
    return yaml.safe_load((Path(__file__).parent / "data" / "eligibility.yaml").read_text())


def partner_of(code: str) -> tuple[PartnerKind, str] | None:
    """(kind, name) of a known partner: a regional organisation, or a country by its common name."""
    orgs = regional_organisations()
    if code in orgs:
        return "regional_organisation", orgs[code]
    name = reference.country_name(code)
    if name is not None:
        return "country", name
    return None


def request_id_for(command_id: str) -> str:
    """A submitted request's stream id, derived from the command id: a retried submission lands on the same
    stream."""
    return f"req-{uuid.uuid5(REQUEST_NAMESPACE, command_id)}"


def assess(partner: str, partner_kind: str, institution_type: str, received_on: date) -> tuple[str | None, list[str]]:
    """(the instrument that makes the partner eligible, the reasons it is not). Pure, from the data files."""
    data = eligibility()
    reasons: list[str] = []
    if partner_kind == "regional_organisation":
        instrument: str | None = "regional_organisation"
    else:
        instrument = next((i for i in ("DCI", "EDF", "ENI", "OAD") if partner in data[i]), None)
        if instrument is None:
            reasons.append(f"{partner} is covered by none of DCI, EDF, ENI and the Overseas Association Decision")
    late = data["late_institutions"]
    if institution_type in late["types"] and received_on < late["since"]:
        reasons.append(f"a {institution_type.replace('_', ' ')} may request only from {late['since']:%Y-%m-%d}")
    return instrument, reasons


class Request(Aggregate):
    """received -> assessed -> approved | rejected; withdrawn at any time before a decision."""

    folds = RequestEvent

    def __init__(self, stream_id: str) -> None:
        super().__init__(stream_id)
        self.received: RequestReceived | None = None
        self.assessment: RequestEligibilityAssessed | None = None
        self.decision: RequestEvent | None = None
        self.withdrawn = False

    @property
    def status(self) -> str:
        if self.withdrawn:
            return "withdrawn"
        if isinstance(self.decision, RequestApproved):
            return "approved"
        if isinstance(self.decision, RequestRejected):
            return "rejected"
        return "assessed" if self.assessment else "received"

    def when_RequestReceived(self, e: RequestReceived) -> None:
        self.received = e

    def when_RequestEligibilityAssessed(self, e: RequestEligibilityAssessed) -> None:
        self.assessment = e

    def when_RequestApproved(self, e: RequestApproved) -> None:
        self.decision = e

    def when_RequestRejected(self, e: RequestRejected) -> None:
        self.decision = e

    def when_RequestWithdrawn(self, e: RequestWithdrawn) -> None:
        self.withdrawn = True

    def check_not_submitted(self) -> None:
        if self.exists:
            raise RuleBroken(f"request {self.id} was already submitted")

    def check_open(self) -> None:
        if self.withdrawn:
            raise RuleBroken(f"request {self.id} was withdrawn")
        if self.decision is not None:
            raise RuleBroken(f"request {self.id} was already {self.status}: one decision per request")

    def check_assessed(self) -> RequestEligibilityAssessed:
        if self.assessment is None:
            raise RuleBroken(f"request {self.id} has not been assessed: a decision comes only after assessment")
        return self.assessment

    def check_not_before_receipt(self, day: date, what: str) -> None:
        assert self.received is not None
        if day < self.received.received_on:
            raise RuleBroken(f"{what} {day} is before the request was received ({self.received.received_on})")

    def assess_eligibility(self, cmd: AssessEligibility) -> list[RequestEligibilityAssessed]:
        self.check_open()
        if self.assessment is not None:
            raise RuleBroken(f"request {self.id} was already assessed")
        self.check_not_before_receipt(cmd.assessed_on, "the assessment date")
        r = self.received
        assert r is not None
        instrument, reasons = assess(r.partner, r.partner_kind, r.institution_type, r.received_on)
        return [
            RequestEligibilityAssessed(
                request_id=self.id,
                eligible=not reasons,
                instrument=instrument,
                reasons=tuple(reasons),
                assessed_on=cmd.assessed_on,
            )
        ]

    def approve(self, cmd: ApproveRequest) -> list[RequestApproved]:
        self.check_open()
        assessment = self.check_assessed()
        if not assessment.eligible:
            why = "; ".join(assessment.reasons)
            raise RuleBroken(f"request {self.id} is not eligible ({why}): only an eligible request is approved")
        self.check_not_before_receipt(cmd.approved_on, "the approval date")
        r = self.received
        assert r is not None
        region = reference.region_of(r.partner)
        if region is None:
            raise RuleBroken(f"{r.partner} belongs to none of MIEUX's regions")
        return [
            RequestApproved(
                request_id=self.id,
                partner=r.partner,
                partner_kind=r.partner_kind,
                partner_name=r.partner_name,
                region=region,
                title=r.title,
                themes=r.themes,
                approved_on=cmd.approved_on,
            )
        ]

    def reject(self, cmd: RejectRequest) -> list[RequestRejected]:
        self.check_open()
        self.check_assessed()
        self.check_not_before_receipt(cmd.rejected_on, "the rejection date")
        return [RequestRejected(request_id=self.id, reason=cmd.reason, rejected_on=cmd.rejected_on)]

    def withdraw(self, cmd: WithdrawRequest) -> list[RequestWithdrawn]:
        self.check_open()
        self.check_not_before_receipt(cmd.withdrawn_on, "the withdrawal date")
        return [RequestWithdrawn(request_id=self.id, reason=cmd.reason, withdrawn_on=cmd.withdrawn_on)]

    def submit(self, cmd: SubmitRequest) -> list[RequestReceived]:
        self.check_not_submitted()
        kind, name = partner_of(cmd.partner) or ("country", cmd.partner)
        return [
            RequestReceived(
                request_id=self.id,
                partner=cmd.partner,
                partner_kind=kind,
                partner_name=name,
                institution=cmd.institution,
                institution_type=cmd.institution_type,
                received_on=cmd.received_on,
                title=cmd.title,
                themes=cmd.themes,
            )
        ]
