"""Figure 4: rebuilding the heaviest read model of a service, `request_register`, from N events.

Set-up (not timed): a database of its own in the bench's PostgreSQL, holding the requests service's event
store with N events loaded by COPY: requests received, each assessed about a thousand requests later and
decided (approved, rejected or withdrawn) about three thousand later, as a log interleaves its streams.
Then VACUUM (the first reader would otherwise set every row's hint bits) and CHECKPOINT before each run.

* mieux: `mieux projections rebuild request_register`'s work: the kernel's blue/green `rebuild_beside` of the
  real `RequestRegister` (its next version built in a shadow schema, caught up, swapped in), reading the
  events over gRPC from `EventLog.ReadAll` (eventlog.read_all_source, an ops token). The
  ReadAll server is the kernel's, as every service serves it (GrpcServer, its access rules, its settings),
  in a child process of its own on that database (`python -m bench.rebuild --serve PORT`): the service
  without its relay and consumers, which would publish and consume the N events meanwhile.
* raw: one asyncpg connection reads the rows in pages (position order), decodes their JSON, and writes them
  with executemany (an INSERT per request received, an UPDATE per later event) into a table with the read
  model's columns and indexes, in one transaction as the rebuild; no tracking, no gRPC, no checks.

Both count from the call to its end (N / seconds), one after the other in the same run. The CPU time of
the bench process (the rebuild's client side) and of the ReadAll server process are reported per event.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from bench.common import SAMPLE, cpu_seconds
from services.kernel import eventlog
from services.kernel.bluegreen import rebuild_beside
from services.kernel.db import create_pool
from services.kernel.eventlog import read_all_source
from services.kernel.grpckit import READERS, Access, GrpcServer, run_until_signalled
from services.kernel.importing import COLUMNS as EVENT_COLUMNS
from services.kernel.schemas import kernel_tables
from services.kernel.settings import Settings
from services.kernel.store import EventStore
from services.ops.processes import serving
from services.requests.projections import RequestRegister

ROOT = Path(__file__).resolve().parent.parent
ASSESSED_AFTER = 1000  # a request is assessed this many requests after it was received
DECIDED_AFTER = 3000  # and decided this many after
COPY_CHUNK = 50_000
RAW_PAGE = 2000
START_LIMIT_S = 60.0
COLUMNS = EVENT_COLUMNS[: EVENT_COLUMNS.index("command_id")]  # the events' columns, without a command's
RAW_SQL = """
CREATE SCHEMA IF NOT EXISTS bench_raw;
CREATE TABLE bench_raw.requests (LIKE requests_views.requests INCLUDING ALL);
"""
RAW_INSERT = (
    "INSERT INTO bench_raw.requests (request_id, partner, partner_kind, partner_name, region, institution, "
    "institution_type, received_on, title, themes, status) VALUES ($1, $2, $3, $4, '', $5, $6, $7, $8, $9, "
    "'received') ON CONFLICT (request_id) DO NOTHING"
)
RAW_UPDATE = (
    "UPDATE bench_raw.requests SET status = $2, eligible = coalesce($3, eligible), "
    "instrument = coalesce($4, instrument), reasons = coalesce($5, reasons) WHERE request_id = $1"
)
DECISIONS = (
    ("RequestApproved", {"partner_kind": "country", "region": "eastern_partnership", "approved_on": "2024-05-02"}),
    ("RequestRejected", {"reason": "not eligible", "rejected_on": "2024-05-02"}),
    ("RequestApproved", {"partner_kind": "country", "region": "eastern_partnership", "approved_on": "2024-05-02"}),
    ("RequestWithdrawn", {"reason": "no longer needed", "withdrawn_on": "2024-05-02"}),
)


def the_log(n: int) -> Iterator[tuple[str, int, str, dict[str, Any]]]:
    """N events as (request id, stream version, type, data), in the order they are stored."""
    count, k = 0, 0
    while True:
        steps: list[tuple[int, int]] = [(k, 1)]
        if k >= ASSESSED_AFTER:
            steps.append((k - ASSESSED_AFTER, 2))
        if k >= DECIDED_AFTER:
            steps.append((k - DECIDED_AFTER, 3))
        for i, version in steps:
            rid = f"req-{i:07d}"
            if version == 1:
                yield rid, 1, "RequestReceived", {"request_id": rid, **SAMPLE, "title": f"{SAMPLE['title']} {i}"}
            elif version == 2:
                eligible = i % 5 != 0
                data = {"request_id": rid, "eligible": eligible, "instrument": "ENI" if eligible else None}
                yield (
                    rid,
                    2,
                    "RequestEligibilityAssessed",
                    {**data, "reasons": [] if eligible else ["not covered"], "assessed_on": "2024-03-20"},
                )
            else:
                kind, extra = DECISIONS[i % len(DECISIONS)]
                if kind == "RequestApproved":
                    extra = {**extra, "partner": "MD", "partner_name": SAMPLE["partner_name"], "title": "t"}
                yield rid, 3, kind, {"request_id": rid, **extra}
            count += 1
            if count == n:
                return
        k += 1


async def load(dsn: str, n: int) -> None:
    """The requests service's store with `n` events (COPY), vacuumed: set-up, not timed."""
    pool = await create_pool(dsn, max_size=2)
    try:
        await EventStore(pool, "requests").setup()
        async with pool.acquire() as conn:
            await RequestRegister().setup(conn)
            await conn.execute(RAW_SQL)
    finally:
        await pool.close()
    conn = await asyncpg.connect(dsn)
    try:
        now = datetime.now(UTC)
        records: list[tuple[Any, ...]] = []
        for position, (rid, version, kind, data) in enumerate(the_log(n), start=1):
            corr = str(uuid.uuid4())
            records.append((position, uuid.uuid4(), rid, version, kind, 1, json.dumps(data), now, now, corr, "", "b"))
            if len(records) == COPY_CHUNK:
                await conn.copy_records_to_table("events", schema_name="requests", records=records, columns=COLUMNS)
                records = []
        if records:
            await conn.copy_records_to_table("events", schema_name="requests", records=records, columns=COLUMNS)
        await conn.execute("SELECT setval('requests.events_position_seq', $1)", n)
        await conn.execute("VACUUM (ANALYZE) requests.events")
    finally:
        await conn.close()


async def raw(dsn: str) -> dict[str, float]:
    """Read the rows, executemany into a table with the read model's indexes, in one transaction."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("TRUNCATE bench_raw.requests")
        await conn.execute("CHECKPOINT")
        t0, cpu0 = time.perf_counter(), time.process_time()
        position, total = 0, 0
        async with conn.transaction():
            while True:
                rows = await conn.fetch(
                    "SELECT position, event_type, data::text FROM requests.events WHERE position > $1 "
                    "ORDER BY position LIMIT $2",
                    position,
                    RAW_PAGE,
                )
                if not rows:
                    break
                inserts, updates = [], []
                for _, kind, text in rows:
                    d = json.loads(text)
                    if kind == "RequestReceived":
                        inserts.append((d["request_id"], d["partner"], d["partner_kind"], d["partner_name"],
                                        d["institution"], d["institution_type"],
                                        datetime.strptime(d["received_on"], "%Y-%m-%d").date(), d["title"],
                                        d["themes"]))  # fmt: skip
                    elif kind == "RequestEligibilityAssessed":
                        updates.append(
                            (d["request_id"], "assessed", d["eligible"], d["instrument"] or "", d["reasons"])
                        )
                    else:
                        updates.append((d["request_id"], kind.removeprefix("Request").lower(), None, None, None))
                await conn.executemany(RAW_INSERT, inserts)
                await conn.executemany(RAW_UPDATE, updates)
                position, total = rows[-1][0], total + len(rows)
        seconds = time.perf_counter() - t0
        stored = await conn.fetchval("SELECT count(*) FROM bench_raw.requests")
        return {"rate": total / seconds, "seconds": seconds, "events": total, "rows": stored,
                "client_cpu_us_per_event": (time.process_time() - cpu0) / total * 1e6}  # fmt: skip
    finally:
        await conn.close()


class ReadAllServer:
    """The kernel's EventLog server on the bench database, in a child process (started, waited for, stopped)."""

    def __init__(self, home: Path, dsn: str, port: int) -> None:
        self.port = port
        env = {**os.environ, "MIEUX_HOME": str(home), "DATABASE_URL": dsn, "MIEUX_LOG_LEVEL": "WARNING"}
        command = [sys.executable, "-m", "bench.rebuild", "--serve", str(port)]
        self.proc = subprocess.Popen(command, cwd=ROOT, env=env)

    async def wait_serving(self) -> None:
        async with asyncio.timeout(START_LIMIT_S):
            while not await serving(f"127.0.0.1:{self.port}"):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the ReadAll server exited with {self.proc.returncode}")
                await asyncio.sleep(0.1)  # not listening yet

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def mieux(settings: Settings, dsn: str, server: ReadAllServer, n: int) -> dict[str, float]:
    """The blue/green rebuild of RequestRegister from the requests service's ReadAll (a child process)."""
    os.environ["MIEUX_REQUESTS_ADDR"] = f"127.0.0.1:{server.port}"
    pool = await create_pool(dsn, max_size=2)
    try:
        projection = RequestRegister()
        async with pool.acquire() as conn:
            await conn.execute("CHECKPOINT")
        marks: dict[str, float] = {}

        async def mark(name: str) -> None:
            marks[name] = time.perf_counter()

        t0, cpu0, server0 = time.perf_counter(), time.process_time(), cpu_seconds(server.proc.pid)
        rebuilt = await rebuild_beside(
            pool,
            projection,
            [read_all_source("requests", settings, "ops")],
            built=lambda: mark("built"),
            swapping=lambda: mark("swapped"),
        )
        seconds = time.perf_counter() - t0
        client_cpu, server_cpu = time.process_time() - cpu0, cpu_seconds(server.proc.pid) - server0
        rows = await pool.fetchval("SELECT count(*) FROM requests_views.requests")
        return {"rate": n / seconds, "seconds": seconds, "applied": rebuilt.events, "rows": rows,
                "client_cpu_us_per_event": client_cpu / n * 1e6,
                "server_cpu_us_per_event": server_cpu / n * 1e6,
                # the shadow filled and caught up; the live projection held (catch-up, swap, commit)
                "build_s": marks["built"] - t0, "held_s": rebuilt.held_s}  # fmt: skip
    finally:
        await pool.close()


async def live_model(dsn: str) -> None:
    """The live request_register a rebuild runs beside, as a running service has it (set-up, not timed):
    every event tracked as applied, the rows as raw's (the same model, region aside). The rebuild then
    swaps in a tracking set equal to the live one, as it does in service, rather than writing a million
    tracking rows twice (a first build from nothing does that: the README gives its figure)."""
    tracking = kernel_tables("requests").tracking
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            f"INSERT INTO {tracking} (projection, event_id) SELECT $1, event_id FROM requests.events",
            RequestRegister.name,
        )
        # the old version's rows marked, so that a rebuild that did not swap its own in fails `same_model`
        await conn.execute(
            "INSERT INTO requests_views.requests SELECT * FROM bench_raw.requests; "
            "UPDATE requests_views.requests SET status = 'before the rebuild'"
        )
        await conn.execute(f"VACUUM (ANALYZE) {tracking}, requests_views.requests")
    finally:
        await conn.close()


async def same_model(dsn: str) -> bool:
    """The rebuilt model and raw's table hold the same requests in the same states (region aside: raw does
    not look it up)."""
    conn = await asyncpg.connect(dsn)
    try:
        cols = "request_id, status, eligible, instrument, reasons, themes, received_on"
        return bool(
            await conn.fetchval(
                f"SELECT NOT EXISTS (SELECT {cols} FROM requests_views.requests EXCEPT SELECT {cols} FROM "
                f"bench_raw.requests) AND NOT EXISTS (SELECT {cols} FROM bench_raw.requests EXCEPT "
                f"SELECT {cols} FROM requests_views.requests)"
            )
        )
    finally:
        await conn.close()


async def run(home: Path, settings: Settings, n: int) -> dict[str, Any]:
    from services.ops.devstack import free_port

    admin_dsn = settings.dsn()
    name = f"bench_rebuild_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_dsn)
    await admin.execute(f"CREATE DATABASE {name}")
    dsn = urlsplit(admin_dsn)._replace(path=f"/{name}").geturl()
    server: ReadAllServer | None = None
    try:
        t0 = time.perf_counter()
        await load(dsn, n)
        loaded = time.perf_counter() - t0
        server = ReadAllServer(home, dsn, free_port())
        await server.wait_serving()
        raw_result = await raw(dsn)
        await live_model(dsn)
        mieux_result = await mieux(settings, dsn, server, n)
        return {
            "events": n,
            "load_s": loaded,
            "mieux": mieux_result,
            "raw": raw_result,
            "same_model": await same_model(dsn),
            "read_all_page_size": settings.read_all_page_size,
        }
    finally:
        if server is not None:
            server.stop()
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


async def serve(port: int) -> None:
    """The EventLog server as a service runs it (GrpcServer, access rules, settings), on DATABASE_URL."""
    settings = Settings()
    pool = await create_pool(settings.dsn(), max_size=4)
    store = EventStore(pool, "requests")
    server = GrpcServer(
        settings,
        port,
        [eventlog.register(store, settings)],
        [eventlog.SERVICE_NAME],
        Access({eventlog.READ_ALL: READERS}),
    )

    async def stop() -> None:
        await server.stop()
        await pool.close()

    await run_until_signalled(server.start, stop)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.rebuild")
    parser.add_argument("--serve", type=int, required=True, help="serve EventLog.ReadAll on this port")
    asyncio.run(serve(parser.parse_args().serve))
