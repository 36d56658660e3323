"""`python -m bench queries` (and a part of `make bench`): what reading costs as history grows.

In a database of its own, the read models are filled straight with COPY (bench/readmodels.py) at 1x, 10x
and 100x the 2017 scenario's volume, then with 1,000,000 requests, experts and bookings (and the bookings'
2,000,000 legs). At each size: the stats year query (StatsQueries.year_at_a_glance(2017), the query
function GetYearAtAGlance calls, without gRPC) and List pages through the query functions the APIs call
(RequestsQueries.page, ExpertsQueries.list_experts, LogisticsQueries.list_bookings; 50 rows, the page's
total included), first and deep pages, with and without a filter (requests by year, experts by theme,
bookings by traveller). A deep page starts after the key of the row halfway through the list (what a
client holds after paging there). Each figure: p50 and p99 of N calls in a row on one connection, after
a few unmeasured ones.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from bench.common import percentile
from bench.readmodels import counts_at, ident, load_lists, load_stats
from bench.report import _target
from services.experts.projections import Roster
from services.experts.queries import ExpertsQueries, ListExpertsQuery
from services.kernel import paging
from services.kernel.db import Pool, create_pool
from services.logistics.projections import BookingsView
from services.logistics.queries import ListBookings, LogisticsQueries
from services.requests.projections import RequestRegister
from services.requests.queries import RequestsQueries
from services.stats.base import SCHEMA as STATS
from services.stats.projections import StatsActions, StatsCarbon, StatsExperts, StatsLogistics, StatsRequests
from services.stats.queries import StatsQueries

SCALES = (("1x", 1.0), ("10x", 10.0), ("100x", 100.0))
MILLION = 1_000_000
YEAR = 2017
THEME = "policy_development"  # a theme of middling frequency (the 14th of 15 in bench/readmodels.py's order)
TRAVELLER = ident("exp", 3)  # a frequent flyer: many bookings to page through
LIST_TABLES = ("requests_views.requests", "experts_views.experts", "logistics_views.bookings")
LEGS = "logistics_views.booking_legs"  # a page of bookings reads its legs: two a booking
STATS_P99_AT_100X_MS, PAGE_P99_AT_1M_MS = 50.0, 20.0  # the targets


async def timed(call: Callable[[], Awaitable[object]], n: int, warmup: int = 5) -> dict[str, float]:
    for _ in range(warmup):
        await call()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - t0) * 1000)
    return {"p50": round(percentile(samples, 50), 3), "p99": round(percentile(samples, 99), 3), "samples": n}


async def halfway_key(pool: Pool, sql: str, *args: Any) -> list[Any]:
    """The sort key of the row halfway through a list (bench set-up: an OFFSET, never measured)."""
    n = await pool.fetchval(f"SELECT count(*) FROM ({sql}) s", *args)
    row = await pool.fetchrow(f"{sql} OFFSET {n // 2} LIMIT 1", *args)
    return list(row.values())


async def list_cases(pool: Pool) -> dict[str, Callable[[], Awaitable[object]]]:
    """The pages measured, by name: first and deep, without and with a filter."""
    rq, eq, lq = RequestsQueries(pool), ExpertsQueries(pool), LogisticsQueries(pool)
    r_order = "SELECT received_on, request_id FROM requests_views.requests"
    r_year = f"{r_order} WHERE received_on BETWEEN make_date($1, 1, 1) AND make_date($1, 12, 31)"
    e_order = "SELECT registered_on, expert_id FROM experts_views.experts"
    b_order = "SELECT booking_id FROM logistics_views.bookings"
    tokens = {
        "requests": await halfway_key(pool, f"{r_order} ORDER BY 1, 2"),
        "requests_year": await halfway_key(pool, f"{r_year} ORDER BY 1, 2", YEAR),
        "experts": await halfway_key(pool, f"{e_order} ORDER BY 1, 2"),
        "experts_theme": await halfway_key(pool, f"{e_order} WHERE themes @> $1 ORDER BY 1, 2", [THEME]),
        "bookings": await halfway_key(pool, f"{b_order} ORDER BY 1"),
        "bookings_traveller": await halfway_key(pool, f"{b_order} WHERE traveller_id = $1 ORDER BY 1", TRAVELLER),
    }
    t = {k: paging.encode_key(v) for k, v in tokens.items()}
    year, none = {"year": YEAR}, {"year": 0}
    return {
        "requests first": lambda: rq.page(none, "", 50),
        "requests deep": lambda: rq.page(none, t["requests"], 50),
        f"requests year={YEAR} first": lambda: rq.page(year, "", 50),
        f"requests year={YEAR} deep": lambda: rq.page(year, t["requests_year"], 50),
        "experts first": lambda: eq.list_experts(ListExpertsQuery()),
        "experts deep": lambda: eq.list_experts(ListExpertsQuery(page_token=t["experts"])),
        f"experts theme={THEME} first": lambda: eq.list_experts(ListExpertsQuery(theme=THEME)),
        f"experts theme={THEME} deep": lambda: eq.list_experts(
            ListExpertsQuery(theme=THEME, page_token=t["experts_theme"])
        ),
        "bookings first": lambda: lq.list_bookings(ListBookings()),
        "bookings deep": lambda: lq.list_bookings(ListBookings(page_token=t["bookings"])),
        f"bookings traveller={TRAVELLER} first": lambda: lq.list_bookings(ListBookings(traveller_id=TRAVELLER)),
        f"bookings traveller={TRAVELLER} deep": lambda: lq.list_bookings(
            ListBookings(traveller_id=TRAVELLER, page_token=t["bookings_traveller"])
        ),
    }


async def measure_lists(pool: Pool, n: int) -> dict[str, Any]:
    """Every case's p50/p99; at the top, the slowest case's (the figure the target is about)."""
    cases = {name: await timed(call, n) for name, call in (await list_cases(pool)).items()}
    worst = max(cases.values(), key=lambda c: c["p99"])
    return {"p50": worst["p50"], "p99": worst["p99"], "cases": cases}


@asynccontextmanager
async def bench_pool(dsn: str) -> AsyncIterator[Pool]:
    """A pool on a database of its own in the stack's PostgreSQL (dropped at the end), with the read models
    measured set up in it: the other benchmarks' tables are not touched."""
    name = f"bench_queries_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(dsn)
    await admin.execute(f"CREATE DATABASE {name}")
    try:
        pool = await create_pool(urlsplit(dsn)._replace(path=f"/{name}").geturl(), max_size=2)
        try:
            async with pool.acquire() as conn:
                for p in (RequestRegister(), Roster(), BookingsView()):
                    await p.setup(conn)
                for p in (StatsRequests(), StatsActions(), StatsExperts(), StatsLogistics(), StatsCarbon()):
                    await p.setup(conn)
            yield pool
        finally:
            await pool.close()
    finally:
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        await admin.close()


async def run(dsn: str, quick: bool = False) -> dict[str, Any]:
    """The figures at each size; `quick`: fewer calls per figure, and no 1M (for trying it out)."""
    n = 60 if quick else 200
    out: dict[str, Any] = {"stats_query_ms": {}, "list_page_ms": {}, "rows": {}}
    async with bench_pool(dsn) as pool:
        stats = StatsQueries(pool)
        for label, scale in SCALES:
            counts = counts_at(scale)
            print(f"queries at {label}: {counts} ...", flush=True)
            async with pool.acquire() as conn:
                rows = await load_lists(conn, counts, only=(*LIST_TABLES, LEGS))
                rows.update({f"{STATS}.{t}": c for t, c in (await load_stats(conn, STATS, counts)).items()})
            out["rows"][label] = rows
            out["stats_query_ms"][label] = await timed(lambda: stats.year_at_a_glance(YEAR), n)
            out["list_page_ms"][label] = await measure_lists(pool, n)
        if not quick:
            print(f"queries at {MILLION:,} rows each of {', '.join(LIST_TABLES)} ...", flush=True)
            counts = {**counts_at(100), "requests": MILLION, "experts": MILLION, "bookings": MILLION}
            async with pool.acquire() as conn:
                out["rows"]["1m"] = await load_lists(conn, counts, only=(*LIST_TABLES, LEGS))
            out["list_page_ms_1m"] = await measure_lists(pool, n)
    out["query_growth"] = growth(out)
    return out


def _ratio(a: float, b: float) -> float:
    return round(a / b, 2) if b else float("nan")


def growth(out: dict[str, Any]) -> dict[str, Any]:
    """Each figure's p50 and p99 at 10x, 100x (and 1M rows) over its own at 1x."""
    g: dict[str, Any] = {}
    base = out["stats_query_ms"]["1x"]
    g["stats_query"] = {
        f"{s}/1x": {p: _ratio(out["stats_query_ms"][s][p], base[p]) for p in ("p50", "p99")} for s in ("10x", "100x")
    }
    sizes = {s: out["list_page_ms"][s] for s in ("10x", "100x")}
    if "list_page_ms_1m" in out:
        sizes["1m"] = out["list_page_ms_1m"]
    first = out["list_page_ms"]["1x"]["cases"]
    g["list_pages"] = {
        case: {
            f"{s}/1x": {p: _ratio(fig["cases"][case][p], first[case][p]) for p in ("p50", "p99")}
            for s, fig in sizes.items()
        }
        for case in first
    }
    return g


def targets(out: dict[str, Any]) -> list[dict[str, Any]]:
    t = [_target("stats year query p99 at 100x (ms)", out["stats_query_ms"]["100x"]["p99"], "<", STATS_P99_AT_100X_MS)]
    if "list_page_ms_1m" in out:
        t.append(
            _target("slowest List page p99 at 1M rows (ms)", out["list_page_ms_1m"]["p99"], "<", PAGE_P99_AT_1M_MS)
        )
    return t
