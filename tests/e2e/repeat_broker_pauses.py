"""The broker-pause case, repeated: how often does a projection runner not come back?

Not a test (pytest does not collect it): a script for the lead's "repeat count". Each run starts a fresh dev
stack of its own (fsync on, as `mieux dev up`) and the requests service as an OS process, sends
SubmitRequest at a steady rate through gRPC (UNAVAILABLE, DEADLINE_EXCEEDED and ABORTED retried with the same
command id), pauses the broker (SIGSTOP) `--pauses` times for `--pause-s` seconds with `--gap-s` between,
stops the load, then waits up to `--deadline` seconds for: the relay to have published everything, the
projection group's lag 0, the service SERVING, and both read models agreeing with the store (one register row
per request, requests per year summing to them). A run where that never comes is counted as "the runner did
not come back", with its backlog, its read models and the service's warnings as evidence.

    .venv/bin/python tests/e2e/repeat_broker_pauses.py --runs 10 [--json results.json]

Every process it starts is stopped, whatever happens; a run's folder (stack data and the service's log) is
kept only when that run failed (or with --keep).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for faultkit

from faultkit import INHERITED, Run, backlog, caught_up, connect, log_evidence, until

from services.kernel.runner import projection_group
from services.ops import catalog
from services.ops.processes import serving
from services.ops.scenario_replay import RETRYABLE
from services.requests.client import RequestsClient

SERVICE = "requests"
RUNNER_STUCK = "the projection runner did not come back"


async def read_models_agree(run: Run) -> dict[str, int]:
    conn = await connect(run.settings())
    try:
        return {
            "stored": await conn.fetchval("SELECT count(*) FROM requests.events WHERE event_type = 'RequestReceived'"),
            "register": await conn.fetchval("SELECT count(*) FROM requests_views.requests"),
            "per_year": await conn.fetchval("SELECT coalesce(sum(count), 0) FROM requests_views.requests_per_year"),
        }
    finally:
        await conn.close()


class Load:
    """SubmitRequest at `rate` per second, each retried (same command id) while the service is away."""

    def __init__(self, rate: float, in_flight: int = 16) -> None:
        self.rate = rate
        self.sem = asyncio.Semaphore(in_flight)
        self.sent = self.acked = self.failed = 0
        self.retried: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.stop = asyncio.Event()

    async def one(self, client: RequestsClient, i: int) -> None:
        command_id = f"pause-load-{uuid.uuid4()}"
        start = time.monotonic()
        try:
            while True:
                try:
                    await client.submit(
                        command_id=command_id,
                        partner="MG",
                        institution="Ministry of the Interior",
                        institution_type="ministry",
                        received_on=f"20{10 + i % 8}-03-08",
                        title=f"load {i}",
                    )
                    self.acked += 1
                    return
                except grpc.aio.AioRpcError as e:
                    code = e.code().name
                    if e.code() not in RETRYABLE or time.monotonic() - start > 120:
                        self.errors[code] = self.errors.get(code, 0) + 1
                        self.failed += 1
                        return
                    self.retried[code] = self.retried.get(code, 0) + 1
                await asyncio.sleep(0.1)
        finally:
            self.sem.release()

    async def run(self, settings: Any) -> None:
        tasks: set[asyncio.Task] = set()
        async with RequestsClient.connect(settings) as client:
            start = time.monotonic()
            while not self.stop.is_set():
                await self.sem.acquire()
                t = asyncio.create_task(self.one(client, self.sent))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
                self.sent += 1
                # open loop at `rate`: the next send is due at sent / rate (pacing, not a wait for a condition)
                await asyncio.sleep(max(0.0, start + self.sent / self.rate - time.monotonic()))
            if tasks:
                await asyncio.wait(tasks, timeout=150)


async def one_run(n: int, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    run = Run(root / f"run-{n}", services=(SERVICE,))
    out: dict[str, Any] = {"run": n, "home": str(run.home)}
    groups = catalog.service(SERVICE).consumer_groups()
    try:
        await run.start()
        os.environ.update(run.environ)  # the client finds the service and the stack's tokens there
        settings = run.settings()
        load = Load(args.rate)
        loading = asyncio.create_task(load.run(settings))
        await asyncio.sleep(args.gap_s)  # some load before the first pause
        for _ in range(args.pauses):
            run.stack.pause_broker()
            try:
                await asyncio.sleep(args.pause_s)  # the pause: a deliberate duration
            finally:
                run.stack.resume_broker()
            await asyncio.sleep(args.gap_s)  # pacing between pauses, under load
        load.stop.set()
        await loading
        out["load"] = {
            "sent": load.sent,
            "acknowledged": load.acked,
            "failed": load.failed,
            "retried": load.retried,
            "errors": load.errors,
        }
        last = time.monotonic()

        async def back() -> bool:
            if not await serving(run.fleet.address(SERVICE)):
                return False
            if not await caught_up(settings, groups):
                return False
            rm = await read_models_agree(run)
            return rm["stored"] == rm["register"] == rm["per_year"]

        try:
            out["recovered_after_s"] = round(await until(back, args.deadline, "the runner to catch up", 0.2), 2)
            out["outcome"] = "ok"
        except TimeoutError:
            out["recovered_after_s"] = None
        out["since_last_pause_s"] = round(time.monotonic() - last, 2)
        out["serving"] = await serving(run.fleet.address(SERVICE))
        out["exited"] = run.fleet.exited()
        try:
            out["backlog"] = await backlog(settings, groups)
            out["read_models"] = await read_models_agree(run)
        except Exception as e:
            out["backlog"] = f"unreadable: {e!r}"
        if out["recovered_after_s"] is None:
            why = []
            if not out["serving"] or out["exited"]:
                why.append(f"service not SERVING (exited: {out['exited']})")
            if isinstance(out["backlog"], dict) and out["backlog"]["unpublished"]:
                why.append(f"relay behind {out['backlog']['unpublished']}")
            if isinstance(out["backlog"], dict) and out["backlog"]["lag"]:
                why.append(f"projection group lag {out['backlog']['lag']}")
            rm = out.get("read_models") or {}
            if rm and not rm["stored"] == rm["register"] == rm["per_year"]:
                why.append(f"read models {rm}")
            out["outcome"] = RUNNER_STUCK if any("lag" in w or "read models" in w for w in why) else "not back"
            out["why"] = why or ["unknown: see the log"]
        out["group"] = projection_group(SERVICE)
        out["log"] = log_evidence(run.fleet)[SERVICE]
    except Exception as e:
        out["outcome"] = f"error: {e!r}"
    finally:
        run.stop()
    if out.get("outcome") == "ok" and not args.keep:
        shutil.rmtree(run.home, ignore_errors=True)
    return out


async def repeat(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    results = []
    started = time.monotonic()
    for n in range(1, args.runs + 1):
        r = await one_run(n, root, args)
        results.append(r)
        load = r.get("load", {})
        print(
            f"run {n}/{args.runs}: {r['outcome']}"
            + (f" after {r['recovered_after_s']} s" if r.get("recovered_after_s") is not None else "")
            + f"; load {load.get('acknowledged', '?')}/{load.get('sent', '?')} acknowledged, retried "
            f"{load.get('retried', {})}, failed {load.get('errors', {})}"
            + ("" if r["outcome"] == "ok" else f"; {r.get('why')}"),
            flush=True,
        )
    return {
        "runs": args.runs,
        "runner_did_not_come_back": sum(r["outcome"] == RUNNER_STUCK for r in results),
        "other_failures": sum(r["outcome"] not in ("ok", RUNNER_STUCK) for r in results),
        "pauses_per_run": args.pauses,
        "pause_s": args.pause_s,
        "gap_s": args.gap_s,
        "rate_per_s": args.rate,
        "deadline_s": args.deadline,
        "took_s": round(time.monotonic() - started, 1),
        "results": results,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--pauses", type=int, default=8)
    ap.add_argument("--pause-s", type=float, default=5.0)
    ap.add_argument("--gap-s", type=float, default=1.5, help="load between pauses, seconds")
    ap.add_argument("--rate", type=float, default=50.0, help="SubmitRequest per second")
    ap.add_argument("--deadline", type=float, default=60.0, help="seconds for the runner to catch up")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--keep", action="store_true", help="keep every run's folder")
    args = ap.parse_args(argv)
    for k in [k for k in os.environ if INHERITED.match(k)]:  # another stack's settings: never this one's
        del os.environ[k]

    root = Path(tempfile.mkdtemp(prefix="mieux-pauses-"))
    root.chmod(0o755)  # PostgreSQL may run as its own user (as root)
    summary = asyncio.run(repeat(args, root))
    print(
        f"\nbroker-pause case ({args.pauses} x {args.pause_s:.0f} s pauses under {args.rate:.0f} commands/s), "
        f"{args.runs} runs: the projection runner did not come back in {summary['runner_did_not_come_back']}, "
        f"{summary['other_failures']} run(s) failed otherwise; {summary['took_s']} s"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2, default=str))
    bad = summary["runner_did_not_come_back"] + summary["other_failures"]
    if bad or args.keep:
        print(f"kept: {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
