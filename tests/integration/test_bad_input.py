"""Bad input gets a clear error and changes nothing (DESIGN.md section 11), for every RPC of every service.

The RPCs and their requests come from the proto descriptors (tests/badinput.py), so a new RPC or a new
field is covered without a new test. Each RPC gets a sweep (every field of a valid-looking request, one
at a time: missing, NUL and control characters, 100 KB, invalid UTF-8 and a lone surrogate sent as raw
bytes, odd numbers, dates and decimals, a list empty and of 10,000 items; no token, a wrong one and the
other principals' tokens) and then hypothesis's generated requests (derandomized, no example database).
Every reply must be one of ALLOWED; a missing or wrong token UNAUTHENTICATED; a refusal (and any query)
must store no event (rows of `<service>.events`); a refusal must quote at most 64 characters of any
generated value, in its message and its field violations; and the service must still answer its health
check.

The six services run as child processes with their real collaborators (experts asks actions about
activities, logistics asks experts about experts) against a stack of this module's own (PostgreSQL and
Tansu on free ports): generated commands that are accepted add requests, team members and flights in
years other tests count, so they must not land in the session's stack. A few real things are made first
(requests, an action with activities, an expert deployed, a team member, flights, an offset lot), so
generated ids may name existing ones and reach the rules behind the edge.

At the end of the module the replies by status per service, and every problem grouped, are printed (and
written to bad-input-summary.json in the stack's home, kept when a test failed).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from badinput import (
    ECHO,
    MAX_REQUEST,
    Case,
    Gen,
    Generator,
    Problem,
    Report,
    Rpc,
    World,
    contexts,
    describe,
    echoed,
    encode,
    fresh_id,
    rpcs,
    texts,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis.configuration import set_hypothesis_home_dir
from mieux.actions.v1 import actions_pb2, actions_pb2_grpc
from mieux.carbon.v1 import carbon_pb2, carbon_pb2_grpc
from mieux.common.v1 import common_pb2
from mieux.experts.v1 import experts_pb2, experts_pb2_grpc
from mieux.logistics.v1 import logistics_pb2, logistics_pb2_grpc
from mieux.requests.v1 import requests_pb2, requests_pb2_grpc
from support import ServiceProcess, start_service

from services.kernel.grpckit import call_metadata, field_violations
from services.ops.devstack import DevStack, free_port

pytestmark = pytest.mark.integration

ALLOWED = {
    "OK",
    "INVALID_ARGUMENT",
    "FAILED_PRECONDITION",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "ABORTED",
    "UNAUTHENTICATED",
    "PERMISSION_DENIED",
}
NOT_A_TOKEN = {"none", "wrong", "empty bearer", "basic scheme"}  # must be UNAUTHENTICATED, whatever the request
GENERATED = 8  # hypothesis examples per RPC, after its sweep
RPC_TIMEOUT = 10.0
RPCS = rpcs()
# settings the services would take from the environment over the stack's (stack.json): not this stack's
FOREIGN = (
    "DATABASE_URL",
    "KAFKA_BOOTSTRAP_SERVERS",
    "MIEUX_AUTH_TOKENS",
    "MIEUX_AUTH_TOKENS_FILE",
    "MIEUX_TOKEN",
    "MIEUX_METRICS_PORT",
)


def D(iso: str) -> common_pb2.Date:
    return common_pb2.Date(iso=iso)


@dataclass
class Fleet:
    """The module's stack, its services as child processes, a channel to each, and a database connection."""

    stack: DevStack
    env: dict[str, str]
    ports: dict[str, int]
    services: dict[str, ServiceProcess] = field(default_factory=dict)
    channels: dict[str, grpc.Channel] = field(default_factory=dict)
    db: psycopg.Connection | None = None
    tokens: dict[str, str] = field(default_factory=dict)
    world: World = field(default_factory=World)
    report: Report = field(default_factory=Report)

    def __repr__(self) -> str:  # pytest prints the test's arguments when it fails
        return f"Fleet(home={str(self.stack.home)!r}, ports={self.ports})"

    def start(self, ctx: str) -> ServiceProcess:
        return start_service(ctx, self.env, self.ports[ctx], timeout=120)

    def channel(self, ctx: str) -> grpc.Channel:
        if ctx not in self.channels:
            self.channels[ctx] = grpc.insecure_channel(
                f"127.0.0.1:{self.ports[ctx]}",
                options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)],  # ReadAll of a big log
            )
        return self.channels[ctx]

    def serving(self, ctx: str) -> str | None:
        """None when the service answers its health check SERVING, else what it answered."""
        try:
            reply = health_pb2_grpc.HealthStub(self.channel(ctx)).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=10
            )
        except grpc.RpcError as e:
            return f"health check {e.code().name}: {e.details()}"
        return None if reply.status == health_pb2.HealthCheckResponse.SERVING else f"health {reply.status}"

    def ensure_running(self, ctx: str) -> None:
        """Restart a service that died (reported by the test that killed it) on its port."""
        svc = self.services[ctx]
        if svc.proc.poll() is None and self.serving(ctx) is None:
            return
        svc.stop()
        self.services[ctx] = self.start(ctx)

    def events(self, ctx: str) -> tuple[int, int]:
        """The rows of the service's event store, and its last position."""
        assert self.db is not None
        row = self.db.execute(f'SELECT count(*), coalesce(max(position), 0) FROM "{ctx}".events').fetchone()
        assert row is not None
        return int(row[0]), int(row[1])

    def stored(self, ctx: str, last: int, correlation_id: str, command_id: str) -> tuple[int, int, int]:
        """The rows of the service's event store; of them, those of this call (every event records its
        command's correlation id, a command's first event its command id); and those after position `last`
        not written by a policy (principal `policy:<name>`), whose commands run beside this test's."""
        assert self.db is not None
        row = self.db.execute(
            f"SELECT count(*), count(*) FILTER (WHERE correlation_id = %s OR command_id = %s), "
            f"count(*) FILTER (WHERE position > %s AND actor NOT LIKE 'policy:%%') FROM \"{ctx}\".events",
            (correlation_id, command_id, last),
        ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1]), int(row[2])

    def call(self, rpc: Rpc, raw: bytes, metadata: list[tuple[str, str]]) -> tuple[str, str, list[tuple[str, str]]]:
        """The status name, message and field violations of one call with `raw` as the request's bytes."""
        ch = self.channel(rpc.context)
        decode = rpc.reply_class().FromString
        method = rpc.callable_on(ch, decode)  # raw bytes go as they are
        request = iter([raw]) if rpc.client_streaming else raw
        try:
            reply = method(request, metadata=metadata, timeout=RPC_TIMEOUT)
            if rpc.streaming:
                for _ in reply:
                    pass
        except grpc.RpcError as e:
            return e.code().name, e.details() or "", field_violations(e)  # type: ignore[arg-type]
        return "OK", "", []

    def check(self, rpc: Rpc, case: Case, problems: list[Problem]) -> None:
        """Send one case and check its reply; what is wrong goes to `problems`."""
        ctx = rpc.context
        raw, made = encode(rpc.input, case.msg, fresh_id)
        if len(raw) > MAX_REQUEST:
            self.report.count(ctx, "not sent (over 3.5 MB)")
            return
        correlation_id = f"bad-input-{uuid.uuid4()}"
        metadata = [("x-correlation-id", correlation_id)]
        if case.token is not None:
            metadata.append(("authorization", case.token))
        sent_id = case.msg.fields.get("command_id")
        command_id = made.get("command_id") or (sent_id.text() if isinstance(sent_id, Gen) else None) or ""
        if not storable(command_id):
            command_id = ""  # no store can hold it, so no row can carry it
        before, last = self.events(ctx)
        started = time.monotonic()
        status, message, violations = self.call(rpc, raw, metadata)
        self.report.timed(time.monotonic() - started, rpc.id, status, lambda: describe(rpc.input, case))
        self.report.count(ctx, status)

        def problem(kind: str, what: str) -> None:
            problems.append(Problem(rpc.id, kind, status, what, describe(rpc.input, case)))

        if status not in ALLOWED:
            problem("status", message)
        if case.token_label in NOT_A_TOKEN and status != "UNAUTHENTICATED":
            problem("auth", f"token {case.token_label}: {message or 'answered'}")
        if case.token_label == "finance" and rpc.is_command and status != "PERMISSION_DENIED":
            problem("auth", f"finance may not command: {message or 'answered'}")
        if status != "OK" or not rpc.is_command:
            # a refusal (or a query) leaves the store as it was: the rows may change meanwhile only by a policy's
            # appends (acting on a command accepted earlier), never by rows of this call or of any other caller
            after, ours, callers = self.stored(ctx, last, correlation_id, command_id)
            if after != before and (ours or callers):
                what = "a refused command" if status != "OK" else "a query"
                problem("stored", f"{what} stored events (rows {before} -> {after}, {ours} of its own): {message}")
        if status != "OK":
            values = texts(rpc.input, case.msg)
            for where, text in [("message", message)] + [(f"violation {f!r}", f"{f} {d}") for f, d in violations]:
                if (v := echoed(text, values)) is not None:
                    problem("echo", f"the {where} quotes more than {ECHO} characters of a {len(v):,}-character value")
                    break
        if (answer := self.serving(ctx)) is not None:
            problem("health", answer)
            self.ensure_running(ctx)


def storable(text: str) -> bool:
    """Whether PostgreSQL text can hold `text` (no NUL, no lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


# --- the stack, the services and a few real things ------------------------------------------------------


def eventually(what: str, fn: Callable[[], Any], timeout: float = 60.0) -> Any:
    """`fn()` once it returns something truthy without a gRPC error; polled."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            if result := fn():
                return result
        except grpc.RpcError as e:
            last = f"{e.code().name}: {e.details()}"
        time.sleep(0.05)  # poll interval: projections and policies catch up in milliseconds here
    raise AssertionError(f"timed out waiting for {what} (last: {last})")


def seed(fleet: Fleet) -> World:
    """Real requests, an action with activities, an expert deployed, a team member, flights and an offset
    lot, made through the APIs with the ops token; and the page tokens the List queries give."""
    md = call_metadata(fleet.tokens["ops"])
    world = World()

    def cid() -> str:
        c = f"seed-{uuid.uuid4()}"
        world.command_ids.append(c)
        return c

    def ok(call: Callable[..., Any], request: Any) -> Any:
        return call(request, metadata=md, timeout=RPC_TIMEOUT)

    req = requests_pb2_grpc.RequestsStub(fleet.channel("requests"))
    requests = [
        ok(
            req.SubmitRequest,
            requests_pb2.SubmitRequestCommand(
                command_id=cid(),
                partner="MG",
                institution="Ministry of the Interior",
                institution_type="ministry",
                received_on=D("2017-03-08"),
                title="Diaspora engagement",
                themes=["diaspora_engagement"],
            ),
        ).stream_id
        for _ in range(3)
    ]
    received, assessed, approved = requests
    for r in (assessed, approved):
        ok(
            req.AssessEligibility,
            requests_pb2.AssessEligibilityCommand(command_id=cid(), request_id=r, assessed_on=D("2017-03-20")),
        )
    ok(
        req.ApproveRequest,
        requests_pb2.ApproveRequestCommand(command_id=cid(), request_id=approved, approved_on=D("2017-04-01")),
    )

    act = actions_pb2_grpc.ActionsStub(fleet.channel("actions"))
    code = eventually(  # the actions service's policy opens the action of the approved request
        "the action of the approved request",
        lambda: next(
            (a.action_code for a in ok(act.ListActions, actions_pb2.ListActionsQuery(year=2017)).actions), None
        ),
    )
    ok(
        act.AgreeActionFiche,
        actions_pb2.AgreeActionFicheCommand(
            command_id=cid(),
            action_code=code,
            agreed_on=D("2017-04-10"),
            summary="agreed",
            pillars=["migration_and_development"],
        ),
    )
    for starts, ends in (("2017-05-15", "2017-05-19"), ("2017-09-04", "2017-09-06")):
        ok(
            act.PlanActivity,
            actions_pb2.PlanActivityCommand(
                command_id=cid(),
                action_code=code,
                title="Workshop on diaspora engagement",
                activity_type="workshop",
                starts_on=D(starts),
                ends_on=D(ends),
                country="MG",
                city="Antananarivo",
                airport="TNR",
            ),
        )
    activities = [f"{code}/A1", f"{code}/A2"]
    for a in activities:
        ok(act.GetActivity, actions_pb2.GetActivityQuery(activity_id=a))

    exp = experts_pb2_grpc.ExpertsStub(fleet.channel("experts"))
    experts = [
        ok(
            exp.RegisterExpert,
            experts_pb2.RegisterExpertCommand(
                command_id=cid(),
                name=name,
                gender="female",
                background="academia",
                nationality="ES",
                registered_on=D("2016-05-01"),
                themes=["diaspora_engagement"],
            ),
        ).stream_id
        for name in ("Ana Expert", "Eva Expert")
    ]
    ok(
        exp.DeployExpert,
        experts_pb2.DeployExpertCommand(command_id=cid(), expert_id=experts[0], activity_id=activities[0]),
    )
    deployment = ok(exp.GetExpert, experts_pb2.GetExpertQuery(expert_id=experts[0])).deployments[0].deployment_id

    log = logistics_pb2_grpc.LogisticsStub(fleet.channel("logistics"))
    member = "tm-ana"
    ok(
        log.JoinTeam,
        logistics_pb2.JoinTeamCommand(
            command_id=cid(),
            member_id=member,
            name="Ana Member",
            gender="female",
            role="Project Officer",
            joined_on=D("2017-01-02"),
        ),
    )
    bookings = [
        ok(
            log.BookFlight,
            logistics_pb2.BookFlightCommand(
                command_id=cid(),
                traveller_id=traveller,
                traveller_kind=kind,
                action_code=code,
                activity_id=activities[0],
                segments=[
                    logistics_pb2.Segment(origin="BRU", destination="TNR", departs_on=D("2017-05-14")),
                    logistics_pb2.Segment(origin="TNR", destination="BRU", departs_on=D("2017-05-20")),
                ],
                cabin_class="economy",
                fare=common_pb2.Money(amount="912.50", currency="EUR"),
                booked_on=D("2017-04-10"),
            ),
        ).stream_id
        for traveller, kind in ((member, "team_member"), (experts[0], "expert"))
    ]

    car = carbon_pb2_grpc.CarbonStub(fleet.channel("carbon"))
    lot = ok(
        car.PurchaseOffsets,
        carbon_pb2.PurchaseOffsetsCommand(
            command_id=cid(),
            registry="Gold Standard",
            project="African Biomass Energy Conservation PoA",
            vintage_year=2017,
            quantity=100,
            unit_price=common_pb2.Money(amount="3.50", currency="EUR"),
            purchased_on=D("2017-12-01"),
        ),
    ).stream_id

    zero = "00000000-0000-0000-0000-000000000000"
    world.ids = {
        "request_id": [
            (received, "a received request"),
            (assessed, "an assessed request"),
            (approved, "an approved request"),
            (f"req-{zero}", "an unknown request"),
        ],
        "action_code": [(code, "an open action"), ("2017-99", "an unknown action")],
        "activity_id": [
            (activities[0], "a planned activity"),
            (activities[1], "a planned activity"),
            (f"{code}/A99", "an unknown activity"),
        ],
        "expert_id": [
            (experts[0], "a deployed expert"),
            (experts[1], "an expert"),
            (f"expert-{zero}", "an unknown expert"),
        ],
        "deployment_id": [(deployment, "a deployment"), (f"dep-{zero}", "an unknown deployment")],
        "member_id": [(member, "a team member")],
        "traveller_id": [(member, "a team member"), (experts[0], "an expert"), ("nobody", "an unknown traveller")],
        "booking_id": [(b, "a booking") for b in bookings] + [(f"booking-{zero}", "an unknown booking")],
        "lot_id": [(lot, "an offset lot"), (f"lot-{zero}", "an unknown lot")],
    }
    # a page token of each List query (its second page): read models catch up within a second or two here;
    # a query whose read model holds one row by then gives none
    lists = [r for r in RPCS if {"page_token", "page_size"} <= set(r.input.fields_by_name)]
    started = last_new = time.monotonic()
    while (missing := [r for r in lists if r.path not in world.page_tokens]) and time.monotonic() - last_new < 1.5:
        for rpc in missing:
            reply = rpc.reply_class().FromString(
                fleet.channel(rpc.context).unary_unary(rpc.path, request_serializer=None)(
                    rpc.request_class()(page_size=1).SerializeToString(), metadata=md, timeout=RPC_TIMEOUT
                )
            )
            if token := getattr(reply, "next_page_token", ""):
                world.page_tokens[rpc.path] = [token]
                last_new = time.monotonic()
        if time.monotonic() - started > 6:
            break
        time.sleep(0.1)  # poll interval while the projections catch up
    return world


@pytest.fixture(scope="module")
def fleet(request: pytest.FixtureRequest) -> Iterator[Fleet]:
    home = Path(tempfile.mkdtemp(prefix="mieux-bad-input-"))
    home.chmod(0o755)
    stack = DevStack(home, fsync=False)
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN and not k.endswith("_ADDR")}
    names = contexts()
    ports = {ctx: free_port() for ctx in names}
    env |= {"MIEUX_HOME": str(home), **{f"MIEUX_{c.upper()}_ADDR": f"127.0.0.1:{p}" for c, p in ports.items()}}
    fleet = Fleet(stack, env, ports)
    failed_before = request.session.testsfailed
    set_hypothesis_home_dir(home / "hypothesis")  # nothing of hypothesis's is written into the repository
    try:
        stack.up()
        fleet.tokens = json.loads((home / "tokens.json").read_text())
        with ThreadPoolExecutor(len(names)) as pool:  # together: each start is mostly imports, on two cores
            started = {ctx: pool.submit(fleet.start, ctx) for ctx in names}
            errors = []
            for ctx, f in started.items():
                try:
                    fleet.services[ctx] = f.result()
                except Exception as e:
                    errors.append(f"{ctx}: {e}")
            if errors:
                raise RuntimeError("services did not start:\n" + "\n".join(errors))
        fleet.db = psycopg.connect(stack.database_url, autocommit=True)
        fleet.world = seed(fleet)
        given_tokens = sorted(p.rsplit("/", 1)[-1] for p in fleet.world.page_tokens)
        fleet.report.notes.append(f"List queries that gave a page token to reuse: {', '.join(given_tokens) or 'none'}")
        yield fleet
    finally:
        failed = request.session.testsfailed > failed_before or bool(fleet.report.problems)
        summary = fleet.report.summary()
        with contextlib.suppress(OSError):
            (home / "bad-input-summary.json").write_text(
                json.dumps(
                    {
                        "counts": {k: dict(v) for k, v in fleet.report.counts.items()},
                        "seconds": fleet.report.seconds,
                        "problems": [p.__dict__ for p in fleet.report.problems],
                    },
                    indent=2,
                )
            )
        reporter = request.config.pluginmanager.getplugin("terminalreporter")
        capture = request.config.pluginmanager.getplugin("capturemanager")
        with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
            if reporter is not None:
                reporter.write_sep("-", "bad input: summary")
                for line in summary.splitlines():
                    reporter.write_line(line)
            else:
                print(summary)
        for ch in fleet.channels.values():
            ch.close()
        if fleet.db is not None:
            fleet.db.close()
        with ThreadPoolExecutor(max(1, len(fleet.services))) as pool:  # each stop drains for a few seconds
            list(pool.map(lambda svc: svc.stop(), fleet.services.values()))
        stack.down()
        set_hypothesis_home_dir(None)
        if failed:
            print(f"\nbad-input stack kept in {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)


# --- the test -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rpc", RPCS, ids=[r.id for r in RPCS])
def test_bad_input_gets_a_clear_error_and_changes_nothing(rpc: Rpc, fleet: Fleet) -> None:
    fleet.ensure_running(rpc.context)
    generator = Generator(fleet.tokens, fleet.world)
    problems: list[Problem] = []
    started = time.monotonic()

    def one(case: Case) -> None:
        fleet.check(rpc, case, problems)

    run = settings(
        database=None,
        derandomize=True,
        deadline=None,
        max_examples=GENERATED,
        phases=[Phase.explicit, Phase.generate],  # problems are collected, not raised: nothing to shrink
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
        print_blob=False,
    )(given(case=generator.cases(rpc))(one))
    for case in reversed(generator.sweep(rpc)):
        run = example(case=case)(run)
    run()

    fleet.report.seconds[rpc.context] = fleet.report.seconds.get(rpc.context, 0.0) + time.monotonic() - started
    fleet.report.problems.extend(problems)
    assert not problems, f"{len(problems)} problem(s) with {rpc.path}:\n" + Report.format_problems(problems)
