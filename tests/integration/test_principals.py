"""Least privilege (DESIGN.md section 11), against the six services running as child processes on the session's
stack: every RPC of every service (from the proto descriptors, tests/badinput.py, EventLog.ReadAll included)
called with the token of each person role (ops, finance, admin) and of each service principal. What the table
below allows must get through authorisation (any answer but PERMISSION_DENIED and UNAUTHENTICATED: an empty
request is mostly INVALID_ARGUMENT, which proves it got through); everything else is PERMISSION_DENIED.

The table is written out here, from the flows (not read from the ACCESS maps it checks). People's own tokens:
issued with `mieux tokens issue`, the actor on their events is the person; revoked, UNAUTHENTICATED at the next
call, with no restart of the server."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from badinput import Rpc, contexts, rpcs
from mieux.common.v1 import common_pb2
from mieux.requests.v1 import requests_pb2
from support import ServiceProcess, mieux_cli, start_service

from services.kernel.settings import Settings
from services.ops import catalog, tokens_cli
from services.ops.devstack import free_port

pytestmark = pytest.mark.integration

ACTIONS, EXPERTS, LOGISTICS = "mieux.actions.v1.Actions", "mieux.experts.v1.Experts", "mieux.logistics.v1.Logistics"
CARBON, STATS, REQUESTS = "mieux.carbon.v1.Carbon", "mieux.stats.v1.Stats", "mieux.requests.v1.Requests"
# what each service's flows call of the others (and nothing else)
SERVICE_CALLS: dict[str, set[str]] = {
    "requests": set(),
    "actions": set(),
    "carbon": set(),
    "experts": {f"/{ACTIONS}/GetActivity"},  # a deployment's activity must exist
    "logistics": {f"/{EXPERTS}/GetExpert"},  # a traveller who is an expert must be one
    "stats": {  # the annual report page
        f"/{ACTIONS}/ListActions",
        f"/{LOGISTICS}/GetAirMilesPerTeamMember",
        f"/{CARBON}/GetFootprint",
        f"/{CARBON}/GetFootprintByMonth",
        f"/{CARBON}/GetOffsetLedger",
    },
}
# finance: figures, ledgers and reports; no command, no ReadAll, nothing naming a person
FINANCE_VIEWS = {f"/{CARBON}/GetFootprint", f"/{CARBON}/GetFootprintByMonth", f"/{CARBON}/GetOffsetLedger"}
STATS_ALL = {r.path for r in rpcs() if r.path.startswith(f"/{STATS}/")}
FINANCE = {
    f"/{REQUESTS}/GetRequestsPerYear",
    f"/{LOGISTICS}/GetAirMilesPerTeamMember",
    f"/{CARBON}/GetOffsetLot",
    f"/{CARBON}/ListOffsetLots",
    *FINANCE_VIEWS,
    *STATS_ALL,
}
ADMIN_ONLY = {f"/{EXPERTS}/ForgetExpert", f"/{LOGISTICS}/ForgetTeamMember"}
ALL = {r.path for r in rpcs()}
PEOPLE: dict[str, set[str]] = {
    "admin": ALL,
    "ops": ALL - ADMIN_ONLY - FINANCE_VIEWS,  # the finance views are finance's (and admin's)
    "finance": FINANCE,
}


def expected(who: str, rpc: Rpc) -> bool:
    allowed = PEOPLE.get(who, SERVICE_CALLS.get(who, set()))
    return rpc.path in allowed


def test_the_services_declare_exactly_the_calls_of_their_flows() -> None:
    assert {ctx: set(calls) for ctx, calls in catalog.calls().items()} == SERVICE_CALLS


@pytest.fixture(scope="module")
def fleet(stack_env: dict[str, str]) -> Iterator[dict[str, ServiceProcess]]:
    """The six services, each told the others' addresses, started together (each start is mostly imports) with a
    generous deadline (the machine is shared), all stopped at the end."""
    names = contexts()
    ports = {name: free_port() for name in names}
    env = {**stack_env, **{f"MIEUX_{n.upper()}_ADDR": f"127.0.0.1:{p}" for n, p in ports.items()}}
    started: dict[str, ServiceProcess] = {}
    try:
        with ThreadPoolExecutor(len(names)) as pool:
            futures = {n: pool.submit(start_service, n, env, ports[n], timeout=180) for n in names}
            for n, f in futures.items():
                with contextlib.suppress(Exception):  # a failed start is raised below, after the others are kept
                    started[n] = f.result()
            for f in futures.values():
                f.result()
        yield started
    finally:
        with ThreadPoolExecutor(len(names)) as pool:
            list(pool.map(lambda svc: svc.stop(), started.values()))


def call(target: str, rpc: Rpc, token: str) -> str:
    """The status name of `rpc` called with an empty request and `token`."""
    with grpc.insecure_channel(target) as ch:
        method = rpc.callable_on(ch)
        try:
            reply = method(
                iter([b""]) if rpc.client_streaming else b"",
                metadata=[("authorization", f"Bearer {token}")],
                timeout=20,
            )
            if rpc.streaming:
                for _ in reply:
                    pass
        except grpc.RpcError as e:
            return e.code().name
    return "OK"


@pytest.mark.parametrize("who", ["ops", "finance", "admin", *SERVICE_CALLS])
def test_each_principal_gets_through_exactly_its_calls(
    who: str, fleet: dict[str, ServiceProcess], tokens: dict[str, str]
) -> None:
    wrong = []
    for rpc in rpcs():
        status = call(fleet[rpc.context].target, rpc, tokens[who])
        allowed = expected(who, rpc)
        if status == "UNAUTHENTICATED" or allowed == (status == "PERMISSION_DENIED"):
            wrong.append(f"{rpc.context} {rpc.path}: {status} (allowed: {allowed})")
    assert not wrong, f"{who}:\n" + "\n".join(wrong)


def submit(target: str, token: str) -> tuple[str, str]:
    """A request submitted with `token`: (the command id, the status name)."""
    command_id = f"cmd-{uuid.uuid4()}"
    cmd = requests_pb2.SubmitRequestCommand(
        command_id=command_id,
        partner="MG",
        institution="Ministry",
        institution_type="ministry",
        received_on=common_pb2.Date(iso="2017-03-08"),
        title="Diaspora engagement",
        themes=["diaspora_engagement"],
    )
    with grpc.insecure_channel(target) as ch:
        method = ch.unary_unary(f"/{REQUESTS}/SubmitRequest", request_serializer=None, response_deserializer=None)
        try:
            method(cmd.SerializeToString(), metadata=[("authorization", f"Bearer {token}")], timeout=20)
        except grpc.RpcError as e:
            return command_id, e.code().name
    return command_id, "OK"


async def test_a_person_token_records_the_person_and_revoked_is_refused_at_once(
    fleet: dict[str, ServiceProcess],
    pool,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    monkeypatch.delenv("MIEUX_TOKEN", raising=False)
    settings = Settings()
    person = f"ana.{uuid.uuid4().hex[:6]}"
    token_id, token = tokens_cli.issue(settings, person, "ops")
    assert len(token) >= 32
    assert token not in (settings.auth_tokens_file.read_text() if settings.auth_tokens_file else "")
    target = fleet["requests"].target
    try:
        command_id, status = submit(target, token)  # no restart: the server read the registry again
        assert status == "OK"
        actor = await pool.fetchval("SELECT actor FROM requests.events WHERE command_id = $1", command_id)
        assert actor == person
    finally:
        assert tokens_cli.revoke(settings, person=person) == [token_id]
    command_id, status = submit(target, token)
    assert status == "UNAUTHENTICATED"
    assert await pool.fetchval("SELECT count(*) FROM requests.events WHERE command_id = $1", command_id) == 0


def test_a_finance_person_may_not_command(fleet: dict[str, ServiceProcess], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MIEUX_TOKEN", raising=False)
    settings = Settings()
    token_id, token = tokens_cli.issue(settings, f"fin.{uuid.uuid4().hex[:6]}", "finance")
    try:
        assert submit(fleet["requests"].target, token)[1] == "PERMISSION_DENIED"
    finally:
        assert tokens_cli.revoke(settings, token_id=token_id) == [token_id]


@pytest.mark.parametrize("args", [("replay", "requests"), ("parked", "retry", "mieux.requests.projections")])
async def test_replaying_and_redriving_are_admins(
    args: tuple[str, ...], stack_env: dict[str, str], tokens: dict[str, str]
) -> None:
    for who in ("ops", "finance"):
        code, out = await mieux_cli({**stack_env, "MIEUX_TOKEN": tokens[who]}, *args)
        assert code == 2 and f"dev-{who} is not an admin" in out, out
