"""Helpers for the whole system under faults (tests/e2e/test_faults.py) and the broker-pause repeater
(tests/e2e/repeat_broker_pauses.py): a dev stack of its own with the six services as OS processes, that
can be SIGKILLed and restarted one by one, and what is measured of it at the end.

Only processes started here are ever signalled (by their pid), and every one is stopped by `Run.stop()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka.structs import TopicPartition

from services.kernel import bus
from services.kernel.schemas import services_with
from services.kernel.settings import Settings
from services.ops.catalog import CONTEXTS
from services.ops.devstack import DevStack, free_port
from services.ops.processes import serving

# settings a test's environment may carry (the session stack's home, another test's addresses): never passed on
INHERITED = re.compile(r"^(MIEUX_|DATABASE_URL$|KAFKA_BOOTSTRAP_SERVERS$)")


def clean_environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not INHERITED.match(k)}


async def until(check: Callable[[], Awaitable[bool]], timeout: float, what: str, every: float = 0.05) -> float:
    """Wait until `check()` is true (an error counts as not yet); the seconds it took. TimeoutError after
    `timeout` seconds."""
    start = time.monotonic()
    error = ""
    while True:
        try:
            if await check():
                return time.monotonic() - start
        except Exception as e:  # a server that is restarting: not yet
            error = f" (the last check failed: {e!r})"
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{error}")
        await asyncio.sleep(every)


def stack_in_child(stack: DevStack, call: str) -> None:
    """`DevStack(home).<call>` in a child Python process, then its state reloaded here.

    Run as root, the dev stack starts PostgreSQL as a user of its own, which takes a fork() (not the vfork
    Python uses otherwise), and a fork of a process whose gRPC threads are busy can crash the child before
    it runs PostgreSQL: seen here on a restart, "Other threads are currently calling into gRPC, skipping
    fork() handlers", then "Fatal Python error: Segmentation fault" and no PostgreSQL. A child process
    without gRPC forks safely."""
    code = f"from services.ops.devstack import DevStack; DevStack({str(stack.home)!r}).{call}"
    out = subprocess.run([sys.executable, "-c", code], env=clean_environ(), capture_output=True, text=True, timeout=180)
    stack.load()
    if out.returncode:
        raise RuntimeError(f"DevStack.{call} failed ({out.returncode}): {(out.stdout + out.stderr)[-2000:]}")


# --- the services as OS processes -------------------------------------------------------------------


class Fleet:
    """Services as `python -m services.<name>` on free ports, each restartable on its port; one log per
    service under `logs`, appended across restarts (with a line saying when the test killed it)."""

    def __init__(self, logs: Path, env: dict[str, str], services: tuple[str, ...] = CONTEXTS) -> None:
        self.logs = logs
        self.services = services
        self.ports = {s: free_port() for s in services}
        self.addrs = {f"MIEUX_{s.upper()}_ADDR": f"127.0.0.1:{p}" for s, p in self.ports.items()}
        self.env = {**env, **self.addrs, "MIEUX_LOG_LEVEL": env.get("MIEUX_LOG_LEVEL", "WARNING")}
        self.procs: dict[str, subprocess.Popen] = {}
        self.killed: list[subprocess.Popen] = []

    def log(self, service: str) -> Path:
        return self.logs / f"{service}.log"

    def note(self, service: str, text: str) -> None:
        with open(self.log(service), "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} ---- test: {text}\n")

    def start(self, service: str) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.log(service), "ab") as out:
            self.procs[service] = subprocess.Popen(
                [sys.executable, "-m", f"services.{service}"],
                env={**self.env, f"MIEUX_{service.upper()}_PORT": str(self.ports[service])},
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def address(self, service: str) -> str:
        return f"127.0.0.1:{self.ports[service]}"

    async def wait_serving(self, service: str, timeout: float = 60.0) -> float:
        proc = self.procs[service]

        async def up() -> bool:
            if proc.poll() is not None:
                tail = self.log(service).read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{service} exited with {proc.returncode}:\n{tail}")
            return await serving(self.address(service))

        start = time.monotonic()
        while not await up():
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"{service} not SERVING after {timeout:.0f}s")
            await asyncio.sleep(0.05)
        return time.monotonic() - start

    async def start_all(self, timeout: float = 90.0) -> None:
        for s in self.services:
            self.start(s)
        for s in self.services:
            await self.wait_serving(s, timeout)

    def kill(self, service: str) -> None:
        """SIGKILL, as a crash: no drain, no relay checkpoint, no offset commit."""
        proc = self.procs[service]
        self.note(service, f"SIGKILL pid {proc.pid}")
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        self.killed.append(proc)

    def exited(self) -> dict[str, int]:
        """Services that ended on their own (not killed by the test)."""
        return {s: p.returncode for s, p in self.procs.items() if p.poll() is not None}

    def stop(self, timeout: float = 20.0) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)


# --- one stack and its services ---------------------------------------------------------------------


@dataclass
class Run:
    """A DevStack (fsync on, as `mieux dev up` gives it) in `home`, and the services on it."""

    home: Path
    services: tuple[str, ...] = CONTEXTS
    stack: DevStack = field(init=False)
    fleet: Fleet = field(init=False)

    def __post_init__(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.stack = DevStack(self.home / "stack")
        env = {**clean_environ(), "MIEUX_HOME": str(self.stack.home)}
        self.fleet = Fleet(self.home / "logs", env, self.services)

    @property
    def environ(self) -> dict[str, str]:
        """What this process needs in its environment to reach this run (Settings() and the clients)."""
        return {"MIEUX_HOME": str(self.stack.home), **self.fleet.addrs}

    def settings(self) -> Settings:
        return Settings(MIEUX_HOME=str(self.stack.home))  # type: ignore[call-arg]

    async def start(self) -> None:
        await asyncio.to_thread(stack_in_child, self.stack, "up()")
        await self.fleet.start_all()

    async def restart_postgres(self, mode: str) -> None:
        await asyncio.to_thread(stack_in_child, self.stack, f"restart_postgres({mode!r})")

    def stop(self) -> None:
        """Every service process, then the broker and PostgreSQL; safe to call twice."""
        try:
            self.fleet.stop()
        finally:
            self.stack.down()


# --- what is measured ---------------------------------------------------------------------------------


async def connect(settings: Settings) -> asyncpg.Connection:
    return await asyncpg.connect(settings.dsn(), timeout=5)


async def event_counts(settings: Settings) -> dict[str, dict[str, int]]:
    """Per service store, the number of events of each type."""
    conn = await connect(settings)
    try:
        out: dict[str, dict[str, int]] = {}
        for ctx in CONTEXTS:
            if await conn.fetchval("SELECT to_regclass($1)", f"{ctx}.events") is None:
                continue
            rows = await conn.fetch(f"SELECT event_type, count(*) AS n FROM {ctx}.events GROUP BY 1 ORDER BY 1")
            out[ctx] = {r["event_type"]: r["n"] for r in rows}
        return out
    finally:
        await conn.close()


async def read_model_counts(settings: Settings) -> dict[str, int]:
    """Rows of every read-model table (`<service>_views.*`), and tracked events per projection."""
    conn = await connect(settings)
    try:
        tables = await conn.fetch(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_schema LIKE '%\\_views' AND table_type = 'BASE TABLE' ORDER BY 1, 2"
        )
        out = {
            f"{t['table_schema']}.{t['table_name']}": await conn.fetchval(
                f'SELECT count(*) FROM "{t["table_schema"]}"."{t["table_name"]}"'
            )
            for t in tables
        }
        for k in await services_with(conn, "tracking"):  # each service's own (<service>_projections)
            for r in await conn.fetch(f"SELECT projection, count(*) AS n FROM {k.tracking} GROUP BY 1"):
                out[f"tracking:{r['projection']}"] = r["n"]
        return out
    finally:
        await conn.close()


async def unpublished(settings: Settings) -> dict[str, int]:
    """Per service, events stored but not yet published by its relay (as demo.unpublished, per service)."""
    conn = await connect(settings)
    try:
        out = {}
        for ctx in CONTEXTS:
            if await conn.fetchval("SELECT to_regclass($1)", f"{ctx}.events") is None:
                continue
            last = await conn.fetchval(f"SELECT coalesce(max(position), 0) FROM {ctx}.events")
            done = await conn.fetchval(f"SELECT coalesce(max(position), 0) FROM {ctx}.relay_state")
            out[ctx] = max(last - done, 0)
        return out
    finally:
        await conn.close()


async def end_offsets(settings: Settings, topics: list[str], timeout: float = 10.0) -> dict[TopicPartition, int]:
    """Every partition's end (high watermark) of `topics`, from fetch responses as `bus.end_offsets` reads
    them (Tansu's ListOffsets counts batches), but with one consumer for all the topics."""
    c = bus.consumer(settings, group_id=None, max_partition_fetch_bytes=1024)
    await c.start()
    try:
        tps = []
        for topic in topics:
            parts = c.partitions_for_topic(topic)
            if not parts:
                await c._client.force_metadata_update()
                parts = c.partitions_for_topic(topic) or set()
            tps += [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return {}
        c.assign(tps)
        for tp in tps:
            c.seek(tp, 0)
        deadline = time.monotonic() + timeout
        ends: dict[TopicPartition, int] = {}
        while len(ends) < len(tps):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no high watermark for {sorted(set(tps) - set(ends))}")
            await c.getmany(*[tp for tp in tps if tp not in ends], timeout_ms=200, max_records=1)
            ends.update({tp: hw for tp in tps if (hw := c.highwater(tp)) is not None})
        return ends
    finally:
        await c.stop()


async def lags(settings: Settings, groups: list[tuple[str, tuple[str, ...]]]) -> dict[str, int]:
    """Each consumer group's lag as `bus.group_lag` defines it (end offsets minus the group's committed
    offsets), with the ends read once for every topic: a check takes a fraction of the time."""
    ends = await end_offsets(settings, sorted({t for _, topics in groups for t in topics}))
    out = {}
    for group, topics in groups:
        c = bus.consumer(settings, group_id=group)
        await c.start()
        try:
            lag = 0
            for tp, end in ends.items():
                if tp.topic in topics:
                    lag += max(end - (await c.committed(tp) or 0), 0)
            out[group] = lag
        finally:
            await c.stop()
    return out


async def backlog(settings: Settings, groups: list[tuple[str, tuple[str, ...]]]) -> dict[str, Any]:
    """What is still to do: unpublished events per service and lag per group (only the non-zero ones)."""
    return {
        "unpublished": {k: v for k, v in (await unpublished(settings)).items() if v},
        "lag": {k: v for k, v in (await lags(settings, groups)).items() if v},
    }


async def caught_up(settings: Settings, groups: list[tuple[str, tuple[str, ...]]]) -> bool:
    """Every relay published everything and every consumer group's lag is 0 (as demo.caught_up)."""
    if any((await unpublished(settings)).values()):
        return False
    return not any((await lags(settings, groups)).values())


async def dead_letters(settings: Settings, groups: list[tuple[str, tuple[str, ...]]]) -> dict[str, int]:
    """Messages on every group's dead-letter topic."""
    topics = [bus.dlq_topic(g) for g, _ in groups]
    ends = await end_offsets(settings, topics)
    return {t: sum(n for tp, n in ends.items() if tp.topic == t) for t in topics}


async def parked(settings: Settings) -> dict[str, Any] | None:
    """Rows ever written to a table named like `parked` in any schema (`<service>_parking.parked`, whatever their state
    now: a passing fault must never be parked, even for a while), with the first few of them; None while
    no such table exists."""
    conn = await connect(settings)
    try:
        tables = await conn.fetch(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_name LIKE '%parked%' AND table_type = 'BASE TABLE' "
            "AND table_schema NOT IN ('pg_catalog', 'information_schema')"
        )
        if not tables:
            return None
        out: dict[str, Any] = {}
        for t in tables:
            name = f'"{t["table_schema"]}"."{t["table_name"]}"'
            n = await conn.fetchval(f"SELECT count(*) FROM {name}")
            out[f"{t['table_schema']}.{t['table_name']}"] = n
            if n:
                rows = await conn.fetch(f"SELECT * FROM {name} LIMIT 5")
                out[f"{t['table_schema']}.{t['table_name']} (first rows)"] = [
                    {k: str(v)[:200] for k, v in dict(r).items()} for r in rows
                ]
        return out
    finally:
        await conn.close()


async def needs_rebuild(settings: Settings) -> dict[str, str]:
    conn = await connect(settings)
    try:
        out = {}
        for k in await services_with(conn, "needs_rebuild"):  # each service's own (<service>_projections)
            out.update({r["projection"]: r["reason"] for r in await conn.fetch(f"SELECT * FROM {k.needs_rebuild}")})
        return out
    finally:
        await conn.close()


async def health(fleet: Fleet) -> dict[str, bool]:
    return {s: await serving(fleet.address(s)) for s in fleet.services}


def log_evidence(fleet: Fleet, keep: int = 12) -> dict[str, dict[str, Any]]:
    """Per service log: how many WARNING / ERROR / CRITICAL lines and tracebacks, and the distinct messages
    (numbers and ids masked) with how often each came."""
    out: dict[str, dict[str, Any]] = {}
    level = re.compile(r"^\S+ \S+ (WARNING|ERROR|CRITICAL) (\S+): (.*)$")
    for s in fleet.services:
        path = fleet.log(s)
        text = path.read_text(errors="replace") if path.exists() else ""
        counts: Counter[str] = Counter()
        messages: Counter[str] = Counter()
        for line in text.splitlines():
            m = level.match(line)
            if m:
                counts[m.group(1)] += 1
                msg = re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}|\d+(\.\d+)?", "#", f"{m.group(1)} {m.group(2)}: {m.group(3)}")
                messages[msg[:300]] += 1
        out[s] = {
            **counts,
            "tracebacks": text.count("Traceback (most recent call last)"),
            "killed_by_test": text.count("---- test: SIGKILL"),
            "messages": dict(messages.most_common(keep)),
        }
    return out


def diff(expected: dict, got: dict) -> dict[str, Any]:
    """Keys whose values differ (nested dicts flattened with '/'), as {key: [expected, got]}."""
    out: dict[str, Any] = {}
    for k in sorted(set(expected) | set(got), key=str):
        a, b = expected.get(k), got.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out.update({f"{k}/{kk}": v for kk, v in diff(a, b).items()})
        elif a != b:
            out[str(k)] = [a, b]
    return out
