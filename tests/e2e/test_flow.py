"""The product end to end: each service in its own OS process, driven through gRPC only.

submit -> assess -> approve -> action opened (policy) -> fiche agreed -> activities planned -> experts
deployed (an overlapping deployment refused, asked of the actions service over gRPC) -> flights booked for
an expert (checked with the experts service) and a team member -> activity held -> emissions calculated
(policy on the logistics topic). Then every command again with the same command ids: nothing changes.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import grpc
import pytest
from support import ServiceProcess, eventually, running_together

from services.actions.client import ActionsClient
from services.carbon.client import CarbonClient
from services.experts.client import ExpertsClient
from services.kernel.settings import Settings
from services.logistics.client import LogisticsClient
from services.requests.client import RequestsClient

pytestmark = pytest.mark.e2e
SERVICES = ("requests", "actions", "experts", "logistics", "carbon")
RUN = uuid.uuid4().hex[:8]


@pytest.fixture(scope="module")
def services(stack_env: dict[str, str]) -> Iterator[dict[str, ServiceProcess]]:
    with running_together(SERVICES, stack_env) as started:  # the clients in this test find them too
        yield started


def cid(name: str) -> str:
    return f"e2e-{RUN}-{name}"


async def store_counts(pool) -> dict[str, int]:  # type: ignore[no-untyped-def]
    return {s: await pool.fetchval(f"SELECT count(*) FROM {s}.events") for s in SERVICES}


async def run_flow(settings: Settings) -> dict[str, object]:
    """Every command of the flow, with fixed command ids; returns what it learnt."""
    out: dict[str, object] = {}
    async with (
        RequestsClient.connect(settings) as requests,
        ActionsClient.connect(settings) as actions,
        ExpertsClient.connect(settings) as experts,
        LogisticsClient.connect(settings) as logistics,
    ):
        rid = (
            await requests.submit(
                command_id=cid("submit"),
                partner="KE",
                institution="Department of Immigration",
                institution_type="agency",
                received_on="2019-02-01",
                title="Labour migration",
                themes=["international_labour_migration"],
            )
        ).stream_id
        await requests.assess(command_id=cid("assess"), request_id=rid, assessed_on="2019-02-15")
        await requests.approve(command_id=cid("approve"), request_id=rid, approved_on="2019-03-01")
        out["request_id"] = rid

        async def action_opened() -> bool:
            page = await actions.list_actions(partner="KE", page_size=500)
            mine = [a for a in page.actions if a.request_id == rid]
            if mine:
                out["action_code"] = mine[0].action_code
            return bool(mine)

        await eventually(action_opened, 60, "the actions service to open an action for the approved request")
        code = str(out["action_code"])
        await actions.agree_fiche(
            command_id=cid("fiche"), action_code=code, agreed_on="2019-03-10", pillars=["legal_migration"]
        )
        _, a1 = await actions.plan_activity(
            command_id=cid("plan-1"),
            action_code=code,
            title="Fact-finding mission",
            activity_type="fact_finding_mission",
            starts_on="2019-04-01",
            ends_on="2019-04-05",
            country="KE",
            city="Nairobi",
            airport="NBO",
        )
        _, a2 = await actions.plan_activity(
            command_id=cid("plan-2"),
            action_code=code,
            title="Drafting session",
            activity_type="drafting_session",
            starts_on="2019-06-10",
            ends_on="2019-06-12",
            country="KE",
            city="Nairobi",
            airport="NBO",
        )
        _, a3 = await actions.plan_activity(
            command_id=cid("plan-3"),
            action_code=code,
            title="Workshop",
            activity_type="workshop",
            starts_on="2019-04-03",
            ends_on="2019-04-04",
            country="KE",
            city="Mombasa",
            airport="MBA",
        )
        out["activities"] = (a1, a2, a3)
        e1 = (
            await experts.register(
                command_id=cid("expert-1"),
                name="Ana Ruiz",
                gender="female",
                background="eu_ms_administration",
                nationality="ES",
                registered_on="2018-01-10",
            )
        ).stream_id
        e2 = (
            await experts.register(
                command_id=cid("expert-2"),
                name="Kofi Mensah",
                gender="male",
                background="southern_administration",
                nationality="GH",
                registered_on="2018-02-10",
            )
        ).stream_id
        await experts.deploy(command_id=cid("deploy-1"), expert_id=e1, activity_id=a1)
        await experts.deploy(command_id=cid("deploy-2"), expert_id=e2, activity_id=a2)
        try:
            await experts.deploy(command_id=cid("deploy-overlap"), expert_id=e1, activity_id=a3)
            out["overlap"] = "accepted"
        except grpc.aio.AioRpcError as e:
            out["overlap"] = (e.code(), e.details())
        await logistics.join_team(
            command_id=cid("join"),
            member_id=f"member-{RUN}",
            name="Lena Vogt",
            gender="female",
            role="project officer",
            joined_on="2018-06-01",
        )
        b1 = (
            await logistics.book_flight(
                command_id=cid("book-1"),
                traveller_id=e1,
                traveller_kind="expert",
                segments=[("MAD", "NBO", "2019-03-31"), ("NBO", "MAD", "2019-04-06")],
                cabin_class="economy",
                amount="812.40",
                currency="EUR",
                booked_on="2019-03-15",
                action_code=code,
                activity_id=a1,
            )
        ).stream_id
        b2 = (
            await logistics.book_flight(
                command_id=cid("book-2"),
                traveller_id=f"member-{RUN}",
                traveller_kind="team_member",
                segments=[("LHR", "NBO", "2019-03-31")],
                cabin_class="economy",
                amount="530.00",
                currency="GBP",
                booked_on="2019-03-15",
                action_code=code,
                activity_id=a1,
            )
        ).stream_id
        out["bookings"] = (b1, b2)
        # leaves at the end of the year, so that the team of later years (other tests') is not this one's
        await logistics.leave_team(command_id=cid("leave"), member_id=f"member-{RUN}", left_on="2019-12-31")
        await actions.record_held(command_id=cid("held-1"), activity_id=a1, male=14, female=11)
        out["experts"] = (e1, e2)
    return out


async def test_the_whole_flow_across_processes_and_again_changes_nothing(services, pool) -> None:  # type: ignore[no-untyped-def]
    settings = Settings()
    first = await run_flow(settings)

    code, (a1, _a2, _a3) = first["action_code"], first["activities"]  # type: ignore[misc]
    assert str(code).startswith("2019-")
    overlap = first["overlap"]
    assert isinstance(overlap, tuple) and overlap[0] == grpc.StatusCode.FAILED_PRECONDITION, overlap
    assert "overlap" in overlap[1].lower()

    async with ActionsClient.connect(settings) as actions, CarbonClient.connect(settings) as carbon:
        action = await actions.get_action(str(code))
        assert (action.partner, action.region, action.status) == ("KE", "africa_ces", "fiche_agreed")
        held = await actions.get_activity(a1)
        assert (held.status, held.participants_male, held.participants_female) == ("held", 14, 11)

        b1, b2 = first["bookings"]  # type: ignore[misc]
        emissions: dict[str, object] = {}

        async def calculated() -> bool:
            for b in (b1, b2):
                try:
                    emissions[b] = await carbon.flight_emissions(b)
                except grpc.aio.AioRpcError as e:
                    if e.code() != grpc.StatusCode.NOT_FOUND:
                        raise
            return len(emissions) == 2

        await eventually(calculated, 60, "the carbon service to calculate both flights' emissions")
    team_flight = emissions[b2]
    assert team_flight.traveller_kind == "team_member" and team_flight.method == "DESNZ"  # type: ignore[attr-defined]
    # LHR -> NBO economy, UK long haul with radiative forcing: about 799 kg CO2e (DESIGN.md section 7)
    assert 790 < float(team_flight.kg_co2e) < 810  # type: ignore[attr-defined]
    assert emissions[b1].traveller_kind == "expert"  # type: ignore[attr-defined]

    before = await store_counts(pool)
    again = await run_flow(settings)
    assert again["request_id"] == first["request_id"] and again["bookings"] == first["bookings"]
    assert again["action_code"] == code and again["activities"] == first["activities"]
    assert await store_counts(pool) == before


def mieux(args: list[str], env: dict[str, str]) -> str:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "services.ops.cli", *args],
        env={**env, "COLUMNS": "300"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


async def test_the_cli_shows_an_action_with_its_activities_and_experts(services, stack_env) -> None:  # type: ignore[no-untyped-def]
    import os

    flow = await run_flow(Settings())  # the same command ids: reads what the first test wrote, or writes it
    env = {**stack_env, **{k: v for k, v in os.environ.items() if k.endswith("_ADDR")}}
    code = str(flow["action_code"])
    a1, a2, _ = flow["activities"]  # type: ignore[misc]
    e1, e2 = flow["experts"]  # type: ignore[misc]
    shown = mieux(["actions", "show", code], env)
    assert code in shown and a1 in shown and a2 in shown
    assert e1 in shown and e2 in shown and "14/11/0" in shown
    listed = mieux(["requests", "list", "--year", "2019", "--partner", "KE"], env)
    assert str(flow["request_id"]) in listed
    planned = mieux(
        [
            "actions",
            "plan",
            code,
            "--title",
            "Study visit",
            "--type",
            "study_visit",
            "--starts-on",
            "2019-09-01",
            "--ends-on",
            "2019-09-03",
            "--country",
            "ES",
            "--city",
            "Madrid",
            "--airport",
            "MAD",
            "--command-id",
            cid("cli-plan"),
        ],
        env,
    )
    assert "planned" in planned and cid("cli-plan") in planned
    again = mieux(
        [
            "actions",
            "plan",
            code,
            "--title",
            "Study visit",
            "--type",
            "study_visit",
            "--starts-on",
            "2019-09-01",
            "--ends-on",
            "2019-09-03",
            "--country",
            "ES",
            "--city",
            "Madrid",
            "--airport",
            "MAD",
            "--command-id",
            cid("cli-plan"),
        ],
        env,
    )
    assert "already done" in again


async def test_finance_reads_the_carbon_report_and_its_csv(services, stack_env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import csv
    import os

    flow = await run_flow(Settings())
    env = {**stack_env, **{k: v for k, v in os.environ.items() if k.endswith("_ADDR")}}
    code = str(flow["action_code"])
    out = tmp_path / "carbon-2019.csv"

    async def reported() -> bool:
        mieux(["carbon", "report", "--year", "2019", "--csv", str(out)], env)
        rows = list(csv.DictReader(out.open()))
        return any(
            r["section"] == "footprint" and r["action_code"] == code and r["region"] == "africa_ces" for r in rows
        )

    await eventually(reported, 60, "the footprint of the flow's flights, with the action's region, in the CSV")
    shown = mieux(["carbon", "report", "--year", "2019"], env)
    assert "Footprint 2019" in shown and "Offset ledger 2019" in shown


async def test_the_cli_shows_miles_per_traveller_and_per_team_member(services, stack_env) -> None:  # type: ignore[no-untyped-def]
    import os

    await run_flow(Settings())
    env = {**stack_env, **{k: v for k, v in os.environ.items() if k.endswith("_ADDR")}}

    async def shown() -> bool:
        return f"member-{RUN}" in mieux(["logistics", "miles", "--year", "2019"], env)

    await eventually(shown, 60, "the team member's miles in the logistics read model")
    assert "air miles per team member in 2019" in mieux(["logistics", "miles", "--year", "2019"], env)
