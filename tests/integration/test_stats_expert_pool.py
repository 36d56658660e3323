"""The expert pool kept by day (services/stats/expert_pool.py) against the real PostgreSQL: whatever order the
experts' events arrive in, however often, the year query's pool is the count of the experts registered and not
deactivated at the end of the year (the count it made over every expert before), and the table it sums is
rebuilt the same, or filled from the experts when it is new beside them.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from datetime import date

import pytest
from history import History, sealed

from services.experts.events import ExpertDeactivated, ExpertRegistered
from services.kernel.db import Pool
from services.kernel.envelope import Envelope, registry, topic_for
from services.kernel.projection import apply_batch, rebuild
from services.stats.projections import StatsExperts, all_projections
from services.stats.queries import StatsQueries

pytestmark = pytest.mark.integration

D = date.fromisoformat
YEARS = range(2012, 2019)


def registered(expert_id: str, on: str) -> ExpertRegistered:
    return ExpertRegistered(
        expert_id=expert_id,
        name=sealed(expert_id, expert_id),
        gender="female",
        background="academia",
        nationality="FR",
        registered_on=D(on),
    )


def gone(expert_id: str, on: str) -> ExpertDeactivated:
    return ExpertDeactivated(expert_id=expert_id, reason="retired", deactivated_on=D(on))


def the_experts() -> list[Envelope]:
    h = History()
    h.add("exp-a", registered("exp-a", "2015-03-01"))
    h.add("exp-b", registered("exp-b", "2015-06-01"))
    h.add("exp-b", gone("exp-b", "2016-05-01"))
    h.add("exp-c", registered("exp-c", "2014-01-01"))
    h.add("exp-c", gone("exp-c", "2016-12-31"))  # the last day of 2016: not in its pool
    h.add("exp-d", gone("exp-d", "2015-01-01"))  # deactivated before it was registered: never in the pool
    h.add("exp-d", registered("exp-d", "2015-07-01"))
    h.add("exp-e", registered("exp-e", "2013-01-01"))
    h.add("exp-e", registered("exp-e", "2016-09-01"))  # registered again: the date of the one applied last
    h.add("exp-f", registered("exp-f", "2015-03-01"))  # the day exp-a was registered
    h.add("exp-f", gone("exp-f", "2015-03-01"))  # and gone that day: both changes of 2015-03-01 cancel out
    return h.envelopes


async def set_up(pool: Pool, views: str) -> StatsExperts:
    """Every stats table in `views` (the year query reads them all); the experts' projection, which is fed."""
    async with pool.acquire() as conn:
        for p in all_projections(views):
            await p.setup(conn)
    return StatsExperts(views)


@pytest.fixture
async def experts(pool: Pool, schema: str) -> AsyncIterator[StatsExperts]:
    projection = await set_up(pool, f"{schema}_stats")
    try:
        yield projection
    finally:
        async with pool.acquire() as conn:
            await conn.execute(f"DROP SCHEMA IF EXISTS {projection.schema} CASCADE")
            await conn.execute(f"DELETE FROM {projection.kernel.tracking} WHERE projection = $1", projection.name)


async def feed(pool: Pool, projection: StatsExperts, envelopes: list[Envelope]) -> None:
    r = await apply_batch(pool, [projection], [(topic_for(e.source), e.to_bytes()) for e in envelopes])
    assert not r.dead, r.dead


async def counted(pool: Pool, projection: StatsExperts) -> dict[int, int]:
    """The pool at the end of each year counted over every expert's row (the year query's count before)."""
    return {
        y: await pool.fetchval(
            f"""SELECT count(*) FROM {projection.t("experts")} WHERE registered_on <= make_date($1, 12, 31)
            AND (deactivated_on IS NULL OR deactivated_on > make_date($1, 12, 31))""",
            y,
        )
        for y in YEARS
    }


async def figures(pool: Pool, projection: StatsExperts) -> dict[int, tuple[int, int]]:
    q = StatsQueries(pool, projection.schema)
    return {y: (g.expert_pool, g.expert_pool_previous) for y in YEARS for g in [await q.year_at_a_glance(y)]}


async def pool_rows(pool: Pool, projection: StatsExperts) -> list[tuple[date, int]]:
    return [tuple(r) for r in await pool.fetch(f"SELECT * FROM {projection.t('expert_pool_days')} ORDER BY day")]


async def test_the_pool_is_the_count_of_the_experts_in_any_order(
    pool: Pool, schema: str, experts: StatsExperts
) -> None:
    envelopes = the_experts()
    await feed(pool, experts, envelopes)
    want = {2012: 0, 2013: 0, 2014: 1, 2015: 3, 2016: 2, 2017: 2, 2018: 2}  # exp-e last registered in 2016
    assert await counted(pool, experts) == want
    assert await figures(pool, experts) == {y: (n, want.get(y - 1, 0)) for y, n in want.items()}
    rows = await pool_rows(pool, experts)
    assert (D("2015-03-01"), 1) in rows  # exp-a's +1 and exp-f's +1 -1
    assert all(n for _, n in rows)
    for n, order in enumerate([envelopes[::-1], random.Random(3).sample(envelopes, k=len(envelopes))]):
        other = await set_up(pool, f"{schema}_order{n}")
        try:
            await feed(pool, other, order)
            # and every event applied again past the tracking table
            async with pool.acquire() as conn, conn.transaction():
                for env in order:
                    await other.apply(conn, env, registry.decode(env))
            count = await counted(pool, other)
            assert await figures(pool, other) == {y: (count[y], count.get(y - 1, 0)) for y in YEARS}
            assert all(n for _, n in await pool_rows(pool, other))
        finally:
            async with pool.acquire() as conn:
                await conn.execute(f"DROP SCHEMA {other.schema} CASCADE")
                await conn.execute(f"DELETE FROM {other.kernel.tracking} WHERE projection = $1", other.name)


async def test_a_rebuild_and_a_new_table_give_the_same_pool(pool: Pool, experts: StatsExperts) -> None:
    envelopes = the_experts()
    await feed(pool, experts, envelopes + envelopes[:4])  # with redeliveries
    live_rows, live = await pool_rows(pool, experts), await figures(pool, experts)
    assert live_rows

    async def read_all() -> AsyncIterator[Envelope]:
        for env in envelopes:
            yield env

    assert await rebuild(pool, experts, [read_all]) == len(envelopes)
    assert await pool_rows(pool, experts) == live_rows
    assert await figures(pool, experts) == live
    # this table deployed over experts already there: filled from them when set up
    await pool.execute(f"DROP TABLE {experts.t('expert_pool_days')}")
    async with pool.acquire() as conn:
        await experts.setup(conn)
    assert await pool_rows(pool, experts) == live_rows
    assert await figures(pool, experts) == live
