"""The results, the expert origin and the history of a year as `mieux stats results Y` prints them (tables),
and as `mieux stats year Y --json` adds them to the year at a glance (JSON)."""

from __future__ import annotations

from typing import Any

from google.protobuf.message import Message
from rich.table import Table

from services.stats.cli import number


def _share(s: Any, of: str = "") -> dict[str, Any]:
    out = {"count": s.count, "share_pct": number(s.share_pct)}
    if of:
        out["of"] = of
    return out


def _by_region(items: Any) -> dict[str, dict[str, int]]:
    return {r.region: {s.key: s.count for s in r.shares if s.count} for r in items}


def results_json(r: Message, h: Message) -> dict[str, Any]:
    """The results, the expert origin and the history, as `mieux stats year Y --json` adds them."""
    kinds: dict[str, dict[str, int]] = {}
    for d in r.deliverables_by_kind_and_region:
        kinds.setdefault(d.kind, {})[d.region] = d.count
    europe, outside = r.other_backgrounds_from_europe, r.other_backgrounds_outside_europe
    return {
        "results": {
            "experts_agreeing_peer_to_peer": {
                "agreeing": r.experts_agreeing.agreeing,
                "answers": r.experts_agreeing.answers,
                "share_pct": number(r.experts_agreeing.share_pct),
            },
            "partner_ratings": {s.key: s.count for s in r.partner_ratings},
            "partners_good_or_excellent": {
                "count": r.partners_good_or_excellent.count,
                "assessments": sum(s.count for s in r.partner_ratings),
                "share_pct": number(r.partners_good_or_excellent.share_pct),
            },
            "participants_feedback": {
                "activities": r.feedback_activities,
                "respondents": r.respondents,
                "skills_enhanced": r.skills_enhanced.count,
                "skills_enhanced_pct": number(r.skills_enhanced.share_pct),
                "makes_a_difference": r.makes_a_difference.count,
                "makes_a_difference_pct": number(r.makes_a_difference.share_pct),
            },
            "deliverables": [
                {
                    "id": d.deliverable_id,
                    "kind": d.kind,
                    "title": d.title,
                    "delivered_on": d.delivered_on,
                    "partner": d.partner,
                    "region": d.region,
                }
                for d in r.deliverables
            ],
            "deliverables_by_kind_and_region": kinds,
            "interventions": r.interventions,
            "policy_development": _share(r.policy_development),
            "gamm_pillars": {s.key: _share(s) for s in r.pillars},
            "themes_by_region": _by_region(r.themes_by_region),
            "activity_types_by_region": _by_region(r.activity_types_by_region),
        },
        "expert_origin": {
            "other_backgrounds": r.from_europe.count + r.outside_europe.count + r.origin_unknown,
            "from_europe": {
                **_share(r.from_europe),
                "by_background": {s.key: s.count for s in europe},
                "by_background_pct": {s.key: number(s.share_pct) for s in europe},
            },
            "outside_europe": {
                **_share(r.outside_europe),
                "by_background": {s.key: s.count for s in outside},
                "by_background_pct": {s.key: number(s.share_pct) for s in outside},
            },
            "unknown": r.origin_unknown,
            "distinct_nationalities": len(r.nationalities),
            "nationalities": list(r.nationalities),
        },
        "history": {
            "first_year": h.first_year or None,
            "change_on_previous_year": {
                c.figure: {
                    "value": number(c.value),
                    "previous": number(c.previous),
                    # a share (a figure named ..._pct) changes in points, a count in %
                    **(
                        {"change_points": number(c.change_points)}
                        if c.figure.endswith("_pct")
                        else {"change_pct": number(c.change_pct)}
                    ),
                }
                for c in h.changes
            },
            "since_first_year": {
                "experts_deployed": h.experts_deployed,
                "partners_served": h.partners_served,
                "strategies_supported": h.strategies_supported,
                "activities_per_year": {str(y.year): y.count for y in h.activities_per_year},
                "requests_per_year": {str(y.year): y.count for y in h.requests_per_year},
            },
        },
    }


def _pcts(items: Any) -> str:
    return ", ".join(f"{s.key} {s.count} ({s.share_pct}%)" for s in items if s.count) or "-"


def signed(text: str) -> str:
    """A decimal string with its sign: +16.4, -3.0, 0."""
    return text if text.startswith("-") or number(text) == 0 else f"+{text}"


def results_tables(r: Message, h: Message) -> list[Table]:
    t = Table("result", "value", title=f"MIEUX {r.year}: results")
    e = r.experts_agreeing
    t.add_row("experts agreeing the peer-to-peer approach was beneficial", f"{e.share_pct}% ({e.agreeing}/{e.answers})")
    g = r.partners_good_or_excellent
    assessed = sum(s.count for s in r.partner_ratings)
    t.add_row("partners rating their experience good or excellent", f"{g.share_pct}% ({g.count}/{assessed})")
    t.add_row("  by rating", _pcts(r.partner_ratings))
    s, d = r.skills_enhanced, r.makes_a_difference
    t.add_row("participants agreeing their skills were enhanced", f"{s.share_pct}% ({s.count}/{r.respondents})")
    t.add_row("  ... that it will make a difference in their work", f"{d.share_pct}% ({d.count}/{r.respondents})")
    t.add_row("  feedback of activities held", str(r.feedback_activities))
    p = r.policy_development
    t.add_row("interventions (actions with an activity held)", str(r.interventions))
    t.add_row("  policy development", f"{p.share_pct}% ({p.count}/{r.interventions})")
    t.add_row("  GAMM pillars", _pcts(r.pillars))
    t.add_row("deliverables", str(len(r.deliverables)))
    for x in r.deliverables:
        t.add_row(f"  {x.kind} ({x.region}, {x.partner})", x.title)
    o = Table("other backgrounds", "experts", "academia / NGO / private consultants", title="experts' origin")
    for label, share, by in (
        ("from Europe (UN M49)", r.from_europe, r.other_backgrounds_from_europe),
        ("from outside Europe", r.outside_europe, r.other_backgrounds_outside_europe),
    ):
        o.add_row(label, f"{share.count} ({share.share_pct}%)", " / ".join(f"{b.count} ({b.share_pct}%)" for b in by))
    o.add_row("distinct nationalities of all experts deployed", str(len(r.nationalities)), " ".join(r.nationalities))
    by_region = Table("region", "themes of its interventions", "activity types held", title="by region")
    types = {x.region: x for x in r.activity_types_by_region}
    for x in r.themes_by_region:
        kinds = types.get(x.region)
        by_region.add_row(x.name, _pcts(x.shares), _pcts(kinds.shares) if kinds else "-")
    c = Table("figure", str(h.year), str(h.year - 1), "change", title="change on the previous year")
    for ch in h.changes:
        change = f"{signed(ch.change_points)} points" if ch.change_points else "-"
        if ch.change_pct:
            change = f"{signed(ch.change_pct)}%"
        c.add_row(ch.figure, ch.value or "-", ch.previous or "-", change)
    since = Table("since", "value", title=f"since {h.first_year or '-'}")
    since.add_row("experts deployed", str(h.experts_deployed))
    since.add_row("partners served (countries and regional organisations)", str(h.partners_served))
    since.add_row("strategies and policies supported", str(h.strategies_supported))
    since.add_row("activities per year", ", ".join(f"{y.year} {y.count}" for y in h.activities_per_year))
    since.add_row("requests per year", ", ".join(f"{y.year} {y.count}" for y in h.requests_per_year))
    return [t, o, by_region, c, since]
