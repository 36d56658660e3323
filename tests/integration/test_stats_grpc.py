"""The stats service as a child OS process against the test stack: events published on the five
services' topics (as their relays would) are consumed by its projections and read back over gRPC and
through `mieux stats year --json`; a replay of the topics changes nothing; auth and bad input.

Other tests of the session publish on the same topics (and may use any year), so every figure is checked
as what this test's events add to the figures the service gave once it had applied everything before.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import AsyncIterator
from datetime import date
from decimal import ROUND_HALF_UP, Decimal

import grpc
import pytest
from history import History, sealed
from mieux.stats.v1 import stats_pb2, stats_pb2_grpc
from support import (
    RESULTS_JSON_KEYS,
    YEAR_JSON_KEYS,
    ServiceProcess,
    eventually,
    grpc_stub,
    running_service,
    signed,
)

from services.actions.events import ActionOpened, ActivityCancelled, ActivityHeld
from services.carbon.events import FlightEmissionsCalculated, Money, OffsetsPurchased, OffsetsRetired
from services.experts.events import ExpertDeployed, ExpertDeploymentCancelled, ExpertRegistered
from services.kernel import bus
from services.kernel.bus import group_lag
from services.kernel.envelope import topic_for
from services.kernel.grpckit import call_metadata, field_violations
from services.kernel.reference import statute_miles
from services.kernel.runner import projection_group
from services.kernel.settings import Settings
from services.logistics.events import Fare, FlightBooked, FlightCancelled, Segment, TeamMemberJoined, TeamMemberLeft
from services.requests.events import RequestReceived
from services.stats import cli
from services.stats.client import StatsClient
from services.stats.projections import all_projections

pytestmark = pytest.mark.integration

Y = 2093
D = date.fromisoformat
# activities held in Y: id, partner, region, male, female (one more is cancelled)
HELD = [("2093-01/A1", "MG", "africa_ces", 12, 9), ("2093-02/A1", "SN", "africa_west", 5, 8)]
HELD += [("2093-03/A1", "MX", "lac", 20, 11)]
ACTIONS = {"2093-01": ("MG", "africa_ces"), "2093-02": ("SN", "africa_west"), "2093-03": ("MX", "lac")}
TEAM_FLIGHTS = [("BRU", "TNR"), ("VIE", "MEX")]


def history() -> History:
    h = History()
    for n, on in enumerate(["2092-06-01", "2093-02-01", "2093-03-01"]):
        h.add(
            f"req-g{n}",
            RequestReceived(
                request_id=f"g{n}",
                partner="MG",
                partner_kind="country",
                partner_name="Madagascar",
                institution="Ministry",
                institution_type="ministry",
                received_on=D(on),
                title="t",
            ),
        )
    for code, (partner, region) in ACTIONS.items():
        h.add(
            code,
            ActionOpened(
                action_code=code,
                request_id="r",
                partner=partner,
                partner_kind="country",
                partner_name=partner,
                region=region,
                title=partner,
                follow_up=1,
                year=Y,
                opened_on=D("2093-01-10"),
            ),
        )
    for aid, partner, region, male, female in HELD:
        h.add(
            aid.split("/")[0],
            ActivityHeld(
                action_code=aid.split("/")[0],
                activity_id=aid,
                activity_type="workshop",
                starts_on=D("2093-04-01"),
                ends_on=D("2093-04-02"),
                country=partner,
                partner=partner,
                region=region,
                participants_male=male,
                participants_female=female,
                participants_other=0,
            ),
        )
    h.add(
        "2093-01",
        ActivityCancelled(action_code="2093-01", activity_id="2093-01/A2", cancelled_on=D("2093-05-01"), reason="x"),
    )
    for n, (gender, background) in enumerate([("female", "icmpd"), ("male", "ngo"), ("male", "icmpd")]):
        eid = f"exp-g{n}"
        h.add(
            eid,
            ExpertRegistered(
                expert_id=eid,
                name=sealed(eid, eid),
                gender=gender,
                background=background,
                nationality="FR",
                registered_on=D("2092-01-01") if n else D("2093-01-01"),
            ),
        )
        h.add(
            eid,
            ExpertDeployed(
                expert_id=eid,
                deployment_id=f"dep-g{n}",
                action_code="2093-01",
                activity_id="2093-01/A1",
                starts_on=D("2093-04-01"),
                ends_on=D("2093-04-02"),
            ),
        )
    h.add(
        "exp-g2",
        ExpertDeploymentCancelled(
            expert_id="exp-g2",
            deployment_id="dep-g2",
            action_code="2093-01",
            activity_id="2093-01/A1",
            reason="x",
            cancelled_on=D("2093-03-01"),
        ),
    )
    for member, name, gender in (("tm-g1", "A", "female"), ("tm-g2", "B", "male")):
        h.add(
            "team",
            TeamMemberJoined(
                member_id=member,
                name=sealed(member, name),
                gender=gender,
                role=sealed(member, "PO"),
                joined_on=D("2092-01-01"),
            ),
        )
    h.add("team", TeamMemberLeft(member_id="tm-g2", left_on=D("2093-02-01")))
    fare = Fare(amount="100", currency="EUR")
    for n, (o, d) in enumerate([*TEAM_FLIGHTS, ("BRU", "DKR")]):
        h.add(
            f"bk-g{n}",
            FlightBooked(
                booking_id=f"bk-g{n}",
                traveller_id="tm-g1",
                traveller_kind="team_member",
                segments=(Segment(origin=o, destination=d, departs_on=D("2093-03-30")),),
                cabin_class="economy",
                fare=fare,
                booked_on=D("2093-01-01"),
            ),
        )
    h.add("bk-g2", FlightCancelled(booking_id="bk-g2", traveller_id="tm-g1", reason="x", cancelled_on=D("2093-02-01")))
    h.add(
        "emissions-bk-g0",
        FlightEmissionsCalculated(
            booking_id="bk-g0",
            traveller_id="tm-g1",
            traveller_kind="team_member",
            cabin_class="economy",
            segments=(),
            distance_km=Decimal(1),
            distance_miles=Decimal(1),
            kg_co2e=Decimal("1500.125"),
            departure_year=Y,
            factor_set="DESNZ 2025",
            factor_year=2025,
            radiative_forcing=True,
            distance_uplift_applied=False,
            calculated_on=D("2093-01-01"),
            cause="booked",
        ),
    )
    price = Money(amount=Decimal("10"), currency="EUR")
    h.add(
        "lot-g",
        OffsetsPurchased(
            lot_id="lot-g",
            registry="Gold Standard",
            project="p",
            vintage_year=Y,
            quantity=77,
            unit_price=price,
            total_cost=Money(amount=Decimal(770), currency="EUR"),
            purchased_on=D("2093-12-01"),
        ),
    )
    h.add(
        "lot-g", OffsetsRetired(lot_id="lot-g", quantity=30, against_year=Y, retired_on=D("2093-12-20"), remaining=47)
    )
    return h


async def publish(settings: Settings, h: History) -> None:
    p = bus.producer(settings)
    await p.start()
    try:
        for env in h.envelopes:  # each signed as its service's relay signs it
            [m] = signed(topic_for(env.source), [env])
            await p.send(topic_for(env.source), value=m.value, key=m.key, headers=m.headers)
        await p.flush()
    finally:
        await p.stop()


@pytest.fixture(scope="module")
async def stats_service(stack_env: dict[str, str]) -> AsyncIterator[ServiceProcess]:
    async with running_service("stats", stack_env) as svc:
        yield svc


async def caught_up(settings: Settings) -> bool:
    """Every stats projection has applied everything on its topic (lag 0)."""
    for p in all_projections():
        if await group_lag(settings, projection_group("stats"), list(p.topics)) != 0:
            return False
    return True


async def test_figures_over_grpc_from_the_topics(
    stats_service: ServiceProcess, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings()
    h = history()
    miles = sum((statute_miles(o, d) for o, d in TEAM_FLIGHTS), Decimal(0))
    async with StatsClient.connect(settings, address=stats_service.target) as c:
        # what earlier tests of the session published is applied first; the pool and the team are
        # cumulative, so this test's experts and team members count on top of theirs
        await eventually(lambda: caught_up(settings), timeout=60, what="the stats projections at lag 0")
        base = await c.year_at_a_glance(Y)
        base_report = await c.region_report(Y)
        base_requests = dict(await c.requests_per_year()).get(Y, 0)
        await publish(settings, h)

        async def applied() -> bool:
            y = await c.year_at_a_glance(Y)
            return y.vers_retired > base.vers_retired and y.team_members > base.team_members

        await eventually(applied, timeout=60, what="the stats projections to apply the published events")
        await eventually(lambda: caught_up(settings), timeout=60, what="every stats projection at lag 0")
        y = await c.year_at_a_glance(Y)

        def added(field: str) -> dict[str, int]:
            before = {s.key if hasattr(s, "key") else s.region: s.count for s in getattr(base, field)}
            after = {s.key if hasattr(s, "key") else s.region: s.count for s in getattr(y, field)}
            return {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)}

        assert y.new_requests - base.new_requests == 2
        assert y.activities - base.activities == len(HELD)  # not the cancelled one
        assert added("activities_by_region") == {region: 1 for _, _, region, _, _ in HELD}
        assert added("activities_by_area") == {"Africa": 2, "Latin America and the Caribbean": 1}
        assert added("participants_by_gender") == {
            "male": sum(m for *_, m, _ in HELD),
            "female": sum(f for *_, f in HELD),
        }
        assert y.participants - base.participants == sum(m + f for *_, m, f in HELD)
        assert y.experts_deployed - base.experts_deployed == 2  # exp-g2's deployment was cancelled
        assert added("experts_by_gender") == {"female": 1, "male": 1}
        assert added("experts_by_background") == {"icmpd": 1, "ngo": 1}
        # exp-g0 registered in Y, the two others the year before
        assert (y.expert_pool, y.expert_pool_previous) == (base.expert_pool + 3, base.expert_pool_previous + 2)
        growth = Decimal(100) * (y.expert_pool - y.expert_pool_previous) / y.expert_pool_previous
        assert Decimal(y.expert_pool_growth_pct) == growth.quantize(Decimal("0.1"), ROUND_HALF_UP)
        # tm-g2 left on 1 February: on the team in Y too; bk-g2 was cancelled
        assert y.team_members == base.team_members + 2
        assert Decimal(y.team_statute_miles) == Decimal(base.team_statute_miles) + miles
        per_member = (Decimal(y.team_statute_miles) / y.team_members).quantize(Decimal(1), ROUND_HALF_UP)
        assert Decimal(y.air_miles_per_team_member) == per_member
        assert Decimal(y.footprint_kg_co2e) == Decimal(base.footprint_kg_co2e) + Decimal("1500.125")
        assert (y.vers_purchased - base.vers_purchased, y.vers_retired - base.vers_retired) == (77, 30)
        assert Y in await c.years()
        assert dict(await c.requests_per_year())[Y] - base_requests == 2

        report = await c.region_report(Y)
        africa = next(a for a in report.areas if a.area == "Africa")
        africa_before = next(a for a in base_report.areas if a.area == "Africa")
        assert africa.activities - africa_before.activities == 2
        assert {"MG", "SN"} <= set(africa.partners)
        assert africa.experts_deployed - africa_before.experts_deployed == 2
        added_by_region = {
            r.region: r.activities - b.activities for r, b in zip(report.regions, base_report.regions, strict=False)
        }
        assert sum(added_by_region.values()) == len(HELD)

        # a replay of every topic (the same events again): nothing changes
        before = await c.year_at_a_glance(Y)
        await publish(settings, h)
        await eventually(lambda: caught_up(settings), timeout=60, what="the replay applied (lag 0)")
        assert await c.year_at_a_glance(Y) == before

        # the CLI's JSON, through the same service
        monkeypatch.setenv("MIEUX_STATS_ADDR", stats_service.target)
        capsys.readouterr()
        await cli._run(argparse.Namespace(stats_command="year", year=Y, json=True))
        out = json.loads(capsys.readouterr().out)
        for key in (*YEAR_JSON_KEYS, *RESULTS_JSON_KEYS):
            assert key in out, key
        assert (out["year"], out["activities"], out["experts_deployed"]) == (
            Y,
            before.activities,
            before.experts_deployed,
        )
        assert out["participants_by_gender"]["male"] == {s.key: s.count for s in before.participants_by_gender}["male"]
        assert out["expert_pool_growth_pct"] == float(before.expert_pool_growth_pct)
        assert out["air_miles_per_team_member"] == int(Decimal(before.air_miles_per_team_member))
        assert Decimal(str(out["footprint_kg_co2e"])) == Decimal(before.footprint_kg_co2e)
        capsys.readouterr()
        await cli._run(argparse.Namespace(stats_command="year", year=Y, json=False))
        table = capsys.readouterr().out
        assert "Africa" in table and "Africa (West)" in table

        # the results and the history: the activities of Y against Y - 1, and the totals since the first year
        results, past = await c.results(Y), await c.history(Y)
        assert results.interventions >= len(HELD) and results.year == Y
        changes = {ch.figure: ch for ch in past.changes}
        assert int(changes["activities"].value) == before.activities
        assert past.first_year and past.first_year <= Y - 1
        assert {y.year for y in past.activities_per_year} == set(range(past.first_year, Y + 1))
        assert past.partners_served >= 3 and past.experts_deployed >= 2
        capsys.readouterr()
        await cli._run(argparse.Namespace(stats_command="results", year=Y, json=False))
        printed = capsys.readouterr().out
        assert "policy development" in printed and "change on the previous year" in printed
        await cli._run(argparse.Namespace(stats_command="results", year=Y, json=True))
        assert set(json.loads(capsys.readouterr().out)) == set(RESULTS_JSON_KEYS)


async def test_readers_only_and_bad_input(stats_service: ServiceProcess) -> None:
    settings = Settings()
    async with grpc_stub(stats_pb2_grpc.StatsStub, stats_service.target) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.ListYears(stats_pb2.ListYearsQuery(), timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        for role in ("finance", "ops", "admin"):  # figures: every person role (no service's flow asks for them)
            await stub.ListYears(
                stats_pb2.ListYearsQuery(), metadata=call_metadata(settings.client_token(role)), timeout=10
            )
        finance = call_metadata(settings.client_token("finance"))
        await stub.GetResults(stats_pb2.GetResultsQuery(year=2017), metadata=finance, timeout=10)
        await stub.GetHistory(stats_pb2.GetHistoryQuery(year=2017), metadata=finance, timeout=10)
        for year in (0, 20000):
            for call in (
                stub.GetYearAtAGlance(stats_pb2.GetYearAtAGlanceQuery(year=year), metadata=finance, timeout=10),
                stub.GetResults(stats_pb2.GetResultsQuery(year=year), metadata=finance, timeout=10),
                stub.GetHistory(stats_pb2.GetHistoryQuery(year=year), metadata=finance, timeout=10),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await call
                assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert [f for f, _ in field_violations(e.value)] == ["year"]
