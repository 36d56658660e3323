"""`make demo`: the year 2017 replayed through the running services, and the annual report rebuilt from it.

On a fresh embedded stack under `.mieux/demo/`: every service as its own OS process, the scenario
`scenarios/2017.yaml` sent through the gRPC APIs only (twice: the second time appends nothing), a wait until
every relay has published everything and every consumer group's lag is 0 (measured, not slept), then the
year at a glance, the regional table and the carbon ledger, computed by the projections from the events.
Writes `stats-2017.json` (as `mieux stats year 2017 --json`) and the finance CSV `carbon-2017.csv` beside
it, and stops every process it started, whatever happens.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from pathlib import Path

from rich.console import Console

from services.kernel.bus import group_lag
from services.kernel.settings import Settings
from services.ops import catalog
from services.ops.catalog import CONTEXTS
from services.ops.devstack import DevStack, free_port
from services.ops.processes import Processes, serving

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "scenarios" / "2017.yaml"
YEAR = 2017


async def wait_until(check, timeout: float, what: str) -> float:  # type: ignore[no-untyped-def]
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if await check():
            return time.monotonic() - start
        await asyncio.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


async def unpublished(settings: Settings) -> int:
    """Events stored but not yet published by the relays (from each service's store and relay checkpoint)."""
    import asyncpg

    conn = await asyncpg.connect(settings.dsn())
    try:
        behind = 0
        for ctx in CONTEXTS:
            if await conn.fetchval("SELECT to_regclass($1)", f"{ctx}.events") is None:
                continue
            last = await conn.fetchval(f"SELECT coalesce(max(position), 0) FROM {ctx}.events")
            done = await conn.fetchval(f"SELECT coalesce(max(position), 0) FROM {ctx}.relay_state")
            behind += max(last - done, 0)
        return behind
    finally:
        await conn.close()


async def caught_up(settings: Settings, groups: list[tuple[str, tuple[str, ...]]]) -> bool:
    if await unpublished(settings):
        return False
    for group, topics in groups:
        if await group_lag(settings, group, topics):
            return False
    return True


async def run_demo(console: Console) -> int:
    from services.carbon.cli import carbon_cmd
    from services.ops.scenario_replay import replay
    from services.stats.cli import regions_table, year_json, year_table
    from services.stats.client import StatsClient

    out = Path(os.environ.get("MIEUX_HOME", ".mieux")).resolve() / "demo"
    shutil.rmtree(out, ignore_errors=True)
    stack_home = out / "stack"
    stack_home.mkdir(parents=True)
    stack = DevStack(stack_home)
    procs = Processes(out)
    started = time.monotonic()
    try:
        with console.status("starting PostgreSQL and the broker (embedded)"):
            state = stack.up()
        console.print(f"[green]✓[/] PostgreSQL {state['database_url']}  broker {state['kafka_bootstrap_servers']}")
        ports = {ctx: free_port() for ctx in CONTEXTS}
        addrs = {f"MIEUX_{c.upper()}_ADDR": f"127.0.0.1:{p}" for c, p in ports.items()}
        os.environ.update({"MIEUX_HOME": str(stack_home), **addrs})
        env = {**os.environ, "MIEUX_LOG_LEVEL": "WARNING"}
        for ctx in CONTEXTS:
            await procs.start(ctx, {**env, f"MIEUX_{ctx.upper()}_PORT": str(ports[ctx])})
        for ctx in CONTEXTS:
            await wait_until(lambda c=ctx: serving(addrs[f"MIEUX_{c.upper()}_ADDR"]), 90, f"the {ctx} service")
        console.print(
            f"[green]✓[/] {len(CONTEXTS)} services serving gRPC, each in its own process: "
            + ", ".join(f"{c} :{p}" for c, p in ports.items())
        )
        settings = Settings()

        first = await replay(SCENARIO, settings, progress=True, console=console)
        console.print(
            f"[green]✓[/] {SCENARIO.name} replayed through the gRPC APIs: {first.commands} commands, "
            f"{first.appended} appended, in {first.seconds:.1f} s"
        )
        again = await replay(SCENARIO, settings, progress=False, console=console)
        console.print(
            f"[green]✓[/] replayed again with the same command ids: {again.appended} appended, "
            f"{again.duplicates} answered with their first result"
        )

        groups = catalog.consumer_groups()
        t = await wait_until(lambda: caught_up(settings, groups), 300, "every relay and consumer group to catch up")
        console.print(
            f"[green]✓[/] every relay published everything and all {len(groups)} consumer groups "
            f"are at lag 0 ({t:.1f} s after the replay)"
        )

        async with StatsClient.connect(settings) as stats:
            year = await stats.year_at_a_glance(YEAR)
            regions = await stats.region_report(YEAR)
        console.print(year_table(year))
        console.print(regions_table(regions))
        figures = year_json(year)
        (out / f"stats-{YEAR}.json").write_text(json.dumps(figures, indent=2))
        csv_path = out / f"carbon-{YEAR}.csv"
        await carbon_cmd(type("Args", (), {"year": YEAR, "csv": str(csv_path)})())  # type: ignore[arg-type]
        console.print(f"[green]✓[/] wrote {out / f'stats-{YEAR}.json'} and {csv_path}")
        return 0
    finally:
        with console.status("stopping everything the demo started"):
            await procs.stop()
            stack.down()
        took = time.monotonic() - started
        console.print(f"[green]✓[/] stopped the service processes, PostgreSQL and the broker ({took:.0f}s in all)")
