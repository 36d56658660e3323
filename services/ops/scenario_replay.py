"""Replaying a scenario through the gRPC APIs only (`mieux scenario replay FILE`, and the demo).

Every entry of the file is sent as commands to the services with the typed clients: the team, the expert
roster, the requests (approved one at a time, in date order, each waited for until the actions service
has opened its action, so codes come out in order), the actions' fiches, activities and results (before
any closure; scenario_results.py), the deployments and their evaluations, the flights and the carbon offsets.
A file that follows another names that one's experts by key. Nothing is written to a database directly.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, TypeVar

import grpc
from mieux.common.v1 import common_pb2
from rich.console import Console

from services.actions.client import ActionsClient
from services.carbon.client import CarbonClient
from services.experts.client import ExpertsClient
from services.kernel.settings import Settings
from services.logistics.client import LogisticsClient
from services.ops import scenario_results as results
from services.ops.scenario import (
    ActionEntry,
    DeploymentEntry,
    ExpertEntry,
    FlightEntry,
    RequestEntry,
    Scenario,
    load,
)
from services.ops.scenario_progress import ReplayProgress as _Progress
from services.requests.client import RequestsClient

T = TypeVar("T")
RETRYABLE = (grpc.StatusCode.ABORTED, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
CONCURRENCY = 8
ACTION_WAIT_S = 60.0
# optional, for tests: hears every error status a call met, and whether the call is retried (same command id)
OnError = Callable[[grpc.aio.AioRpcError, bool], None]


# --- replay ---------------------------------------------------------------------------------------


class ScenarioError(Exception):
    """The services did not do what the file expects (e.g. an action code taken by another request)."""


@dataclass
class ReplayResult:
    commands: int = 0
    duplicates: int = 0  # answered with a first result: nothing appended
    ids: dict[str, str] = field(default_factory=dict)  # entry key -> stream id (experts, requests, bookings, lots)
    seconds: float = 0.0

    @property
    def appended(self) -> int:
        return self.commands - self.duplicates


async def _retrying(call: Callable[[], Awaitable[T]], deadline_s: float = 60.0, on_error: OnError | None = None) -> T:
    """A command retried while the service is briefly away or a stream changed concurrently (same command id,
    so a retry of a command that did get through is answered with its first result)."""
    start = time.monotonic()
    delay = 0.05
    while True:
        try:
            return await call()
        except grpc.aio.AioRpcError as e:
            retry = e.code() in RETRYABLE and time.monotonic() - start <= deadline_s
            if on_error is not None:
                on_error(e, retry)
            if not retry:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)


async def _gather(items: Iterable[T], fn: Callable[[T], Awaitable[None]], limit: int = CONCURRENCY) -> None:
    sem = asyncio.Semaphore(limit)

    async def one(item: T) -> None:
        async with sem:
            await fn(item)

    await asyncio.gather(*(one(i) for i in items))


class _Replayer:
    def __init__(self, sc: Scenario, clients: dict[str, Any], bar: _Progress, on_error: OnError | None) -> None:
        self.sc = sc
        self.on_error = on_error
        self.rq: RequestsClient = clients["requests"]
        self.ac: ActionsClient = clients["actions"]
        self.ex: ExpertsClient = clients["experts"]
        self.lo: LogisticsClient = clients["logistics"]
        self.co: CarbonClient = clients["carbon"]
        self.bar = bar
        self.result = ReplayResult()
        self.team_keys = {t.key for t in sc.team}

    async def send(self, call: Callable[[], Awaitable[T]]) -> T:
        out = await _retrying(call, on_error=self.on_error)
        self.result.commands += 1
        ack = out[0] if isinstance(out, tuple) else out
        if isinstance(ack, common_pb2.CommandAck) and ack.duplicate:
            self.result.duplicates += 1
        self.bar.advance()
        return out

    # --- the team, one at a time (one team stream) ---

    async def team(self) -> None:
        self.bar.phase("team")
        for t in self.sc.team:
            await self.send(
                lambda t=t: self.lo.join_team(
                    command_id=self.sc.cid("team", t.key, "join"),
                    member_id=t.key,
                    name=t.name,
                    gender=t.gender,
                    role=t.role,
                    joined_on=t.joined_on.isoformat(),
                )
            )
        for t in self.sc.team:
            if t.left_on:
                await self.send(
                    lambda t=t: self.lo.leave_team(
                        command_id=self.sc.cid("team", t.key, "leave"), member_id=t.key, left_on=t.left_on.isoformat()
                    )
                )

    # --- the roster ---

    async def experts(self) -> None:
        self.bar.phase("experts")

        async def one(e: ExpertEntry) -> None:
            ack = await self.send(
                lambda: self.ex.register(
                    command_id=self.sc.cid("expert", e.key, "register"),
                    name=e.name,
                    gender=e.gender,
                    background=e.background,
                    nationality=e.nationality,
                    registered_on=e.registered_on.isoformat(),
                    themes=e.themes,
                )
            )
            self.result.ids[e.key] = ack.stream_id
            if e.deactivated_on:
                await self.send(
                    lambda: self.ex.deactivate(
                        command_id=self.sc.cid("expert", e.key, "deactivate"),
                        expert_id=ack.stream_id,
                        reason=e.deactivation_reason,
                        deactivated_on=e.deactivated_on.isoformat(),  # type: ignore[union-attr]
                    )
                )

        await _gather(self.sc.experts, one)

    # --- requests; approvals one at a time, each waited for until its action is open ---

    async def requests(self) -> None:
        self.bar.phase("requests")

        async def submit(r: RequestEntry) -> None:
            ack = await self.send(
                lambda: self.rq.submit(
                    command_id=self.sc.cid("request", r.key, "submit"),
                    partner=r.partner,
                    institution=r.institution,
                    institution_type=r.institution_type,
                    received_on=r.received_on.isoformat(),
                    title=r.title,
                    themes=list(r.themes),
                )
            )
            self.result.ids[r.key] = ack.stream_id
            if r.assessed_on:
                await self.send(
                    lambda: self.rq.assess(
                        command_id=self.sc.cid("request", r.key, "assess"),
                        request_id=ack.stream_id,
                        assessed_on=r.assessed_on.isoformat(),  # type: ignore[union-attr]
                    )
                )
            on = r.decided_on.isoformat() if r.decided_on else ""
            if r.decision == "rejected":
                await self.send(
                    lambda: self.rq.reject(
                        command_id=self.sc.cid("request", r.key, "reject"),
                        request_id=ack.stream_id,
                        rejected_on=on,
                        reason=r.reason,
                    )
                )
            elif r.decision == "withdrawn":
                await self.send(
                    lambda: self.rq.withdraw(
                        command_id=self.sc.cid("request", r.key, "withdraw"),
                        request_id=ack.stream_id,
                        withdrawn_on=on,
                        reason=r.reason,
                    )
                )

        await _gather(self.sc.requests, submit)
        self.bar.phase("approvals")
        for r in self.sc.approvals():
            await self.send(
                lambda r=r: self.rq.approve(
                    command_id=self.sc.cid("request", r.key, "approve"),
                    request_id=self.result.ids[r.key],
                    approved_on=r.decided_on.isoformat(),  # type: ignore[union-attr]
                )
            )
            if r.action:
                await self.wait_for_action(r)

    async def wait_for_action(self, r: RequestEntry) -> None:
        """Poll GetAction until the actions service (its policy on RequestApproved) has opened the action."""
        assert r.action is not None
        start = time.monotonic()
        while True:
            try:
                action = await self.ac.get_action(r.action)
                break
            except grpc.aio.AioRpcError as e:
                if e.code() != grpc.StatusCode.NOT_FOUND and self.on_error is not None:  # NOT_FOUND: not open yet
                    self.on_error(e, e.code() in RETRYABLE)
                if e.code() not in (grpc.StatusCode.NOT_FOUND, *RETRYABLE):
                    raise
            if time.monotonic() - start > ACTION_WAIT_S:
                raise ScenarioError(f"no action {r.action} opened {ACTION_WAIT_S:.0f}s after approving {r.key}")
            await asyncio.sleep(0.02)
        request_id = self.result.ids[r.key]
        if action.request_id != request_id:
            raise ScenarioError(
                f"action {r.action} was opened for request {action.request_id}, not for {r.key} ({request_id}): "
                f"the stack already held actions of {r.action[:4]} when the scenario was first replayed"
            )
        if r.follow_up is not None and action.follow_up != r.follow_up:
            raise ScenarioError(
                f"action {r.action} ({action.title}) is {r.partner}'s action number {action.follow_up}, "
                f"the file says {r.follow_up}"
            )

    # --- actions: fiche, activities in order, held / cancelled, closure ---

    async def actions(self) -> None:
        self.bar.phase("activities")

        async def one(a: ActionEntry) -> None:
            if a.fiche is not None:
                fiche = a.fiche
                await self.send(
                    lambda: self.ac.agree_fiche(
                        command_id=self.sc.cid("action", a.code, "fiche"),
                        action_code=a.code,
                        agreed_on=fiche.agreed_on.isoformat(),
                        summary=fiche.summary,
                        pillars=fiche.pillars,
                        themes=fiche.themes,
                    )
                )
            for x in sorted(a.activities, key=lambda x: x.n):
                _, activity_id = await self.send(
                    lambda x=x: self.ac.plan_activity(
                        command_id=self.sc.cid("action", a.code, f"A{x.n}:plan"),
                        action_code=a.code,
                        title=x.title,
                        activity_type=x.type,
                        starts_on=x.starts_on.isoformat(),
                        ends_on=x.ends_on.isoformat(),
                        country=x.country,
                        city=x.city,
                        airport=x.airport,
                    )
                )
                if activity_id != f"{a.code}/A{x.n}":
                    raise ScenarioError(f"activity {x.n} of {a.code} was planned as {activity_id}")
            for x in a.activities:
                activity_id = f"{a.code}/A{x.n}"
                if x.held is not None:
                    held = x.held
                    await self.send(
                        lambda held=held, activity_id=activity_id, x=x: self.ac.record_held(
                            command_id=self.sc.cid("action", a.code, f"A{x.n}:held"),
                            activity_id=activity_id,
                            male=held.male,
                            female=held.female,
                            other=held.other,
                        )
                    )
                if x.cancelled is not None:
                    c = x.cancelled
                    await self.send(
                        lambda c=c, activity_id=activity_id, x=x: self.ac.cancel_activity(
                            command_id=self.sc.cid("action", a.code, f"A{x.n}:cancel"),
                            activity_id=activity_id,
                            cancelled_on=c.cancelled_on.isoformat(),
                            reason=c.reason,
                        )
                    )
            await results.of_action(self, a)  # feedback, assessment, deliverables: before any closure
            if a.closed_on is not None:
                closed_on = a.closed_on
                await self.send(
                    lambda: self.ac.close(
                        command_id=self.sc.cid("action", a.code, "close"),
                        action_code=a.code,
                        closed_on=closed_on.isoformat(),
                    )
                )

        await _gather(self.sc.actions, one)

    # --- deployments: one expert's in order (their stream), experts side by side ---

    async def deployments(self) -> None:
        self.bar.phase("deployments")
        by_expert: dict[str, list[DeploymentEntry]] = defaultdict(list)
        for d in self.sc.deployments:
            by_expert[d.expert].append(d)

        async def one(key: str) -> None:
            expert_id = self.result.ids[key]
            for d in by_expert[key]:
                await self.send(
                    lambda d=d: self.ex.deploy(
                        command_id=self.sc.cid("deployment", d.key), expert_id=expert_id, activity_id=d.activity
                    )
                )
                await results.evaluation(self, d, expert_id)
                if d.cancelled is not None:
                    expert = await _retrying(lambda: self.ex.get(expert_id), on_error=self.on_error)
                    dep = next(x for x in expert.deployments if x.activity_id == d.activity)
                    c = d.cancelled
                    await self.send(
                        lambda c=c, dep=dep, d=d: self.ex.cancel_deployment(
                            command_id=self.sc.cid("deployment", d.key, "cancel"),
                            expert_id=expert_id,
                            deployment_id=dep.deployment_id,
                            reason=c.reason,
                            cancelled_on=c.cancelled_on.isoformat(),
                        )
                    )

        await _gather(list(by_expert), one)

    # --- flights ---

    async def flights(self) -> None:
        self.bar.phase("flights")

        def segs(s: Iterable[tuple[str, str, date]]) -> list[tuple[str, str, str]]:
            return [(o, d, on.isoformat()) for o, d, on in s]

        async def one(f: FlightEntry) -> None:
            team = f.traveller in self.team_keys
            ack = await self.send(
                lambda: self.lo.book_flight(
                    command_id=self.sc.cid("flight", f.key, "book"),
                    traveller_id=f.traveller if team else self.result.ids[f.traveller],
                    traveller_kind="team_member" if team else "expert",
                    segments=segs(f.segments),
                    cabin_class=f.cabin,
                    amount=f.fare.amount,
                    currency=f.fare.currency,
                    booked_on=f.booked_on.isoformat(),
                    action_code=f.activity.split("/")[0] if f.activity else "",
                    activity_id=f.activity,
                )
            )
            self.result.ids[f.key] = ack.stream_id
            if f.change is not None:
                ch = f.change
                await self.send(
                    lambda: self.lo.change_flight(
                        command_id=self.sc.cid("flight", f.key, "change"),
                        booking_id=ack.stream_id,
                        segments=segs(ch.segments),
                        cabin_class=ch.cabin,
                        amount=ch.fare.amount,
                        currency=ch.fare.currency,
                        changed_on=ch.changed_on.isoformat(),
                    )
                )
            if f.cancelled is not None:
                c = f.cancelled
                await self.send(
                    lambda: self.lo.cancel_flight(
                        command_id=self.sc.cid("flight", f.key, "cancel"),
                        booking_id=ack.stream_id,
                        reason=c.reason,
                        cancelled_on=c.cancelled_on.isoformat(),
                    )
                )

        await _gather(self.sc.flights, one)

    # --- carbon offsets ---

    async def offsets(self) -> None:
        self.bar.phase("offsets")
        for o in self.sc.offsets:
            ack = await self.send(
                lambda o=o: self.co.purchase_offsets(
                    command_id=self.sc.cid("offsets", o.key, "purchase"),
                    registry=o.registry,
                    project=o.project,
                    vintage_year=o.vintage_year,
                    quantity=o.quantity,
                    unit_price=o.unit_price.amount,
                    currency=o.unit_price.currency,
                    purchased_on=o.purchased_on.isoformat(),
                )
            )
            self.result.ids[o.key] = ack.stream_id
            for r in o.retirements:
                await self.send(
                    lambda r=r, ack=ack: self.co.retire_offsets(
                        command_id=self.sc.cid("offsets", r.key, "retire"),
                        lot_id=ack.stream_id,
                        quantity=r.quantity,
                        against_year=r.against_year,
                        retired_on=r.retired_on.isoformat(),
                    )
                )


async def replay(
    path: str | Path,
    settings: Settings,
    progress: bool = True,
    console: Console | None = None,
    on_error: OnError | None = None,
) -> ReplayResult:
    """Send the scenario's commands to the running services (gRPC only); safe to run again."""
    sc = load(path)
    start = time.monotonic()
    async with (
        RequestsClient.connect(settings) as rq,
        ActionsClient.connect(settings) as ac,
        ExpertsClient.connect(settings) as ex,
        LogisticsClient.connect(settings) as lo,
        CarbonClient.connect(settings) as co,
    ):
        clients = {"requests": rq, "actions": ac, "experts": ex, "logistics": lo, "carbon": co}
        with _Progress(sc.commands(), progress, console) as bar:
            r = _Replayer(sc, clients, bar, on_error)
            r.result.ids.update(results.followed_ids(sc, Path(path)))  # the experts of the file it follows
            await r.team()
            await r.experts()
            await r.requests()
            await r.actions()
            await r.deployments()
            await r.flights()
            await r.offsets()
            bar.phase("done")
    r.result.seconds = time.monotonic() - start
    return r.result
