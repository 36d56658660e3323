"""The 2017 figures are the same after forgetting people of 2017 (DESIGN.md sections 9 and 11): forgetting destroys
names and roles, never what the statistics count (gender, background, nationality, deployments, evaluations,
stints, flights).

A stack of the test's own (a DevStack with the durability `mieux dev up` gives, as tests/e2e/test_faults.py
runs it) and the six services as OS processes: `scenarios/2017.yaml` replayed through gRPC, everything caught
up, `mieux stats year 2017 --json` taken (the year at a glance, the results, the experts' origin, the change on
2016, the totals since the first year); then experts evaluated and flown in 2017 and team members who flew or
left in 2017 forgotten (as admin); caught up again: the same figures, and again after `mieux projections
rebuild --all`; queries say "(forgotten)" for those forgotten."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from faultkit import INHERITED, Run, caught_up, clean_environ, until
from support import mieux_cli

from services.experts.client import ExpertsClient
from services.logistics.client import LogisticsClient
from services.ops import catalog
from services.ops.scenario_replay import replay

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "scenarios" / "2017.yaml"
EXPERTS = ("x0045", "x0082", "x0050")  # evaluated in 2017 (the scenario's keys), deployed and flown
TEAM = ("t06", "t07", "t13")  # flew in 2016-2017; t13 left mid-2017


def new_home() -> Path:
    home = Path(tempfile.mkdtemp(prefix="mieux-forget-2017-"))
    home.chmod(0o755)  # PostgreSQL may run as its own user (when the tests run as root)
    return home


@pytest.fixture
async def run(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> AsyncIterator[Run]:
    """A stack and the six services of the test's own, reached by this process's Settings() and clients."""
    home = new_home()
    r = Run(home)
    failed = request.session.testsfailed
    try:
        for k in list(os.environ):
            if INHERITED.match(k):
                monkeypatch.delenv(k)
        for k, v in r.environ.items():
            monkeypatch.setenv(k, v)
        await r.start()
        yield r
    finally:
        r.stop()
        if request.session.testsfailed > failed:
            print(f"\ntest home kept in {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)


async def settled(r: Run) -> None:
    await until(lambda: caught_up(r.settings(), catalog.consumer_groups()), 120, "every consumer group at lag 0")


async def figures(env: dict[str, str]) -> dict:
    code, out = await mieux_cli(env, "stats", "year", "2017", "--json")
    assert code == 0, out
    return json.loads(out)


async def test_the_2017_figures_are_the_same_after_forgetting_people_of_2017(run: Run) -> None:
    # the figures, not how fast they come: a whole suite on two cores may keep a query longer than the 10 s default
    env = {**clean_environ(), **run.environ, "MIEUX_GRPC_DEADLINE_S": "60"}
    settings = run.settings()
    first = await replay(SCENARIO, settings, progress=False)
    await settled(run)
    before = await figures(env)
    assert before["experts_deployed"] == 84 and before["air_miles_per_team_member"], before

    experts = [first.ids[k] for k in EXPERTS]
    async with ExpertsClient.connect(settings, role="admin") as ex, LogisticsClient.connect(settings, "admin") as lo:
        for n, expert in enumerate(experts):
            await ex.forget(
                command_id=f"forget-{n}", expert_id=expert, reason="erasure request", forgotten_on="2025-01-02"
            )
        for member in TEAM:
            await lo.forget_team_member(
                command_id=f"forget-{member}", member_id=member, reason="retention over", forgotten_on="2025-01-03"
            )
    await settled(run)
    assert await figures(env) == before

    code, out = await mieux_cli(env, "projections", "rebuild", "--all")
    assert code == 0 and "rebuilt" in out, out
    await settled(run)
    assert await figures(env) == before

    async with ExpertsClient.connect(settings) as ex, LogisticsClient.connect(settings) as lo:
        for expert in experts:
            got = await ex.get(expert)
            assert (got.name, got.forgotten) == ("(forgotten)", True) and got.deployments
        team = {m.member_id: m for m in (await lo.list_team(year=2017, page_size=500)).members}
        assert {m for m in team if team[m].forgotten} == set(TEAM)
        assert all(team[m].name not in ("", "(forgotten)") for m in team if m not in TEAM)
