"""`mieux` subcommands for people: the common commands and queries of every service, as readable tables.

Each command takes `--command-id` (a fresh one by default, printed so that a retry can reuse it).
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from typing import Any

from rich.console import Console
from rich.table import Table

from services.kernel.settings import Settings

console = Console()


def _cid(args: argparse.Namespace) -> str:
    return getattr(args, "command_id", None) or f"cli-{uuid.uuid4()}"


def _ack(what: str, ack: Any, command_id: str) -> None:
    note = " (already done: this command id was seen before)" if ack.duplicate else ""
    console.print(f"{what} [bold]{ack.stream_id}[/] v{ack.last_version}{note}  [dim]command id {command_id}[/]")


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    t = Table(*columns, title=title)
    for r in rows:
        t.add_row(*[str(x) for x in r])
    console.print(t)


# --- requests --------------------------------------------------------------------------------------------


async def requests_cmd(args: argparse.Namespace) -> None:
    from services.requests.client import RequestsClient

    async with RequestsClient.connect(Settings()) as c:
        cid = _cid(args)
        if args.action == "submit":
            _ack(
                "request",
                await c.submit(
                    command_id=cid,
                    partner=args.partner,
                    institution=args.institution,
                    institution_type=args.institution_type,
                    received_on=args.received_on,
                    title=args.title,
                    themes=args.theme or [],
                ),
                cid,
            )
        elif args.action == "assess":
            _ack("assessed", await c.assess(command_id=cid, request_id=args.request_id, assessed_on=args.on), cid)
            r = await c.get(args.request_id)
            console.print(f"eligible: {r.eligible} {r.instrument} {'; '.join(r.ineligibility_reasons)}")
        elif args.action == "approve":
            _ack("approved", await c.approve(command_id=cid, request_id=args.request_id, approved_on=args.on), cid)
        elif args.action == "reject":
            _ack(
                "rejected",
                await c.reject(command_id=cid, request_id=args.request_id, rejected_on=args.on, reason=args.reason),
                cid,
            )
        elif args.action == "list":
            page = await c.list(
                year=args.year or 0,
                region=args.region or "",
                partner=args.partner or "",
                status=args.status or "",
                page_size=500,
            )
            _table(
                f"Requests ({page.total})",
                ["id", "received", "partner", "region", "status", "title"],
                [[r.request_id, r.received_on.iso, r.partner, r.region, r.status, r.title] for r in page.requests],
            )
        else:
            _table(
                "Requests received per year",
                ["year", "requests"],
                [[y.year, y.count] for y in (await c.per_year()).years],
            )


# --- actions ---------------------------------------------------------------------------------------------


async def actions_cmd(args: argparse.Namespace) -> None:
    from services.actions.client import ActionsClient
    from services.experts.client import ExpertsClient

    settings = Settings()
    async with ActionsClient.connect(settings) as c:
        cid = _cid(args)
        if args.action == "list":
            page = await c.list_actions(year=args.year or 0, region=args.region or "", page_size=500)
            _table(
                "Actions",
                ["code", "title", "partner", "region", "status", "planned", "held"],
                [
                    [a.action_code, a.title, a.partner, a.region, a.status, a.activities_planned, a.activities_held]
                    for a in page.actions
                ],
            )
        elif args.action == "agree-fiche":
            _ack("fiche agreed for", await c.agree_fiche(command_id=cid, action_code=args.code, agreed_on=args.on), cid)
        elif args.action == "plan":
            ack, activity_id = await c.plan_activity(
                command_id=cid,
                action_code=args.code,
                title=args.title,
                activity_type=args.type,
                starts_on=args.starts_on,
                ends_on=args.ends_on,
                country=args.country,
                city=args.city or "",
                airport=args.airport or "",
            )
            _ack(f"activity {activity_id} planned in", ack, cid)
        elif args.action == "held":
            _ack(
                "held:",
                await c.record_held(
                    command_id=cid, activity_id=args.activity_id, male=args.male, female=args.female, other=args.other
                ),
                cid,
            )
        else:  # show
            a = await c.get_action(args.code)
            console.print(
                f"[bold]{a.action_code} {a.title}[/]  {a.partner_name} ({a.region})  status {a.status}, "
                f"opened {a.opened_on.iso}, themes {', '.join(a.themes)}"
            )
            activities = await c.list_activities(action_code=args.code, page_size=500)
            async with ExpertsClient.connect(settings) as experts:
                deployments = await experts.list_deployments(action_code=args.code, page_size=500)
            by_activity: dict[str, list[str]] = {}
            for d in deployments.deployments:
                if d.status == "deployed":
                    by_activity.setdefault(d.activity_id, []).append(d.expert_id)
            _table(
                "Activities",
                ["id", "type", "dates", "where", "status", "participants m/f/o", "experts"],
                [
                    [
                        x.activity_id,
                        x.activity_type,
                        f"{x.starts_on.iso}..{x.ends_on.iso}",
                        f"{x.city} {x.country}",
                        x.status,
                        f"{x.participants_male}/{x.participants_female}/{x.participants_other}",
                        ", ".join(by_activity.get(x.activity_id, [])),
                    ]
                    for x in activities.activities
                ],
            )


# --- experts ---------------------------------------------------------------------------------------------


async def experts_cmd(args: argparse.Namespace) -> None:
    from services.experts.client import ExpertsClient

    async with ExpertsClient.connect(Settings()) as c:
        cid = _cid(args)
        if args.action == "register":
            _ack(
                "expert",
                await c.register(
                    command_id=cid,
                    name=args.name,
                    gender=args.gender,
                    background=args.background,
                    nationality=args.nationality,
                    registered_on=args.on,
                    themes=args.theme or [],
                ),
                cid,
            )
        elif args.action == "deploy":
            _ack(
                "deployed", await c.deploy(command_id=cid, expert_id=args.expert_id, activity_id=args.activity_id), cid
            )
        else:
            page = await c.list_experts(page_size=500)
            _table(
                "Expert and Action Roster",
                ["id", "name", "gender", "background", "nationality", "active"],
                [[e.expert_id, e.name, e.gender, e.background, e.nationality, e.active] for e in page.experts],
            )


# --- logistics -------------------------------------------------------------------------------------------


async def logistics_cmd(args: argparse.Namespace) -> None:
    from services.logistics.client import LogisticsClient

    async with LogisticsClient.connect(Settings()) as c:
        cid = _cid(args)
        if args.action == "join":
            _ack(
                "joined",
                await c.join_team(
                    command_id=cid,
                    member_id=args.member_id,
                    name=args.name,
                    gender=args.gender,
                    role=args.role,
                    joined_on=args.on,
                ),
                cid,
            )
        elif args.action == "book":
            segments = [tuple(s.split(":")) for s in args.segment]
            _ack(
                "booking",
                await c.book_flight(
                    command_id=cid,
                    traveller_id=args.traveller,
                    traveller_kind=args.kind,
                    segments=segments,  # type: ignore[arg-type]
                    cabin_class=args.cabin,
                    amount=args.fare,
                    currency=args.currency,
                    booked_on=args.on,
                    action_code=args.action_code or "",
                    activity_id=args.activity_id or "",
                ),
                cid,
            )
        elif args.action == "miles":
            rows = (await c.traveller_miles(year=args.year)).rows
            _table(
                f"Statute miles per traveller, {args.year}",
                ["traveller", "kind", "flights", "statute miles"],
                [[r.traveller_id, r.traveller_kind, r.flights, r.statute_miles] for r in rows],
            )
            per = await c.air_miles_per_team_member(args.year)
            console.print(
                f"air miles per team member in {args.year}: [bold]{per.miles_per_member}[/] "
                f"({per.team_statute_miles} statute miles / {per.team_members} team members)"
            )
        else:
            page = await c.list_bookings(year=args.year or 0, page_size=500)
            _table(
                "Bookings",
                ["id", "traveller", "kind", "action", "cabin", "status", "route"],
                [
                    [
                        b.booking_id,
                        b.traveller_id,
                        b.traveller_kind,
                        b.action_code,
                        b.cabin_class,
                        b.status,
                        " ".join(f"{s.origin}-{s.destination}" for s in b.segments),
                    ]
                    for b in page.bookings
                ],
            )


# --- carbon (finance) ------------------------------------------------------------------------------------


async def carbon_cmd(args: argparse.Namespace) -> None:
    """The footprint of a year and the offset ledger against it, read with the finance token."""
    import csv

    from mieux.carbon.v1 import carbon_pb2

    from services.carbon.client import CarbonClient

    async with CarbonClient.connect(Settings(), role="finance") as c:
        md = {"metadata": c._md(), "timeout": c.deadline}
        fp = await c.stub.GetFootprint(carbon_pb2.GetFootprintQuery(year=args.year), **md)
        ledger = await c.stub.GetOffsetLedger(carbon_pb2.GetOffsetLedgerQuery(year=args.year), **md)
    _table(
        f"Footprint {args.year}: {fp.kg_co2e} kg CO2e",
        ["traveller", "action", "region", "flights", "km", "miles", "kg CO2e"],
        [
            [
                r.traveller_kind,
                r.action_code or "-",
                r.region or "-",
                r.flights,
                r.distance_km,
                r.distance_miles,
                r.kg_co2e,
            ]
            for r in fp.rows
        ],
    )
    cost = ", ".join(f"{m.amount} {m.currency}" for m in ledger.cost) or "-"
    _table(
        f"Offset ledger {args.year}",
        ["VERs purchased", "VERs retired against the year", "balance at year end", "cost", "footprint kg", "coverage"],
        [
            [
                ledger.vers_purchased,
                ledger.vers_retired,
                ledger.balance,
                cost,
                ledger.footprint_kg_co2e,
                ledger.coverage or "-",
            ]
        ],
    )
    _table(
        "Lots purchased",
        ["lot", "registry", "project", "vintage", "VERs", "unit price", "total"],
        [
            [
                x.lot_id,
                x.registry,
                x.project,
                x.vintage_year,
                x.quantity,
                f"{x.unit_price.amount} {x.unit_price.currency}",
                f"{x.total_cost.amount} {x.total_cost.currency}",
            ]
            for x in ledger.lots
        ],
    )
    if args.csv:
        with open(args.csv, "w", newline="") as f:  # noqa: ASYNC230 - a small file at the end
            w = csv.writer(f)
            w.writerow(
                [
                    "section",
                    "year",
                    "traveller_kind",
                    "action_code",
                    "region",
                    "lot_id",
                    "registry",
                    "project",
                    "vintage",
                    "quantity",
                    "kg_co2e",
                    "amount",
                    "currency",
                ]
            )
            for r in fp.rows:
                w.writerow(
                    [
                        "footprint",
                        args.year,
                        r.traveller_kind,
                        r.action_code,
                        r.region,
                        "",
                        "",
                        "",
                        "",
                        r.flights,
                        r.kg_co2e,
                        "",
                        "",
                    ]
                )
            for x in ledger.lots:
                w.writerow(
                    [
                        "lot_purchased",
                        args.year,
                        "",
                        "",
                        "",
                        x.lot_id,
                        x.registry,
                        x.project,
                        x.vintage_year,
                        x.quantity,
                        "",
                        x.total_cost.amount,
                        x.total_cost.currency,
                    ]
                )
            for m in ledger.cost:
                w.writerow(
                    ["cost", args.year, "", "", "", "", "", "", "", ledger.vers_purchased, "", m.amount, m.currency]
                )
            w.writerow(
                [
                    "retired_against_year",
                    args.year,
                    "",
                    "",
                    "",
                    "",
                    "",
                    "",
                    "",
                    ledger.vers_retired,
                    ledger.footprint_kg_co2e,
                    "",
                    "",
                ]
            )
            w.writerow(["coverage", args.year, "", "", "", "", "", "", "", "", "", ledger.coverage, ""])
        console.print(f"CSV written to {args.csv}")


def register(sub: argparse._SubParsersAction, run: Any) -> None:  # type: ignore[type-arg]
    """Add the people's subcommands to `mieux`; `run(coro_fn)` turns one into a command."""

    def with_cid(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--command-id", help="reuse to retry safely (default: a fresh one)")
        return p

    rq = sub.add_parser("requests", help="requests for assistance")
    rqs = rq.add_subparsers(dest="action", required=True)
    s = with_cid(rqs.add_parser("submit"))
    s.add_argument("--partner", required=True, help="ISO 3166-1 alpha-2 code or regional organisation")
    s.add_argument("--institution", required=True)
    s.add_argument("--institution-type", required=True)
    s.add_argument("--received-on", required=True, help="YYYY-MM-DD")
    s.add_argument("--title", required=True)
    s.add_argument("--theme", action="append")
    for name in ("assess", "approve"):
        p = with_cid(rqs.add_parser(name))
        p.add_argument("request_id")
        p.add_argument("--on", required=True, help="YYYY-MM-DD")
    p = with_cid(rqs.add_parser("reject"))
    p.add_argument("request_id")
    p.add_argument("--on", required=True)
    p.add_argument("--reason", required=True)
    ls = rqs.add_parser("list")
    for f in ("--region", "--partner", "--status"):
        ls.add_argument(f)
    ls.add_argument("--year", type=int)
    rqs.add_parser("per-year")
    rq.set_defaults(fn=run(requests_cmd))

    ac = sub.add_parser("actions", help="actions and their activities")
    acs = ac.add_subparsers(dest="action", required=True)
    ls = acs.add_parser("list")
    ls.add_argument("--year", type=int)
    ls.add_argument("--region")
    sh = acs.add_parser("show", help="an action with its activities and the experts deployed")
    sh.add_argument("code")
    p = with_cid(acs.add_parser("agree-fiche"))
    p.add_argument("code")
    p.add_argument("--on", required=True)
    p = with_cid(acs.add_parser("plan", help="plan an activity"))
    p.add_argument("code")
    for f in ("--title", "--type", "--starts-on", "--ends-on", "--country"):
        p.add_argument(f, required=True)
    p.add_argument("--city")
    p.add_argument("--airport", help="IATA code")
    p = with_cid(acs.add_parser("held", help="record an activity held"))
    p.add_argument("activity_id")
    for f in ("--male", "--female", "--other"):
        p.add_argument(f, type=int, default=0)
    ac.set_defaults(fn=run(actions_cmd))

    ex = sub.add_parser("experts", help="the Expert and Action Roster")
    exs = ex.add_subparsers(dest="action", required=True)
    p = with_cid(exs.add_parser("register"))
    for f in ("--name", "--gender", "--background", "--nationality", "--on"):
        p.add_argument(f, required=True)
    p.add_argument("--theme", action="append")
    p = with_cid(exs.add_parser("deploy"))
    p.add_argument("expert_id")
    p.add_argument("activity_id")
    exs.add_parser("list")
    ex.set_defaults(fn=run(experts_cmd))

    lg = sub.add_parser("logistics", help="the team and its flights")
    lgs = lg.add_subparsers(dest="action", required=True)
    p = with_cid(lgs.add_parser("join"))
    for f in ("--member-id", "--name", "--gender", "--role", "--on"):
        p.add_argument(f, required=True)
    p = with_cid(lgs.add_parser("book", help="book a flight"))
    p.add_argument("--traveller", required=True)
    p.add_argument("--kind", required=True, choices=["expert", "team_member"])
    p.add_argument("--segment", action="append", required=True, help="ORIGIN:DEST:YYYY-MM-DD (repeat)")
    p.add_argument("--cabin", default="economy")
    p.add_argument("--fare", required=True, help="a decimal amount")
    p.add_argument("--currency", required=True)
    p.add_argument("--on", required=True, help="booking date")
    p.add_argument("--action-code")
    p.add_argument("--activity-id")
    ls = lgs.add_parser("list")
    ls.add_argument("--year", type=int)
    mi = lgs.add_parser("miles", help="statute miles per traveller and air miles per team member in a year")
    mi.add_argument("--year", type=int, required=True)
    lg.set_defaults(fn=run(logistics_cmd))

    cb = sub.add_parser("carbon", help="carbon accounting for finance")
    cbs = cb.add_subparsers(dest="action", required=True)
    rep = cbs.add_parser("report", help="the footprint of a year and its offset ledger (finance token)")
    rep.add_argument("--year", type=int, required=True)
    rep.add_argument("--csv", help="also write them to this CSV file (decimals as text, currency stated)")
    cb.set_defaults(fn=run(carbon_cmd))


def runner(fn: Any) -> Any:
    def go(args: argparse.Namespace) -> int:
        asyncio.run(fn(args))
        return 0

    return go
