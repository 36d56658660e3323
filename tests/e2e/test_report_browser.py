"""The annual report page and the IATI export of a small year (tests/e2e/scenario_report.yaml), from the six services
running as OS processes: the page loaded in headless Chromium (Debian's, `make chromium`) shows no console error
and asks for nothing outside itself, every year-at-a-glance figure in it is the stats API's, every chart draws one
mark per data point of its API answer and has the table of them beside it, and a screenshot is saved; the stats
service serves it over HTTP to a finance, ops or admin bearer token or a session a ticket set, and to nobody else;
`mieux export iati` writes one activity per action active in the year, valid against the IATI 2.03 schema."""

from __future__ import annotations

import asyncio
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from support import eventually, mieux_cli, start_service

from services.actions.client import ActionsClient
from services.carbon.client import CarbonClient
from services.kernel.settings import Settings
from services.ops import browser
from services.ops.devstack import free_port
from services.ops.iati import schema_errors
from services.ops.scenario_replay import replay
from services.stats.client import StatsClient
from services.stats.sessions import COOKIE

pytestmark = pytest.mark.e2e
FILE = Path(__file__).with_name("scenario_report.yaml")
YEAR = 2053
SERVICES = ("requests", "actions", "experts", "logistics", "carbon", "stats")


@pytest.fixture(scope="module")
def services(stack_env: dict[str, str]) -> Iterator[dict[str, Any]]:
    """The six services, the stats service serving its pages over HTTP too; yields the CLI's environment and the
    pages' base URL. The addresses are set in this process meanwhile, for the replay's and the test's clients."""
    ports = {name: free_port() for name in SERVICES}
    http = free_port()
    addrs = {f"MIEUX_{n.upper()}_ADDR": f"127.0.0.1:{p}" for n, p in ports.items()}
    started = []
    with pytest.MonkeyPatch.context() as mp:
        for k, v in addrs.items():
            mp.setenv(k, v)
        try:
            for name in SERVICES:
                extra = {"MIEUX_STATS_HTTP_PORT": str(http)} if name == "stats" else {}
                started.append(start_service(name, {**stack_env, **addrs}, port=ports[name], **extra))
            yield {"env": {**stack_env, **addrs}, "base": f"http://127.0.0.1:{http}"}
        finally:
            for svc in started:
                svc.stop()


@pytest.fixture(scope="module")
async def year(services: dict[str, Any]) -> dict[str, Any]:
    """The scenario replayed, once the stats and carbon read models hold all of it; the APIs' answers."""
    settings = Settings()
    await replay(FILE, settings, progress=False)

    async with StatsClient.connect(settings) as stats, CarbonClient.connect(settings, role="finance") as carbon:

        async def complete() -> bool:
            g, r = await stats.year_at_a_glance(YEAR), await stats.results(YEAR)
            fp = await carbon.footprint(YEAR)
            return (
                g.activities,
                g.experts_deployed,
                g.vers_retired,
                len(r.deliverables),
                r.partner_ratings[-1].count,
            ) == (
                2,
                2,
                5,
                1,
                1,
            ) and sum(row.flights for row in fp.rows) == 2

        await eventually(complete, 60, f"the stats and carbon read models to hold {YEAR}")
        return {
            "glance": await stats.year_at_a_glance(YEAR),
            "results": await stats.results(YEAR),
            "history": await stats.history(YEAR),
            "footprint": await carbon.footprint(YEAR),
            "by_month": await carbon.footprint_by_month(YEAR),
        }


def glance_values(g: Any) -> dict[str, str]:
    """Every figure of the year at a glance as the stats API gives it, by the page's `data-glance` key."""
    out = {
        k: str(getattr(g, k))
        for k in (
            "new_requests",
            "activities",
            "experts_deployed",
            "countries_benefitted",
            "participants",
            "expert_pool",
            "expert_pool_previous",
            "expert_pool_growth_pct",
            "air_miles_per_team_member",
            "team_statute_miles",
            "team_members",
            "footprint_kg_co2e",
            "vers_purchased",
            "vers_retired",
        )
    }
    for a in g.activities_by_area:
        out[f"activities_by_area:{a.key}"], out[f"activities_by_area_pct:{a.key}"] = str(a.count), a.share_pct
    for p in g.participants_by_gender:
        if p.count:
            out[f"participants_by_gender:{p.key}"], out[f"participants_by_gender_pct:{p.key}"] = (
                str(p.count),
                p.share_pct,
            )
    for e in g.experts_by_gender:
        if e.count:
            out[f"experts_by_gender:{e.key}"] = str(e.count)
    out["experts_by_gender_pct:female"] = next(e.share_pct for e in g.experts_by_gender if e.key == "female")
    return out


def digits(text: str) -> str:
    return re.sub(r"[^0-9.\-]", "", text)


def check_page(url: str, shot: Path, answers: dict[str, Any]) -> None:
    """In headless Chromium: no console error, nothing fetched, the figures and the charts, a screenshot."""
    g, r, h, by_month, fp = (answers[k] for k in ("glance", "results", "history", "by_month", "footprint"))
    with browser.visit(url) as v:
        page = v.page
        assert page.title() == f"MIEUX Annual Report {YEAR}"
        shown = {
            el.get_attribute("data-glance"): (el.get_attribute("data-value"), el.inner_text())
            for el in page.query_selector_all("[data-glance]")
        }
        expected = glance_values(g)
        assert set(shown) == set(expected)
        for key, value in expected.items():
            given, text = shown[key]
            assert given == value, key
            if value and not key.endswith("growth_pct"):
                assert Decimal(digits(text)) == Decimal(value), (key, text)
        points = {
            "activities-by-region": [str(x.count) for x in g.activities_by_region],
            "requests-per-year": [str(x.count) for x in h.requests_per_year],
            "activities-per-year": [str(x.count) for x in h.activities_per_year],
            "experts-by-gender": [str(x.count) for x in g.experts_by_gender],
            "experts-by-background": [str(x.count) for x in g.experts_by_background],
            "participants-by-gender": [str(x.count) for x in g.participants_by_gender],
            "partner-ratings": [str(x.count) for x in r.partner_ratings],
            "gamm-pillars": [str(x.count) for x in r.pillars],
            "deliverables-by-region": [str(x.count) for x in r.deliverables_by_region],
            "footprint-by-month": [m.kg_co2e for m in by_month.months],
            "footprint-by-region": sorted(fp.kg_co2e_by_region.values()),
        }
        charts = {el.get_attribute("data-chart"): el for el in page.query_selector_all("figure.chart")}
        assert set(charts) == set(points)
        for chart, values in points.items():
            fig = charts[chart]
            marks = [m.get_attribute("data-value") for m in fig.query_selector_all("svg rect.mark")]
            rows = fig.query_selector_all(f'table[data-for="{chart}"] tbody tr')
            assert len(marks) == len(values) == len(rows) == int(fig.get_attribute("data-points") or -1), chart
            assert (sorted(marks) if chart == "footprint-by-region" else marks) == values, chart
            assert fig.query_selector("svg title") and fig.query_selector("svg desc"), chart
        page.screenshot(path=str(shot), full_page=True)
        assert v.console_errors == [] and v.refused == []
    assert shot.stat().st_size > 10_000


async def test_the_report_page_in_a_browser(services, year, tmp_path: Path) -> None:
    code, out = await mieux_cli(services["env"], "report", str(YEAR), "--out", str(tmp_path))
    assert code == 0, out
    page = tmp_path / f"report-{YEAR}.html"
    html = page.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), "the page loads nothing from elsewhere"
    assert "<script" not in html
    await asyncio.to_thread(check_page, page.as_uri(), tmp_path / f"report-{YEAR}.png", year)
    # the months add up to the year's footprint: the carbon service's figures, month by month
    months = sum((Decimal(m.kg_co2e) for m in year["by_month"].months), Decimal(0))
    assert months == Decimal(year["footprint"].kg_co2e) == Decimal(year["by_month"].kg_co2e) > 0
    assert [m.month for m in year["by_month"].months if m.legs] == [3, 5]


async def test_the_stats_service_serves_the_page_to_people_with_a_token_or_a_session(services, year, tokens) -> None:
    url = f"{services['base']}/reports/{YEAR}"
    async with aiohttp.ClientSession() as http:

        async def get(target: str = url, **headers: str) -> tuple[int, str, aiohttp.ClientResponse]:
            async with http.get(target, headers=headers, allow_redirects=False) as r:
                return r.status, await r.text(), r

        for role in ("finance", "ops", "admin"):
            status, body, r = await get(Authorization=f"Bearer {tokens[role]}")
            assert status == 200 and 'data-glance="activities"' in body, role
            assert "default-src 'none'" in r.headers["Content-Security-Policy"]
        for refused in ({}, {"Authorization": f"Bearer {tokens['stats']}"}, {"Authorization": "Bearer nope"}):
            status, _, r = await get(**refused)
            assert status == 401, refused
        assert (await get(f"{services['base']}/reports/0999"))[0] == 404

        async with StatsClient.connect(Settings(), role="ops") as stats:
            session = await stats.open_report_session(YEAR)
        assert session.url.startswith(url + "?ticket=")
        status, _, r = await get(session.url)
        assert status == 303 and r.headers["Location"] == f"/reports/{YEAR}"
        cookie = r.cookies[COOKIE]
        assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/reports"
        status, body, _ = await get(Cookie=f"{COOKIE}={cookie.value}")
        assert status == 200 and f"MIEUX Annual Report {YEAR}" in body
        assert (await get(Cookie=f"{COOKIE}={cookie.value[:-2]}xx"))[0] == 401  # tampered
        assert (await get(session.url.replace("ticket=", "ticket=x")))[0] == 401
        assert (await get(session.url.replace(f"/reports/{YEAR}", f"/reports/{YEAR - 1}")))[0] == 401  # another year

    def in_a_browser() -> None:
        with browser.visit(session.url) as v:  # the link a person opens: the ticket, the cookie, the page
            assert v.page.title() == f"MIEUX Annual Report {YEAR}" and v.console_errors == []

    async with StatsClient.connect(Settings(), role="finance") as stats:
        session = await stats.open_report_session(YEAR)
    await asyncio.to_thread(in_a_browser)


async def test_the_iati_export_of_the_year(services, year, tmp_path: Path) -> None:
    settings = Settings()
    async with ActionsClient.connect(settings) as actions:
        active = [a.action_code for a in (await actions.list_actions(active_in=YEAR, page_size=500)).actions]
        assert {"2053-01", "2053-02"} <= set(active)
        assert not {"2053-01", "2053-02"} & {
            a.action_code for a in (await actions.list_actions(active_in=2052)).actions
        }
        later = {a.action_code for a in (await actions.list_actions(active_in=YEAR + 1)).actions}
        assert "2053-02" in later and "2053-01" not in later  # 2053-01 closed in 2053
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await actions.list_actions(active_in=-1)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    out = tmp_path / "iati.xml"
    code, text = await mieux_cli(services["env"], "export", "iati", "--year", str(YEAR), "--out", str(out))
    assert code == 0, text
    assert "valid against the IATI 2.03 activity schema" in text
    xml = out.read_bytes()
    assert schema_errors(xml) == []
    root = ET.fromstring(xml)
    acts = {a.findtext("iati-identifier"): a for a in root.findall("iati-activity")}
    assert len(acts) == len(active)
    nepal, iberred = acts["XI-PLACEHOLDER-ICMPD-2053-01"], acts["XI-PLACEHOLDER-ICMPD-2053-02"]
    assert nepal.find("recipient-country").get("code") == "NP" and nepal.find("recipient-region") is None
    assert iberred.find("recipient-region").attrib == {"code": "498", "vocabulary": "1", "percentage": "100"}
    for a in (nepal, iberred):
        assert (a.find("sector").get("vocabulary"), a.find("sector").get("code")) == ("1", "15190")
        assert (a.find("tag").get("vocabulary"), a.find("tag").get("code")) == ("3", "10.7")
        assert a.get("budget-not-provided") == "1" and a.find("budget") is None
        assert [p.get("role") for p in a.findall("participating-org")] == ["1", "4", "2"]
    assert nepal.find("activity-status").get("code") == "4" and iberred.find("activity-status").get("code") == "2"
    assert {d.get("type"): d.get("iso-date") for d in nepal.findall("activity-date")} == {
        "1": "2053-03-13",
        "2": "2053-03-13",
        "3": "2053-03-15",
        "4": "2053-03-15",
    }
    assert {d.get("type"): d.get("iso-date") for d in iberred.findall("activity-date")} == {
        "1": "2053-05-08",
        "2": "2053-05-08",
        "3": "2054-02-07",
    }
    sexes = {
        d.get("value"): x.get("value")
        for x in nepal.iter("actual")
        for d in x.findall("dimension")
        if d.get("name") == "sex"
    }
    assert sexes == {"male": "14", "female": "11"}
    assert [c.findtext("narrative") for c in nepal.iter("comment")] == ["excellent"]
    assert iberred.find("result[@type='2']") is None  # no assessment yet
