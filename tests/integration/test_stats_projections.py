"""The stats projections against the real PostgreSQL, through the kernel's apply path
(`services.kernel.projection.apply_batch` with Envelope bytes, and `rebuild`).

A small hand-made history of every service (requests, actions, experts, logistics, carbon) whose
figures are worked out here from the scenario's own data, figure by figure (DESIGN.md section 6),
including a cancelled activity, a cancelled deployment, an expert deployed twice in a year, a cancelled
and a changed flight, a team member who left mid-year. Then: any order of arrival, duplicates and
replays, and a rebuild equal to the live tables, table by table.
"""

from __future__ import annotations

import random
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import pytest

from services.actions.events import ActionOpened, ActivityCancelled, ActivityHeld, ActivityPlanned
from services.carbon.events import (
    FlightEmissionsCalculated,
    FlightEmissionsReversed,
    Money,
    OffsetsPurchased,
    OffsetsRetired,
)
from services.experts.events import (
    Answer,
    ExpertDeactivated,
    ExpertDeployed,
    ExpertDeploymentCancelled,
    ExpertEvaluationSubmitted,
    ExpertProfileUpdated,
    ExpertRegistered,
)
from services.kernel import reference
from services.kernel.db import Pool
from services.kernel.envelope import Envelope, Event, topic_for, utcnow
from services.kernel.projection import apply_batch, rebuild
from services.kernel.reference import statute_miles
from services.logistics.events import (
    Fare,
    FlightBooked,
    FlightCancelled,
    FlightChanged,
    Segment,
    TeamMemberJoined,
    TeamMemberLeft,
)
from services.requests.events import RequestReceived
from services.stats.base import StatsProjection
from services.stats.projections import all_projections
from services.stats.queries import StatsQueries, YearAtAGlance

pytestmark = pytest.mark.integration

D = date.fromisoformat


# --- building a history -----------------------------------------------------------------------------


@dataclass
class History:
    """Envelopes in the order their services stored them; per stream, versions count up."""

    envelopes: list[Envelope] = field(default_factory=list)
    versions: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, stream: str, event: Event) -> Envelope:
        self.versions[stream] += 1
        now = utcnow()
        env = Envelope(
            event_id=uuid.uuid4(),
            event_type=event.event_type,
            schema_version=event.schema_version,
            source=event.source,
            stream_id=stream,
            stream_version=self.versions[stream],
            position=len(self.envelopes) + 1,
            occurred_at=now,
            recorded_at=now,
            correlation_id="test",
            causation_id="",
            actor="tester",
            data=event.model_dump(mode="json"),
        )
        self.envelopes.append(env)
        return env

    def of(self, source: str) -> list[Envelope]:
        return [e for e in self.envelopes if e.source == source]


@dataclass(frozen=True)
class Held:
    activity_id: str
    action_code: str
    starts_on: date
    partner: str
    region: str
    male: int
    female: int
    other: int


@dataclass(frozen=True)
class Expert:
    expert_id: str
    gender: str
    background: str
    registered_on: date
    deactivated_on: date | None = None


@dataclass(frozen=True)
class Deployment:
    deployment_id: str
    expert_id: str
    activity_id: str
    starts_on: date
    cancelled: bool = False


@dataclass(frozen=True)
class Stint:
    member_id: str
    joined_on: date
    left_on: date | None = None


@dataclass(frozen=True)
class Booking:
    booking_id: str
    traveller_id: str
    kind: str
    segments: tuple[tuple[str, str, date], ...]
    changed_to: tuple[tuple[str, str, date], ...] | None = None
    cancelled: bool = False


@dataclass(frozen=True)
class Emission:
    booking_id: str
    kind: str
    kg: Decimal
    year: int
    sign: int  # +1 calculated, -1 reversed


# The scenario, as data. The expected figures below are computed from these lists, never typed in.
REQUESTS = [("req-1", "MG", D("2016-05-01")), ("req-2", "MG", D("2017-03-08")), ("req-3", "SN", D("2017-10-10"))]
REQUESTS += [("req-4", "MX", D("2019-01-02"))]  # no request in 2018: a zero year between the first and last
ACTIONS = [("2016-01", "MX", "lac", D("2016-03-01")), ("2017-01", "MG", "africa_ces", D("2017-02-01"))]
ACTIONS += [("2017-02", "SN", "africa_west", D("2017-04-01"))]
HELD = [
    Held("2016-01/A1", "2016-01", D("2016-11-10"), "MX", "lac", 7, 3, 0),
    Held("2016-01/A2", "2016-01", D("2017-01-15"), "MX", "lac", 3, 3, 0),  # an older action, held in 2017
    Held("2017-01/A1", "2017-01", D("2017-03-01"), "MG", "africa_ces", 10, 5, 0),
    Held("2017-01/A3", "2017-01", D("2017-09-01"), "MG", "africa_ces", 2, 2, 0),  # MG twice: one partner
    Held("2017-02/A1", "2017-02", D("2017-06-05"), "SN", "africa_west", 4, 6, 1),
]
CANCELLED_ACTIVITIES = [("2017-01/A2", "2017-01", "africa_ces", "MG", D("2017-05-01"))]
EXPERTS = [
    Expert("exp-1", "female", "eu_ms_administration", D("2015-01-01")),
    Expert("exp-2", "male", "southern_administration", D("2016-02-01")),
    Expert("exp-3", "male", "icmpd", D("2017-04-01")),  # then updated to academia
    Expert("exp-4", "female", "ngo", D("2016-06-01"), deactivated_on=D("2017-06-30")),
    Expert("exp-5", "male", "private_consultant", D("2017-12-31")),
    Expert("exp-6", "female", "eu_ms_administration", D("2018-01-01")),
]
PROFILE_UPDATES = {"exp-3": "academia"}
DEPLOYMENTS = [
    Deployment("dep-1", "exp-1", "2017-01/A1", D("2017-03-01")),
    Deployment("dep-2", "exp-1", "2017-02/A1", D("2017-06-05")),  # exp-1 deployed twice in 2017
    Deployment("dep-3", "exp-2", "2017-01/A3", D("2017-09-01"), cancelled=True),
    Deployment("dep-4", "exp-3", "2016-01/A2", D("2017-01-15")),
    Deployment("dep-5", "exp-4", "2016-01/A1", D("2016-11-10")),
    Deployment("dep-6", "exp-5", "2017-01/A2", D("2017-05-01")),  # to the activity that was cancelled
]
EVALUATIONS = [  # evaluation id, deployment, submitted on, answers
    ("ev-1", "dep-1", D("2017-03-10"), {"objectives_met": 5, "logistics": 3}),
    ("ev-2", "dep-4", D("2017-02-01"), {"objectives_met": 4, "logistics": 2}),
    ("ev-3", "dep-2", D("2017-06-10"), {"objectives_met": 2, "logistics": 4}),
    ("ev-4", "dep-5", D("2016-11-20"), {"objectives_met": 1, "logistics": 1}),
]
TEAM = [
    Stint("tm-1", D("2015-01-01")),
    Stint("tm-2", D("2016-01-01"), D("2017-06-30")),  # left mid-2017: on the team in 2017
    Stint("tm-3", D("2015-03-01"), D("2016-12-31")),  # left before 2017
    Stint("tm-4", D("2018-01-01")),
]
BOOKINGS = [
    Booking("bk-1", "tm-1", "team_member", (("BRU", "TNR", D("2017-02-27")), ("TNR", "BRU", D("2017-03-05")))),
    Booking(
        "bk-2",
        "tm-2",
        "team_member",
        (("BRU", "DKR", D("2017-06-01")),),
        changed_to=(("VIE", "DKR", D("2017-06-02")), ("DKR", "VIE", D("2017-06-08"))),
    ),
    Booking("bk-3", "tm-1", "team_member", (("BRU", "MEX", D("2017-01-10")),), cancelled=True),
    Booking("bk-4", "tm-3", "team_member", (("BRU", "MEX", D("2016-11-08")),)),
    Booking("bk-5", "exp-1", "expert", (("BRU", "TNR", D("2017-02-27")),)),
    Booking("bk-6", "tm-1", "team_member", (("BRU", "MEX", D("2017-12-30")), ("MEX", "BRU", D("2018-01-05")))),
]
EMISSIONS = [
    Emission("bk-1", "team_member", Decimal("1234.5"), 2017, +1),
    Emission("bk-2", "team_member", Decimal("500.25"), 2017, +1),
    Emission("bk-2", "team_member", Decimal("500.25"), 2017, -1),  # changed: reversed and calculated again
    Emission("bk-2", "team_member", Decimal("640.125"), 2017, +1),
    Emission("bk-3", "team_member", Decimal("800"), 2017, +1),
    Emission("bk-3", "team_member", Decimal("800"), 2017, -1),  # cancelled
    Emission("bk-4", "team_member", Decimal("900"), 2016, +1),
    Emission("bk-5", "expert", Decimal("1100"), 2017, +1),
]
LOTS = [("lot-1", 40, D("2017-12-15")), ("lot-2", 10, D("2016-12-01"))]
RETIREMENTS = [
    ("lot-1", 25, 2017, D("2018-01-10")),
    ("lot-1", 5, 2016, D("2018-01-11")),
    ("lot-2", 10, 2016, D("2017-01-05")),
]


def _segments(specs: Iterable[tuple[str, str, date]]) -> tuple[Segment, ...]:
    return tuple(Segment(origin=o, destination=d, departs_on=on) for o, d, on in specs)


def build_history() -> History:
    h = History()
    for rid, partner, on in REQUESTS:
        kind = "country"
        h.add(
            f"req-{rid}",
            RequestReceived(
                request_id=rid,
                partner=partner,
                partner_kind=kind,
                partner_name=partner,
                institution="Ministry",
                institution_type="ministry",
                received_on=on,
                title=f"request {rid}",
            ),
        )
    region_of = {code: region for code, _, region, _ in ACTIONS}
    for code, partner, region, opened in ACTIONS:
        h.add(
            code,
            ActionOpened(
                action_code=code,
                request_id=f"req-for-{code}",
                partner=partner,
                partner_kind="country",
                partner_name=partner,
                region=region,
                title=partner,
                follow_up=1,
                year=opened.year,
                opened_on=opened,
            ),
        )
    planned = [(a.activity_id, a.action_code, a.partner, a.region, a.starts_on) for a in HELD]
    planned += [(aid, code, partner, region, on) for aid, code, region, partner, on in CANCELLED_ACTIVITIES]
    for n, (aid, code, partner, region, on) in enumerate(planned, start=1):
        h.add(
            code,
            ActivityPlanned(
                action_code=code,
                activity_id=aid,
                number=n,
                title=aid,
                activity_type="workshop",
                starts_on=on,
                ends_on=on,
                country=partner,
                partner=partner,
                region=region,
            ),
        )
    for a in HELD:
        assert region_of[a.action_code] == a.region
        h.add(
            a.action_code,
            ActivityHeld(
                action_code=a.action_code,
                activity_id=a.activity_id,
                activity_type="workshop",
                starts_on=a.starts_on,
                ends_on=a.starts_on,
                country=a.partner,
                partner=a.partner,
                region=a.region,
                participants_male=a.male,
                participants_female=a.female,
                participants_other=a.other,
            ),
        )
    for aid, code, _, _, on in CANCELLED_ACTIVITIES:
        h.add(code, ActivityCancelled(action_code=code, activity_id=aid, cancelled_on=on, reason="postponed"))
    for e in EXPERTS:
        profile = {"name": e.expert_id, "gender": e.gender, "nationality": "FR"}
        h.add(
            e.expert_id,
            ExpertRegistered(expert_id=e.expert_id, background=e.background, registered_on=e.registered_on, **profile),
        )
        if e.expert_id in PROFILE_UPDATES:
            h.add(
                e.expert_id,
                ExpertProfileUpdated(
                    expert_id=e.expert_id,
                    background=PROFILE_UPDATES[e.expert_id],
                    changed=("background",),
                    updated_on=e.registered_on,
                    **profile,
                ),
            )
    for d in DEPLOYMENTS:
        code = d.activity_id.split("/")[0]
        h.add(
            d.expert_id,
            ExpertDeployed(
                expert_id=d.expert_id,
                deployment_id=d.deployment_id,
                action_code=code,
                activity_id=d.activity_id,
                starts_on=d.starts_on,
                ends_on=d.starts_on,
            ),
        )
        if d.cancelled:
            h.add(
                d.expert_id,
                ExpertDeploymentCancelled(
                    expert_id=d.expert_id,
                    deployment_id=d.deployment_id,
                    action_code=code,
                    activity_id=d.activity_id,
                    reason="sick",
                    cancelled_on=d.starts_on,
                ),
            )
    deployments = {d.deployment_id: d for d in DEPLOYMENTS}
    for ev, dep, on, answers in EVALUATIONS:
        d = deployments[dep]
        h.add(
            d.expert_id,
            ExpertEvaluationSubmitted(
                expert_id=d.expert_id,
                evaluation_id=ev,
                deployment_id=dep,
                action_code=d.activity_id.split("/")[0],
                activity_id=d.activity_id,
                answers=tuple(Answer(question=q, score=s) for q, s in answers.items()),
                submitted_on=on,
            ),
        )
    for e in EXPERTS:
        if e.deactivated_on:
            h.add(
                e.expert_id, ExpertDeactivated(expert_id=e.expert_id, reason="retired", deactivated_on=e.deactivated_on)
            )
    for s in TEAM:
        h.add(
            "team",
            TeamMemberJoined(
                member_id=s.member_id, name=s.member_id, gender="female", role="PO", joined_on=s.joined_on
            ),
        )
    for s in TEAM:
        if s.left_on:
            h.add("team", TeamMemberLeft(member_id=s.member_id, left_on=s.left_on))
    fare = Fare(amount="500.00", currency="EUR")
    for b in BOOKINGS:
        h.add(
            b.booking_id,
            FlightBooked(
                booking_id=b.booking_id,
                traveller_id=b.traveller_id,
                traveller_kind=b.kind,
                segments=_segments(b.segments),
                cabin_class="economy",
                fare=fare,
                booked_on=D("2016-01-01"),
            ),
        )
        if b.changed_to:
            h.add(
                b.booking_id,
                FlightChanged(
                    booking_id=b.booking_id,
                    traveller_id=b.traveller_id,
                    traveller_kind=b.kind,
                    segments=_segments(b.changed_to),
                    cabin_class="economy",
                    fare=fare,
                    changed_on=D("2016-02-01"),
                ),
            )
        if b.cancelled:
            h.add(
                b.booking_id,
                FlightCancelled(
                    booking_id=b.booking_id, traveller_id=b.traveller_id, reason="x", cancelled_on=D("2016-03-01")
                ),
            )
    common: dict[str, Any] = {
        "cabin_class": "economy",
        "segments": (),
        "distance_km": Decimal(1),
        "distance_miles": Decimal(1),
        "factor_set": "DESNZ 2025",
        "factor_year": 2025,
        "radiative_forcing": True,
        "distance_uplift_applied": False,
    }
    calculated_at: dict[str, int] = {}
    for em in EMISSIONS:
        stream = f"emissions-{em.booking_id}"
        ids = {"booking_id": em.booking_id, "traveller_id": "t", "traveller_kind": em.kind}
        figures = {"kg_co2e": em.kg, "departure_year": em.year}
        if em.sign > 0:
            env = h.add(
                stream,
                FlightEmissionsCalculated(**ids, **figures, **common, calculated_on=D("2017-01-01"), cause="booked"),
            )
            calculated_at[em.booking_id] = env.stream_version
        else:
            h.add(
                stream,
                FlightEmissionsReversed(
                    **ids,
                    **figures,
                    **common,
                    reverses_version=calculated_at[em.booking_id],
                    reversed_on=D("2017-01-02"),
                    cause="changed",
                ),
            )
    price = Money(amount=Decimal("12.50"), currency="EUR")
    for lot, qty, on in LOTS:
        h.add(
            f"lot-{lot}",
            OffsetsPurchased(
                lot_id=lot,
                registry="Gold Standard",
                project="A project",
                vintage_year=on.year,
                quantity=qty,
                unit_price=price,
                total_cost=Money(amount=price.amount * qty, currency="EUR"),
                purchased_on=on,
            ),
        )
    held_by_lot = {lot: qty for lot, qty, _ in LOTS}
    for lot, qty, against, on in RETIREMENTS:
        held_by_lot[lot] -= qty
        h.add(
            f"lot-{lot}",
            OffsetsRetired(lot_id=lot, quantity=qty, against_year=against, retired_on=on, remaining=held_by_lot[lot]),
        )
    return h


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
        "footprint": sum((em.sign * em.kg for em in EMISSIONS if em.year == year), Decimal(0)),
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

    def projection_for(self, env: Envelope) -> StatsProjection:
        return next(p for p in self.projections if topic_for(env.source) in p.topics)

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
            await conn.execute(
                "DELETE FROM projections.tracking WHERE projection = ANY($1::text[])", [p.name for p in projections]
            )


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


async def all_figures(q: StatsQueries) -> dict[str, Any]:
    years = await q.years()
    out: dict[str, Any] = {"years": years, "requests_per_year": await q.requests_per_year()}
    for y in years:
        out[y] = figures(await q.year_at_a_glance(y))
        out[f"regions {y}"] = await q.region_report(y)
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
                await conn.execute(
                    "DELETE FROM projections.tracking WHERE projection = ANY($1::text[])", [p.name for p in other]
                )


async def test_duplicates_and_replays_change_no_figure(stats: Stats, history: History) -> None:
    applied, _ = await stats.feed(history.envelopes)
    assert applied == len(history.envelopes)
    tables, before = await stats.tables(), await all_figures(stats.queries)
    # redelivered, in other batches and twice in one batch: all dropped by the tracking table
    applied, duplicates = await stats.feed([e for e in history.envelopes for _ in (1, 2)], batch=5)
    assert (applied, duplicates) == (0, 2 * len(history.envelopes))
    assert await stats.tables() == tables
    # and even applied again past the tracking table, the facts are keyed by their ids
    async with stats.pool.acquire() as conn, conn.transaction():
        for env in history.envelopes:
            from services.kernel.envelope import registry

            await stats.projection_for(env).apply(conn, env, registry.decode(env))
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
