"""The whole system under faults: the year 2017 replayed through gRPC while every service is SIGKILLed once,
PostgreSQL restarts fast and immediate, and the broker is paused three times; then every figure, every
store and every read model must be what a clean run of the same year gave (DESIGN.md section 9).

Two stacks of the test's own, one after the other, each a DevStack in the test's temp home with the
durability a person gets from `mieux dev up` (fsync and synchronous commit as DevStack sets them by
default, not the session fixture's fsync=False stack), and the six services as OS processes on free ports:

- the clean run: `scenarios/2017.yaml` replayed, everything caught up, then the reference taken: every
  figure of `mieux stats year 2017 --json`, the events per type in every service's store, and the rows of
  every read model (and tracked events per projection);
- the fault run: the same file replayed by a client that retries UNAVAILABLE, DEADLINE_EXCEEDED and ABORTED
  with the same command id, and nothing else: an UNKNOWN (or INTERNAL...) is counted, reported and fails
  the run; the replay stops there and the client goes on with the year, sending only the commands it holds
  no answer for (see Client), so one such status does not hide what the rest of the faults did. Beside it
  the fault schedule injects each fault when the replay has got to a given point of the year (an event
  count in a store, as a fraction of the clean run's), so each lands in the phase that exercises it.

Why the whole 2017 file and not a smaller one: it is the one scenario that drives every service, both
policies and every projection with the real figures, and its clean replay (12-25 s here) is the smaller
part of the run: the faults' own recovery (services restarting, PostgreSQL recovering, 3 x 5 s of paused
broker) is most of it.

Then, with deadlines on conditions (no fixed sleeps): every relay published everything and every consumer
group's lag is 0; and the checks: the same figures, the same events per type (nothing lost, nothing
twice), the same read-model rows, no dead letter on any `<group>.dlq`, nothing parked (when a `parked`
table exists), no projection flagged incomplete, every service SERVING and none exited on its own. Every
failed check is listed together at the end. The faults (which, when), the client's errors by status, the
time from the last fault to lag 0, the figures compared and the services' warnings are printed and
written to `faults-report.json` in the test's home, which is kept when the test fails (or when
MIEUX_FAULTS_KEEP=1) and removed otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import asyncpg
import grpc
import pytest
from faultkit import (
    INHERITED,
    Run,
    backlog,
    caught_up,
    dead_letters,
    diff,
    event_counts,
    health,
    log_evidence,
    needs_rebuild,
    parked,
    read_model_counts,
    until,
)

from services.kernel.settings import Settings
from services.ops import catalog
from services.ops.scenario_replay import replay
from services.stats.cli import year_json
from services.stats.client import StatsClient

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(480)]

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "scenarios" / "2017.yaml"
YEAR = 2017
PAUSE_S = 5.0  # each broker pause: a deliberate duration, not a wait
FALLBACK_S = 25.0  # a fault whose point of the year has not come this long after the last one is injected anyway
REPLAY_DEADLINE_S = 180.0  # the fault run's replay, all passes: about 55-90 s here
CATCH_UP_S = 60.0  # after the replay, for every relay and consumer group
MAX_PASSES = 3  # passes of the year when a call fails with a status the client must not retry
CLIENTS = ("requests", "actions", "experts", "logistics", "carbon")


@dataclass(frozen=True)
class Fault:
    kind: Literal["kill", "postgres", "pause"]
    target: str  # a service; "fast" or "immediate"; "broker"
    store: str  # injected when this store holds `fraction` of the clean run's events of `event_type`
    event_type: str
    fraction: float

    @property
    def name(self) -> str:
        return {
            "kill": f"SIGKILL {self.target} (and restart it)",
            "postgres": f"restart PostgreSQL {self.target} ({'SIGINT' if self.target == 'fast' else 'SIGQUIT'})",
            "pause": f"pause the broker (SIGSTOP) for {PAUSE_S:.0f} s",
        }[self.kind]


# In the replay's order of phases: experts (625 registrations), requests, approvals (one at a time, each
# waiting for the actions policy to open its action: the longest phase, and the one a paused broker
# stalls), activities, deployments (experts asks actions), flights (the carbon policy computes emissions),
# offsets (carbon); stats reads everything. Broker pauses go where they stall the client, so the faults
# after them still land inside the replay.
SCHEDULE = (
    Fault("kill", "experts", "experts", "ExpertRegistered", 0.20),
    Fault("pause", "broker", "experts", "ExpertRegistered", 0.45),
    Fault("postgres", "fast", "experts", "ExpertRegistered", 0.75),
    Fault("kill", "requests", "requests", "RequestReceived", 0.40),
    Fault("kill", "actions", "requests", "RequestApproved", 0.15),
    Fault("pause", "broker", "requests", "RequestApproved", 0.35),
    Fault("kill", "stats", "requests", "RequestApproved", 0.55),
    Fault("pause", "broker", "requests", "RequestApproved", 0.75),
    Fault("postgres", "immediate", "actions", "ActivityPlanned", 0.30),
    Fault("kill", "logistics", "logistics", "FlightBooked", 0.15),
    Fault("kill", "carbon", "logistics", "FlightBooked", 0.50),
)


@dataclass
class Home:
    path: Path
    runs: list[Run] = field(default_factory=list)

    def run(self, name: str) -> Run:
        r = Run(self.path / name)
        self.runs.append(r)
        return r


@contextlib.contextmanager
def kept_on_failure(request: pytest.FixtureRequest, kind: str) -> Iterator[Home]:
    """A test's temp home; every stack and service started in it is stopped, whatever happens. Kept when the
    test failed (or MIEUX_FAULTS_KEEP=1), else removed."""
    path = Path(tempfile.mkdtemp(prefix=f"mieux-{kind}-"))
    path.chmod(0o755)  # PostgreSQL may run as its own user (when the tests run as root)
    h = Home(path)
    failed_before = request.session.testsfailed
    try:
        yield h
    finally:
        for r in h.runs:
            try:
                r.stop()
            except Exception as e:  # the next run's stop still runs
                print(f"stopping {r.home}: {e!r}")
        if request.session.testsfailed > failed_before or os.environ.get("MIEUX_FAULTS_KEEP") == "1":
            print(f"\n{kind} test home kept in {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def home(request: pytest.FixtureRequest) -> Iterator[Home]:
    with kept_on_failure(request, "faults") as h:
        yield h


def use(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's Settings() and clients reach `run` (the environment is restored after the test)."""
    for k in list(os.environ):
        if INHERITED.match(k):
            monkeypatch.delenv(k)
    for k, v in run.environ.items():
        monkeypatch.setenv(k, v)


async def snapshot(run: Run) -> dict[str, Any]:
    settings = run.settings()
    async with StatsClient.connect(settings) as stats:
        figures = year_json(await stats.year_at_a_glance(YEAR))
    return {
        "figures": figures,
        "events": await event_counts(settings),
        "read_models": await read_model_counts(settings),
    }


class Acks(grpc.aio.UnaryUnaryClientInterceptor):
    """The client's memory of acknowledged commands: one it holds an answer for is not sent again."""

    def __init__(self, client: Client) -> None:
        self.client = client

    async def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        command_id = getattr(request, "command_id", "")
        if command_id and command_id in self.client.acks:
            self.client.remembered += 1
            return self.client.acks[command_id]
        call = await continuation(details, request)
        if command_id:
            with contextlib.suppress(grpc.aio.AioRpcError):  # the caller hears the error from the call
                self.client.acks[command_id] = await call
        return call


class Client:
    """The replay as a client: it retries UNAVAILABLE, DEADLINE_EXCEEDED and ABORTED with the same command id
    (scenario_replay's retry) and counts every error status by code, retried or not. A status it must not
    retry (UNKNOWN, INTERNAL, ...) stops the replay: that is recorded (and fails the test), and the client
    then goes on with the year in a new pass that sends only the commands it holds no answer for (the one
    that failed and those after it), so the rest of the run still measures what the faults did: an
    acknowledged command is never sent twice, so a lost one stays lost."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.retried: Counter[str] = Counter()
        self.not_retried: Counter[str] = Counter()
        self.samples: list[dict[str, Any]] = []
        self.acks: dict[str, Any] = {}
        self.remembered = 0  # commands answered from memory in a later pass
        self.stops: list[dict[str, Any]] = []

    def channel(self, target: str) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(target, interceptors=[Acks(self)])

    def on_error(self, e: grpc.aio.AioRpcError, retried: bool) -> None:
        (self.retried if retried else self.not_retried)[e.code().name] += 1
        if not retried or len(self.samples) < 10:
            self.samples.append(
                {
                    "at_s": round(time.monotonic() - self.t0, 2),
                    "code": e.code().name,
                    "retried": retried,
                    "details": (e.details() or "")[:300],
                }
            )

    async def year(self, settings: Settings) -> dict[str, Any]:
        for n in range(1, MAX_PASSES + 1):
            try:
                r = await replay(SCENARIO, settings, progress=False, on_error=self.on_error)
                return {"commands": r.commands, "acknowledged": len(self.acks), "passes": n}
            except Exception as e:
                stop = {"at_s": round(time.monotonic() - self.t0, 2), "error": describe(e), "acked": len(self.acks)}
                self.stops.append(stop)
                if n == MAX_PASSES:
                    raise
        raise AssertionError("unreachable")


class Probe:
    """How far the replay has got: events of a type in a store, on a connection renewed after a restart."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.conn: asyncpg.Connection | None = None
        self.error = ""  # the last failure, for the record

    async def count(self, store: str, event_type: str) -> int | None:
        try:
            if self.conn is None or self.conn.is_closed():
                self.conn = await asyncpg.connect(self.dsn, timeout=2)
            return await self.conn.fetchval(f"SELECT count(*) FROM {store}.events WHERE event_type = $1", event_type)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as e:
            self.error = describe(e)
            await self.close()
            return None  # PostgreSQL is restarting, or the store is not there yet

    async def reached(
        self,
        store: str,
        event_type: str,
        fraction: float,
        of: int,
        replay_done: asyncio.Event,
        fallback_after: tuple[float, float] | None = None,
        every: float = 0.1,
    ) -> str:
        """Wait until `store` holds `fraction` of the `of` events of `event_type` the reference run stored, or the
        replay has ended, or (`fallback_after`: a monotonic time and seconds) that long has passed since then;
        why it stopped waiting."""
        target = max(1, math.ceil(fraction * of))
        while True:
            n = await self.count(store, event_type)
            if n is not None and n >= target:
                return f"{event_type} {n}/{of} in {store}"
            if replay_done.is_set():
                return f"the replay had ended ({event_type} {n}/{of})"
            if fallback_after is not None and time.monotonic() - fallback_after[0] > fallback_after[1]:
                why = f"{fallback_after[1]:.0f} s after the last fault ({event_type} {n}/{of}, wanted {target})"
                return why + (f"; the progress query failed: {self.error}" if n is None else "")
            await asyncio.sleep(every)

    async def close(self) -> None:
        if self.conn is not None:
            conn, self.conn = self.conn, None
            try:
                await conn.close(timeout=2)
            except Exception:
                conn.terminate()


async def run_schedule(
    run: Run, reference: dict[str, dict[str, int]], replay_done: asyncio.Event, t0: float, done: list[dict[str, Any]]
) -> None:
    """Inject each fault of SCHEDULE when the replay has reached its point of the year (or FALLBACK_S after
    the last one, or at once when the replay has ended), one after the other, each recovered from (the
    service SERVING again, PostgreSQL accepting connections, the broker resumed) before the next. Each is
    recorded in `done` as it is injected."""
    probe = Probe(run.settings().dsn())
    last = time.monotonic()
    try:
        for f in SCHEDULE:
            of = reference[f.store].get(f.event_type, 0)
            why = await probe.reached(f.store, f.event_type, f.fraction, of, replay_done, (last, FALLBACK_S))
            rec: dict[str, Any] = {"fault": f.name, "at_s": round(time.monotonic() - t0, 2), "when": why}
            done.append(rec)
            if f.kind == "kill":
                run.fleet.kill(f.target)
                run.fleet.start(f.target)
                rec["serving_again_after_s"] = round(await run.fleet.wait_serving(f.target, 90), 2)
            elif f.kind == "postgres":
                await probe.close()
                start = time.monotonic()
                await run.restart_postgres(f.target)
                rec["accepting_again_after_s"] = round(time.monotonic() - start, 2)
            else:
                run.stack.pause_broker()
                try:
                    await asyncio.sleep(PAUSE_S)
                finally:
                    run.stack.resume_broker()
            last = time.monotonic()
            rec["recovered_at_s"] = round(last - t0, 2)
    finally:
        await probe.close()


async def measure(what: Callable[[], Awaitable[Any]]) -> Any:
    """What `what()` measured, or why it could not (a string), so one failure does not hide the others."""
    try:
        return await what()
    except Exception as e:
        return f"unreadable: {describe(e)}"


def describe(e: BaseException) -> str:
    if isinstance(e, grpc.aio.AioRpcError):
        return f"{e.code().name}: {e.details()}"[:500]
    return f"{type(e).__name__}: {e}"[:500]


def summary(report: dict[str, Any]) -> str:
    lines = ["", "=== the whole system under faults ==="]
    c, f = report["clean"], report["faults"]
    lines.append(
        f"clean run: services serving in {c['started_in_s']} s; {c['replay']['commands']} commands in "
        f"{c['replay']['seconds']} s, caught up {c['caught_up_after_s']} s later; client errors "
        f"{c['client']['retried'] or '-'}"
    )
    lines.append(f"fault run (services serving in {f['started_in_s']} s); faults, s from the start of its replay:")
    for x in f["faults"]:
        back = x.get("serving_again_after_s", x.get("accepting_again_after_s"))
        extra = f", back after {back} s" if back is not None else ""
        lines.append(f"  {x['at_s']:7.2f}  {x['fault']}  [{x['when']}]{extra}")
    cl, rp = f["client"], f["replay"]
    lines.append(
        f"client: {rp.get('commands', '?')} commands in {rp.get('passes', '?')} pass(es), {rp['seconds']} s; "
        f"retried {dict(cl['retried']) or '-'}; not retried {dict(cl['not_retried']) or '-'}"
    )
    for stop in cl["stops"]:
        lines.append(f"  the replay stopped at {stop['at_s']} s ({stop['acked']} acknowledged): {stop['error']}")
    if rp.get("error"):
        lines.append(f"  the replay did not complete: {rp['error']}")
    r = f["recovery"]
    lines.append(
        f"last fault injected at {r.get('last_fault_at_s')} s, recovered at {r.get('last_fault_recovered_at_s')} s; "
        f"replay ended at {r.get('replay_ended_at_s')} s; lag 0 at {r.get('caught_up_at_s')} s: "
        f"{r.get('last_fault_to_lag0_s')} s after the last fault was injected, "
        f"{r.get('last_fault_recovered_to_lag0_s')} s after it was over"
    )
    for name, check in f["checks"].items():
        lines.append(f"  {'ok  ' if check['ok'] else 'FAIL'} {name}: {check['detail']}")
    lines.append("services' logs (warnings / errors / tracebacks):")
    for s, ev in f["logs"].items():
        lines.append(
            f"  {s}: {ev.get('WARNING', 0)} / {ev.get('ERROR', 0)} / {ev['tracebacks']} "
            f"(killed {ev['killed_by_test']}x)"
        )
        for msg, n in list(ev["messages"].items())[:6]:
            lines.append(f"      {n:4d} x {msg[:200]}")
    return "\n".join(lines)


async def test_the_whole_system_under_faults(home: Home, monkeypatch: pytest.MonkeyPatch) -> None:
    started = time.monotonic()
    groups = catalog.consumer_groups()
    report: dict[str, Any] = {"scenario": str(SCENARIO.relative_to(ROOT)), "year": YEAR, "home": str(home.path)}
    failures: list[str] = []

    # --- the clean run: the reference ------------------------------------------------------------------
    clean = home.run("clean")
    use(clean, monkeypatch)
    await clean.start()
    t0 = time.monotonic()
    client = Client(t0)
    for ctx in CLIENTS:
        monkeypatch.setattr(f"services.{ctx}.client.channel", client.channel)
    first = await client.year(clean.settings())
    replayed = time.monotonic()
    await until(lambda: caught_up(clean.settings(), groups), CATCH_UP_S, "the clean run to catch up")
    reference = await snapshot(clean)
    report["clean"] = {
        "started_in_s": round(t0 - started, 1),
        "replay": {**first, "seconds": round(replayed - t0, 2)},
        "caught_up_after_s": round(time.monotonic() - replayed, 2),
        "client": {"retried": dict(client.retried), "not_retried": dict(client.not_retried)},
        **reference,
    }
    assert not client.not_retried and not client.stops, f"the clean run met errors: {client.samples} {client.stops}"
    stopping = asyncio.create_task(asyncio.to_thread(clean.stop))  # while the fault run starts

    # --- the fault run ---------------------------------------------------------------------------------
    run = home.run("faults")
    use(run, monkeypatch)
    began = time.monotonic()
    try:
        await run.start()
    finally:
        await stopping
    settings = run.settings()
    t0 = time.monotonic()
    client = Client(t0)
    for ctx in CLIENTS:
        monkeypatch.setattr(f"services.{ctx}.client.channel", client.channel)
    replay_done = asyncio.Event()
    ended: dict[str, float] = {}

    async def the_client() -> dict[str, Any]:
        try:
            return await client.year(settings)
        finally:
            ended["at"] = time.monotonic()
            replay_done.set()

    replaying = asyncio.create_task(the_client())
    faults: list[dict[str, Any]] = []
    try:
        await run_schedule(run, reference["events"], replay_done, t0, faults)
    except Exception as e:
        failures.append(f"the fault schedule failed: {describe(e)}")
    replay_info: dict[str, Any] = {}
    try:
        replay_info = await asyncio.wait_for(replaying, max(REPLAY_DEADLINE_S - (time.monotonic() - t0), 1))
    except Exception as e:
        replay_info = {"error": describe(e)}
        failures.append(f"the replay did not complete: {replay_info['error']}")
    replay_info.update(seconds=round(ended.get("at", time.monotonic()) - t0, 2), remembered=client.remembered)
    if client.not_retried:
        failures.append(f"the client met statuses it must not retry: {dict(client.not_retried)}")
    if client.stops:
        failures.append(f"the replay stopped {len(client.stops)} time(s) and went on: {client.stops}")

    recovery: dict[str, Any] = {}
    if faults:
        recovery["last_fault_at_s"] = faults[-1]["at_s"]
        recovery["last_fault_recovered_at_s"] = faults[-1].get("recovered_at_s")
    recovery["replay_ended_at_s"] = replay_info["seconds"]
    try:
        await until(lambda: caught_up(settings, groups), CATCH_UP_S, "every relay and consumer group")
        recovery["caught_up_at_s"] = round(time.monotonic() - t0, 2)
        if faults:
            recovery["last_fault_to_lag0_s"] = round(recovery["caught_up_at_s"] - faults[-1]["at_s"], 2)
            if recovery["last_fault_recovered_at_s"] is not None:
                recovery["last_fault_recovered_to_lag0_s"] = round(
                    recovery["caught_up_at_s"] - recovery["last_fault_recovered_at_s"], 2
                )
    except TimeoutError as e:
        left = await measure(lambda: backlog(settings, groups))
        recovery["not_caught_up_after_s"] = CATCH_UP_S
        recovery["backlog"] = left
        failures.append(f"not caught up {CATCH_UP_S:.0f} s after the replay: {left}; {e}")

    checks: dict[str, dict[str, Any]] = {}

    def check(name: str, ok: bool, detail: Any) -> None:
        checks[name] = {"ok": ok, "detail": detail}
        if not ok:
            failures.append(f"{name}: {detail}")

    got = await measure(lambda: snapshot(run))
    if isinstance(got, str):
        failures.append(f"could not read the fault run's figures and stores: {got}")
        got = {"figures": {}, "events": {}, "read_models": {}}
    d = diff(reference["figures"], got["figures"])
    check("stats figures equal the clean run's", not d, d or f"{len(reference['figures'])} figures equal")
    d = diff(reference["events"], got["events"])
    total = sum(sum(v.values()) for v in reference["events"].values())
    check("events per type in every store equal the clean run's", not d, d or f"{total} events in the stores")
    d = diff(reference["read_models"], got["read_models"])
    check("read-model rows equal the clean run's", not d, d or f"{len(reference['read_models'])} counts equal")
    dlq = await measure(lambda: dead_letters(settings, groups))
    if isinstance(dlq, str):
        check("no dead letters", False, dlq)
    else:
        check("no dead letters", not any(dlq.values()), {k: v for k, v in dlq.items() if v} or f"{len(dlq)} empty")
    held = await measure(lambda: parked(settings))
    if isinstance(held, str):
        check("nothing parked", False, held)
    else:
        check(
            "nothing parked",
            not held or not any(held.values()),
            "no parked table yet (parking is not built): the DLQ topics were checked"
            if held is None
            else ({k: v for k, v in held.items() if v} or f"{', '.join(held)}: empty"),
        )
    flagged = await measure(lambda: needs_rebuild(settings))
    check("no projection flagged incomplete", not flagged, flagged or "every service's needs_rebuild is empty")
    up = await health(run.fleet)
    check("every service SERVING", all(up.values()), {k: v for k, v in up.items() if not v} or "all 6")
    gone = run.fleet.exited()
    check("no service exited on its own", not gone, gone or "none")

    report["faults"] = {
        "started_in_s": round(t0 - began, 1),
        "faults": faults,
        "client": {
            "retried": client.retried,
            "not_retried": client.not_retried,
            "stops": client.stops,
            "samples": client.samples,
        },
        "replay": replay_info,
        "recovery": recovery,
        "checks": checks,
        "figures": got["figures"],
        "events": got["events"],
        "logs": log_evidence(run.fleet),
    }
    report["failures"] = failures
    report["test_s"] = round(time.monotonic() - started, 1)
    (home.path / "faults-report.json").write_text(json.dumps(report, indent=2, default=str))
    print(summary(report))
    print(f"report: {home.path / 'faults-report.json'}; test took {report['test_s']} s (before stopping)")
    assert not failures, "the whole system under faults:\n- " + "\n- ".join(failures)
