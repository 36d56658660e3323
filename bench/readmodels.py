"""Bench set-up for `python -m bench queries`: read-model rows generated straight into the tables with COPY
(no event, no projection), at a multiple of the 2017 scenario's volume or at a fixed row count.

The volume of 1x is what scenarios/2017.yaml holds (its requests, actions, activities, experts, deployments,
flights and team, 2009-2017); k x puts k times as many rows over the same years, more in later ones (the
programme grew). Themes follow a skewed distribution (a few themes are common), travellers too (some
experts fly far more than others); a few percent of rows are cancelled, deactivated or withdrawn.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from datetime import date, timedelta
from decimal import Decimal
from functools import cache
from itertools import accumulate
from pathlib import Path
from typing import Any

import asyncpg
import yaml

from services.kernel import reference
from services.kernel.db import init_connection
from services.stats.expert_pool import pool_changes

SCENARIO = Path(__file__).resolve().parent.parent / "scenarios" / "2017.yaml"
YEARS = tuple(range(2009, 2018))
YEAR_WEIGHTS = tuple(1 + 0.25 * i for i in range(len(YEARS)))  # later years hold more
STATUSES = ("received", "assessed", "approved", "rejected", "withdrawn")
STATUS_WEIGHTS = (2, 3, 80, 10, 5)


@cache
def scenario() -> dict[str, Any]:
    return yaml.load(SCENARIO.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


@cache
def base_counts() -> dict[str, int]:
    """1x: the rows the 2017 scenario gives each kind of thing."""
    d = scenario()
    return {
        "requests": len(d["requests"]),
        "actions": len(d["actions"]),
        "activities": sum(len(a.get("activities", [])) for a in d["actions"]),
        "experts": len(d["experts"]),
        "deployments": len(d["deployments"]),
        "bookings": len(d["flights"]),
        "team": len(d["team"]),
        "offsets": max(len(d.get("offsets", [])), 1),
    }


@cache
def partners() -> tuple[tuple[str, str], ...]:
    """(partner, region) of the scenario's requests."""
    d = scenario()
    return tuple(sorted({(r["partner"], reference.region_of(r["partner"]) or "") for r in d["requests"]}))


class Gen:
    """Random values with the bench's distributions (seeded: the same rows every run). Dates, theme sets and
    statuses are drawn from pools sampled once from their distributions (a million rows in seconds)."""

    POOL_BITS = 13  # pools of 8,192 draws

    def __init__(self, seed: int = 2017) -> None:
        self.rng = random.Random(seed)
        self.themes = list(reference.themes())
        theme_weights = list(accumulate(1 / (i + 1) for i in range(len(self.themes))))  # Zipf-like
        year_weights = list(accumulate(YEAR_WEIGHTS))
        size = 1 << self.POOL_BITS
        years = self.rng.choices(YEARS, cum_weights=year_weights, k=size)
        self.days = [date(y, 1, 1) + timedelta(days=self.rng.randrange(365)) for y in years]
        self.theme_sets = [
            sorted(set(self.rng.choices(self.themes, cum_weights=theme_weights, k=self.rng.randint(1, 3))))
            for _ in range(size)
        ]
        self.statuses = self.rng.choices(STATUSES, cum_weights=list(accumulate(STATUS_WEIGHTS)), k=size)
        self.airports = list(reference.airports())[:400]

    def _draw(self) -> int:
        return self.rng.getrandbits(self.POOL_BITS)

    def day(self, year: int | None = None) -> date:
        if year:
            return date(year, 1, 1) + timedelta(days=self.rng.randrange(365))
        return self.days[self._draw()]

    def some_themes(self) -> list[str]:
        return self.theme_sets[self._draw()]

    def status(self) -> str:
        return self.statuses[self._draw()]

    def skewed(self, n: int) -> int:
        """An index in range(n), low ones far more often (a traveller's share of the bookings)."""
        return min(int(self.rng.paretovariate(1.2)) - 1, n - 1) if n > 1 else 0

    def maybe(self, p: float, value: Any) -> Any:
        return value if self.rng.random() < p else None


def ident(kind: str, i: int) -> str:
    return f"{kind}-{i:08d}"


Rows = Callable[[Gen, int, dict[str, int]], Iterable[tuple[Any, ...]]]


def _requests(g: Gen, n: int, c: dict[str, int]) -> Iterator[tuple[Any, ...]]:
    for i in range(n):
        p, region = g.rng.choice(partners())
        status = g.status()
        yield (ident("req", i), p, "country", p, region, "ministry", "ministry", g.day(), "title", g.some_themes(),
               status, status == "approved", "DCI" if status == "approved" else "", [])  # fmt: skip


def _experts(g: Gen, n: int, c: dict[str, int]) -> Iterator[tuple[Any, ...]]:
    backgrounds, genders = list(reference.expert_backgrounds()), reference.genders()
    for i in range(n):
        on = g.day()
        gone = g.maybe(0.08, on + timedelta(days=900))
        yield (ident("exp", i), "sealed", g.rng.choice(genders[:2]), g.rng.choice(backgrounds),
               g.rng.choice(partners())[0], g.some_themes(), on, gone, None)  # fmt: skip


def _deployments(g: Gen, n: int, c: dict[str, int]) -> Iterator[tuple[Any, ...]]:
    for i in range(n):
        on = g.day()
        yield (ident("dep", i), ident("exp", g.skewed(c["experts"])), f"{on.year}-{g.rng.randrange(99):02d}",
               ident("act", g.rng.randrange(c["activities"])), on, on + timedelta(days=4),
               g.maybe(0.03, on - timedelta(days=10)), False)  # fmt: skip


def _actions(g: Gen, n: int, c: dict[str, int]) -> Iterator[tuple[Any, ...]]:
    for i in range(n):
        on = g.day()
        p, region = g.rng.choice(partners())
        closed = g.maybe(0.6, on + timedelta(days=700))
        yield (ident("action", i), ident("req", g.rng.randrange(c["requests"])), p, "country", p, region,
               g.some_themes(), "title", 1, on.year, i, on, "closed" if closed else "open", on, closed)  # fmt: skip


def _activities(g: Gen, n: int, c: dict[str, int]) -> Iterator[tuple[Any, ...]]:
    types = list(reference.activity_types())
    for i in range(n):
        on = g.day()
        p, region = g.rng.choice(partners())
        status = g.rng.choices(("planned", "held", "cancelled"), (10, 85, 5))[0]
        yield (ident("act", i), ident("action", g.rng.randrange(c["actions"])), i % 7 + 1, 1, status, "title",
               g.rng.choice(types), on, on + timedelta(days=2), p, "city", g.rng.choice(g.airports), p, region,
               10, 12, 0, on if status == "cancelled" else None)  # fmt: skip


def _bookings(g: Gen, n: int, c: dict[str, int]) -> Iterator[tuple[Any, ...]]:
    experts, team = c["experts"], c["team"]
    for i in range(n):
        on = g.day()
        member = g.rng.random() < 0.3
        who = ident("tm", g.skewed(team)) if member else ident("exp", g.skewed(experts))
        cancelled = g.rng.random() < 0.05
        yield (ident("bk", i), 1, who, "team_member" if member else "expert", f"{on.year}-{g.rng.randrange(99):02d}",
               ident("act", g.rng.randrange(c["activities"])), "economy", "600.00", "EUR", on - timedelta(days=30),
               "cancelled" if cancelled else "booked", 0, None, on if cancelled else None, None, on, on.year,
               Decimal("2400.000"))  # fmt: skip


def _legs(g: Gen, n: int, c: dict[str, int]) -> Iterator[tuple[Any, ...]]:
    for i in range(n):
        on = g.day()
        a, b = g.rng.sample(g.airports, 2)
        yield ident("bk", i), 1, a, b, on, Decimal("1200.000")
        yield ident("bk", i), 2, b, a, on + timedelta(days=5), Decimal("1200.000")


def _emissions(g: Gen, n: int, c: dict[str, int]) -> Iterator[tuple[Any, ...]]:
    for i in range(n):
        on = g.day()
        legs = [{"origin": "VIE", "destination": "SJO", "departs_on": d.isoformat(), "kg_co2e": "900"}
                for d in (on, on + timedelta(days=g.rng.choice((5, 200)))) ]  # fmt: skip
        yield (ident("bk", i), f"emissions-{i}", 1, g.rng.choices(("recorded", "reversed", "cancelled"), (93, 2, 5))[0],
               ident("exp", g.skewed(c["experts"])), g.rng.choice(("expert", "team_member")),
               f"{on.year}-{g.rng.randrange(99):02d}", None, "economy", on.year, Decimal(9000), Decimal(5600),
               Decimal(1800), "desnz", "desnz-2025", 2025, True, True, legs, on, 1, 0)  # fmt: skip


def _lots(g: Gen, n: int, c: dict[str, int]) -> Iterator[tuple[Any, ...]]:
    for i in range(n):
        on = g.day()
        left = g.rng.choice((0, 100))
        yield (ident("lot", i), 1, g.rng.choice(("gold_standard", "verra")), "project", on.year - 1, 1000,
               1000 - left, left, Decimal("4.2"), Decimal(4200), "EUR", on, on.year)  # fmt: skip


# the services' read models the Lists page over: (table, the rows of 1x it gets, rows, columns)
LIST_TABLES: dict[str, tuple[str, Rows, tuple[str, ...]]] = {
    "requests_views.requests": ("requests", _requests, ()),
    "experts_views.experts": ("experts", _experts, ()),
    "experts_views.deployments": ("deployments", _deployments, ()),
    "actions_views.actions": ("actions", _actions, ()),
    "actions_views.activities": ("activities", _activities, ()),
    "logistics_views.bookings": ("bookings", _bookings, ()),
    "logistics_views.booking_legs": ("bookings", _legs, ()),  # two legs a booking
    "carbon_views.flight_emissions": ("bookings", _emissions, ()),
    "carbon_views.offset_lots": ("offsets", _lots, ()),
}


def counts_at(scale: float) -> dict[str, int]:
    return {k: max(round(v * scale), 1) for k, v in base_counts().items()}


@asynccontextmanager
async def indexes_built_after(conn: asyncpg.Connection, table: str) -> AsyncIterator[None]:
    """A bulk load: the table's indexes but its primary key dropped, then built again from their definitions
    once the rows are in (one sorted build each instead of an insertion per row)."""
    schema, name = table.split(".")
    defs = await conn.fetch(
        "SELECT i.indexname, i.indexdef FROM pg_indexes i WHERE i.schemaname = $1 AND i.tablename = $2 "
        "AND NOT EXISTS (SELECT 1 FROM pg_constraint c "
        "WHERE c.conname = i.indexname AND c.connamespace = $1::regnamespace)",
        schema,
        name,
    )
    for d in defs:
        await conn.execute(f"DROP INDEX {schema}.{d['indexname']}")
    try:
        yield
    finally:
        for d in defs:
            await conn.execute(d["indexdef"])


async def copy_rows(
    conn: asyncpg.Connection, table: str, rows: Iterable[tuple[Any, ...]], columns: tuple[str, ...]
) -> int:
    """COPY `rows` into `table` (schema-qualified); the column order is the table's unless `columns`."""
    schema, name = table.split(".")
    result = await conn.copy_records_to_table(
        name, schema_name=schema, records=rows, columns=list(columns) if columns else None
    )
    return int(result.split()[-1])


async def load_lists(
    conn: asyncpg.Connection, counts: dict[str, int], only: Iterable[str] = (), seed: int = 2017
) -> dict[str, int]:
    """Empty the List tables (or `only` those) and fill them with `counts` rows of each kind, then VACUUM
    ANALYZE them (as autovacuum would after such a load: statistics, and the visibility map). The rows
    each table got."""
    g = Gen(seed)
    loaded: dict[str, int] = {}
    # COPY sends binary: jsonb (the emissions' segments) needs a binary codec; the kernel's comes back after
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda v: b"\x01" + json.dumps(v).encode(),
        decoder=lambda b: json.loads(b[1:]),
        schema="pg_catalog",
        format="binary",
    )
    for table, (kind, rows, columns) in LIST_TABLES.items():
        if only and table not in only:
            continue
        await conn.execute(f"TRUNCATE {table}")
        async with indexes_built_after(conn, table):
            loaded[table] = await copy_rows(conn, table, rows(g, counts[kind], counts), columns)
        await conn.execute(f"VACUUM ANALYZE {table}")
    await init_connection(conn)
    return loaded


# --- the stats service's facts (services/stats/projections.py), for its year query --------------------------


def stats_rows(counts: dict[str, int], seed: int = 2017) -> dict[str, list[tuple[Any, ...]]]:
    """The facts tables' rows (by table name, without the schema) for `counts` of each kind."""
    g = Gen(seed)
    out: dict[str, list[tuple[Any, ...]]] = {}

    def add(table: str, *row: Any) -> None:
        out.setdefault(table, []).append(row)

    types, backgrounds = list(reference.activity_types()), list(reference.expert_backgrounds())
    for i in range(counts["requests"]):
        add("requests", ident("req", i), g.rng.choice(partners())[0], g.day())
    for i in range(counts["actions"]):
        p, region = g.rng.choice(partners())
        add("actions", ident("action", i), p, "country", region, g.day())
    for i in range(counts["activities"]):
        p, region = g.rng.choice(partners())
        on, action = g.day(), ident("action", g.rng.randrange(counts["actions"]))
        add("activities_planned", ident("act", i), action, p, region, on)
        fate = g.rng.random()
        if fate < 0.85:
            add("activities_held", ident("act", i), action, g.rng.choice(types), on, on + timedelta(days=2), p, p,
                region, g.rng.randint(3, 20), g.rng.randint(3, 20), 0)  # fmt: skip
        elif fate < 0.9:
            add("activities_cancelled", ident("act", i), action, on)
    pool: dict[date, int] = {}
    for i in range(counts["experts"]):
        on = g.day()
        gender, background = g.rng.choice(("female", "male")), g.rng.choice(backgrounds)
        gone = g.maybe(0.08, on + timedelta(days=900))
        add("experts", ident("exp", i), 1, gender, background, on, gone)
        for day, n in pool_changes(on, gone).items():  # what the projection keeps beside each expert's row
            pool[day] = pool.get(day, 0) + n
    for day, n in sorted(pool.items()):
        if n:
            add("expert_pool_days", day, n)
    questions = ("approach_beneficial", "skills_enhanced", "difference_in_work", "well_organised")
    for i in range(counts["deployments"]):
        on = g.day()
        add("deployments", ident("dep", i), ident("exp", g.skewed(counts["experts"])),
            ident("action", g.rng.randrange(counts["actions"])), ident("act", g.rng.randrange(counts["activities"])),
            on, on + timedelta(days=4))  # fmt: skip
        if g.rng.random() < 0.03:
            add("deployments_cancelled", ident("dep", i), on - timedelta(days=10))
        elif g.rng.random() < 0.8:
            for q in questions:
                add("evaluation_answers", ident("eval", i), q, g.rng.randint(2, 5), ident("dep", i), on)
    for i in range(counts["team"]):
        on = g.day()
        add("team_joins", ident("tm", i), on)
        if g.rng.random() < 0.2:
            add("team_leaves", ident("tm", i), on + timedelta(days=400))
    for i in range(counts["bookings"]):
        on, member = g.day(), g.rng.random() < 0.3
        who = ident("tm", g.skewed(counts["team"])) if member else ident("exp", g.skewed(counts["experts"]))
        kind, action = "team_member" if member else "expert", f"{on.year}-{g.rng.randrange(99):02d}"
        add("itineraries", ident("bk", i), 1, who, kind)
        a, b = g.rng.sample(g.airports, 2)
        for leg, (o, d, day) in enumerate(((a, b, on), (b, a, on + timedelta(days=5))), 1):
            add("itinerary_legs", ident("bk", i), 1, leg, o, d, day, Decimal("1200.000"))
            add("emission_legs", f"emissions-{i}", 1, leg, ident("bk", i), 1, Decimal(900), day.year, kind, action)
        if g.rng.random() < 0.05:
            add("bookings_cancelled", ident("bk", i), on - timedelta(days=3))
    for i in range(counts["offsets"]):
        on = g.day()
        add("offsets_purchased", ident("lot", i), 3750, on, "gold_standard", "project", on.year - 1)
        add("offsets_retired", f"lot-{i}", 2, ident("lot", i), 3000, on.year, on)
    return out


async def load_stats(conn: asyncpg.Connection, schema: str, counts: dict[str, int]) -> dict[str, int]:
    """Empty the stats facts tables in `schema` this bench fills and fill them; VACUUM ANALYZE them."""
    loaded: dict[str, int] = {}
    for table, rows in stats_rows(counts).items():
        await conn.execute(f"TRUNCATE {schema}.{table}")
        loaded[table] = await copy_rows(conn, f"{schema}.{table}", rows, ())
        await conn.execute(f"VACUUM ANALYZE {schema}.{table}")
    return loaded
