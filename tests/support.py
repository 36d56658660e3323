"""Helpers for tests: given/when/then on an aggregate, a command's field violations, waiting on conditions
with deadlines, envelopes, reading topics, child processes, service processes and gRPC stubs and doubles."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit
from urllib.request import urlopen

import asyncpg
import grpc
import pytest
from aiokafka.structs import TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, ValidationError

from services.kernel import bus
from services.kernel.application import Aggregate
from services.kernel.envelope import Envelope, Event, utcnow
from services.kernel.errors import from_validation_error
from services.kernel.settings import Settings
from services.kernel.signing import Signed, owner_of, signer_for

# the keys the issue asks `mieux stats year --json` to print: the annual report's "year at a glance"
YEAR_JSON_KEYS = (
    "year",
    "new_requests",
    "activities",
    "activities_by_region",
    "experts_deployed",
    "experts_by_gender",
    "experts_by_background",
    "countries_benefitted",
    "participants",
    "participants_by_gender",
    "expert_pool",
    "expert_pool_growth_pct",
    "air_miles_per_team_member",
    "footprint_kg_co2e",
    "vers_purchased",
    "vers_retired",
)
# what `mieux stats year Y --json` adds to them (and `mieux stats results Y --json` prints alone)
RESULTS_JSON_KEYS = ("results", "expert_origin", "history")

A = TypeVar("A", bound=Aggregate)
S = TypeVar("S")


def long_token(label: str) -> str:
    """A test token of `label`, padded to the 32 characters every token has at least (principals.py)."""
    return f"{label}-".ljust(40, "x")


def registry(tokens: dict[str, tuple[str, list[str], list[str] | None]]) -> dict[str, Any]:
    """The token registry's JSON (MIEUX_AUTH_TOKENS) of token -> (name, roles, calls or None), salted."""
    from services.kernel.principals import entry_for

    return {"tokens": [entry_for(t, n, r, c).model_dump(mode="json") for t, (n, r, c) in tokens.items()]}  # type: ignore[arg-type]


def given_when_then(
    aggregate: type[A], stream_id: str, given: Iterable[Event], when: Callable[[A], Sequence[Event]]
) -> list[Event]:
    """The events a decision records: `aggregate` folded from the `given` events of stream `stream_id`,
    then `when` (a decision of it, e.g. `lambda a: a.plan(cmd)`)."""
    return list(when(aggregate.fold(stream_id, list(given))))


def violated_fields(model: type[BaseModel], data: dict[str, Any]) -> list[str]:
    """The fields the gRPC kit would name in INVALID_ARGUMENT for `data` as a `model` (which must refuse it)."""
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    return fields_of(info.value)


def fields_of(error: ValidationError) -> list[str]:
    """The field violations the gRPC kit makes of a validation error, by field."""
    return [v.field for v in from_validation_error(error).violations]


def make_envelope(
    event_type: str,
    data: dict[str, Any],
    *,
    stream_id: str,
    version: int = 1,
    source: str = "test",
    position: int = 0,
    schema_version: int = 1,
    correlation_id: str = "c",
    actor: str = "tester",
) -> Envelope:
    """An envelope as a service's relay would publish it, with a fresh event id, recorded now."""
    now = utcnow()
    return Envelope(
        event_id=uuid.uuid4(),
        event_type=event_type,
        schema_version=schema_version,
        source=source,
        stream_id=stream_id,
        stream_version=version,
        position=position,
        occurred_at=now,
        recorded_at=now,
        correlation_id=correlation_id,
        causation_id="",
        actor=actor,
        data=data,
    )


def signed(topic: str, envelopes: Sequence[Envelope]) -> list[Signed]:
    """`envelopes` as the relay of `topic`'s producer publishes them: from that service (`source`), with its key
    id, signed with its key in the test stack (a service's, or a test's schema's: the `schema` fixture makes one).
    Each has its Kafka key, value and headers (`producer.send(topic, value=m.value, key=m.key, headers=m.headers)`)."""
    owner = owner_of(topic)
    assert owner is not None, f"{topic} is no service's events topic"
    return signer_for(Settings(), owner).seal([e.model_copy(update={"source": owner}) for e in envelopes])


async def publish(settings: Settings, topic: str, envelopes: Sequence[Envelope]) -> None:
    """`envelopes` onto `topic` in order, signed as its producer's relay signs them (`signed`), acknowledged."""
    producer = bus.producer(settings)
    await producer.start()
    try:
        for m in signed(topic, envelopes):
            await producer.send(topic, value=m.value, key=m.key, headers=m.headers)
        await producer.flush()
    finally:
        await producer.stop()


async def mieux_cli(stack_env: dict[str, str], *args: str) -> tuple[int, str]:
    """`mieux <args>` as a person runs it (a process of its own, against the test stack): exit code and output."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.ops.cli",
        *args,
        env={**stack_env, "COLUMNS": "250"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode()


@contextlib.asynccontextmanager
async def own_database(dsn: str) -> AsyncIterator[str]:
    """A database of its own in the PostgreSQL of `dsn` (the session's): its DSN, dropped at the end. For
    setting up schemas that the shared database's other tests use (a service's read models) without
    touching theirs."""
    name = f"t_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
        try:
            yield urlsplit(dsn)._replace(path=f"/{name}").geturl()
        finally:
            await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
    finally:
        await admin.close()


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 30.0, what: str = "condition") -> None:
    """Wait until `check()` is true, polling; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


async def read_topic(
    settings: Settings, topic: str, until: Callable[[list], bool], timeout: float = 60.0, raw: bool = False
) -> list:
    """Every envelope (or raw record) on `topic` from the beginning, partition by partition, until `until(seen)`."""
    c = bus.consumer(settings, group_id=None)
    await c.start()
    seen: list = []
    try:
        deadline = time.monotonic() + timeout
        while not c.partitions_for_topic(topic):
            await c._client.force_metadata_update()
            if time.monotonic() > deadline:
                raise AssertionError(f"topic {topic} never appeared")
            await asyncio.sleep(0.1)
        tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or ())]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        while not until(seen):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out reading {topic}: {len(seen)} messages")
            for msgs in (await c.getmany(timeout_ms=200)).values():
                seen.extend(m if raw else Envelope.from_bytes(m.value) for m in msgs)
        return seen
    finally:
        await c.stop()


def first_occurrences_in_order(messages: list[Envelope]) -> bool:
    """Per stream, the first time each version appears on the bus is in version order."""
    last: dict[str, int] = {}
    for m in messages:
        prev = last.get(m.stream_id, 0)
        if m.stream_version <= prev:
            continue  # a duplicate from an at-least-once retry
        if m.stream_version != prev + 1:
            return False
        last[m.stream_id] = m.stream_version
    return True


class Child:
    """A child OS process (a service, a relay) that is always stopped."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        # in the test stack's home (its env's MIEUX_HOME), which the session removes with the stack
        self.log = tempfile.NamedTemporaryFile(
            prefix="mieux-child-", suffix=".log", delete=False, dir=env.get("MIEUX_HOME")
        )
        self.proc = subprocess.Popen([sys.executable, *args], env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode


class ServiceProcess(Child):
    """`python -m services.<name>` on a free port, waited for until gRPC health says SERVING."""

    def __init__(self, name: str, env: dict[str, str], port: int) -> None:
        self.name, self.port = name, port
        super().__init__(["-m", f"services.{name}"], env)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait_serving(self, timeout: float = 60.0) -> None:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + timeout
        last: object = None  # the last health status or error code, for the timeout message
        with grpc.insecure_channel(self.target) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                    last = reply.status
                except grpc.RpcError as e:
                    last = e.code()
                time.sleep(0.05)  # poll interval: a refused call and a NOT_SERVING answer both come back at once
        raise TimeoutError(f"{self.name} not SERVING after {timeout:.0f}s (last: {last}):\n{self.output()[-3000:]}")


def start_service(
    name: str, stack_env: dict[str, str], port: int | None = None, *, timeout: float = 60.0, **extra: str
) -> ServiceProcess:
    """Start a service as a child OS process and wait up to `timeout` seconds until it serves; the caller
    stops it. Its environment is `stack_env`, then its port (a free one unless given) and log level WARNING,
    then `extra` (which may override the log level). Blocking: from async code, run it in a thread
    (`await asyncio.to_thread(start_service, ...)`) so the event loop keeps serving meanwhile."""
    from services.ops.devstack import free_port

    port = port or free_port()
    env = {**stack_env, f"MIEUX_{name.upper()}_PORT": str(port), "MIEUX_LOG_LEVEL": "WARNING", **extra}
    svc = ServiceProcess(name, env, port)
    try:
        svc.wait_serving(timeout)
    except BaseException:
        svc.stop()
        raise
    return svc


@contextlib.asynccontextmanager
async def running_service(
    name: str, stack_env: dict[str, str], *, timeout: float = 90.0, stop_timeout: float = 15.0, **extra: str
) -> AsyncIterator[ServiceProcess]:
    """A service as a child OS process (`start_service`, in a thread so that test doubles served on this
    event loop answer while it starts), stopped at the end, when it must exit with 0."""
    svc = await asyncio.to_thread(start_service, name, stack_env, timeout=timeout, **extra)
    try:
        yield svc
    finally:
        code = await asyncio.to_thread(svc.stop, stop_timeout)
        assert code == 0, f"{name} exited with {code}:\n{svc.output()[-4000:]}"


@contextlib.contextmanager
def running_together(names: Sequence[str], stack_env: dict[str, str]) -> Iterator[dict[str, ServiceProcess]]:
    """Services as child OS processes on free ports, each told the others' addresses (MIEUX_<NAME>_ADDR),
    which are also set in this process meanwhile so its clients (and child processes given `os.environ`)
    find them; all stopped at the end."""
    from services.ops.devstack import free_port

    ports = {name: free_port() for name in names}
    addrs = {f"MIEUX_{n.upper()}_ADDR": f"127.0.0.1:{p}" for n, p in ports.items()}
    started: dict[str, ServiceProcess] = {}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in addrs.items():
            mp.setenv(k, v)
        try:
            for name in names:
                started[name] = start_service(name, {**stack_env, **addrs}, port=ports[name])
            yield started
        finally:
            for svc in started.values():
                svc.stop()


@contextlib.asynccontextmanager
async def grpc_stub(stub_class: Callable[[grpc.aio.Channel], S], target: str | int) -> AsyncIterator[S]:
    """A `stub_class` stub on a channel of its own to `target` (host:port, or a port on loopback), closed after."""
    address = f"127.0.0.1:{target}" if isinstance(target, int) else target
    async with grpc.aio.insecure_channel(address) as channel:
        yield stub_class(channel)


@contextlib.asynccontextmanager
async def grpc_double(add_to_server: Callable[[S, grpc.aio.Server], None], servicer: S) -> AsyncIterator[int]:
    """`servicer` (a test double of another service) served on this event loop on a free loopback port,
    which is yielded; stopped at the end. `add_to_server` is the generated `add_<Name>Servicer_to_server`."""
    server = grpc.aio.server()
    add_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield port
    finally:
        await server.stop(1)


Metrics = dict[tuple[str, frozenset], float]


async def scrape(port: int, timeout: float = 5.0) -> Metrics:
    """A process's Prometheus metrics on `port`: (sample name, its labels) -> value."""

    def get() -> str:
        with urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as r:
            return r.read().decode()

    text = await asyncio.to_thread(get)
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
