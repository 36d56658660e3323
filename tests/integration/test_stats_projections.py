"""The stats projections against the real PostgreSQL, through the kernel's apply path
(`services.kernel.projection.apply_batch` with Envelope bytes, and `rebuild`).

The small hand-made history of every service in tests/history.py (requests, actions, experts, logistics,
carbon), whose figures are worked out here from the scenario's own data, figure by figure (DESIGN.md
section 6), including a cancelled activity, a cancelled deployment, an expert deployed twice in a year, a
cancelled and a changed flight, a team member who left mid-year. Then: any order of arrival, duplicates and
replays, and a rebuild equal to the live tables, table by table.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import pytest
from history import (
    ACTIONS,
    ASSESSMENTS,
    BOOKINGS,
    CANCELLED_ACTIVITIES,
    DELIVERABLES,
    DEPLOYMENTS,
    EMISSIONS,
    EVALUATIONS,
    EXPERTS,
    FEEDBACK,
    FICHES,
    HELD,
    LOTS,
    NATIONALITY_UPDATES,
    PROFILE_UPDATES,
    REQUESTS,
    RETIREMENTS,
    TEAM,
    THEMES,
    History,
    Stint,
    build_history,
)

from services.kernel import reference
from services.kernel.db import Pool
from services.kernel.envelope import Envelope, registry, topic_for
from services.kernel.projection import apply_batch, rebuild
from services.kernel.reference import statute_miles
from services.stats.base import StatsProjection
from services.stats.projections import all_projections
from services.stats.queries import StatsQueries, YearAtAGlance
from services.stats.results import Results, ResultsQueries

pytestmark = pytest.mark.integration

D = date.fromisoformat


# --- the expected figures, from the scenario's data -------------------------------------------------


def in_year(d: date | None, year: int) -> bool:
    return d is not None and d.year == year


def expected(year: int) -> dict[str, Any]:
    cancelled_activities = {aid for aid, *_ in CANCELLED_ACTIVITIES}
    held = [a for a in HELD if in_year(a.starts_on, year) and a.activity_id not in cancelled_activities]
    by_region: dict[str, int] = defaultdict(int)
    for a in held:
        by_region[a.region] += 1
    experts = {e.expert_id: e for e in EXPERTS}
    background = {e.expert_id: PROFILE_UPDATES.get(e.expert_id, e.background) for e in EXPERTS}
    deployed = {
        d.expert_id
        for d in DEPLOYMENTS
        if in_year(d.starts_on, year) and not d.cancelled and d.activity_id not in cancelled_activities
    }
    by_gender: dict[str, int] = defaultdict(int)
    by_background: dict[str, int] = defaultdict(int)
    for x in deployed:
        by_gender[experts[x].gender] += 1
        by_background[background[x]] += 1

    def pool(y: int) -> int:
        end = date(y, 12, 31)
        return sum(1 for e in EXPERTS if e.registered_on <= end and not (e.deactivated_on and e.deactivated_on <= end))

    def team_on(s: Stint) -> bool:
        return s.joined_on <= date(year, 12, 31) and (s.left_on is None or s.left_on >= date(year, 1, 1))

    members = {s.member_id for s in TEAM if team_on(s)}
    miles = Decimal(0)
    for b in BOOKINGS:
        if b.kind == "team_member" and not b.cancelled:
            for o, d, on in b.changed_to or b.segments:
                if on.year == year:
                    miles += statute_miles(o, d)
    answers: dict[str, list[int]] = defaultdict(list)
    for _, _, on, given in EVALUATIONS:
        if on.year == year:
            for q, s in given.items():
                answers[q].append(s)
    return {
        "new_requests": sum(1 for _, _, on in REQUESTS if on.year == year),
        "activities": len(held),
        "activities_by_region": dict(by_region),
        "countries_benefitted": len({a.partner for a in held}),
        "participants_by_gender": {
            "male": sum(a.male for a in held),
            "female": sum(a.female for a in held),
            "other": sum(a.other for a in held),
        },
        "experts_deployed": len(deployed),
        "experts_by_gender": dict(by_gender),
        "experts_by_background": dict(by_background),
        "expert_pool": pool(year),
        "expert_pool_previous": pool(year - 1),
        "team_statute_miles": miles,
        "team_members": len(members),
        "footprint": sum((em.in_year(year) for em in EMISSIONS), Decimal(0)),
        "vers_purchased": sum(q for _, q, on in LOTS if on.year == year),
        "vers_retired": sum(q for _, q, against, _ in RETIREMENTS if against == year),
        "satisfaction": {q: (sum(1 for s in ss if s >= 4), len(ss)) for q, ss in answers.items()},
    }


# --- applying -----------------------------------------------------------------------------------------


@dataclass
class Stats:
    pool: Pool
    projections: list[StatsProjection]
    queries: StatsQueries

    def projections_for(self, env: Envelope) -> list[StatsProjection]:
        return [p for p in self.projections if topic_for(env.source) in p.topics]

    async def feed(self, envelopes: Iterable[Envelope], batch: int = 7) -> tuple[int, int]:
        """Apply as the runner would: batches of envelopes of any topics. (applied, duplicates)"""
        applied = duplicates = 0
        run: list[Envelope] = []

        async def flush() -> None:
            nonlocal applied, duplicates, run
            if run:
                r = await apply_batch(self.pool, self.projections, [(topic_for(e.source), e.to_bytes()) for e in run])
                assert not r.dead, r.dead
                applied, duplicates, run = applied + r.applied, duplicates + r.duplicates, []

        for env in envelopes:
            if len(run) >= batch:
                await flush()
            run.append(env)
        await flush()
        return applied, duplicates

    async def tables(self) -> dict[str, list[tuple]]:
        out = {}
        async with self.pool.acquire() as conn:
            for p in self.projections:
                for t in p.tables:
                    out[t] = sorted(tuple(r) for r in await conn.fetch(f"SELECT * FROM {t}"))
        return out


@pytest.fixture
async def stats(pool: Pool, schema: str) -> AsyncIterator[Stats]:
    views = f"{schema}_stats"
    projections = all_projections(views)
    async with pool.acquire() as conn:
        for p in projections:
            await p.setup(conn)
    try:
        yield Stats(pool, projections, StatsQueries(pool, views))
    finally:
        async with pool.acquire() as conn:
            await conn.execute(f"DROP SCHEMA IF EXISTS {views} CASCADE")
            # their tracking is in their own schema (<views>_projections: StatsProjection): gone with it
            await conn.execute(f"DROP SCHEMA IF EXISTS {projections[0].kernel.projections_schema} CASCADE")


@pytest.fixture(scope="module")
def history() -> History:
    return build_history()


def figures(y: YearAtAGlance) -> dict[str, Any]:
    """Everything a year at a glance says, for comparing two of them."""
    return {
        **{k: v for k, v in vars(y).items()},
        "growth": y.expert_pool_growth_pct,
        "air_miles": y.air_miles_per_team_member,
        "areas": y.activities_by_area,
    }


def results_figures(r: Results) -> dict[str, Any]:
    return {
        **{k: v for k, v in vars(r).items() if k != "deliverables"},
        "deliverables": [tuple(d) for d in r.deliverables],
        "derived": (r.partners_good_or_excellent, r.skills_enhanced_pct, r.policy_development_pct),
    }


async def all_figures(q: StatsQueries) -> dict[str, Any]:
    years = await q.years()
    out: dict[str, Any] = {"years": years, "requests_per_year": await q.requests_per_year()}
    rq = ResultsQueries(q)
    for y in years:
        out[y] = figures(await q.year_at_a_glance(y))
        out[f"regions {y}"] = await q.region_report(y)
        out[f"results {y}"] = results_figures(await rq.results(y))
        out[f"history {y}"] = vars(await rq.history(y))
    return out


# --- figure by figure -------------------------------------------------------------------------------


@pytest.mark.parametrize("year", [2016, 2017])
async def test_each_figure_of_the_year(stats: Stats, history: History, year: int) -> None:
    await stats.feed(history.envelopes)
    want = expected(year)
    y = await stats.queries.year_at_a_glance(year)

    assert y.new_requests == want["new_requests"]
    assert y.activities == want["activities"]
    assert {r: n for r, n in y.activities_by_region.items() if n} == want["activities_by_region"]
    assert list(y.activities_by_region)[: len(reference.regions())] == list(reference.regions())
    assert y.countries_benefitted == want["countries_benefitted"]
    assert {s.key: s.count for s in y.participants_by_gender} == want["participants_by_gender"]
    assert y.participants == sum(want["participants_by_gender"].values())
    assert y.experts_deployed == want["experts_deployed"]
    assert {s.key: s.count for s in y.experts_by_gender if s.count} == want["experts_by_gender"]
    assert {s.key: s.count for s in y.experts_by_background if s.count} == want["experts_by_background"]
    assert y.expert_pool == want["expert_pool"]
    assert y.expert_pool_previous == want["expert_pool_previous"]
    assert y.team_statute_miles == want["team_statute_miles"]
    assert y.team_members == want["team_members"]
    assert y.footprint_kg_co2e == want["footprint"]
    assert y.vers_purchased == want["vers_purchased"]
    assert y.vers_retired == want["vers_retired"]
    assert {s.question: (s.agreeing, s.answers) for s in y.satisfaction} == want["satisfaction"]


async def test_derived_figures_of_2017(stats: Stats, history: History) -> None:
    """Shares, growth, air miles per member and the African area, from the counts."""
    await stats.feed(history.envelopes)
    want = expected(2017)
    y = await stats.queries.year_at_a_glance(2017)
    growth = Decimal(want["expert_pool"] - want["expert_pool_previous"]) * 100 / want["expert_pool_previous"]
    assert y.expert_pool_growth_pct == growth.quantize(Decimal("0.1"), ROUND_HALF_UP)
    per_member = (want["team_statute_miles"] / want["team_members"]).quantize(Decimal(1), ROUND_HALF_UP)
    assert y.air_miles_per_team_member == per_member
    african = sum(n for r, n in want["activities_by_region"].items() if r.startswith("africa"))
    assert african == 3  # the scenario has activities in both African regions
    assert {s.key: s.count for s in y.activities_by_area}["Africa"] == african
    male = want["participants_by_gender"]["male"]
    share = (Decimal(male) * 100 / y.participants).quantize(Decimal("0.1"), ROUND_HALF_UP)
    assert {s.key: s.share_pct for s in y.participants_by_gender}["male"] == share


async def test_the_cases_that_change_a_figure(stats: Stats, history: History) -> None:
    """The scenario's awkward cases, each seen in its figure (2017)."""
    await stats.feed(history.envelopes)
    y = await stats.queries.year_at_a_glance(2017)
    # exp-1 was deployed twice, exp-2's deployment was cancelled, exp-5's activity was cancelled
    assert y.experts_deployed == 2
    assert {s.key: s.count for s in y.experts_by_background if s.count} == {"eu_ms_administration": 1, "academia": 1}
    # the cancelled activity 2017-01/A2 is not among the activities
    assert y.activities_by_region["africa_ces"] == 2
    # tm-2 left mid-year and counts; tm-3 left before the year; tm-4 joined after it
    assert y.team_members == 2
    # bk-3 was cancelled; bk-2 counts with its changed itinerary, bk-6 only with its 2017 flight
    changed = statute_miles("VIE", "DKR") + statute_miles("DKR", "VIE")
    bk1 = statute_miles("BRU", "TNR") + statute_miles("TNR", "BRU")
    assert y.team_statute_miles == bk1 + changed + statute_miles("BRU", "MEX")
    # exp-4 was deactivated in 2017: in the pool of 2016, not of 2017
    assert (await stats.queries.year_at_a_glance(2016)).expert_pool == 3
    assert y.expert_pool == 4


async def test_region_report(stats: Stats, history: History) -> None:
    await stats.feed(history.envelopes)
    regions, areas = await stats.queries.region_report(2017)
    want = expected(2017)
    rows = {r.region: r for r in regions}
    assert [r.region for r in regions][: len(reference.regions())] == list(reference.regions())
    assert {r: row.activities for r, row in rows.items() if row.activities} == want["activities_by_region"]
    assert sum(len(r.partners) for r in regions) == want["countries_benefitted"]
    assert sum(r.participants for r in regions) == sum(want["participants_by_gender"].values())
    assert rows["africa_ces"].partners == {"MG"}
    assert rows["africa_ces"].experts == {"exp-1"}  # dep-6 went to the cancelled activity
    assert rows["lac"].experts == {"exp-3"}
    africa = next(a for a in areas if a.area == "Africa")
    assert africa.activities == rows["africa_ces"].activities + rows["africa_west"].activities
    assert africa.experts == {"exp-1"}  # deployed in both African regions: once in the area
    assert africa.partners == {"MG", "SN"}


async def test_requests_per_year_and_years(stats: Stats, history: History) -> None:
    await stats.feed(history.envelopes)
    per_year = await stats.queries.requests_per_year()
    first, last = min(on.year for *_, on in REQUESTS), max(on.year for *_, on in REQUESTS)
    assert [y for y, _ in per_year] == list(range(first, last + 1))
    assert dict(per_year) == {y: sum(1 for *_, on in REQUESTS if on.year == y) for y in range(first, last + 1)}
    assert dict(per_year)[2018] == 0
    years = await stats.queries.years()
    assert {2015, 2016, 2017, 2018, 2019} <= set(years)
    assert years == sorted(years)


# --- order, duplicates, replays, rebuild ------------------------------------------------------------


async def test_any_order_of_arrival_gives_the_same_figures(
    stats: Stats, history: History, pool: Pool, schema: str
) -> None:
    """Reversed (activities held before their action is opened, a change before its booking ...) and
    shuffled orders give the same tables and figures as the order of the stores."""
    await stats.feed(history.envelopes)
    want_tables, want_figures = await stats.tables(), await all_figures(stats.queries)
    for n, order in enumerate(
        [list(reversed(history.envelopes)), random.Random(4).sample(history.envelopes, k=len(history.envelopes))]
    ):
        views = f"{schema}_order{n}"
        other = all_projections(views)
        async with pool.acquire() as conn:
            for p in other:
                await p.setup(conn)
        try:
            again = Stats(pool, other, StatsQueries(pool, views))
            await again.feed(order, batch=3)
            got = await again.tables()
            assert {t.split(".", 1)[1]: rows for t, rows in got.items()} == {
                t.split(".", 1)[1]: rows for t, rows in want_tables.items()
            }
            assert await all_figures(again.queries) == want_figures
        finally:
            async with pool.acquire() as conn:
                await conn.execute(f"DROP SCHEMA {views} CASCADE")
                await conn.execute(f"DROP SCHEMA {other[0].kernel.projections_schema} CASCADE")


async def test_duplicates_and_replays_change_no_figure(stats: Stats, history: History) -> None:
    applied, _ = await stats.feed(history.envelopes)
    pairs = sum(len(stats.projections_for(e)) for e in history.envelopes)  # the runner counts (projection, event)
    assert applied == pairs
    tables, before = await stats.tables(), await all_figures(stats.queries)
    # redelivered, in other batches and twice in one batch: all dropped by the tracking table
    applied, duplicates = await stats.feed([e for e in history.envelopes for _ in (1, 2)], batch=5)
    assert (applied, duplicates) == (0, 2 * pairs)
    assert await stats.tables() == tables
    # and even applied again past the tracking table, the facts are keyed by their ids
    async with stats.pool.acquire() as conn, conn.transaction():
        for env in history.envelopes:
            for projection in stats.projections_for(env):
                await projection.apply(conn, env, registry.decode(env))
    assert await stats.tables() == tables
    assert await all_figures(stats.queries) == before


async def test_rebuild_equals_the_live_read_models(stats: Stats, history: History) -> None:
    # live: the topics interleaved, with redeliveries
    live_order = random.Random(7).sample(history.envelopes, k=len(history.envelopes))
    await stats.feed(live_order + history.envelopes[:20])
    live_tables, live_figures = await stats.tables(), await all_figures(stats.queries)
    assert all(rows for rows in live_tables.values()), [t for t, rows in live_tables.items() if not rows]

    def source(service: str):  # type: ignore[no-untyped-def]
        async def read_all() -> AsyncIterator[Envelope]:
            for env in history.of(service):
                yield env

        return read_all

    for p in stats.projections:
        n = await rebuild(stats.pool, p, [source(topic.split(".")[1]) for topic in p.topics])
        assert n == sum(1 for e in history.envelopes if topic_for(e.source) in p.topics)
    rebuilt = await stats.tables()
    for table, rows in live_tables.items():
        assert rebuilt[table] == rows, table
    assert await all_figures(stats.queries) == live_figures


# --- results, expert origin and history (DESIGN.md section 6) -------------------------------------------


def expected_results(year: int) -> dict[str, Any]:
    """The results of a year, worked out from the history's data."""
    cancelled_activities = {aid for aid, *_ in CANCELLED_ACTIVITIES}
    held = [a for a in HELD if in_year(a.starts_on, year) and a.activity_id not in cancelled_activities]
    peer = [g["peer_to_peer_beneficial"] for _, _, on, g in EVALUATIONS if on.year == year]
    ratings = [rating for *_, rating, on in ASSESSMENTS if on.year == year]
    forms = [f for f in FEEDBACK if f[3].year == year and f[0] not in cancelled_activities]
    region_of = {code: region for code, _, region, _ in ACTIONS}
    fiche = {code: (pillars, themes) for code, pillars, themes, _ in FICHES}
    interventions = sorted({a.action_code for a in held})
    themes = {c: fiche[c][1] if c in fiche else THEMES[c] for c in interventions}  # the fiche's, else the request's
    themes_by_region: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for c in interventions:
        for t in themes[c]:
            themes_by_region[region_of[c]][t] += 1
    experts = {e.expert_id: e for e in EXPERTS}
    nationality = {e.expert_id: NATIONALITY_UPDATES.get(e.expert_id, e.nationality) for e in EXPERTS}
    background = {e.expert_id: PROFILE_UPDATES.get(e.expert_id, e.background) for e in EXPERTS}
    deployed = {
        d.expert_id
        for d in DEPLOYMENTS
        if in_year(d.starts_on, year) and not d.cancelled and d.activity_id not in cancelled_activities
    }
    europe = {"FR", "NO", "RU"}  # of the history's nationalities, those in UN M49's Europe (AM, MX, SN are not)
    origin: dict[str, dict[str, int]] = {"europe": defaultdict(int), "outside_europe": defaultdict(int)}
    for x in deployed:
        if background[x] in ("academia", "ngo", "private_consultant"):
            origin["europe" if nationality[x] in europe else "outside_europe"][background[x]] += 1
    assert experts
    return {
        "experts_agreeing": (sum(1 for s in peer if s >= 4), len(peer)),
        "partners": (sum(1 for r in ratings if r in ("good", "excellent")), len(ratings)),
        "feedback": (len(forms), sum(f[4] for f in forms), sum(f[5] for f in forms), sum(f[6] for f in forms)),
        "deliverables": sorted((d[4], d[3]) for d in DELIVERABLES if d[5].year == year),
        "interventions": len(interventions),
        "policy_development": sum(1 for c in interventions if "policy_development" in themes[c]),
        "pillars": dict(Counter(p for c in interventions for p in fiche.get(c, ((), ()))[0])),
        "themes_by_region": {r: dict(t) for r, t in themes_by_region.items()},
        "activity_types_by_region": dict(Counter(a.region for a in held)),  # every activity here is a workshop
        "origin": {k: dict(v) for k, v in origin.items()},
        "nationalities": sorted({nationality[x] for x in deployed}),
    }


@pytest.mark.parametrize("year", [2016, 2017])
async def test_the_results_and_the_experts_origin_of_the_year(stats: Stats, history: History, year: int) -> None:
    await stats.feed(history.envelopes)
    want = expected_results(year)
    r = await ResultsQueries(stats.queries).results(year)
    assert (r.experts_agreeing.agreeing, r.experts_agreeing.answers) == want["experts_agreeing"]
    good = r.partners_good_or_excellent
    assert (good.count, r.partners_assessing) == want["partners"]
    assert (r.feedback_activities, r.respondents, r.skills_enhanced, r.makes_a_difference) == want["feedback"]
    assert sorted((d["kind"], d["region"]) for d in r.deliverables) == want["deliverables"]
    assert (r.interventions, r.policy_development) == (want["interventions"], want["policy_development"])
    assert {s.key: s.count for s in r.pillars if s.count} == want["pillars"]
    assert {k: {s.key: s.count for s in v} for k, v in r.themes_by_region.items()} == want["themes_by_region"]
    types = {k: {s.key: s.count for s in v if s.count} for k, v in r.activity_types_by_region.items()}
    assert types == {k: {"workshop": n} for k, n in want["activity_types_by_region"].items()}
    origin = {
        "europe": {s.key: s.count for s in r.origin.europe if s.count},
        "outside_europe": {s.key: s.count for s in r.origin.outside if s.count},
    }
    assert origin == want["origin"]
    assert r.nationalities == want["nationalities"]


async def test_the_results_of_2017_in_their_shares(stats: Stats, history: History) -> None:
    """The cases the history holds: a fiche stored before fiches named themes (2016-01: its request's themes),
    an action without a fiche (2017-02: its request's), an expert whose nationality changed (Armenia, in
    Western Asia, then Norway, in Europe), a deliverable dated in the next year, a fair rating."""
    await stats.feed(history.envelopes)
    r = await ResultsQueries(stats.queries).results(2017)
    assert r.experts_agreeing.share_pct == Decimal("66.7")  # 2 of 3 evaluations of 2017 agree
    assert r.partners_good_or_excellent.share_pct == Decimal("66.7")  # good, excellent, fair
    assert (r.skills_enhanced_pct, r.makes_a_difference_pct) == (Decimal("85.2"), Decimal("85.2"))  # 23 of 27
    assert (r.policy_development, r.interventions, r.policy_development_pct) == (2, 3, Decimal("66.7"))
    assert [s.count for s in r.origin.europe] == [1, 0, 0] and r.origin.share("europe").share_pct == Decimal("100.0")
    assert r.nationalities == ["FR", "NO"]


async def test_the_change_on_the_previous_year_and_the_totals_since_the_first(stats: Stats, history: History) -> None:
    await stats.feed(history.envelopes)
    h = await ResultsQueries(stats.queries).history(2017)
    assert h.first_year == 2015  # the first fact: an expert registered in 2015
    changes = {c.figure: c for c in h.changes}
    assert (changes["activities"].value, changes["activities"].previous) == (4, 1)
    assert changes["activities"].change_pct == Decimal("300.0")
    assert changes["activities: Latin America and the Caribbean"].change_pct == Decimal("0.0")  # 1 vs 1
    assert changes["activities: africa_ces"].change_pct is None  # none the year before
    assert changes["experts_agreeing_pct"].change_points == Decimal("66.7") - Decimal("100.0")
    assert changes["experts_agreeing_pct"].change_pct is None
    # since 2015: exp-1, exp-3 and exp-4 deployed (exp-2's deployment and exp-5's activity were cancelled)
    assert (h.experts_deployed, h.partners_served, h.strategies_supported) == (3, 3, 2)
    assert h.activities_per_year == [(2015, 0), (2016, 1), (2017, 4)]
    assert h.requests_per_year == [(2015, 0), (2016, 1), (2017, 2)]


async def test_a_booking_across_new_year_counts_each_leg_in_its_year(stats: Stats, history: History) -> None:
    """bk-6 leaves on 30 December 2017 and comes back on 5 January 2018: the 2017 footprint has its first leg,
    2018's its return, as the team's air miles have each leg in its year."""
    await stats.feed(history.envelopes)
    y2017, y2018 = [await stats.queries.year_at_a_glance(y) for y in (2017, 2018)]
    out, back = Decimal("600.5"), Decimal("590.25")
    assert y2017.footprint_kg_co2e == expected(2017)["footprint"] and out <= y2017.footprint_kg_co2e
    assert y2018.footprint_kg_co2e == back
    assert y2018.team_statute_miles == statute_miles("MEX", "BRU")  # bk-6's return leg, in 2018 too
