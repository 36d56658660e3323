"""The request aggregate and its commands. Pure: no I/O."""

from __future__ import annotations

import uuid
from datetime import date
from functools import cache
from pathlib import Path

import pycountry
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.kernel.application import Aggregate
from services.kernel.errors import RuleBroken
from services.requests.events import PartnerKind, RequestReceived

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
    return yaml.safe_load((Path(__file__).parent / "data" / "regional_organisations.yaml").read_text())


def partner_of(code: str) -> tuple[PartnerKind, str] | None:
    orgs = regional_organisations()
    if code in orgs:
        return "regional_organisation", orgs[code]
    country = pycountry.countries.get(alpha_2=code) if len(code) == 2 else None
    if country is not None:
        return "country", country.name
    return None


class SubmitRequest(BaseModel):
    model_config = ConfigDict(frozen=True, str_strip_whitespace=True)
    command_id: str = Field(min_length=1, max_length=200)
    partner: str = Field(min_length=2, max_length=40)
    institution: str = Field(min_length=1, max_length=300)
    institution_type: str
    received_on: date
    title: str = Field(min_length=1, max_length=300)
    themes: tuple[str, ...] = ()

    @field_validator("partner")
    @classmethod
    def known_partner(cls, v: str) -> str:
        """The canonical code: `cr` becomes `CR`, so one partner is never counted twice."""
        canonical = v.upper() if len(v) == 2 else v
        if partner_of(canonical) is None:
            raise ValueError("not an ISO 3166-1 alpha-2 country code nor a known regional organisation")
        return canonical

    @field_validator("institution_type")
    @classmethod
    def known_institution_type(cls, v: str) -> str:
        if v not in INSTITUTION_TYPES:
            raise ValueError(f"must be one of {', '.join(INSTITUTION_TYPES)}")
        return v

    @property
    def request_id(self) -> str:
        """Derived from the command id, so a retried submission lands on the same stream."""
        return f"req-{uuid.uuid5(REQUEST_NAMESPACE, self.command_id)}"


class Request(Aggregate):
    def __init__(self, stream_id: str) -> None:
        super().__init__(stream_id)
        self.received_on: date | None = None

    def when_RequestReceived(self, e: RequestReceived) -> None:
        self.received_on = e.received_on

    def check_not_submitted(self) -> None:
        if self.exists:
            raise RuleBroken(f"request {self.id} was already submitted")

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
