"""`make demo`: the year 2017 and the years before replayed through the running services, and the annual
report rebuilt from them.

On a fresh embedded stack under `.mieux/demo/`: every service as its own OS process, the scenarios
`scenarios/2017.yaml` and `scenarios/history-2009-2016.yaml` (which follows it) sent through the gRPC APIs only
(twice: the second time appends nothing), a wait until every relay has published everything and every consumer
group's lag is 0 (measured, not slept), then the year at a glance, the regional table, the results, the change
on 2016 and the totals since 2009, every figure of DESIGN.md section 10 beside the report's, and the carbon
ledger, computed by the projections from the events. Writes `stats-2017.json` (as `mieux stats year 2017
--json`) and the finance CSV `carbon-2017.csv` beside it, then the annual report page `report-2017.html`, its
screenshot `report-2017.png` (headless Chromium) and the IATI 2.03 file `iati-2017.xml` (checked against the
schema), and stops every process it started, whatever happens.
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
from services.ops.devstack import DevStack, free_port
from services.ops.processes import Processes, serving

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "scenarios" / "2017.yaml"
HISTORY = ROOT / "scenarios" / "history-2009-2016.yaml"  # follows 2017.yaml: replayed after it
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
        for ctx in catalog.CONTEXTS:
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
    from services.kernel import cli as kernel_cli
    from services.ops.demo_report import rebuild_all, reference_table
    from services.ops.scenario import load
    from services.ops.scenario_replay import replay
    from services.stats.cli import regions_table, year_json, year_table
    from services.stats.client import StatsClient
    from services.stats.results_cli import results_json, results_tables

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
        ports = {ctx: free_port() for ctx in catalog.CONTEXTS}
        addrs = {f"MIEUX_{c.upper()}_ADDR": f"127.0.0.1:{p}" for c, p in ports.items()}
        os.environ.update({"MIEUX_HOME": str(stack_home), **addrs})
        env = {**os.environ, "MIEUX_LOG_LEVEL": "WARNING"}
        for ctx in catalog.CONTEXTS:
            await procs.start(ctx, {**env, f"MIEUX_{ctx.upper()}_PORT": str(ports[ctx])})
        for ctx in catalog.CONTEXTS:
            await wait_until(lambda c=ctx: serving(addrs[f"MIEUX_{c.upper()}_ADDR"]), 90, f"the {ctx} service")
        console.print(
            f"[green]✓[/] {len(catalog.CONTEXTS)} services serving gRPC, each in its own process: "
            + ", ".join(f"{c} :{p}" for c, p in ports.items())
        )
        settings = Settings()

        for path in (SCENARIO, HISTORY):
            first = await replay(path, settings, progress=True, console=console)
            console.print(
                f"[green]✓[/] {path.name} replayed through the gRPC APIs: {first.commands} commands, "
                f"{first.appended} appended, in {first.seconds:.1f} s"
            )
        again = [await replay(path, settings, progress=False, console=console) for path in (SCENARIO, HISTORY)]
        console.print(
            f"[green]✓[/] both replayed again with the same command ids: {sum(a.appended for a in again)} appended, "
            f"{sum(a.duplicates for a in again)} answered with their first result"
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
            results, history = await stats.results(YEAR), await stats.history(YEAR)
        console.print(year_table(year))
        console.print(regions_table(regions))
        for table in results_tables(results, history):
            console.print(table)
        console.print(reference_table(year, results, history, load(SCENARIO).report, load(HISTORY).report))
        figures = {**year_json(year), **results_json(results, history)}
        (out / f"stats-{YEAR}.json").write_text(json.dumps(figures, indent=2))
        csv_path = out / f"carbon-{YEAR}.csv"
        await carbon_cmd(type("Args", (), {"year": YEAR, "csv": str(csv_path)})())  # type: ignore[arg-type]
        console.print(f"[green]✓[/] wrote {out / f'stats-{YEAR}.json'} and {csv_path}")

        # every read model dropped and rebuilt from the event stores: the same figures and the same ledger
        with console.status("rebuilding every projection from the services' ReadAll"):
            n = await rebuild_all(settings)
            async with StatsClient.connect(settings) as stats:
                y, r, h = await stats.year_at_a_glance(YEAR), await stats.results(YEAR), await stats.history(YEAR)
            rebuilt_csv = out / f"carbon-{YEAR}.rebuilt.csv"
            with kernel_cli.console.capture():  # the tables again: not printed
                await carbon_cmd(type("Args", (), {"year": YEAR, "csv": str(rebuilt_csv)})())  # type: ignore[arg-type]
        same = {**year_json(y), **results_json(r, h)} == figures and rebuilt_csv.read_bytes() == csv_path.read_bytes()
        rebuilt_csv.unlink()
        if not same:
            console.print(f"[red]✗ the {n} projections rebuilt from the event stores give other figures[/]")
            return 1
        console.print(f"[green]✓[/] all {n} projections rebuilt from the event stores: the same figures and ledger")
        from services.ops.report_cli import demo_outputs  # the report page, its screenshot, the IATI file

        return 0 if await demo_outputs(settings, out, YEAR, console) else 1
    finally:
        with console.status("stopping everything the demo started"):
            await procs.stop()
            stack.down()
        took = time.monotonic() - started
        console.print(f"[green]✓[/] stopped the service processes, PostgreSQL and the broker ({took:.0f}s in all)")
