"""Eligibility and decisions on a request, given / when / then on events. Pure: no I/O."""

from __future__ import annotations

from datetime import date

import pytest

from services.kernel.errors import RuleBroken
from services.requests.commands import (
    ApproveRequest,
    AssessEligibility,
    RejectRequest,
    SubmitRequest,
    WithdrawRequest,
)
from services.requests.domain import Request
from services.requests.events import (
    RequestApproved,
    RequestEligibilityAssessed,
    RequestReceived,
    RequestRejected,
    RequestWithdrawn,
)

RID = "req-1"


def received(
    partner: str = "MG", kind: str = "country", institution_type: str = "ministry", on: date = date(2017, 3, 8)
) -> RequestReceived:
    return RequestReceived(
        request_id=RID,
        partner=partner,
        partner_kind=kind,
        partner_name=partner,
        institution="x",  # type: ignore[arg-type]
        institution_type=institution_type,
        received_on=on,
        title="t",
        themes=("diaspora_engagement",),
    )


def assessed(eligible: bool = True) -> RequestEligibilityAssessed:
    return RequestEligibilityAssessed(
        request_id=RID,
        eligible=eligible,
        instrument="EDF" if eligible else None,
        reasons=() if eligible else ("not covered",),
        assessed_on=date(2017, 3, 20),
    )


def approved() -> RequestApproved:
    return RequestApproved(
        request_id=RID,
        partner="MG",
        partner_kind="country",
        partner_name="Madagascar",
        region="africa_ces",
        title="t",
        approved_on=date(2017, 4, 1),
    )


def request(*given) -> Request:  # type: ignore[no-untyped-def]
    return Request.fold(RID, list(given))


def assess_cmd(on: date = date(2017, 3, 20)) -> AssessEligibility:
    return AssessEligibility(command_id="c-assess", request_id=RID, assessed_on=on)


def approve_cmd(on: date = date(2017, 4, 1)) -> ApproveRequest:
    return ApproveRequest(command_id="c-approve", request_id=RID, approved_on=on)


REJECT = RejectRequest(command_id="c-reject", request_id=RID, rejected_on=date(2017, 4, 1), reason="out of scope")
WITHDRAW = WithdrawRequest(command_id="c-w", request_id=RID, withdrawn_on=date(2017, 4, 1), reason="no longer needed")


@pytest.mark.parametrize(
    ("partner", "kind", "instrument"),
    [
        ("MG", "country", "EDF"),
        ("CR", "country", "DCI"),
        ("JO", "country", "ENI"),
        ("AW", "country", "OAD"),
        ("ECOWAS", "regional_organisation", "regional_organisation"),
    ],
)
def test_a_partner_under_an_instrument_is_assessed_eligible(partner: str, kind: str, instrument: str) -> None:
    [e] = request(received(partner, kind)).assess_eligibility(assess_cmd())
    assert (e.eligible, e.instrument, e.reasons) == (True, instrument, ())


def test_a_country_under_no_instrument_is_assessed_not_eligible() -> None:
    [e] = request(received("FR")).assess_eligibility(assess_cmd())
    assert not e.eligible and e.instrument is None
    assert "none of DCI, EDF, ENI" in e.reasons[0]


@pytest.mark.parametrize("institution_type", ["local_authority", "ombudsperson", "parliament", "judiciary", "cso"])
def test_late_institutions_may_request_only_from_2016(institution_type: str) -> None:
    [before] = request(received(institution_type=institution_type, on=date(2015, 12, 31))).assess_eligibility(
        assess_cmd(date(2016, 2, 1))
    )
    [after] = request(received(institution_type=institution_type, on=date(2016, 1, 1))).assess_eligibility(
        assess_cmd(date(2016, 2, 1))
    )
    assert not before.eligible and "only from 2016-01-01" in before.reasons[0]
    assert after.eligible


def test_a_ministry_could_request_before_2016() -> None:
    [e] = request(received(on=date(2012, 5, 1))).assess_eligibility(assess_cmd(date(2012, 6, 1)))
    assert e.eligible


def test_a_request_is_assessed_once() -> None:
    with pytest.raises(RuleBroken, match="already assessed"):
        request(received(), assessed()).assess_eligibility(assess_cmd())


def test_an_eligible_assessed_request_is_approved_with_its_region() -> None:
    [e] = request(received(), assessed()).approve(approve_cmd())
    assert isinstance(e, RequestApproved)
    assert (e.partner, e.region, e.approved_on) == ("MG", "africa_ces", date(2017, 4, 1))


def test_no_decision_before_assessment() -> None:
    with pytest.raises(RuleBroken, match="only after assessment"):
        request(received()).approve(approve_cmd())
    with pytest.raises(RuleBroken, match="only after assessment"):
        request(received()).reject(REJECT)


def test_only_an_eligible_request_is_approved() -> None:
    with pytest.raises(RuleBroken, match="not eligible"):
        request(received(), assessed(eligible=False)).approve(approve_cmd())


def test_an_ineligible_request_can_be_rejected() -> None:
    [e] = request(received(), assessed(eligible=False)).reject(REJECT)
    assert isinstance(e, RequestRejected) and e.reason == "out of scope"


def test_one_decision_per_request() -> None:
    decided = request(received(), assessed(), approved())
    assert decided.status == "approved"
    with pytest.raises(RuleBroken, match="one decision per request"):
        decided.approve(approve_cmd())
    with pytest.raises(RuleBroken, match="one decision per request"):
        decided.reject(REJECT)
    rejected = request(
        received(), assessed(), RequestRejected(request_id=RID, reason="x", rejected_on=date(2017, 4, 1))
    )
    with pytest.raises(RuleBroken, match="one decision per request"):
        rejected.approve(approve_cmd())


def test_a_request_is_withdrawn_before_a_decision_not_after() -> None:
    [e] = request(received(), assessed()).withdraw(WITHDRAW)
    assert isinstance(e, RequestWithdrawn)
    with pytest.raises(RuleBroken, match="one decision per request"):
        request(received(), assessed(), approved()).withdraw(WITHDRAW)


def test_nothing_is_decided_on_a_withdrawn_request() -> None:
    gone = request(received(), assessed(), RequestWithdrawn(request_id=RID, reason="x", withdrawn_on=date(2017, 4, 1)))
    assert gone.status == "withdrawn"
    for act in (
        lambda r: r.approve(approve_cmd()),
        lambda r: r.reject(REJECT),
        lambda r: r.assess_eligibility(assess_cmd()),
    ):
        with pytest.raises(RuleBroken, match="withdrawn"):
            act(gone)


def test_no_date_before_the_request_was_received() -> None:
    with pytest.raises(RuleBroken, match="before the request was received"):
        request(received()).assess_eligibility(assess_cmd(date(2017, 1, 1)))
    with pytest.raises(RuleBroken, match="before the request was received"):
        request(received(), assessed()).approve(approve_cmd(date(2017, 1, 1)))


def test_submit_refuses_unknown_themes() -> None:
    with pytest.raises(ValueError, match="unknown theme"):
        SubmitRequest(
            command_id="c",
            partner="MG",
            institution="x",
            institution_type="ministry",
            received_on=date(2017, 1, 1),
            title="t",
            themes=("astrology",),
        )


def test_partner_codes_are_canonical() -> None:
    cmd = SubmitRequest(
        command_id="c",
        partner="mg",
        institution="x",
        institution_type="ministry",
        received_on=date(2017, 1, 1),
        title="t",
    )
    assert cmd.partner == "MG"
