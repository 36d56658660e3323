"""The rest of the report (DESIGN.md section 6), computed at query time from the stats facts like the year
at a glance (queries.py): the results of a year (experts', partners' and participants' views, deliverables,
policy development's share, the GAMM pillars, themes and activity types by region), the origin of the
experts deployed, and the history (each figure's change on the year before; totals since the first year).

An intervention of a year is an action with an activity held (and not cancelled) in the year; its themes
are those its fiche names, or else those of its request.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import asyncpg

from services.actions.events import GAMM_PILLARS, RATINGS
from services.experts.events import PEER_TO_PEER
from services.kernel import reference
from services.stats import origin as m49
from services.stats.queries import Satisfaction, Share, StatsQueries, YearAtAGlance, area_of, pct, shares

POLICY_DEVELOPMENT = "policy_development"
GOOD = ("good", "excellent")
STRATEGY_KINDS = ("strategy", "policy")  # "strategies supported" (DESIGN.md section 6)
OTHER_BACKGROUNDS = ("academia", "ngo", "private_consultant")
YEAR = "BETWEEN make_date($1, 1, 1) AND make_date($1, 12, 31)"


@dataclass
class Origin:
    """Experts deployed in the year with other backgrounds, from Europe (UN M49) and from outside."""

    europe: list[Share] = field(default_factory=list)  # by background
    outside: list[Share] = field(default_factory=list)
    unknown: int = 0  # no nationality known here (yet)

    @property
    def total(self) -> int:
        return sum(s.count for s in (*self.europe, *self.outside)) + self.unknown

    def share(self, where: str) -> Share:
        n = sum(s.count for s in (self.europe if where == m49.EUROPE else self.outside))
        return Share(where, n, pct(n, self.total))


@dataclass
class Results:
    year: int
    experts_agreeing: Satisfaction = field(default_factory=lambda: Satisfaction(PEER_TO_PEER, 0, 0))
    partner_ratings: list[Share] = field(default_factory=list)
    respondents: int = 0
    skills_enhanced: int = 0
    makes_a_difference: int = 0
    feedback_activities: int = 0
    deliverables: list[asyncpg.Record] = field(default_factory=list)  # kind, region, title, action, date
    interventions: int = 0
    policy_development: int = 0
    pillars: list[Share] = field(default_factory=list)  # interventions serving each pillar
    themes_by_region: dict[str, list[Share]] = field(default_factory=dict)  # interventions by theme
    activity_types_by_region: dict[str, list[Share]] = field(default_factory=dict)  # activities held by type
    origin: Origin = field(default_factory=Origin)
    nationalities: list[str] = field(default_factory=list)  # of all the experts deployed in the year

    @property
    def partners_assessing(self) -> int:
        return sum(s.count for s in self.partner_ratings)

    @property
    def partners_good_or_excellent(self) -> Share:
        n = sum(s.count for s in self.partner_ratings if s.key in GOOD)
        return Share("good_or_excellent", n, pct(n, self.partners_assessing))

    @property
    def skills_enhanced_pct(self) -> Decimal:
        return pct(self.skills_enhanced, self.respondents)

    @property
    def makes_a_difference_pct(self) -> Decimal:
        return pct(self.makes_a_difference, self.respondents)

    @property
    def policy_development_pct(self) -> Decimal:
        return pct(self.policy_development, self.interventions)

    def deliverables_by(self, *keys: str) -> dict[tuple[str, ...], int]:
        out: dict[tuple[str, ...], int] = defaultdict(int)
        for d in self.deliverables:
            out[tuple(d[k] for k in keys)] += 1
        return dict(out)


@dataclass(frozen=True)
class Change:
    """A figure of the year beside the year before's: counts change in %, shares in points. A share has no
    value in a year without anything to share out (no evaluation, assessment, feedback or intervention)."""

    figure: str
    value: Decimal | None
    previous: Decimal | None
    is_share: bool = False

    @property
    def change_pct(self) -> Decimal | None:
        if self.is_share or not self.previous or self.value is None:
            return None
        return pct(self.value - self.previous, self.previous)

    @property
    def change_points(self) -> Decimal | None:
        if not self.is_share or self.value is None or self.previous is None:
            return None
        return self.value - self.previous


@dataclass
class History:
    year: int
    first_year: int | None = None
    changes: list[Change] = field(default_factory=list)
    experts_deployed: int = 0  # distinct experts deployed since the first year, to the end of this one
    partners_served: int = 0  # distinct partners with an activity held since the first year
    strategies_supported: int = 0  # deliverables of kind strategy or policy since the first year
    activities_per_year: list[tuple[int, int]] = field(default_factory=list)
    requests_per_year: list[tuple[int, int]] = field(default_factory=list)


class ResultsQueries:
    """The queries of the results and the history over the stats facts in `schema` (StatsQueries' too)."""

    def __init__(self, stats: StatsQueries) -> None:
        self.stats = stats
        self.s = stats.s

    def _held(self) -> str:
        """Activities held in year $1 and not cancelled, with their action's region."""
        s = self.s
        return f"""SELECT h.activity_id, h.action_code, h.activity_type, h.partner,
                coalesce(a.region, h.region) AS region
            FROM {s}.activities_held h LEFT JOIN {s}.actions a USING (action_code)
            WHERE h.starts_on {YEAR}
              AND NOT EXISTS (SELECT 1 FROM {s}.activities_cancelled c WHERE c.activity_id = h.activity_id)"""

    def _interventions(self) -> str:
        """The interventions of year $1: actions with an activity held in it, with their region, themes and
        GAMM pillars."""
        return f"""SELECT h.action_code, min(h.region) AS region,
                coalesce(nullif(t.fiche_themes, '{{}}'), t.opened_themes, '{{}}') AS themes,
                coalesce(t.pillars, '{{}}') AS pillars
            FROM ({self._held()}) h LEFT JOIN {self.s}.action_themes t USING (action_code)
            GROUP BY h.action_code, t.fiche_themes, t.opened_themes, t.pillars"""

    async def results(self, year: int) -> Results:
        s = self.s
        r = Results(year)
        async with self.stats.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            row = await conn.fetchrow(
                f"""SELECT count(*) FILTER (WHERE score >= 4) AS agreeing, count(*) AS answers
                FROM {s}.evaluation_answers WHERE question = $2 AND submitted_on {YEAR}""",
                year,
                PEER_TO_PEER,
            )
            r.experts_agreeing = Satisfaction(PEER_TO_PEER, row["agreeing"], row["answers"])
            ratings = {
                x["rating"]: x["n"]
                for x in await conn.fetch(
                    f"SELECT rating, count(*) AS n FROM {s}.assessments WHERE submitted_on {YEAR} GROUP BY 1", year
                )
            }
            r.partner_ratings = shares(ratings, RATINGS)
            fb = await conn.fetchrow(
                f"""SELECT count(*) AS activities, coalesce(sum(respondents), 0) AS respondents,
                    coalesce(sum(skills_enhanced), 0) AS skills, coalesce(sum(makes_a_difference), 0) AS difference
                FROM {s}.feedback f WHERE f.activity_starts_on {YEAR}
                  AND NOT EXISTS (SELECT 1 FROM {s}.activities_cancelled c WHERE c.activity_id = f.activity_id)""",
                year,
            )
            r.feedback_activities, r.respondents = fb["activities"], fb["respondents"]
            r.skills_enhanced, r.makes_a_difference = fb["skills"], fb["difference"]
            r.deliverables = await conn.fetch(
                f"""SELECT deliverable_id, action_code, kind, title, delivered_on, partner, region
                FROM {s}.deliverables WHERE delivered_on {YEAR} ORDER BY delivered_on, deliverable_id""",
                year,
            )
            interventions = await conn.fetch(self._interventions(), year)
            await self._interventions_into(r, interventions)
            types: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
            for h in await conn.fetch(self._held(), year):
                types[h["region"]][h["activity_type"]] += 1
            r.activity_types_by_region = {
                region: shares(dict(types[region]), tuple(reference.activity_types()))
                for region in _regions_in_order(types)
            }
            await self._origin_into(r, conn, year)
        return r

    async def _interventions_into(self, r: Results, interventions: list[asyncpg.Record]) -> None:
        r.interventions = len(interventions)
        r.policy_development = sum(1 for i in interventions if POLICY_DEVELOPMENT in i["themes"])
        pillars: dict[str, int] = defaultdict(int)
        themes: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for i in interventions:
            for p in i["pillars"]:
                pillars[p] += 1
            for t in i["themes"]:
                themes[i["region"]][t] += 1
        r.pillars = shares(dict(pillars), tuple(GAMM_PILLARS), total=r.interventions)
        r.themes_by_region = {
            region: [x for x in shares(dict(themes[region]), (), total=_count(interventions, region)) if x.count]
            for region in _regions_in_order(themes)
        }

    async def _origin_into(self, r: Results, conn: asyncpg.Connection, year: int) -> None:
        """Experts deployed in the year: the other backgrounds' origin, and every nationality."""
        deployed = await conn.fetch(
            f"""SELECT DISTINCT d.expert_id, coalesce(nullif(e.background, ''), 'unknown') AS background,
                coalesce(nullif(n.nationality, ''), '') AS nationality
            FROM ({self.stats._deployed()}) d LEFT JOIN {self.s}.experts e USING (expert_id)
            LEFT JOIN {self.s}.nationalities n USING (expert_id)""",
            year,
        )
        counts: dict[str, dict[str, int]] = {m49.EUROPE: defaultdict(int), m49.OUTSIDE: defaultdict(int)}
        for d in deployed:
            if d["background"] not in OTHER_BACKGROUNDS:
                continue
            if not d["nationality"]:
                r.origin.unknown += 1
                continue
            counts[m49.origin(d["nationality"])][d["background"]] += 1
        r.origin.europe = shares(dict(counts[m49.EUROPE]), OTHER_BACKGROUNDS)
        r.origin.outside = shares(dict(counts[m49.OUTSIDE]), OTHER_BACKGROUNDS)
        r.nationalities = sorted({d["nationality"] for d in deployed if d["nationality"]})

    # --- the history ---

    async def history(self, year: int) -> History:
        """Each figure's change on the year before, and the totals from the first year with any fact to the
        end of `year`."""
        s, end = self.s, "make_date($1, 12, 31)"
        h = History(year)
        years = [y for y in await self.stats.years() if y <= year]
        if not years:
            return h
        first = h.first_year = years[0]
        now, before = await self.stats.year_at_a_glance(year), await self.stats.year_at_a_glance(year - 1)
        h.changes = changes(now, before, await self.results(year), await self.results(year - 1))
        not_cancelled = f"NOT EXISTS (SELECT 1 FROM {s}.activities_cancelled c WHERE c.activity_id = h.activity_id)"
        async with self.stats.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            h.experts_deployed = await conn.fetchval(
                f"""SELECT count(DISTINCT d.expert_id) FROM {s}.deployments d
                WHERE d.starts_on <= {end}
                  AND NOT EXISTS (SELECT 1 FROM {s}.deployments_cancelled c WHERE c.deployment_id = d.deployment_id)
                  AND NOT EXISTS (SELECT 1 FROM {s}.activities_cancelled c WHERE c.activity_id = d.activity_id)""",
                year,
            )
            h.partners_served = await conn.fetchval(
                f"""SELECT count(DISTINCT coalesce(a.partner, h.partner)) FROM {s}.activities_held h
                LEFT JOIN {s}.actions a USING (action_code) WHERE h.starts_on <= {end} AND {not_cancelled}""",
                year,
            )
            h.strategies_supported = await conn.fetchval(
                f"SELECT count(*) FROM {s}.deliverables WHERE kind = ANY($2::text[]) AND delivered_on <= {end}",
                year,
                list(STRATEGY_KINDS),
            )
            per_year = {
                r["y"]: r["n"]
                for r in await conn.fetch(
                    f"""SELECT extract(year FROM h.starts_on)::int AS y, count(*) AS n FROM {s}.activities_held h
                    WHERE h.starts_on <= {end} AND {not_cancelled} GROUP BY 1""",
                    year,
                )
            }
        h.activities_per_year = [(y, per_year.get(y, 0)) for y in range(first, year + 1)]
        requests = dict(await self.stats.requests_per_year())
        h.requests_per_year = [(y, requests.get(y, 0)) for y in range(first, year + 1)]
        return h


def _regions_in_order(seen: dict[str, Any]) -> list[str]:
    known = list(reference.regions())
    return [*(r for r in known if r in seen), *sorted(r for r in seen if r not in known)]


def _count(interventions: list[asyncpg.Record], region: str) -> int:
    return sum(1 for i in interventions if i["region"] == region)


def changes(now: YearAtAGlance, before: YearAtAGlance, r: Results, rb: Results) -> list[Change]:
    """Each figure of the year at a glance and of the results beside the year before's."""
    out = [
        Change("new_requests", Decimal(now.new_requests), Decimal(before.new_requests)),
        Change("activities", Decimal(now.activities), Decimal(before.activities)),
    ]
    areas_before = {a.key: a.count for a in before.activities_by_area}
    for a in now.activities_by_area:
        out.append(Change(f"activities: {a.key}", Decimal(a.count), Decimal(areas_before.get(a.key, 0))))
    for region, n in now.activities_by_region.items():
        if area_of(region) != reference.regions().get(region, region):  # a region inside an area: shown too
            out.append(Change(f"activities: {region}", Decimal(n), Decimal(before.activities_by_region.get(region, 0))))
    out += [
        Change("experts_deployed", Decimal(now.experts_deployed), Decimal(before.experts_deployed)),
        Change("countries_benefitted", Decimal(now.countries_benefitted), Decimal(before.countries_benefitted)),
        Change("participants", Decimal(now.participants), Decimal(before.participants)),
        Change("expert_pool", Decimal(now.expert_pool), Decimal(before.expert_pool)),
        Change("air_miles_per_team_member", now.air_miles_per_team_member, before.air_miles_per_team_member),
        Change("footprint_kg_co2e", now.footprint_kg_co2e, before.footprint_kg_co2e),
        Change("vers_purchased", Decimal(now.vers_purchased), Decimal(before.vers_purchased)),
        Change("interventions", Decimal(r.interventions), Decimal(rb.interventions)),
        Change("deliverables", Decimal(len(r.deliverables)), Decimal(len(rb.deliverables))),
    ]
    shares = (
        ("experts_agreeing_pct", lambda x: x.experts_agreeing.share_pct, lambda x: x.experts_agreeing.answers),
        ("partners_good_or_excellent_pct", lambda x: x.partners_good_or_excellent.share_pct, _assessing),
        ("participants_skills_enhanced_pct", lambda x: x.skills_enhanced_pct, lambda x: x.respondents),
        ("policy_development_pct", lambda x: x.policy_development_pct, lambda x: x.interventions),
    )
    for name, share, whole in shares:
        out.append(Change(name, share(r) if whole(r) else None, share(rb) if whole(rb) else None, True))
    return out


def _assessing(r: Results) -> int:
    return r.partners_assessing
