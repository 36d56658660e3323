"""`make demo`: the product end to end on a fresh embedded stack, printing what happened and what it measured.

It starts a new dev stack under `.mieux/demo/`, runs each service as its own OS process, sends the
scenario through the gRPC APIs only, waits until every projection has caught up (by lag, not by
sleeping), prints the read models and the figures it measured, writes them to `.mieux/demo/`, and
stops every process it started, whatever happens.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import time
from pathlib import Path

import grpc
import yaml
from rich.console import Console
from rich.table import Table

from services.kernel.devstack import DevStack, free_port
from services.kernel.processes import Processes, serving
from services.kernel.runner import group_lag
from services.kernel.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "scenarios" / "requests-2017.yaml"


async def wait_until(check, timeout: float, what: str) -> float:  # type: ignore[no-untyped-def]
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if await check():
            return time.monotonic() - start
        await asyncio.sleep(0.01)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


async def run_demo(console: Console) -> int:
    from services.requests.client import RequestsClient

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
        port = free_port()
        env = {
            **os.environ,
            "MIEUX_HOME": str(stack_home),
            "MIEUX_REQUESTS_PORT": str(port),
            "MIEUX_REQUESTS_ADDR": f"127.0.0.1:{port}",
            "MIEUX_LOG_LEVEL": "WARNING",
        }
        os.environ.update({k: env[k] for k in ("MIEUX_HOME", "MIEUX_REQUESTS_PORT", "MIEUX_REQUESTS_ADDR")})
        settings = Settings()
        await procs.start("requests", env)
        t = await wait_until(lambda: serving(f"127.0.0.1:{port}"), 60, "the requests service")
        console.print(f"[green]✓[/] requests service serving gRPC on 127.0.0.1:{port} (health SERVING after {t:.1f}s)")

        scenario = yaml.safe_load(SCENARIO.read_text())
        requests = scenario["requests"]
        acks, latencies = [], []
        async with RequestsClient.connect(settings) as client:
            for r in requests:
                t0 = time.perf_counter()
                acks.append(await client.submit(**{**r, "received_on": str(r["received_on"])}))
                latencies.append((time.perf_counter() - t0) * 1000)
            console.print(
                f"[green]✓[/] {len(acks)} requests submitted over gRPC (SubmitRequest): ack p50 "
                f"{statistics.median(latencies):.1f} ms, max {max(latencies):.1f} ms"
            )
            retried = [await client.submit(**{**r, "received_on": str(r["received_on"])}) for r in requests]
            same = all(a.stream_id == b.stream_id and b.duplicate for a, b in zip(acks, retried, strict=True))
            console.print(
                f"[green]✓[/] the same {len(retried)} commands sent again: all answered with their first "
                f"result, nothing appended: {same}"
            )
            try:
                await client.submit(
                    command_id="demo-bad",
                    partner="XX",
                    institution="?",
                    institution_type="ministry",
                    received_on="2017-13-01",
                    title="",
                )
                refused = "accepted (a defect)"
            except grpc.aio.AioRpcError as e:
                from services.kernel.grpckit import field_violations

                refused = f"{e.code().name} on {', '.join(f for f, _ in field_violations(e))}"
            console.print(f"[green]✓[/] a malformed request: {refused}")

            group, topics = "mieux.requests.requests_per_year", ("mieux.requests.events",)
            total = len(requests)

            async def caught_up() -> bool:
                per_year = await client.per_year()
                return sum(y.count for y in per_year.years) >= total and await group_lag(settings, group, topics) == 0

            t = await wait_until(caught_up, 60, "the requests_per_year projection to catch up")
            console.print(
                f"[green]✓[/] relay -> Kafka -> projection caught up (lag 0) {t * 1000:.0f} ms after the last ack"
            )
            per_year = await client.per_year()

        table = Table(title="Requests received per year")
        table.add_column("year")
        table.add_column("requests", justify="right")
        for y in per_year.years:
            table.add_row(str(y.year), str(y.count))
        console.print(table)
        console.print("[dim](the requests_per_year read model, computed from the RequestReceived events)[/]")
        figures = {
            "requests_per_year": {str(y.year): y.count for y in per_year.years},
            "commands": len(acks),
            "retries_appended_nothing": same,
            "ack_latency_ms": {"p50": round(statistics.median(latencies), 2), "max": round(max(latencies), 2)},
            "catch_up_ms_after_last_ack": round(t * 1000, 1),
            "malformed_request": refused,
        }
        (out / "figures.json").write_text(json.dumps(figures, indent=2))
        console.print(f"figures written to {out / 'figures.json'}")
        return 0
    finally:
        with console.status("stopping everything the demo started"):
            await procs.stop()
            stack.down()
        took = time.monotonic() - started
        console.print(f"[green]✓[/] stopped the service processes, PostgreSQL and the broker ({took:.0f}s in all)")
