"""The request aggregate and the SubmitRequest command, given / when / then. Pure: no I/O."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from pydantic import ValidationError
from support import fields_of, given_when_then

from services.kernel.errors import RuleBroken
from services.requests.commands import SubmitRequest
from services.requests.domain import Request
from services.requests.events import RequestReceived

VALID: dict[str, Any] = {
    "command_id": "cmd-costa-rica-1",
    "partner": "CR",
    "institution": "Dirección General de Migración y Extranjería",
    "institution_type": "agency",
    "received_on": "2017-03-14",
    "title": "Costa Rica III",
    "themes": ["international_labour_migration", "local_level_integration"],
}


def command(**over: Any) -> SubmitRequest:
    return SubmitRequest.model_validate({**VALID, **over})


def test_submitting_a_country_request_records_request_received() -> None:
    cmd = command()
    events = given_when_then(Request, cmd.request_id, [], lambda r: r.submit(cmd))
    assert events == [
        RequestReceived(
            request_id=cmd.request_id,
            partner="CR",
            partner_kind="country",
            partner_name="Costa Rica",
            institution=VALID["institution"],
            institution_type="agency",
            received_on=date(2017, 3, 14),
            title="Costa Rica III",
            themes=("international_labour_migration", "local_level_integration"),
        )
    ]


def test_submitting_a_regional_organisation_request_records_its_kind_and_name() -> None:
    cmd = command(partner="ECOWAS", institution="ECOWAS Commission", institution_type="regional_organisation")
    [ev] = given_when_then(Request, cmd.request_id, [], lambda r: r.submit(cmd))
    assert isinstance(ev, RequestReceived)
    assert ev.partner == "ECOWAS"
    assert ev.partner_kind == "regional_organisation"
    assert ev.partner_name == "Economic Community of West African States"
    assert ev.institution_type == "regional_organisation"


def test_the_folded_request_remembers_it_was_received() -> None:
    cmd = command()
    [ev] = given_when_then(Request, cmd.request_id, [], lambda r: r.submit(cmd))
    agg = Request.fold(cmd.request_id, [ev])
    assert agg.exists and agg.version == 1
    assert agg.received is not None and agg.received.received_on == date(2017, 3, 14)


def test_submitting_twice_on_the_same_stream_breaks_a_rule() -> None:
    cmd = command()
    [first] = given_when_then(Request, cmd.request_id, [], lambda r: r.submit(cmd))
    with pytest.raises(RuleBroken, match="already submitted"):
        given_when_then(Request, cmd.request_id, [first], lambda r: r.submit(cmd))
    # even with another command id, the same stream cannot receive a second submission
    other = command(command_id="cmd-other")
    with pytest.raises(RuleBroken):
        given_when_then(Request, cmd.request_id, [first], lambda r: r.submit(other))


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"partner": "XX"}, "partner"),
        ({"partner": "ZZZ"}, "partner"),
        ({"partner": ""}, "partner"),
        ({"institution_type": "embassy"}, "institution_type"),
        ({"institution_type": ""}, "institution_type"),
        ({"title": ""}, "title"),
        ({"title": "   "}, "title"),
        ({"received_on": "2017-13-45"}, "received_on"),
        ({"received_on": "2017-02-30"}, "received_on"),
        ({"received_on": "yesterday"}, "received_on"),
        ({"received_on": ""}, "received_on"),
        ({"command_id": ""}, "command_id"),
        ({"institution": ""}, "institution"),
    ],
)
def test_submit_request_validation_names_the_field(over: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        command(**over)
    locs = [".".join(str(p) for p in err["loc"]) for err in info.value.errors()]
    assert locs == [field]
    # and the kit turns it into a field violation naming the same field
    assert fields_of(info.value) == [field]


@pytest.mark.parametrize(
    "missing", ["command_id", "partner", "institution", "institution_type", "received_on", "title"]
)
def test_submit_request_requires_its_fields(missing: str) -> None:
    data = {k: v for k, v in VALID.items() if k != missing}
    with pytest.raises(ValidationError) as info:
        SubmitRequest.model_validate(data)
    assert [err["loc"] for err in info.value.errors()] == [(missing,)]


def test_several_bad_fields_are_all_named() -> None:
    with pytest.raises(ValidationError) as info:
        command(partner="XX", title="", received_on="2017-02-30")
    assert {err["loc"][0] for err in info.value.errors()} == {"partner", "title", "received_on"}


def test_request_id_is_derived_from_the_command_id_deterministically() -> None:
    a, b = command(), command(title="Another title", partner="ECOWAS")
    assert a.request_id == b.request_id  # same command id, same stream
    assert a.request_id.startswith("req-")
    assert a.request_id == SubmitRequest.model_validate(dict(VALID)).request_id
    assert command(command_id="cmd-costa-rica-2").request_id != a.request_id
    # stable across processes and releases (a uuid5 of the command id, not random nor hash()-seeded):
    # changing it would send retries of old commands to new streams
    assert a.request_id == "req-6a2c834b-6a48-5c5e-9732-2a2296bb56f7"
