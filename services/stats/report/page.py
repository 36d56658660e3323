"""The annual report page: what the APIs answer for a year, laid out as the MIEUX annual report presents it (the
year at a glance, region by region, the years since the first, the experts, the participants, the results, the
carbon footprint and offsets, the change on the year before, the actions), as one self-contained HTML page.

`gather` asks the APIs (this service's own RPCs, and the actions, logistics and carbon services' through
`collaborators`); `render` only lays their answers out: every figure on the page is a value an API gave, shown
as given (a percentage included), formatted with thousands separators. Nothing is added up or divided here.
"""

from __future__ import annotations

import asyncio
import calendar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from mieux.actions.v1 import actions_pb2
from mieux.carbon.v1 import carbon_pb2
from mieux.logistics.v1 import logistics_pb2
from mieux.stats.v1 import stats_pb2

from services.kernel import reference
from services.stats.report.charts import Point, fmt, hbars, vbars

TEMPLATES = Path(__file__).resolve().parents[1] / "templates"


class StatsReads(Protocol):
    """This service's own queries, as its RPCs answer them."""

    async def year_at_a_glance(self, year: int) -> stats_pb2.YearAtAGlance: ...
    async def region_report(self, year: int) -> stats_pb2.RegionReport: ...
    async def results(self, year: int) -> stats_pb2.Results: ...
    async def history(self, year: int) -> stats_pb2.History: ...


class OtherServices(Protocol):
    async def actions_active_in(self, year: int) -> list[actions_pb2.Action]: ...
    async def air_miles(self, year: int) -> logistics_pb2.AirMilesPerTeamMember: ...
    async def footprint(self, year: int) -> carbon_pb2.Footprint: ...
    async def footprint_by_month(self, year: int) -> carbon_pb2.FootprintByMonth: ...
    async def ledger(self, year: int) -> carbon_pb2.OffsetLedger: ...


@dataclass
class Sources:
    """Every answer the page is made of."""

    glance: stats_pb2.YearAtAGlance
    regions: stats_pb2.RegionReport
    results: stats_pb2.Results
    history: stats_pb2.History
    actions: list[actions_pb2.Action]
    air_miles: logistics_pb2.AirMilesPerTeamMember
    footprint: carbon_pb2.Footprint
    by_month: carbon_pb2.FootprintByMonth
    ledger: carbon_pb2.OffsetLedger
    generated_at: datetime = field(default_factory=lambda: datetime.now(UTC))


async def gather(year: int, stats: StatsReads, others: OtherServices) -> Sources:
    answers = await asyncio.gather(
        stats.year_at_a_glance(year),
        stats.region_report(year),
        stats.results(year),
        stats.history(year),
        others.actions_active_in(year),
        others.air_miles(year),
        others.footprint(year),
        others.footprint_by_month(year),
        others.ledger(year),
    )
    return Sources(*answers)


def label(key: str) -> str:
    """A key of the API as words: reference.yaml's name where it has one, else the key unsnaked."""
    names = {**reference.expert_backgrounds(), **reference.themes(), **reference.activity_types()}
    return names.get(key) or key.replace("_", " ").capitalize()


def country(code: str) -> str:
    """A partner's or a nationality's code as its name (a regional organisation's code stays as it is)."""
    return reference.country_name(code) or code


CHANGES = {
    "new_requests": "new requests",
    "activities": "activities organised",
    "experts_deployed": "experts deployed",
    "countries_benefitted": "countries and regional organisations benefitted",
    "participants": "participants",
    "expert_pool": "expert pool",
    "air_miles_per_team_member": "air miles per team member",
    "footprint_kg_co2e": "footprint (kg CO2e)",
    "vers_purchased": "VERs purchased",
    "interventions": "interventions",
    "deliverables": "deliverables",
    "experts_agreeing_pct": "experts agreeing the peer-to-peer approach was beneficial (%)",
    "partners_good_or_excellent_pct": "partners rating their experience good or excellent (%)",
    "participants_skills_enhanced_pct": "participants agreeing their skills were enhanced (%)",
    "policy_development_pct": "interventions that are policy development (%)",
}


def change_label(figure: str) -> str:
    """A figure of GetHistory's changes as words ("activities: africa_west" -> "activities in Africa (West)")."""
    if figure.startswith("activities: "):
        where = figure.removeprefix("activities: ")
        return f"activities in {reference.regions().get(where, where)}"
    return CHANGES.get(figure, figure.replace("_", " "))


@dataclass
class Figure:
    """A chart and the table of its numbers beside it."""

    id: str
    title: str
    svg: Any
    head: tuple[str, ...]
    rows: list[tuple[Any, ...]]  # each row: the point's label, then its values as given

    @property
    def points(self) -> int:
        return len(self.rows)


def share_points(items: Any, labels: Any = label) -> list[Point]:
    return [Point(labels(s.key), s.count, s.key) for s in items]


def share_figure(fid: str, title: str, items: Any, what: str, labels: Any = label) -> Figure:
    points = share_points(items, labels)
    rows = [(labels(s.key), fmt(s.count), f"{s.share_pct}%") for s in items]
    return Figure(fid, title, hbars(fid, title, points, colour_each=True), ("", what, "share"), rows)


def figures(s: Sources) -> dict[str, Figure]:
    g, r, h, y = s.glance, s.results, s.history, s.glance.year
    region_names = {row.region: row.name for row in s.regions.regions}
    out: dict[str, Figure] = {}

    def add(f: Figure) -> None:
        out[f.id] = f

    points = [Point(x.name, x.count, x.region) for x in g.activities_by_region]
    add(
        Figure(
            "activities-by-region",
            f"Activities organised in {y}, by region",
            hbars("activities-by-region", f"Activities organised in {y}, by region", points),
            ("region", "activities"),
            [(p.label, fmt(p.value)) for p in points],
        )
    )
    for fid, title, series in (
        ("requests-per-year", f"Requests received per year, {h.first_year or y}-{y}", h.requests_per_year),
        ("activities-per-year", f"Activities organised per year, {h.first_year or y}-{y}", h.activities_per_year),
    ):
        points = [Point(str(x.year), x.count, str(x.year)) for x in series]
        add(Figure(fid, title, vbars(fid, title, points), ("year", "count"), [(p.label, fmt(p.value)) for p in points]))
    add(share_figure("experts-by-gender", f"Experts deployed in {y}, by gender", g.experts_by_gender, "experts"))
    add(
        share_figure(
            "experts-by-background", f"Experts deployed in {y}, by background", g.experts_by_background, "experts"
        )
    )
    add(
        share_figure(
            "participants-by-gender", f"Participants in {y}, by gender", g.participants_by_gender, "participants"
        )
    )
    add(share_figure("partner-ratings", f"Partners' assessments in {y}, by rating", r.partner_ratings, "partners"))
    add(share_figure("gamm-pillars", f"Interventions of {y} serving each GAMM pillar", r.pillars, "interventions"))
    points = [Point(x.name, x.count, x.region) for x in r.deliverables_by_region]
    add(
        Figure(
            "deliverables-by-region",
            f"Deliverables in {y}, by region",
            hbars("deliverables-by-region", f"Deliverables in {y}, by region", points),
            ("region", "deliverables"),
            [(p.label, fmt(p.value)) for p in points],
        )
    )
    months = [Point(calendar.month_abbr[m.month], m.kg_co2e, str(m.month)) for m in s.by_month.months]
    add(
        Figure(
            "footprint-by-month",
            f"Flights' footprint in {y} by month (kg CO2e)",
            vbars("footprint-by-month", f"Flights' footprint in {y} by month (kg CO2e)", months),
            ("month", "flight legs", "kg CO2e"),
            [(calendar.month_name[m.month], fmt(m.legs), fmt(m.kg_co2e)) for m in s.by_month.months],
        )
    )
    by_region = [
        Point(region_names.get(k, k) or "no action (flights outside an action)", v, k)
        for k, v in sorted(s.footprint.kg_co2e_by_region.items(), key=lambda kv: _region_order(kv[0], region_names))
    ]
    add(
        Figure(
            "footprint-by-region",
            f"Flights' footprint in {y} by region (kg CO2e)",
            hbars("footprint-by-region", f"Flights' footprint in {y} by region (kg CO2e)", by_region),
            ("region", "kg CO2e"),
            [(p.label, fmt(p.value)) for p in by_region],
        )
    )
    return out


def _region_order(region: str, names: dict[str, str]) -> tuple[int, str]:
    order = list(names)
    return (order.index(region), region) if region in order else (len(order), region)


def env() -> Environment:
    e = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(("html", "j2")),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    e.filters["n"] = fmt
    e.filters["label"] = label
    e.filters["country"] = country
    e.filters["change_label"] = change_label
    e.globals["country_name"] = country
    return e


def render(s: Sources) -> str:
    """The page, from the answers alone."""
    return (
        env()
        .get_template("report.html.j2")
        .render(
            s=s,
            g=s.glance,
            r=s.results,
            h=s.history,
            fig=figures(s),
            areas={a.key: a for a in s.glance.activities_by_area},
            region_names={row.region: row.name for row in s.regions.regions},
            generated=s.generated_at.strftime("%Y-%m-%d %H:%M UTC"),
        )
    )


async def build(year: int, stats: StatsReads, others: OtherServices) -> str:
    return render(await gather(year, stats, others))
