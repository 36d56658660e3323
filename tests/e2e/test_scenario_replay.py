"""`replay()` of a small scenario file (tests/e2e/scenario_small.yaml) through the five services running as OS
processes, gRPC only: what the file says is what the services hold; a second replay appends nothing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from pathlib import Path

import grpc
import pytest
from support import eventually, running_together

from services.actions.client import ActionsClient
from services.carbon.client import CarbonClient
from services.experts.client import ExpertsClient
from services.kernel.reference import statute_miles
from services.kernel.settings import Settings
from services.logistics.client import LogisticsClient
from services.ops.scenario import Scenario, load
from services.ops.scenario_replay import ReplayResult, replay
from services.requests.client import RequestsClient

pytestmark = pytest.mark.e2e
SERVICES = ("requests", "actions", "experts", "logistics", "carbon")
FILE = Path(__file__).with_name("scenario_small.yaml")
AFTER = Path(__file__).with_name("scenario_small_after.yaml")  # follows FILE


@pytest.fixture(scope="module")
def services(stack_env: dict[str, str]) -> Iterator[dict[str, str]]:
    """The five services; yields the environment (with their addresses) for a child process of the CLI."""
    with running_together(SERVICES, stack_env) as started:  # the replay's clients find them too
        yield {**stack_env, **{f"MIEUX_{n.upper()}_ADDR": svc.target for n, svc in started.items()}}


async def store_counts(pool) -> dict[str, int]:  # type: ignore[no-untyped-def]
    return {s: await pool.fetchval(f"SELECT count(*) FROM {s}.events") for s in SERVICES}


def team_miles_per_member(sc: Scenario, year: int) -> Decimal:
    """DESIGN.md section 6 from the file, with the logistics domain's distance formula."""
    team = {t.key for t in sc.team}
    members = [
        t for t in sc.team if t.joined_on <= date(year, 12, 31) and (t.left_on is None or t.left_on >= date(year, 1, 1))
    ]
    miles = sum(
        (statute_miles(o, d) for f in sc.flights if f.traveller in team for o, d, on in f.flown() if on.year == year),
        Decimal(0),
    )
    return miles / len(members)


async def test_a_scenario_replayed_twice_through_the_services(services, pool) -> None:  # type: ignore[no-untyped-def]
    sc = load(FILE)
    settings = Settings()
    first: ReplayResult = await replay(FILE, settings, progress=False)
    assert first.commands == sc.commands() and first.duplicates == 0

    async with (
        RequestsClient.connect(settings) as requests,
        ActionsClient.connect(settings) as actions,
        ExpertsClient.connect(settings) as experts,
        LogisticsClient.connect(settings) as logistics,
        CarbonClient.connect(settings) as carbon,
    ):
        # approvals became actions with the file's codes, in order, with follow-up titles
        a1, a2, a3 = [await actions.get_action(c) for c in ("2046-01", "2046-02", "2046-03")]
        assert (a1.partner, a1.request_id, a1.follow_up) == ("MN", first.ids["q1"], 1)
        assert (a2.partner, a2.status) == ("BT", "closed")
        eva = await experts.get(first.ids["ex1"])
        assert (a3.partner, a3.follow_up, a3.title) == ("MN", 2, "Mongolia II")
        assert (await requests.get(first.ids["q4"])).status == "rejected"
        assert (await requests.get(first.ids["q5"])).status == "received"
        held = await actions.get_activity("2046-01/A1")
        assert (held.status, held.participants_male, held.participants_female) == ("held", 12, 9)
        assert (await actions.get_activity("2046-01/A2")).status == "cancelled"

        assert sorted(d.activity_id for d in eva.deployments) == ["2046-01/A1", "2046-02/A1"]
        ken = await experts.get(first.ids["ex2"])
        assert [d.status for d in ken.deployments] == ["cancelled"]
        assert not (await experts.get(first.ids["ex3"])).active

        # the results: feedback of a held activity, the partner's assessment and deliverables (before the closure),
        # an expert's evaluation of a deployment
        assert (await actions.get_activity("2046-01/A1")).feedback_respondents == 18
        a2 = await actions.get_action("2046-02")
        assert (list(a2.pillars), list(a2.fiche_themes)) == (
            ["irregular_migration"],
            ["maritime_border_management", "policy_development"],
        )
        assert (a2.partner_rating, [d.deliverable_id for d in a2.deliverables]) == (
            "good",
            ["2046-02/D1", "2046-02/D2"],
        )
        assert (list(a1.pillars), list(a1.fiche_themes)) == (["legal_migration"], ["international_labour_migration"])
        evaluated = [x for x in eva.deployments if x.activity_id == "2046-01/A1"]
        assert [x.evaluated for x in evaluated] == [True]

        assert (await logistics.get_booking(first.ids["fl3"])).status == "cancelled"
        assert (await logistics.get_booking(first.ids["fl2"])).changes == 1

        async def lot_retired() -> bool:  # the lot view is a projection: eventually
            try:
                lot = await carbon.offset_lot(first.ids["lot1"])
            except grpc.aio.AioRpcError as e:
                if e.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                return False
            return (lot.quantity, lot.retired, lot.project) == (10, 4, "Test cookstoves")

        await eventually(lot_retired, 60, "the offset lot of 10 VERs with 4 retired")

        # the read model of air miles per team member agrees with the file's flights (projection: eventually)
        expected = team_miles_per_member(sc, 2046)
        seen: dict[str, str] = {}

        async def miles_projected() -> bool:
            reply = await logistics.air_miles_per_team_member(2046)
            seen["reply"] = str(reply)
            return reply.team_members == 2 and abs(Decimal(reply.miles_per_member) - expected) <= 1

        await eventually(miles_projected, 60, f"air miles per team member {expected} for 2046 ({seen})")

    before = await store_counts(pool)
    again = await replay(FILE, settings, progress=False)
    assert (again.commands, again.appended) == (first.commands, 0)
    assert again.ids == first.ids
    assert await store_counts(pool) == before


async def test_a_scenario_that_follows_another_names_its_experts_and_actions(services, pool) -> None:  # type: ignore[no-untyped-def]
    """scenario_small_after.yaml follows scenario_small.yaml: it details an action the first opened, deploys an
    expert of the first's roster by key, and opens an action of its own with the next code of the year."""
    settings = Settings()
    first = await replay(FILE, settings, progress=False)  # already replayed above: nothing new
    after = await replay(AFTER, settings, progress=False)
    assert after.commands == load(AFTER).commands() and after.duplicates == 0
    assert after.ids["ex2"] == first.ids["ex2"]  # derived, as the experts service derives it
    async with ActionsClient.connect(settings) as actions, ExpertsClient.connect(settings) as experts:
        a3 = await actions.get_action("2046-03")
        assert (a3.status, a3.activities_held, [d.kind for d in a3.deliverables]) == ("closed", 1, ["strategy"])
        a4 = await actions.get_action("2046-04")
        assert (a4.partner, a4.follow_up, a4.title, a4.request_id) == ("BT", 2, "Bhutan II", after.ids["q6"])
        ken = await experts.get(first.ids["ex2"])
        assert sorted((d.activity_id, d.status) for d in ken.deployments) == [
            ("2046-01/A1", "cancelled"),
            ("2046-03/A1", "deployed"),
        ]
    before = await store_counts(pool)
    again = await replay(AFTER, settings, progress=False)
    assert (again.commands, again.appended) == (after.commands, 0)
    assert await store_counts(pool) == before


def test_the_cli_replays_a_file_with_its_progress_bar(services) -> None:  # type: ignore[no-untyped-def]
    """`mieux scenario replay FILE`, as a person runs it."""
    out = subprocess.run(
        [sys.executable, "-m", "services.ops.cli", "scenario", "replay", str(FILE)],
        env={**os.environ, **services, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    m = re.search(r"(\d+) commands in [\d.]+ s, (\d+) appended, (\d+) answered", out.stdout)
    assert m is not None, out.stdout
    commands, appended, duplicates = map(int, m.groups())
    assert commands == load(FILE).commands() and appended + duplicates == commands
