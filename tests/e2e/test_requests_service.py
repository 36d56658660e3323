"""The requests service as an OS process, with its relay and projection, through crashes and a broker restart."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import date, timedelta

import pytest
from support import Child, eventually, start_service

from services.kernel import bus
from services.kernel.bus import group_lag
from services.kernel.db import Pool, create_pool
from services.kernel.runner import projection_group
from services.kernel.settings import Settings
from services.kernel.store import EventStore, Metadata
from services.ops.devstack import free_port
from services.requests.events import RequestReceived

pytestmark = pytest.mark.e2e
GROUP = projection_group("requests")
TOPICS = ("mieux.requests.events",)


@pytest.fixture(scope="module")
def port() -> int:
    return free_port()


@pytest.fixture
def service_env(stack_env, port) -> dict[str, str]:
    return {
        **stack_env,
        "MIEUX_REQUESTS_PORT": str(port),
        "MIEUX_REQUESTS_ADDR": f"127.0.0.1:{port}",
        "MIEUX_LOG_LEVEL": "WARNING",
    }


async def write_requests(n: int, start: date = date(2009, 1, 1)) -> None:
    """As the requests service writes them: under its own database role, which owns its schema (a store set
    up by the superuser would be the superuser's, and the service could not write to it)."""
    pool = await create_pool(Settings().dsn("requests"))
    try:
        await _write_requests(pool, n, start)
    finally:
        await pool.close()


async def _write_requests(pool: Pool, n: int, start: date) -> None:
    store = EventStore(pool, "requests")
    await store.setup()
    meta = Metadata(actor="test-loader")

    async def one(i: int) -> None:
        rid = f"req-load-{i}-{start.isoformat()}"
        e = RequestReceived(
            request_id=rid,
            partner="CR",
            partner_kind="country",
            partner_name="Costa Rica",
            institution="DGME",
            institution_type="agency",
            received_on=start + timedelta(days=i % 3000),
            title=f"load {i}",
        )
        await store.append(rid, 0, [e], meta)

    for chunk in range(0, n, 200):
        await asyncio.gather(*[one(i) for i in range(chunk, min(chunk + 200, n))])


async def expected_per_year(pool) -> dict[int, int]:
    rows = await pool.fetch(
        "SELECT extract(year FROM (data->>'received_on')::date)::int AS year, count(*) AS n "
        "FROM requests.events WHERE event_type = 'RequestReceived' GROUP BY 1"
    )
    return {r["year"]: r["n"] for r in rows}


async def live_per_year(pool) -> dict[int, int]:
    rows = await pool.fetch("SELECT year, count FROM requests_views.requests_per_year")
    return {r["year"]: r["count"] for r in rows}


async def tracked(pool) -> int:
    """Events of the requests store the requests_per_year projection has applied (0 before the store and
    the projection created their tables, whichever test ran first). Only this store's events: other tests
    publish envelopes straight to the topic."""
    tables = await pool.fetchrow(
        "SELECT to_regclass('requests_projections.tracking') AS t, to_regclass('requests.events') AS e"
    )
    if tables["t"] is None or tables["e"] is None:
        return 0
    return await pool.fetchval(
        "SELECT count(*) FROM requests.events e JOIN requests_projections.tracking t "
        "ON t.projection = 'requests_per_year' AND t.event_id = e.event_id"
    )


async def caught_up(pool) -> bool:
    total = await pool.fetchval("SELECT count(*) FROM requests.events")
    return await tracked(pool) == total and await group_lag(Settings(), GROUP, TOPICS) == 0


async def test_service_killed_mid_stream_and_restarted_gives_exact_counts(pool, service_env, port) -> None:
    already = await tracked(pool)
    await write_requests(20_000)
    total = await pool.fetchval("SELECT count(*) FROM requests.events")
    env = {**service_env, "MIEUX_PROJECTION_BATCH_SIZE": "20", "MIEUX_RELAY_BATCH_SIZE": "100"}
    first = Child(["-m", "services.requests"], env)
    try:

        async def mid_stream() -> bool:
            return already < await tracked(pool) < total - 1000

        await eventually(mid_stream, 60, "the projection to be mid-stream")
        first.kill()
    finally:
        first.stop()
    assert await tracked(pool) < total
    second = await asyncio.to_thread(start_service, "requests", service_env, port)
    try:
        await eventually(lambda: caught_up(pool), 120, "the projection to catch up")
        assert await live_per_year(pool) == await expected_per_year(pool)
    finally:
        assert second.stop() == 0


async def test_rebuild_gives_the_live_read_model(pool, service_env, port) -> None:
    await write_requests(500, start=date(2012, 6, 1))
    service = await asyncio.to_thread(start_service, "requests", service_env, port)
    try:
        await eventually(lambda: caught_up(pool), 60, "the projection to catch up")
        live = await live_per_year(pool)
        assert live == await expected_per_year(pool)
        out = subprocess.run(
            [sys.executable, "-m", "services.ops.cli", "projections", "rebuild", "requests_per_year"],
            env=service_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        assert "rebuilt" in out.stdout
        assert await live_per_year(pool) == live
    finally:
        service.stop()


async def test_broker_restart_then_replay_gives_the_same_read_model(stack, pool, service_env, port) -> None:
    await write_requests(300, start=date(2015, 1, 1))
    service = await asyncio.to_thread(start_service, "requests", service_env, port, MIEUX_LOG_LEVEL="INFO")
    try:
        await eventually(lambda: caught_up(pool), 60, "the projection to catch up")
        before = await live_per_year(pool)
        stack.restart_broker()  # Tansu keeps messages in memory: topics and offsets are gone
        out = subprocess.run(
            [sys.executable, "-m", "services.ops.cli", "replay", "requests", "--from", "1"],
            env=service_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        total = await pool.fetchval("SELECT count(*) FROM requests.events")

        state: dict[str, int] = {}

        async def refilled_and_consumed() -> bool:
            ends = await bus.end_offsets(Settings(), TOPICS[0])
            state.update(on_topic=sum(ends.values()), lag=await group_lag(Settings(), GROUP, TOPICS))
            return state["on_topic"] >= total and state["lag"] == 0

        try:
            await eventually(refilled_and_consumed, 120, "the topic to be refilled and consumed")
        except AssertionError as e:
            raise AssertionError(f"{e}: {state}, {total} events stored") from None
        assert await live_per_year(pool) == before
    finally:
        service.stop()
        print(service.output()[-6000:])
