"""The demo's last table: every figure of DESIGN.md section 10 as the services computed it from the replayed
events, beside the value the report publishes (read from the scenario files' `report:` sections, which the replay
never sends), and what differs and why."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from google.protobuf.message import Message
from rich.table import Table

AREAS = ("Africa", "Asia", "EU Neighbourhood", "Latin America and the Caribbean")
STRATEGIES = "diaspora_and_md_strategies_supported_since_2009"
COUNTRIES = "countries_worked_with_since_2009"


def _n(text: str | int) -> Decimal:
    return Decimal(str(text or 0))


def reference_rows(y: Message, r: Message, h: Message, report: dict[str, Any], before: dict[str, Any]) -> list[tuple]:
    """(figure, computed, the report's, note) for each figure of DESIGN.md section 10."""
    areas = {a.key: a.count for a in y.activities_by_area}
    gender = {s.key: s.share_pct for s in y.experts_by_gender}
    bg = {s.key: s.count for s in y.experts_by_background}
    others = sum(bg.get(k, 0) for k in ("academia", "ngo", "private_consultant"))
    participants = {s.key: s.share_pct for s in y.participants_by_gender}
    changes = {c.figure: c for c in h.changes}
    lac = changes.get("activities: Latin America and the Caribbean")
    activities = changes.get("activities")
    per_year = {x.year: x.count for x in h.activities_per_year}
    west = [d for d in r.deliverables if d.region == "africa_west" and d.kind in ("strategy", "policy")]
    eu, out = r.other_backgrounds_from_europe, r.other_backgrounds_outside_europe
    miles, reported_miles = _n(y.air_miles_per_team_member), Decimal(report["air_miles_per_team_member"])
    rows = [
        ("new requests", y.new_requests, report["new_requests"], ""),
        ("activities", y.activities, report["activities"], ""),
        (
            "  Africa / Asia / EU Neighbourhood / LAC",
            " / ".join(str(areas.get(a, 0)) for a in AREAS),
            " / ".join(str(v) for v in report["activities_by_region"].values()),
            "",
        ),
        ("experts deployed", y.experts_deployed, report["experts_deployed"], ""),
        ("  male / female", f"{gender.get('male')}% / {gender.get('female')}%", "56% / 44%", ""),
        (
            "  EU MS administrations / other / Southern / ICMPD",
            f"{bg.get('eu_ms_administration', 0)} / {others} / {bg.get('southern_administration', 0)} / "
            f"{bg.get('icmpd', 0)}",
            "43 / 29 / 9 / 3",
            "",
        ),
        ("countries and regional organisations benefitted", y.countries_benefitted, report["countries_benefitted"], ""),
        ("participants", f"{y.participants:,}", f"{report['participants']:,}", ""),
        ("  male / female", f"{participants.get('male')}% / {participants.get('female')}%", "56% / 44%", ""),
        ("expert pool", y.expert_pool, report["expert_pool"], ""),
        ("  growth in the year", f"+{y.expert_pool_growth_pct}%", "+15%", ""),
        (
            "air miles per team member",
            f"{miles:,}",
            f"{reported_miles:,}",
            f"{(miles - reported_miles) * 100 / reported_miles:+.2f}%: flights chosen, distances geodesic",
        ),
        ("VERs purchased (Gold Standard, December)", f"{y.vers_purchased:,}", f"{report['vers_purchased']:,}", ""),
        (
            "experts agreeing: peer-to-peer beneficial",
            f"{r.experts_agreeing.share_pct}% ({r.experts_agreeing.agreeing}/{r.experts_agreeing.answers})",
            f"{report['experts_agreeing_peer_to_peer_pct']}%",
            "",
        ),
        (
            "partners rating good or excellent",
            f"{r.partners_good_or_excellent.share_pct}% ({r.partners_good_or_excellent.count})",
            f"{report['partners_good_or_excellent_pct']}%",
            "",
        ),
        (
            "participants: skills enhanced / a difference",
            f"{r.skills_enhanced.share_pct}% / {r.makes_a_difference.share_pct}%",
            f">{report['participants_skills_enhanced_pct_above']}%",
            "",
        ),
        (
            "policy development's share of interventions",
            f"{r.policy_development.share_pct}% ({r.policy_development.count}/{r.interventions})",
            f"{report['policy_development_share_of_interventions_pct']}%",
            "",
        ),
        ("national strategies delivered in West Africa", len(west), 2, ", ".join(d.partner for d in west)),
        ("strategies supported since 2009", h.strategies_supported, before[STRATEGIES], ""),
        (
            "other backgrounds from Europe / outside (UN M49)",
            f"{r.from_europe.share_pct}% / {r.outside_europe.share_pct}% "
            f"({r.from_europe.count} / {r.outside_europe.count})",
            f"{report['other_backgrounds_from_europe_share_pct']}% / "
            f"{report['other_backgrounds_outside_europe_share_pct']}%",
            f"of {others} experts: 63% is not a whole number of them",
        ),
        (
            "  Europe: academia / NGO / private consultants",
            " / ".join(f"{s.share_pct}%" for s in eu),
            " / ".join(f"{v}%" for v in report["other_backgrounds_from_europe_pct"].values()),
            " / ".join(str(s.count) for s in eu) + " experts",
        ),
        (
            "  outside: academia / NGO / private consultants",
            " / ".join(f"{s.share_pct}%" for s in out),
            " / ".join(f"{v}%" for v in report["other_backgrounds_outside_europe_pct"].values()),
            " / ".join(str(s.count) for s in out) + " experts",
        ),
        (
            "activities on 2016",
            f"+{activities.change_pct}% ({activities.value} vs {activities.previous})" if activities else "-",
            f"+{before['activities_change_2017_on_2016_pct']}%",
            "",
        ),
        (
            "Latin America and the Caribbean on 2016",
            f"+{lac.change_pct}% ({lac.value} vs {lac.previous})" if lac else "-",
            f"+{before['lac_change_2017_on_2016_pct_printed']}% (21 vs 6)",
            "the report prints +280%; 21/6 is +250%",
        ),
        ("activities in 2009", per_year.get(2009, 0), before["activities_2009"], ""),
        ("experts deployed since 2009", h.experts_deployed, before["experts_engaged_since_2009"], ""),
        ("countries worked with since 2009", h.partners_served, before[COUNTRIES], "partners served"),
        (
            "distinct nationalities of the experts of 2017",
            len(r.nationalities),
            len(report["expert_countries"]),
            "the report's list omits Rwanda, a Southern administration it names",
        ),
    ]
    return rows


def reference_table(y: Message, r: Message, h: Message, report: dict[str, Any], before: dict[str, Any]) -> Table:
    t = Table("figure", "computed from the events", "the report", "difference", title="DESIGN.md section 10, 2017")
    for figure, computed, reported, note in reference_rows(y, r, h, report, before):
        t.add_row(figure, str(computed), str(reported), note)
    return t


async def rebuild_all(settings: Any) -> int:
    """Every projection the services run, rebuilt from the services' ReadAll beside the live model and swapped
    in (as `mieux projections rebuild --all`); the number of projections."""
    from services.kernel.bluegreen import rebuild_beside
    from services.kernel.db import create_pool
    from services.kernel.eventlog import sources_of
    from services.ops import catalog

    catalog.load_events()
    known = catalog.projections()
    pool = await create_pool(settings.dsn())
    try:
        for _, (_, p) in sorted(known.items()):
            await rebuild_beside(pool, p, sources_of(p, settings, "ops"))
    finally:
        await pool.close()
    return len(known)
