"""The figures of DESIGN.md section 6, computed at query time from the stats facts (projections.py).

Nothing here is stored between queries: each figure is SQL over the facts (the expert pool over its changes
by day, which the projection keeps as a function of the experts' rows: expert_pool.py), so the order events
arrived in (or a rebuild's order) cannot change it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal

from pydantic import BaseModel, ConfigDict, Field

from services.kernel import reference
from services.kernel.db import Pool
from services.stats.base import SCHEMA

ONE_DECIMAL = Decimal("0.1")
MILLI = Decimal("0.001")
PARTICIPANT_GENDERS = ("male", "female", "other")


class YearQuery(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    year: int = Field(ge=1900, le=9999)


def area_of(region: str) -> str:
    """The report's area of a region: its name without the part in brackets, so "Africa (West)" and
    "Africa (Central, Eastern and Southern)" are both "Africa"."""
    name = reference.regions().get(region, region)
    return name.split(" (")[0].strip()


def region_name(region: str) -> str:
    return reference.regions().get(region, region)


def pct(part: int | Decimal, whole: int | Decimal) -> Decimal:
    """part / whole in %, one decimal (half up); 0 when the whole is 0."""
    if not whole:
        return Decimal("0.0")
    return (Decimal(part) * 100 / Decimal(whole)).quantize(ONE_DECIMAL, ROUND_HALF_UP)


@dataclass(frozen=True)
class Share:
    key: str
    count: int
    share_pct: Decimal


def shares(counts: dict[str, int], keys: tuple[str, ...] = (), total: int | None = None) -> list[Share]:
    """`keys` first (zeros included), then any other key seen, sorted; shares of `total` (default: the sum)."""
    whole = sum(counts.values()) if total is None else total
    order = [*keys, *sorted(k for k in counts if k not in keys)]
    return [Share(k, counts.get(k, 0), pct(counts.get(k, 0), whole)) for k in order]


@dataclass(frozen=True)
class Satisfaction:
    question: str
    agreeing: int
    answers: int

    @property
    def share_pct(self) -> Decimal:
        return pct(self.agreeing, self.answers)


@dataclass
class YearAtAGlance:
    year: int
    new_requests: int = 0
    activities: int = 0
    activities_by_region: dict[str, int] = field(default_factory=dict)
    experts_deployed: int = 0
    experts_by_gender: list[Share] = field(default_factory=list)
    experts_by_background: list[Share] = field(default_factory=list)
    countries_benefitted: int = 0
    participants: int = 0
    participants_by_gender: list[Share] = field(default_factory=list)
    expert_pool: int = 0
    expert_pool_previous: int = 0
    team_statute_miles: Decimal = Decimal(0)
    team_members: int = 0
    footprint_kg_co2e: Decimal = Decimal(0)
    vers_purchased: int = 0
    vers_retired: int = 0
    satisfaction: list[Satisfaction] = field(default_factory=list)

    @property
    def expert_pool_growth_pct(self) -> Decimal | None:
        if not self.expert_pool_previous:
            return None
        return pct(self.expert_pool - self.expert_pool_previous, self.expert_pool_previous)

    @property
    def air_miles_per_team_member(self) -> Decimal:
        if not self.team_members:
            return Decimal(0)
        return (self.team_statute_miles / self.team_members).quantize(Decimal(1), ROUND_HALF_UP)

    @property
    def activities_by_area(self) -> list[Share]:
        areas: dict[str, int] = defaultdict(int)
        for region, n in self.activities_by_region.items():
            areas[area_of(region)] += n
        known = tuple(dict.fromkeys(area_of(r) for r in reference.regions()))
        return shares(dict(areas), known)


def regions_in_order(seen: set[str] | dict[str, int]) -> list[str]:
    known = list(reference.regions())
    return [*known, *sorted(r for r in seen if r not in known)]


class StatsQueries:
    """The queries over the facts in `schema`."""

    def __init__(self, pool: Pool, schema: str = SCHEMA) -> None:
        self.pool = pool
        self.s = schema

    # --- the facts of a year, as SQL ---

    def _held(self) -> str:
        """Activities held in year $1 and not cancelled, with the region and partner of their action
        (the ones the activity event repeats while the action is not known here yet)."""
        s = self.s
        return f"""SELECT h.activity_id, h.male, h.female, h.other,
                coalesce(a.region, h.region) AS region, coalesce(a.partner, h.partner) AS partner
            FROM {s}.activities_held h LEFT JOIN {s}.actions a USING (action_code)
            WHERE h.starts_on BETWEEN make_date($1, 1, 1) AND make_date($1, 12, 31)
              AND NOT EXISTS (SELECT 1 FROM {s}.activities_cancelled c WHERE c.activity_id = h.activity_id)"""

    def _deployed(self) -> str:
        """Deployments starting in year $1 that were not cancelled (nor was their activity), with the
        region of their action."""
        s = self.s
        return f"""SELECT d.expert_id, coalesce(a.region, p.region, h.region) AS region
            FROM {s}.deployments d
            LEFT JOIN {s}.actions a ON a.action_code = d.action_code
            LEFT JOIN {s}.activities_planned p ON p.activity_id = d.activity_id
            LEFT JOIN {s}.activities_held h ON h.activity_id = d.activity_id
            WHERE d.starts_on BETWEEN make_date($1, 1, 1) AND make_date($1, 12, 31)
              AND NOT EXISTS (SELECT 1 FROM {s}.deployments_cancelled c WHERE c.deployment_id = d.deployment_id)
              AND NOT EXISTS (SELECT 1 FROM {s}.activities_cancelled c WHERE c.activity_id = d.activity_id)"""

    def _scalars(self) -> str:
        """The year's single figures in one statement: each a subquery through an index on its year or date.
        The expert pool at the end of the year and of the year before sums the pool's changes by day
        (expert_pool.py), not every expert. The team's air miles: the legs departing in the year, each kept
        if its itinerary is a team member's, no later version of its booking's itinerary exists and the
        booking was not cancelled. The team members: a stint starts at a join and ends at the first leave on
        or after it; on the team in the year if it started by the year's end and did not end before the year
        began."""
        s = self.s
        return f"""SELECT
            (SELECT count(*) FROM {s}.requests
             WHERE received_on BETWEEN make_date($1, 1, 1) AND make_date($1, 12, 31)) AS new_requests,
            pool.now AS pool_now, pool.before AS pool_before,
            (SELECT coalesce(sum(l.statute_miles), 0)
             FROM {s}.itinerary_legs l JOIN {s}.itineraries i USING (booking_id, version)
             WHERE i.traveller_kind = 'team_member'
               AND extract(year FROM l.departs_on)::integer = $1
               AND NOT EXISTS (SELECT 1 FROM {s}.itineraries later
                               WHERE later.booking_id = l.booking_id AND later.version > l.version)
               AND NOT EXISTS (SELECT 1 FROM {s}.bookings_cancelled x WHERE x.booking_id = l.booking_id)
            ) AS team_miles,
            (SELECT count(DISTINCT j.member_id) FROM {s}.team_joins j
             WHERE j.joined_on <= make_date($1, 12, 31)
               AND NOT EXISTS (SELECT 1 FROM {s}.team_leaves l WHERE l.member_id = j.member_id
                               AND l.left_on >= j.joined_on AND l.left_on < make_date($1, 1, 1))) AS team_members,
            (SELECT coalesce(sum(sign * kg_co2e), 0) FROM {s}.emission_legs WHERE departure_year = $1) AS footprint,
            (SELECT coalesce(sum(quantity), 0) FROM {s}.offsets_purchased
             WHERE purchased_on BETWEEN make_date($1, 1, 1) AND make_date($1, 12, 31)) AS vers_purchased,
            (SELECT coalesce(sum(quantity), 0) FROM {s}.offsets_retired WHERE against_year = $1) AS vers_retired
        FROM (SELECT coalesce(sum(change), 0) AS now,
                coalesce(sum(change) FILTER (WHERE day <= make_date($1 - 1, 12, 31)), 0) AS before
              FROM {s}.expert_pool_days WHERE day <= make_date($1, 12, 31)) pool"""

    # --- the queries ---

    def _year(self) -> str:
        """The whole year in one statement (one snapshot, one round trip): the single figures, then the lists
        as arrays. The held activities grouped by (region, partner), one scan for the regions, the partners
        and the participants; the experts deployed grouped by gender and background; the satisfaction."""
        s = self.s
        return f"""SELECT * FROM ({self._scalars()}) one,
            (SELECT array_agg(region) AS held_region, array_agg(partner) AS held_partner, array_agg(n) AS held_n,
                array_agg(male) AS held_male, array_agg(female) AS held_female, array_agg(other) AS held_other
             FROM (SELECT region, partner, count(*) AS n, sum(male) AS male, sum(female) AS female,
                    sum(other) AS other
                   FROM ({self._held()}) h GROUP BY region, partner) g) held,
            (SELECT array_agg(gender) AS ex_gender, array_agg(background) AS ex_background, array_agg(n) AS ex_n
             FROM (SELECT gender, background, count(*) AS n FROM (
                    SELECT DISTINCT d.expert_id, coalesce(nullif(e.gender, ''), 'unknown') AS gender,
                        coalesce(nullif(e.background, ''), 'unknown') AS background
                    FROM ({self._deployed()}) d LEFT JOIN {s}.experts e USING (expert_id)) x
                   GROUP BY gender, background) g) ex,
            (SELECT array_agg(question ORDER BY question) AS sat_question,
                array_agg(agreeing ORDER BY question) AS sat_agreeing,
                array_agg(answers ORDER BY question) AS sat_answers
             FROM (SELECT question, count(*) FILTER (WHERE score >= 4) AS agreeing, count(*) AS answers
                   FROM {s}.evaluation_answers
                   WHERE submitted_on BETWEEN make_date($1, 1, 1) AND make_date($1, 12, 31)
                   GROUP BY question) q) sat"""

    async def year_at_a_glance(self, year: int) -> YearAtAGlance:
        y = YearAtAGlance(year)
        async with self.pool.acquire() as conn:
            one = await conn.fetchrow(self._year(), year)
        y.new_requests = one["new_requests"]
        y.expert_pool, y.expert_pool_previous = int(one["pool_now"]), int(one["pool_before"])
        y.team_statute_miles, y.team_members = Decimal(one["team_miles"]), one["team_members"]
        y.footprint_kg_co2e = Decimal(one["footprint"])
        y.vers_purchased, y.vers_retired = one["vers_purchased"], one["vers_retired"]
        by_region: dict[str, int] = defaultdict(int)
        for region, n in zip(one["held_region"] or [], one["held_n"] or [], strict=True):
            by_region[region] += n
        gender_counts = {g: sum(one[f"held_{g}"] or []) for g in PARTICIPANT_GENDERS}
        y.activities_by_region = {r: by_region.get(r, 0) for r in regions_in_order(by_region)}
        y.activities = sum(by_region.values())
        y.countries_benefitted = len(set(one["held_partner"] or []))
        y.participants = sum(gender_counts.values())
        y.participants_by_gender = shares(gender_counts, PARTICIPANT_GENDERS)
        genders: dict[str, int] = defaultdict(int)
        backgrounds: dict[str, int] = defaultdict(int)
        experts = zip(one["ex_gender"] or [], one["ex_background"] or [], one["ex_n"] or [], strict=True)
        for gender, background, n in experts:
            genders[gender] += n
            backgrounds[background] += n
        y.experts_deployed = sum(genders.values())
        y.experts_by_gender = shares(dict(genders), reference.genders())
        y.experts_by_background = shares(dict(backgrounds), tuple(reference.expert_backgrounds()))
        y.satisfaction = [
            Satisfaction(q, agreeing, answers)
            for q, agreeing, answers in zip(
                one["sat_question"] or [], one["sat_agreeing"] or [], one["sat_answers"] or [], strict=True
            )
        ]
        return y

    async def region_report(self, year: int) -> tuple[list[RegionRow], list[RegionRow]]:
        """One row per region and one per area (both African regions together)."""
        async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            held = await conn.fetch(f"SELECT * FROM ({self._held()}) h", year)
            deployed = await conn.fetch(f"SELECT DISTINCT expert_id, region FROM ({self._deployed()}) d", year)
        seen = {r["region"] for r in held} | {r["region"] for r in deployed if r["region"]}
        regions = regions_in_order(seen)
        by_region = {r: RegionRow(r, region_name(r), area_of(r)) for r in regions}
        areas = list(dict.fromkeys(area_of(r) for r in regions))
        by_area = {a: RegionRow(a, a, a) for a in areas}
        for h in held:
            for row in (by_region[h["region"]], by_area[area_of(h["region"])]):
                row.add_activity(h["partner"], h["male"], h["female"], h["other"])
        for d in deployed:
            if d["region"]:
                by_region[d["region"]].experts.add(d["expert_id"])
                by_area[area_of(d["region"])].experts.add(d["expert_id"])
        return list(by_region.values()), list(by_area.values())

    async def requests_per_year(self) -> list[tuple[int, int]]:
        """From the year of the first request to the latest, zeros included."""
        rows = await self.pool.fetch(
            f"SELECT extract(year FROM received_on)::int AS year, count(*) AS n FROM {self.s}.requests GROUP BY 1"
        )
        counts = {r["year"]: r["n"] for r in rows}
        if not counts:
            return []
        return [(y, counts.get(y, 0)) for y in range(min(counts), max(counts) + 1)]

    async def years(self) -> list[int]:
        s = self.s
        rows = await self.pool.fetch(
            f"""SELECT extract(year FROM received_on)::int AS y FROM {s}.requests
            UNION SELECT extract(year FROM starts_on)::int FROM {s}.activities_held
            UNION SELECT extract(year FROM starts_on)::int FROM {s}.deployments
            UNION SELECT extract(year FROM registered_on)::int FROM {s}.experts WHERE registered_on IS NOT NULL
            UNION SELECT extract(year FROM departs_on)::int FROM {s}.itinerary_legs
            UNION SELECT departure_year FROM {s}.emission_legs
            UNION SELECT extract(year FROM purchased_on)::int FROM {s}.offsets_purchased
            UNION SELECT against_year FROM {s}.offsets_retired
            ORDER BY 1"""
        )
        return [r["y"] for r in rows]


@dataclass
class RegionRow:
    region: str
    name: str
    area: str
    activities: int = 0
    male: int = 0
    female: int = 0
    other: int = 0
    partners: set[str] = field(default_factory=set)
    experts: set[str] = field(default_factory=set)

    def add_activity(self, partner: str, male: int, female: int, other: int) -> None:
        self.activities += 1
        self.partners.add(partner)
        self.male, self.female, self.other = self.male + male, self.female + female, self.other + other

    @property
    def participants(self) -> int:
        return self.male + self.female + self.other
