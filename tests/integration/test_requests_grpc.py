"""The requests service over gRPC: the request's life, its refusals and its queries."""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from mieux.common.v1 import common_pb2
from mieux.requests.v1 import requests_pb2, requests_pb2_grpc
from support import ServiceProcess, eventually, grpc_stub, running_service

from services.kernel import paging
from services.kernel.grpckit import call_metadata, field_violations

pytestmark = pytest.mark.integration
D = common_pb2.Date


@pytest.fixture(scope="module")
async def service(stack_env: dict[str, str]) -> AsyncIterator[ServiceProcess]:
    async with running_service("requests", stack_env) as svc:
        yield svc


@pytest.fixture
async def stub(service) -> AsyncIterator[requests_pb2_grpc.RequestsStub]:
    async with grpc_stub(requests_pb2_grpc.RequestsStub, service.target) as s:
        yield s


@pytest.fixture
def md(tokens):  # type: ignore[no-untyped-def]
    return call_metadata(tokens["ops"])


def cid() -> str:
    return f"cmd-{uuid.uuid4()}"


async def submit(
    stub,
    md,
    partner: str = "MG",
    institution_type: str = "ministry",
    on: str = "2017-03-08",  # type: ignore[no-untyped-def]
    themes: tuple[str, ...] = ("diaspora_engagement",),
) -> str:
    ack = await stub.SubmitRequest(
        requests_pb2.SubmitRequestCommand(
            command_id=cid(),
            partner=partner,
            institution="Ministry",
            institution_type=institution_type,
            received_on=D(iso=on),
            title="Diaspora engagement",
            themes=list(themes),
        ),
        metadata=md,
    )
    return ack.stream_id


async def events_of(pool, stream_id: str) -> list[str]:  # type: ignore[no-untyped-def]
    rows = await pool.fetch(
        "SELECT event_type FROM requests.events WHERE stream_id = $1 ORDER BY stream_version", stream_id
    )
    return [r["event_type"] for r in rows]


async def test_submit_assess_approve(stub, md, pool) -> None:  # type: ignore[no-untyped-def]
    rid = await submit(stub, md)
    await stub.AssessEligibility(
        requests_pb2.AssessEligibilityCommand(command_id=cid(), request_id=rid, assessed_on=D(iso="2017-03-20")),
        metadata=md,
    )
    ack = await stub.ApproveRequest(
        requests_pb2.ApproveRequestCommand(command_id=cid(), request_id=rid, approved_on=D(iso="2017-04-01")),
        metadata=md,
    )
    assert ack.last_version == 3
    got = await stub.GetRequest(requests_pb2.GetRequestQuery(request_id=rid), metadata=md)
    assert (got.status, got.eligible, got.instrument, got.region) == ("approved", True, "EDF", "africa_ces")
    assert await events_of(pool, rid) == ["RequestReceived", "RequestEligibilityAssessed", "RequestApproved"]


async def test_a_broken_rule_is_failed_precondition_and_stores_nothing(stub, md, pool) -> None:  # type: ignore[no-untyped-def]
    rid = await submit(stub, md, partner="FR")  # France is under none of the instruments
    with pytest.raises(grpc.aio.AioRpcError) as before:
        await stub.ApproveRequest(
            requests_pb2.ApproveRequestCommand(command_id=cid(), request_id=rid, approved_on=D(iso="2017-04-01")),
            metadata=md,
        )
    assert before.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "only after assessment" in (before.value.details() or "")
    await stub.AssessEligibility(
        requests_pb2.AssessEligibilityCommand(command_id=cid(), request_id=rid, assessed_on=D(iso="2017-03-20")),
        metadata=md,
    )
    with pytest.raises(grpc.aio.AioRpcError) as ineligible:
        await stub.ApproveRequest(
            requests_pb2.ApproveRequestCommand(command_id=cid(), request_id=rid, approved_on=D(iso="2017-04-01")),
            metadata=md,
        )
    assert ineligible.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not eligible" in (ineligible.value.details() or "")
    assert await events_of(pool, rid) == ["RequestReceived", "RequestEligibilityAssessed"]


async def test_unknown_request_is_not_found(stub, md) -> None:  # type: ignore[no-untyped-def]
    for call in (
        stub.GetRequest(requests_pb2.GetRequestQuery(request_id="req-nope"), metadata=md),
        stub.AssessEligibility(
            requests_pb2.AssessEligibilityCommand(
                command_id=cid(), request_id="req-nope", assessed_on=D(iso="2017-01-01")
            ),
            metadata=md,
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await call
        assert e.value.code() == grpc.StatusCode.NOT_FOUND


async def test_malformed_decision_names_the_field(stub, md, pool) -> None:  # type: ignore[no-untyped-def]
    rid = await submit(stub, md)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.RejectRequest(
            requests_pb2.RejectRequestCommand(command_id=cid(), request_id=rid, rejected_on=D(iso="2017-02-30")),
            metadata=md,
        )
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert {f for f, _ in field_violations(e.value)} == {"rejected_on", "reason"}
    assert await events_of(pool, rid) == ["RequestReceived"]


async def test_a_reused_command_id_with_another_payload_is_already_exists(stub, md, pool) -> None:  # type: ignore[no-untyped-def]
    rid = await submit(stub, md)
    c = cid()
    cmd = requests_pb2.WithdrawRequestCommand(
        command_id=c, request_id=rid, withdrawn_on=D(iso="2017-05-01"), reason="a"
    )
    first = await stub.WithdrawRequest(cmd, metadata=md)
    again = await stub.WithdrawRequest(cmd, metadata=md)
    assert again.duplicate and again.last_version == first.last_version
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.WithdrawRequest(
            requests_pb2.WithdrawRequestCommand(
                command_id=c, request_id=rid, withdrawn_on=D(iso="2017-05-01"), reason="b"
            ),
            metadata=md,
        )
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert await events_of(pool, rid) == ["RequestReceived", "RequestWithdrawn"]


async def test_list_requests_filters_and_pages(stub, md) -> None:  # type: ignore[no-untyped-def]
    year = 2043
    ids = {
        await submit(stub, md, partner=p, on=f"{year}-0{i + 1}-01", themes=t)
        for i, (p, t) in enumerate(
            [
                ("CR", ("local_level_integration",)),
                ("MX", ("thb_and_som",)),
                ("SN", ("thb_and_som",)),
                ("JO", ("thb_and_som",)),
            ]
        )
    }

    async def listed() -> bool:
        page = await stub.ListRequests(requests_pb2.ListRequestsQuery(year=year), metadata=md)
        return page.total == 4

    await eventually(listed, 30, "the register to show the four requests")
    first = await stub.ListRequests(requests_pb2.ListRequestsQuery(year=year, page_size=3), metadata=md)
    second = await stub.ListRequests(
        requests_pb2.ListRequestsQuery(year=year, page_size=3, page_token=first.next_page_token), metadata=md
    )
    assert len(first.requests) == 3 and len(second.requests) == 1 and not second.next_page_token
    assert {r.request_id for r in [*first.requests, *second.requests]} == ids
    lac = await stub.ListRequests(requests_pb2.ListRequestsQuery(year=year, region="lac"), metadata=md)
    assert sorted(r.partner for r in lac.requests) == ["CR", "MX"]
    thb = await stub.ListRequests(requests_pb2.ListRequestsQuery(year=year, theme="thb_and_som"), metadata=md)
    assert sorted(r.partner for r in thb.requests) == ["JO", "MX", "SN"]
    offset_token = base64.urlsafe_b64encode(b"o:3").decode()  # what this service gave before keyset paging
    for bad in (
        "garbage!",
        offset_token,
        paging.encode_key(["2043-02-30", "req-x"]),
        paging.encode_key([1, 2]),
        paging.encode_key(["2043-02-28", "req-\x00"]),  # text PostgreSQL cannot hold
    ):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.ListRequests(requests_pb2.ListRequestsQuery(page_token=bad), metadata=md)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
        assert "page_token" in [f for f, _ in field_violations(e.value)], bad


async def test_list_requests_pages_by_key_so_a_request_added_meanwhile_repeats_or_skips_nothing(stub, md) -> None:  # type: ignore[no-untyped-def]
    year = 2044
    ids = [await submit(stub, md, on=f"{year}-0{m}-01") for m in (2, 3, 4, 5)]  # listed in this order

    async def total_is(n: int) -> bool:
        page = await stub.ListRequests(requests_pb2.ListRequestsQuery(year=year), metadata=md)
        return page.total == n

    await eventually(lambda: total_is(4), 30, "the register to show the four requests")
    first = await stub.ListRequests(requests_pb2.ListRequestsQuery(year=year, page_size=2), metadata=md)
    assert [r.request_id for r in first.requests] == ids[:2] and first.next_page_token
    earlier = await submit(stub, md, on=f"{year}-01-01")  # sorts before the first page's last row
    await eventually(lambda: total_is(5), 30, "the register to show the request added between pages")
    rest, token = [], first.next_page_token
    while token:
        page = await stub.ListRequests(
            requests_pb2.ListRequestsQuery(year=year, page_size=2, page_token=token), metadata=md
        )
        rest.extend(r.request_id for r in page.requests)
        token = page.next_page_token
    assert rest == ids[2:]  # offset paging would give ids[1] again (the new request shifts every row by one)
    assert earlier not in rest
