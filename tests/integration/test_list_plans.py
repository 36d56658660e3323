"""Every List's page query, filtered by each filter it offers, on populated read models: PostgreSQL's plan
(EXPLAIN (FORMAT JSON), on the session's real database) reads the List's table through an index, never
by a Seq Scan, on the first page and deeper ones; each filter has an index of its own (its first key);
and no page counts the matches or the table (no aggregate but the per-row counts of a page's actions; a
total is the planner's estimate, EXPLAIN without ANALYZE). Structural: nothing here is timed (the bench
measures). Not here: ListTeam (the team's tens of members) and ListTravellerMiles (not paged: sums per
traveller and year, whose year filter is a range on departs_on too)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from bench.readmodels import counts_at, ident, load_lists, partners
from services.actions.projections import ActionsView
from services.actions.queries import ActionFilter, ActionsQueries, ActivityFilter
from services.carbon.projections import FlightEmissionsView, OffsetLotsView
from services.carbon.queries import CarbonQueries
from services.experts.projections import Roster
from services.experts.queries import ExpertsQueries, ListDeploymentsQuery, ListExpertsQuery
from services.kernel.db import Pool, create_pool
from services.logistics.projections import BookingsView
from services.logistics.queries import ListBookings, ListItineraries, LogisticsQueries
from services.ops.devstack import DevStack
from services.requests.projections import RequestRegister
from services.requests.queries import RequestsQueries
from tests.support import own_database

INDEX_SCANS = {"Index Scan", "Index Only Scan", "Bitmap Heap Scan", "Bitmap Index Scan"}


class PlanRecorder:
    """The kernel Pool's reads as the queries call them, each statement also planned (EXPLAIN without
    ANALYZE: planned, not run) on the same database; the queries get the real rows."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.plans: list[tuple[str, dict[str, Any]]] = []
        self.estimates: list[str] = []

    async def _plan(self, sql: str, args: tuple[Any, ...]) -> None:
        if sql.lstrip().upper().startswith("EXPLAIN"):
            self.estimates.append(sql)
            return
        plan = await self.pool.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *args)
        self.plans.append((sql, (json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"]))

    async def fetch(self, sql: str, *args: Any) -> Any:
        await self._plan(sql, args)
        return await self.pool.fetch(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        await self._plan(sql, args)
        return await self.pool.fetchval(sql, *args)


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


def summary(plan: dict[str, Any]) -> str:
    keys = ("Node Type", "Relation Name", "Index Name", "Index Cond", "Recheck Cond", "Filter")
    return "\n".join(" | ".join(str(n[k]) for k in keys if k in n) for n in nodes(plan))


def check_plan(sql: str, plan: dict[str, Any], table: str) -> None:
    """`table` never read by a Seq Scan; no aggregate but in a subplan of each row of the page (the count of
    one action's activities by status), so never a count of the matches or of the table."""
    name = table.split(".")[1]  # the plan names relations without their schema (no VERBOSE)
    seq = [n for n in nodes(plan) if n.get("Relation Name") == name and n["Node Type"] == "Seq Scan"]
    assert not seq, f"Seq Scan on {table}: {sql}\n{summary(plan)}"
    assert not list(aggregates_outside_subplans(plan)), f"a count of the matches: {sql}\n{summary(plan)}"


def aggregates_outside_subplans(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    if plan.get("Parent Relationship") == "SubPlan":
        return
    if plan["Node Type"] == "Aggregate":
        yield plan
    for child in plan.get("Plans", []):
        yield from aggregates_outside_subplans(child)


async def leading_keys(pool: Pool, table: str) -> set[str]:
    """The first key (a column or an expression) of each index of `table`."""
    rows = await pool.fetch(
        "SELECT pg_get_indexdef(indexrelid, 1, true) AS key FROM pg_index WHERE indrelid = $1::regclass", table
    )
    return {r["key"] for r in rows}


@pytest.fixture(scope="module")
async def recorder(stack: DevStack) -> AsyncIterator[PlanRecorder]:
    """The List tables of every service in a database of their own, at 50x the 2017 volume (and at least
    5,000 rows each), analysed."""
    async with own_database(stack.database_url) as dsn:
        pool = await create_pool(dsn, max_size=4)
        try:
            async with pool.acquire() as conn:
                for projection in (RequestRegister(), Roster(), ActionsView(), BookingsView()):
                    await projection.setup(conn)
                for projection in (FlightEmissionsView(), OffsetLotsView()):
                    await projection.setup(conn)
                await load_lists(conn, {k: max(v, 5000) for k, v in counts_at(50).items()})
            yield PlanRecorder(pool)
        finally:
            await pool.close()


async def requests(q: Any, token: str, **f: Any) -> str:
    _, nxt, total = await RequestsQueries(q).page(f, token, 20)
    assert total >= 1
    return nxt


async def experts(q: Any, token: str, **f: Any) -> str:
    return (await ExpertsQueries(q).list_experts(ListExpertsQuery(page_size=20, page_token=token, **f)))[1]


async def deployments(q: Any, token: str, **f: Any) -> str:
    return (await ExpertsQueries(q).list_deployments(ListDeploymentsQuery(page_size=20, page_token=token, **f)))[1]


async def actions(q: Any, token: str, **f: Any) -> str:
    return (await ActionsQueries(q).list_actions(ActionFilter(size=20, page_token=token, **f)))[1]


async def activities(q: Any, token: str, **f: Any) -> str:
    return (await ActionsQueries(q).list_activities(ActivityFilter(size=20, page_token=token, **f)))[1]


async def bookings(q: Any, token: str, **f: Any) -> str:
    return (await LogisticsQueries(q).list_bookings(ListBookings(page_size=20, page_token=token, **f)))[1]


async def itineraries(q: Any, token: str, **f: Any) -> str:
    return (await LogisticsQueries(q).list_itineraries(ListItineraries(page_size=20, page_token=token, **f)))[1]


async def emissions(q: Any, token: str, **f: Any) -> str:
    return (await CarbonQueries(q).list_flight_emissions(size=20, token=token, **f)).next_page_token


async def lots(q: Any, token: str, **f: Any) -> str:
    return (await CarbonQueries(q).list_offset_lots(size=20, token=token, **f)).next_page_token


PARTNER, REGION = partners()[0]
R, E, D = "requests_views.requests", "experts_views.experts", "experts_views.deployments"
A, T = "actions_views.actions", "actions_views.activities"
B, L = "logistics_views.bookings", "logistics_views.booking_legs"
F, LOTS = "carbon_views.flight_emissions", "carbon_views.offset_lots"
# (a List, its filters, the big table, the column an index condition must hold: None where the page order's
# index serves the filter, or a partial index whose predicate is the filter)
CASES: list[tuple[Callable[..., Awaitable[str]], dict[str, Any], str, str | None]] = [
    (requests, {}, R, None),
    (requests, {"year": 2015}, R, "received_on"),
    (requests, {"region": REGION}, R, "region"),
    (requests, {"partner": PARTNER}, R, "partner"),
    (requests, {"status": "withdrawn"}, R, "status"),
    (requests, {"theme": "return_and_readmission"}, R, "themes"),
    (requests, {"year": 2016, "partner": PARTNER}, R, "partner"),
    (experts, {}, E, None),
    (experts, {"theme": "policy_development"}, E, "themes"),
    (experts, {"background": "academia"}, E, "background"),
    (experts, {"gender": "female"}, E, "gender"),
    (experts, {"nationality": PARTNER}, E, "nationality"),
    (experts, {"active": True}, E, None),
    (experts, {"active": False}, E, None),
    (deployments, {}, D, None),
    (deployments, {"year": 2014}, D, "starts_on"),
    (deployments, {"expert_id": ident("exp", 0)}, D, "expert_id"),
    (deployments, {"action_code": "2014-07"}, D, "action_code"),
    (deployments, {"status": "cancelled"}, D, None),
    (actions, {}, A, None),
    (actions, {"year": 2014}, A, "year"),
    (actions, {"region": REGION}, A, "region"),
    (actions, {"partner": PARTNER}, A, "partner"),
    (actions, {"status": "open"}, A, "status"),
    (actions, {"theme": "policy_development"}, A, "themes"),
    (activities, {}, T, None),
    (activities, {"year": 2014}, T, "starts_on"),
    (activities, {"region": REGION}, T, "region"),
    (activities, {"partner": PARTNER}, T, "partner"),
    (activities, {"status": "cancelled"}, T, "status"),
    (activities, {"action_code": ident("action", 3)}, T, "action_code"),
    (activities, {"activity_type": "field_visit"}, T, "activity_type"),
    (activities, {"country": PARTNER}, T, "country"),
    (bookings, {}, B, None),
    (bookings, {"year": 2016}, B, "year"),
    (bookings, {"traveller_id": ident("exp", 3)}, B, "traveller_id"),
    (bookings, {"action_code": "2016-07"}, B, "action_code"),
    (bookings, {"activity_id": ident("act", 7)}, B, "activity_id"),
    (bookings, {"status": "cancelled"}, B, "status"),
    (bookings, {"traveller_kind": "team_member"}, B, "traveller_kind"),
    (itineraries, {}, L, None),
    (itineraries, {"year": 2016}, L, "departs_on"),
    (itineraries, {"traveller_id": ident("exp", 3)}, B, "traveller_id"),
    (itineraries, {"action_code": "2016-07"}, B, "action_code"),
    (itineraries, {"activity_id": ident("act", 7)}, B, "activity_id"),
    (emissions, {}, F, None),
    (emissions, {"year": 2016}, F, "departure_years"),
    (emissions, {"traveller_kind": "team_member"}, F, "traveller_kind"),
    (emissions, {"action_code": "2016-07"}, F, "action_code"),
    (emissions, {"status": "cancelled"}, F, "status"),
    (lots, {}, LOTS, None),
    (lots, {"year": 2016}, LOTS, "purchase_year"),
    (lots, {"registry": "verra"}, LOTS, "registry"),
    (lots, {"status": "open"}, LOTS, None),
]


@pytest.mark.parametrize(
    ("list_page", "filters", "table", "column"),
    CASES,
    ids=[f"{c[0].__name__}-{'-'.join(map(str, c[1].items())) or 'all'}" for c in CASES],
)
async def test_each_filtered_page_reads_through_an_index_and_counts_nothing(
    recorder: PlanRecorder,
    list_page: Callable[..., Awaitable[str]],
    filters: dict[str, Any],
    table: str,
    column: str | None,
) -> None:
    if column:  # the filter has an index of its own (its first key), whichever the planner picks for a page
        assert any(column in key for key in await leading_keys(recorder.pool, table)), (column, table)
    token, pages = "", 0
    while pages < 3:  # the first page and deeper ones (keyset: after the previous page's last key)
        recorder.plans.clear()
        token = await list_page(recorder, token, **filters)
        pages += 1
        sql, plan = recorder.plans[0]  # the page's own statement; any others read the page's rows' details
        name = table.split(".")[1]
        read = [n for n in nodes(plan) if n.get("Relation Name") == name and n["Node Type"] in INDEX_SCANS]
        assert read, f"{table} not read through an index: {sql}\n{summary(plan)}"
        for sql, plan in recorder.plans:
            check_plan(sql, plan, table)
        if not token:
            break
    assert all(e.upper().startswith("EXPLAIN (FORMAT JSON) SELECT 1 ") for e in recorder.estimates), recorder.estimates


@pytest.mark.parametrize("filters", [{}, {"year": 2015}, {"partner": PARTNER}, {"theme": "policy_development"}])
async def test_a_requests_total_is_the_planners_estimate_beyond_the_first_page(
    recorder: PlanRecorder, filters: dict[str, Any]
) -> None:
    """ListRequests' total, as its proto comment says: more than one page of matches gives the planner's
    estimate (from the analysed table: near the true count, never under the rows known), not a count."""
    queries = RequestsQueries(recorder.pool)
    page, token, total = await queries.page(filters, "", 20)
    where, args = ["true"], []
    for column, value in filters.items():  # the true count, to compare with: the test counts, the page does not
        args.append(value)
        where.append(
            {"year": "extract(year FROM received_on) = $1", "theme": "$1 = ANY(themes)"}.get(column, f"{column} = $1")
        )
    matches = await recorder.pool.fetchval(
        f"SELECT count(*) FROM requests_views.requests WHERE {' AND '.join(where)}", *args
    )
    assert len(page) == 20 and token and matches > 20
    assert total >= 21 and matches / 2 <= total <= matches * 2, (total, matches)
    _, _, later = await queries.page(filters, token, 20)
    assert later >= 20 and matches / 2 <= later <= matches * 2, (later, matches)


async def test_a_requests_total_is_exact_when_the_first_page_holds_every_match(recorder: PlanRecorder) -> None:
    queries = RequestsQueries(recorder.pool)
    matches = await recorder.pool.fetchval(
        "SELECT count(*) FROM requests_views.requests WHERE partner = $1 AND received_on < '2010-01-01'", PARTNER
    )
    assert 0 < matches < 500
    page, token, total = await queries.page({"partner": PARTNER, "year": 2009}, "", 500)
    assert (len(page), token, total) == (matches, "", matches)
