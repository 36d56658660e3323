"""The gRPC kit, through the real requests service run as a child process against the test stack:
auth and roles, input errors with field violations, idempotent commands, actor and correlation id on
stored events, health, reflection, EventLog.ReadAll and graceful shutdown."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from mieux.common.v1 import common_pb2, eventlog_pb2, eventlog_pb2_grpc
from mieux.requests.v1 import requests_pb2, requests_pb2_grpc
from support import ServiceProcess, running_service, start_service

from services.kernel.db import Pool
from services.kernel.eventlog import EventLogServicer, read_all_source
from services.kernel.grpckit import call_metadata, field_violations
from services.kernel.settings import Settings
from services.kernel.store import EventStore
from services.ops.devstack import DevStack
from services.requests.commands import SubmitRequest

pytestmark = pytest.mark.integration

REQUESTS = "mieux.requests.v1.Requests"
EVENTLOG = "mieux.common.v1.EventLog"
RPC_TIMEOUT = 15.0
START_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0
PAGE_SIZE = 3  # events per ReadAll page


# --- the service process -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def service(stack_env: dict[str, str]) -> AsyncIterator[ServiceProcess]:
    # ReadAll's pages small, so that a few events take several pages
    async with running_service(
        "requests",
        stack_env,
        timeout=START_TIMEOUT,
        stop_timeout=STOP_TIMEOUT,
        MIEUX_READ_ALL_PAGE_SIZE=str(PAGE_SIZE),
    ) as svc:
        yield svc


@pytest.fixture
async def channel(service: ServiceProcess) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(service.target) as ch:
        yield ch


@pytest.fixture
def requests_stub(channel: grpc.aio.Channel) -> requests_pb2_grpc.RequestsStub:
    return requests_pb2_grpc.RequestsStub(channel)


@pytest.fixture
def eventlog_stub(channel: grpc.aio.Channel) -> eventlog_pb2_grpc.EventLogStub:
    return eventlog_pb2_grpc.EventLogStub(channel)


# --- helpers -----------------------------------------------------------------------------------------


def new_command_id() -> str:
    return f"test-{uuid.uuid4()}"


def command_fields(command_id: str | None = None, **over: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "command_id": command_id or new_command_id(),
        "partner": "CR",
        "institution": "Dirección General de Migración y Extranjería",
        "institution_type": "agency",
        "received_on": "2017-03-14",
        "title": "Costa Rica III",
        "themes": ["international_labour_migration"],
    }
    fields.update(over)
    return fields


def to_proto(fields: dict[str, Any]) -> requests_pb2.SubmitRequestCommand:
    f = dict(fields)
    return requests_pb2.SubmitRequestCommand(
        command_id=f["command_id"],
        partner=f["partner"],
        institution=f["institution"],
        institution_type=f["institution_type"],
        received_on=common_pb2.Date(iso=f["received_on"]),
        title=f["title"],
        themes=f["themes"],
    )


def stream_of(command_id: str) -> str:
    """The stream a SubmitRequest with this command id lands on (only the command id matters)."""
    return SubmitRequest.model_validate(command_fields(command_id)).request_id


async def stored(pool: Pool, stream_id: str) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT * FROM requests.events WHERE stream_id = $1 ORDER BY position", stream_id)


async def command_rows(pool: Pool, command_id: str) -> int:
    return await pool.fetchval("SELECT count(*) FROM requests.commands WHERE command_id = $1", command_id)


async def submit(
    stub: requests_pb2_grpc.RequestsStub, fields: dict[str, Any], token: str | None, correlation_id: str | None = None
) -> common_pb2.CommandAck:
    return await stub.SubmitRequest(
        to_proto(fields), metadata=call_metadata(token, correlation_id), timeout=RPC_TIMEOUT
    )


async def refused(coro: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await coro
    return info.value


# --- auth and roles ----------------------------------------------------------------------------------


async def test_submit_request_needs_a_known_token_and_a_commanding_role(
    requests_stub: requests_pb2_grpc.RequestsStub, tokens: dict[str, str], pool: Pool
) -> None:
    fields = command_fields()
    stream = stream_of(fields["command_id"])

    no_token = await refused(submit(requests_stub, fields, None))
    assert no_token.code() == grpc.StatusCode.UNAUTHENTICATED

    wrong = await refused(submit(requests_stub, fields, "dev-ops-not-the-right-token"))
    assert wrong.code() == grpc.StatusCode.UNAUTHENTICATED

    not_bearer = await refused(
        requests_stub.SubmitRequest(
            to_proto(fields), metadata=(("authorization", f"Basic {tokens['ops']}"),), timeout=RPC_TIMEOUT
        )
    )
    assert not_bearer.code() == grpc.StatusCode.UNAUTHENTICATED

    finance = await refused(submit(requests_stub, fields, tokens["finance"]))
    assert finance.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "SubmitRequest" in (finance.details() or "")

    # none of the refused calls stored anything, nor remembered the command id
    assert await stored(pool, stream) == []
    assert await command_rows(pool, fields["command_id"]) == 0

    # the same command with the ops token goes through, on the stream counted above
    ack = await submit(requests_stub, fields, tokens["ops"])
    assert ack.stream_id == stream and not ack.duplicate
    assert (ack.first_version, ack.last_version) == (1, 1)
    rows = await stored(pool, stream)
    assert len(rows) == 1 and rows[0]["event_type"] == "RequestReceived"
    assert ack.position == rows[0]["position"]


# A service principal may submit only where its allow-list says so (none lists SubmitRequest): test_principals.py.
@pytest.mark.parametrize("role", ["admin"])
async def test_other_commanding_roles_may_submit(
    requests_stub: requests_pb2_grpc.RequestsStub, tokens: dict[str, str], pool: Pool, role: str
) -> None:
    fields = command_fields()
    ack = await submit(requests_stub, fields, tokens[role])
    assert ack.stream_id == stream_of(fields["command_id"])
    assert [r["actor"] for r in await stored(pool, ack.stream_id)] == [f"dev-{role}"]


async def test_get_requests_per_year_is_open_to_readers_only(
    requests_stub: requests_pb2_grpc.RequestsStub, tokens: dict[str, str]
) -> None:
    query = requests_pb2.GetRequestsPerYearQuery()
    for role in ("finance", "ops", "admin"):  # no service's flow asks for it: test_principals.py
        reply = await requests_stub.GetRequestsPerYear(query, metadata=call_metadata(tokens[role]), timeout=RPC_TIMEOUT)
        assert isinstance(reply, requests_pb2.RequestsPerYear)
    e = await refused(requests_stub.GetRequestsPerYear(query, metadata=call_metadata(None), timeout=RPC_TIMEOUT))
    assert e.code() == grpc.StatusCode.UNAUTHENTICATED
    e = await refused(requests_stub.GetRequestsPerYear(query, metadata=call_metadata("nope"), timeout=RPC_TIMEOUT))
    assert e.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_submitted_request_reaches_the_per_year_read_model(
    requests_stub: requests_pb2_grpc.RequestsStub, tokens: dict[str, str]
) -> None:
    """Store -> relay -> broker -> projection -> GetRequestsPerYear, read with the finance token."""
    year = 2003  # a year no other test uses
    await submit(requests_stub, command_fields(received_on=f"{year}-06-01"), tokens["ops"])
    deadline = time.monotonic() + 60
    counts: dict[int, int] = {}
    while time.monotonic() < deadline:
        reply = await requests_stub.GetRequestsPerYear(
            requests_pb2.GetRequestsPerYearQuery(), metadata=call_metadata(tokens["finance"]), timeout=RPC_TIMEOUT
        )
        counts = {yc.year: yc.count for yc in reply.years}
        if counts.get(year):
            break
        await asyncio.sleep(0.1)  # poll interval of the deadline loop
    assert counts.get(year) == 1, counts


# --- invalid input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"partner": "XX"}, "partner"),
        ({"title": ""}, "title"),
        ({"title": "   "}, "title"),
        ({"received_on": "2017-02-30"}, "received_on"),
        ({"received_on": "not-a-date"}, "received_on"),
        ({"institution_type": "embassy"}, "institution_type"),
    ],
)
async def test_invalid_input_is_invalid_argument_naming_the_field_and_stores_nothing(
    requests_stub: requests_pb2_grpc.RequestsStub,
    tokens: dict[str, str],
    pool: Pool,
    over: dict[str, Any],
    field: str,
) -> None:
    fields = command_fields(**over)
    e = await refused(submit(requests_stub, fields, tokens["ops"]))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = field_violations(e)
    assert [f for f, _ in violations] == [field], violations
    assert all(description for _, description in violations)
    assert await stored(pool, stream_of(fields["command_id"])) == []
    assert await command_rows(pool, fields["command_id"]) == 0


async def test_several_invalid_fields_are_all_reported(
    requests_stub: requests_pb2_grpc.RequestsStub, tokens: dict[str, str], pool: Pool
) -> None:
    fields = command_fields(partner="XX", title="", received_on="2017-13-01")
    e = await refused(submit(requests_stub, fields, tokens["ops"]))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert {f for f, _ in field_violations(e)} == {"partner", "title", "received_on"}
    assert await stored(pool, stream_of(fields["command_id"])) == []


async def test_invalid_input_without_a_token_is_unauthenticated_first(
    requests_stub: requests_pb2_grpc.RequestsStub,
) -> None:
    e = await refused(submit(requests_stub, command_fields(partner="XX"), None))
    assert e.code() == grpc.StatusCode.UNAUTHENTICATED
    assert field_violations(e) == []


# --- idempotent commands -----------------------------------------------------------------------------


async def test_the_same_command_id_twice_is_answered_with_the_first_result(
    requests_stub: requests_pb2_grpc.RequestsStub, tokens: dict[str, str], pool: Pool
) -> None:
    fields = command_fields()
    first = await submit(requests_stub, fields, tokens["ops"])
    again = await submit(requests_stub, fields, tokens["ops"])
    assert not first.duplicate and again.duplicate
    assert again.stream_id == first.stream_id == stream_of(fields["command_id"])
    assert (again.first_version, again.last_version, again.position) == (
        first.first_version,
        first.last_version,
        first.position,
    )
    assert len(await stored(pool, first.stream_id)) == 1


async def test_a_reused_command_id_with_another_payload_is_already_exists(
    requests_stub: requests_pb2_grpc.RequestsStub, tokens: dict[str, str], pool: Pool
) -> None:
    fields = command_fields()
    first = await submit(requests_stub, fields, tokens["ops"])
    e = await refused(submit(requests_stub, {**fields, "title": "Something else"}, tokens["ops"]))
    assert e.code() == grpc.StatusCode.ALREADY_EXISTS
    rows = await stored(pool, first.stream_id)
    assert len(rows) == 1
    assert rows[0]["data"]["title"] == fields["title"]


# --- actor and correlation id ------------------------------------------------------------------------


async def test_the_actor_and_correlation_id_are_recorded_on_the_event(
    requests_stub: requests_pb2_grpc.RequestsStub, tokens: dict[str, str], pool: Pool
) -> None:
    correlation_id = f"corr-{uuid.uuid4()}"
    fields = command_fields()
    call = requests_stub.SubmitRequest(
        to_proto(fields), metadata=call_metadata(tokens["ops"], correlation_id), timeout=RPC_TIMEOUT
    )
    ack = await call
    [row] = await stored(pool, ack.stream_id)
    assert row["actor"] == "dev-ops"
    assert row["correlation_id"] == correlation_id
    # the server echoes the correlation id to the caller
    trailing = dict(await call.trailing_metadata() or ())
    assert trailing.get("x-correlation-id") == correlation_id


async def test_a_call_without_a_correlation_id_gets_a_fresh_one(
    requests_stub: requests_pb2_grpc.RequestsStub, tokens: dict[str, str], pool: Pool
) -> None:
    fields = command_fields()
    ack = await requests_stub.SubmitRequest(
        to_proto(fields), metadata=(("authorization", f"Bearer {tokens['ops']}"),), timeout=RPC_TIMEOUT
    )
    [row] = await stored(pool, ack.stream_id)
    assert uuid.UUID(row["correlation_id"])  # a generated uuid, never empty


# --- health and reflection ---------------------------------------------------------------------------


async def test_health_is_serving_overall_and_per_service(channel: grpc.aio.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for name in ("", REQUESTS, EVENTLOG):
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=RPC_TIMEOUT)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, name
    e = await refused(stub.Check(health_pb2.HealthCheckRequest(service="mieux.nope.v1.Nope"), timeout=RPC_TIMEOUT))
    assert e.code() == grpc.StatusCode.NOT_FOUND


async def test_reflection_lists_the_services(channel: grpc.aio.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=RPC_TIMEOUT
    )
    names: set[str] = set()
    async for reply in call:
        names |= {s.name for s in reply.list_services_response.service}
    assert {REQUESTS, EVENTLOG, "grpc.health.v1.Health"} <= names


# --- EventLog.ReadAll --------------------------------------------------------------------------------


async def read_pages(
    stub: eventlog_pb2_grpc.EventLogStub, token: str | None, after: int = 0, limit: int = 0
) -> list[list[eventlog_pb2.StoredEvent]]:
    call = stub.ReadAll(
        eventlog_pb2.ReadAllRequest(after_position=after, limit=limit),
        metadata=call_metadata(token),
        timeout=RPC_TIMEOUT,
    )
    return [list(page.events) async for page in call]


async def read_all(
    stub: eventlog_pb2_grpc.EventLogStub, token: str | None, after: int = 0, limit: int = 0
) -> list[eventlog_pb2.StoredEvent]:
    return [e for page in await read_pages(stub, token, after, limit) for e in page]


async def test_read_all_streams_the_stored_events_in_position_order(
    requests_stub: requests_pb2_grpc.RequestsStub,
    eventlog_stub: eventlog_pb2_grpc.EventLogStub,
    tokens: dict[str, str],
    pool: Pool,
) -> None:
    for i in range(5):
        await submit(requests_stub, command_fields(title=f"Read all {i}"), tokens["ops"])
    rows = await pool.fetch("SELECT *, data::text AS data_text FROM requests.events ORDER BY position")
    assert len(rows) >= 5

    events = await read_all(eventlog_stub, tokens["ops"])
    assert [e.position for e in events] == [r["position"] for r in rows]
    for e, r in zip(events, rows, strict=True):
        assert e.event_id == str(r["event_id"])
        assert (e.event_type, e.schema_version, e.source) == (r["event_type"], r["schema_version"], "requests")
        assert (e.stream_id, e.stream_version) == (r["stream_id"], r["stream_version"])
        assert (e.actor, e.correlation_id, e.causation_id) == (r["actor"], r["correlation_id"], r["causation_id"])
        # ISO 8601, as PostgreSQL writes JSON (fractions of a second without their trailing zeros)
        assert datetime.fromisoformat(e.occurred_at) == r["occurred_at"]
        assert datetime.fromisoformat(e.recorded_at) == r["recorded_at"]
        assert "T" in e.occurred_at and e.occurred_at.endswith("+00:00")
        # the JSON text as the store holds it, passed on as it is
        assert e.data_json == r["data_text"]
        assert json.loads(e.data_json) == r["data"]

    middle = rows[len(rows) // 2]["position"]
    after = await read_all(eventlog_stub, tokens["ops"], after=middle)
    assert [e.position for e in after] == [r["position"] for r in rows if r["position"] > middle]

    limited = await read_all(eventlog_stub, tokens["ops"], limit=3)
    assert [e.position for e in limited] == [r["position"] for r in rows[:3]]
    window = await read_all(eventlog_stub, tokens["ops"], after=rows[0]["position"], limit=2)
    assert [e.position for e in window] == [r["position"] for r in rows[1:3]]

    assert await read_all(eventlog_stub, tokens["ops"], after=rows[-1]["position"]) == []
    # admin may rebuild from it too; finance may not read the whole history (personal data in it)
    assert len(await read_all(eventlog_stub, tokens["admin"], limit=1)) == 1
    e = await refused(read_all(eventlog_stub, tokens["finance"], limit=1))
    assert e.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_read_all_sends_pages_of_events(
    requests_stub: requests_pb2_grpc.RequestsStub,
    eventlog_stub: eventlog_pb2_grpc.EventLogStub,
    tokens: dict[str, str],
    pool: Pool,
) -> None:
    for i in range(7):
        await submit(requests_stub, command_fields(title=f"Paged {i}"), tokens["ops"])
    rows = await pool.fetch("SELECT position, length(data::text) AS size FROM requests.events ORDER BY position")
    pages = await read_pages(eventlog_stub, tokens["ops"])
    assert [e.position for page in pages for e in page] == [r["position"] for r in rows]
    assert [len(page) for page in pages[:-1]] == [PAGE_SIZE] * (len(pages) - 1)
    assert 0 < len(pages[-1]) <= PAGE_SIZE
    # a limit ends in the middle of a page
    limited = await read_pages(eventlog_stub, tokens["ops"], limit=PAGE_SIZE + 1)
    assert [len(page) for page in limited] == [PAGE_SIZE, 1]
    assert [e.position for page in limited for e in page] == [r["position"] for r in rows[: PAGE_SIZE + 1]]

    # pages closed by their bytes (the servicer in this process, over the same store): a page closes once its
    # events' data reach the bytes, so all but its last event's data are below them
    store = EventStore(pool, "requests")
    big = max(r["size"] for r in rows)
    for page_bytes in (1, 2 * big):
        servicer = EventLogServicer(store, page_size=1000, page_bytes=page_bytes)
        pages = [list(p.events) async for p in servicer.ReadAll(eventlog_pb2.ReadAllRequest(), None)]  # type: ignore[arg-type]
        assert [e.position for page in pages for e in page] == [r["position"] for r in rows]
        sizes = [[len(e.data_json) for e in page] for page in pages]
        assert all(sum(page[:-1]) < page_bytes for page in sizes)
        assert all(sum(page) >= page_bytes for page in sizes[:-1])
    assert [len(page) for page in sizes] != [1] * len(rows)  # with room for two of the largest, pages hold more


async def test_read_all_source_gives_the_stored_envelopes(
    requests_stub: requests_pb2_grpc.RequestsStub,
    service: ServiceProcess,
    tokens: dict[str, str],
    pool: Pool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What a rebuild reads (eventlog.read_all_source): the envelopes the store reads, one by one and in pages."""
    await submit(requests_stub, command_fields(title="Source"), tokens["ops"])
    monkeypatch.setenv("MIEUX_REQUESTS_ADDR", service.target)
    source = read_all_source("requests", Settings(), "ops")
    stored = await EventStore(pool, "requests").read_all(0, limit=1_000_000)
    assert [e async for e in source()] == stored
    pages = [page async for page in source.pages()]
    assert [e for page in pages for e in page] == stored
    assert max(len(page) for page in pages) <= PAGE_SIZE


async def test_read_all_needs_a_token(eventlog_stub: eventlog_pb2_grpc.EventLogStub) -> None:
    e = await refused(read_all(eventlog_stub, None))
    assert e.code() == grpc.StatusCode.UNAUTHENTICATED
    e = await refused(read_all(eventlog_stub, "not-a-token"))
    assert e.code() == grpc.StatusCode.UNAUTHENTICATED


# --- graceful shutdown (a process of its own) --------------------------------------------------------


def test_sigterm_stops_the_service_gracefully(stack: DevStack, stack_env: dict[str, str]) -> None:
    svc = start_service("requests", stack_env, timeout=START_TIMEOUT)
    try:
        started = time.monotonic()
        svc.proc.send_signal(signal.SIGTERM)
        try:
            code = svc.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"requests did not exit within {STOP_TIMEOUT}s of SIGTERM:\n{svc.output()[-4000:]}")
        assert code == 0, f"exit code {code} after {time.monotonic() - started:.1f}s:\n{svc.output()[-4000:]}"
        assert "Traceback" not in svc.output()[-20000:], svc.output()[-4000:]
    finally:
        svc.stop(STOP_TIMEOUT)
