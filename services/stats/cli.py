"""`mieux stats ...`: the annual report's figures, read over gRPC from the stats service.

mieux stats year 2017 [--json]     the year at a glance (table; JSON adds the results, origin and history)
mieux stats results 2017 [--json]  the results, the experts' origin, the change on 2016 and the totals since
                                   the first year
mieux stats regions 2017 [--json]  activities, partners, participants and experts by region and area
mieux stats requests-per-year      requests received per year since the first
mieux stats years                  the years with figures
"""

from __future__ import annotations

import argparse
import asyncio
import json
from decimal import Decimal
from typing import Any

from google.protobuf.message import Message
from rich.console import Console
from rich.table import Table

from services.kernel.settings import Settings

console = Console()


def number(text: str) -> int | float | None:
    """A decimal string of the API as a JSON number (exactly its digits); empty is null."""
    if text == "":
        return None
    d = Decimal(text)
    return int(d) if d == d.to_integral_value() and "." not in text else float(d)


def _shares(items: Any) -> dict[str, int]:
    return {s.key: s.count for s in items}


def _share_pcts(items: Any) -> dict[str, float | int | None]:
    return {s.key: number(s.share_pct) for s in items}


def year_json(y: Message) -> dict[str, Any]:
    """The year at a glance as `mieux stats year Y --json` prints it."""
    return {
        "year": y.year,
        "new_requests": y.new_requests,
        "activities": y.activities,
        "activities_by_region": {r.region: r.count for r in y.activities_by_region},
        "activities_by_region_name": {r.name: r.count for r in y.activities_by_region},
        "activities_by_area": _shares(y.activities_by_area),
        "experts_deployed": y.experts_deployed,
        "experts_by_gender": _shares(y.experts_by_gender),
        "experts_by_gender_pct": _share_pcts(y.experts_by_gender),
        "experts_by_background": _shares(y.experts_by_background),
        "countries_benefitted": y.countries_benefitted,
        "participants": y.participants,
        "participants_by_gender": _shares(y.participants_by_gender),
        "participants_by_gender_pct": _share_pcts(y.participants_by_gender),
        "expert_pool": y.expert_pool,
        "expert_pool_previous": y.expert_pool_previous,
        "expert_pool_growth_pct": number(y.expert_pool_growth_pct),
        "air_miles_per_team_member": number(y.air_miles_per_team_member),
        "team_statute_miles": number(y.team_statute_miles),
        "team_members": y.team_members,
        "footprint_kg_co2e": number(y.footprint_kg_co2e),
        "vers_purchased": y.vers_purchased,
        "vers_retired": y.vers_retired,
        "satisfaction": {
            s.question: {"agreeing": s.agreeing, "answers": s.answers, "share_pct": number(s.share_pct)}
            for s in y.satisfaction
        },
    }


def _pct_list(items: Any) -> str:
    return ", ".join(f"{s.key} {s.count} ({s.share_pct}%)" for s in items if s.count) or "-"


def year_table(y: Message) -> Table:
    t = Table("figure", "value", title=f"MIEUX {y.year} at a glance")
    t.add_row("new requests", str(y.new_requests))
    t.add_row("activities organised", str(y.activities))
    areas = {a.key: a.count for a in y.activities_by_area}
    shown: set[str] = set()
    for r in y.activities_by_region:
        if r.area != r.name and r.area not in shown:  # an area of several regions: its sum first
            shown.add(r.area)
            t.add_row(f"  {r.area}", str(areas.get(r.area, 0)))
        t.add_row(f"    {r.name}" if r.area != r.name else f"  {r.name}", str(r.count))
    t.add_row("experts deployed", str(y.experts_deployed))
    t.add_row("  by gender", _pct_list(y.experts_by_gender))
    t.add_row("  by background", _pct_list(y.experts_by_background))
    t.add_row("countries and regional organisations benefitted", str(y.countries_benefitted))
    t.add_row("participants", f"{y.participants:,}")
    t.add_row("  by gender", _pct_list(y.participants_by_gender))
    growth = f"{y.expert_pool_growth_pct}%" if y.expert_pool_growth_pct else "n/a (no pool the year before)"
    t.add_row("expert pool at the end of the year", f"{y.expert_pool:,} (previous {y.expert_pool_previous:,})")
    t.add_row("  growth in the year", growth)
    t.add_row(
        "air miles per team member",
        f"{Decimal(y.air_miles_per_team_member or 0):,} ({y.team_statute_miles} mi / {y.team_members} members)",
    )
    t.add_row("footprint kg CO2e", y.footprint_kg_co2e)
    t.add_row("VERs purchased / retired against the year", f"{y.vers_purchased:,} / {y.vers_retired:,}")
    for s in y.satisfaction:
        t.add_row(f"  satisfaction: {s.question}", f"{s.share_pct}% agree ({s.agreeing}/{s.answers})")
    return t


def regions_table(r: Message) -> Table:
    t = Table("region", "activities", "partners", "participants", "male", "female", "experts", title=f"{r.year}")
    areas = {a.area: a for a in r.areas}
    shown: set[str] = set()

    def add(row: Any, label: str) -> None:
        t.add_row(
            label,
            str(row.activities),
            str(row.countries_benefitted),
            f"{row.participants:,}",
            str(row.participants_male),
            str(row.participants_female),
            str(row.experts_deployed),
        )

    for row in r.regions:
        if row.area != row.name and row.area not in shown:
            shown.add(row.area)
            add(areas[row.area], row.area)
        add(row, f"  {row.name}" if row.area != row.name else row.name)
    return t


async def _run(args: argparse.Namespace) -> int:
    from services.stats.client import StatsClient

    async with StatsClient.connect(Settings()) as c:
        if args.stats_command == "year":
            y = await c.year_at_a_glance(args.year)
            if args.json:
                from services.stats.results_cli import results_json

                extra = results_json(await c.results(args.year), await c.history(args.year))
                print(json.dumps({**year_json(y), **extra}, indent=2))
            else:
                console.print(year_table(y))
        elif args.stats_command == "results":
            from services.stats.results_cli import results_json, results_tables

            r, h = await c.results(args.year), await c.history(args.year)
            if args.json:
                print(json.dumps(results_json(r, h), indent=2))
            else:
                for t in results_tables(r, h):
                    console.print(t)
        elif args.stats_command == "regions":
            r = await c.region_report(args.year)
            if args.json:
                from google.protobuf.json_format import MessageToDict

                print(json.dumps(MessageToDict(r, preserving_proto_field_name=True), indent=2))
            else:
                console.print(regions_table(r))
        elif args.stats_command == "requests-per-year":
            rows = await c.requests_per_year()
            t = Table("year", "requests received", title="Requests per year")
            for year, n in rows:
                t.add_row(str(year), str(n))
            console.print(t)
        else:
            console.print(" ".join(str(y) for y in await c.years()) or "no figures yet")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `mieux stats ...` to the `mieux` command."""
    st = sub.add_parser("stats", help="the annual report's figures (read side)")
    sts = st.add_subparsers(dest="stats_command", required=True)
    y = sts.add_parser("year", help="the year at a glance")
    y.add_argument("year", type=int)
    y.add_argument("--json", action="store_true", help="print JSON instead of a table")
    res = sts.add_parser("results", help="the results, the experts' origin, the change on the year before")
    res.add_argument("year", type=int)
    res.add_argument("--json", action="store_true")
    r = sts.add_parser("regions", help="the figures by region and area")
    r.add_argument("year", type=int)
    r.add_argument("--json", action="store_true")
    sts.add_parser("requests-per-year", help="requests received per year since the first")
    sts.add_parser("years", help="the years with figures")
    st.set_defaults(fn=lambda args: asyncio.run(_run(args)))
