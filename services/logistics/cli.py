"""`mieux logistics ...`: the team (joining, forgetting, listing), flight bookings and statute miles per traveller."""

from __future__ import annotations

import argparse
from datetime import date

from services.kernel import cli
from services.kernel.settings import Settings

AS_HELP = "the dev stack's token of this role (default admin: forgetting is admin's); MIEUX_TOKEN wins when set"


async def logistics_cmd(args: argparse.Namespace) -> None:
    from services.logistics.client import LogisticsClient

    async with LogisticsClient.connect(Settings(), role=getattr(args, "as_role", "ops")) as c:
        cid = cli.command_id(args)
        if args.action == "join":
            cli.ack(
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
        elif args.action == "forget":
            cli.ack(
                "forgotten",
                await c.forget_team_member(
                    command_id=cid, member_id=args.member_id, reason=args.reason, forgotten_on=args.on
                ),
                cid,
            )
        elif args.action == "team":
            members = (await c.list_team(year=args.year or 0, page_size=500)).members
            cli.table(
                "The team",
                ["id", "name", "gender", "role", "status", "stints"],
                [
                    [m.member_id, m.name, m.gender, m.role, m.status, " ".join(_stint(s) for s in m.stints)]
                    for m in members
                ],
            )
        elif args.action == "book":
            segments = [tuple(s.split(":")) for s in args.segment]
            cli.ack(
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
            cli.table(
                f"Statute miles per traveller, {args.year}",
                ["traveller", "kind", "flights", "statute miles"],
                [[r.traveller_id, r.traveller_kind, r.flights, r.statute_miles] for r in rows],
            )
            per = await c.air_miles_per_team_member(args.year)
            cli.console.print(
                f"air miles per team member in {args.year}: [bold]{per.miles_per_member}[/] "
                f"({per.team_statute_miles} statute miles / {per.team_members} team members)"
            )
        else:
            page = await c.list_bookings(year=args.year or 0, page_size=500)
            cli.table(
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


def _stint(s) -> str:  # type: ignore[no-untyped-def]
    return f"{s.joined_on.iso}..{s.left_on.iso if s.HasField('left_on') else ''}"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `mieux logistics ...` to the `mieux` command."""
    lg = sub.add_parser("logistics", help="the team and its flights")
    lgs = lg.add_subparsers(dest="action", required=True)
    p = cli.with_command_id(lgs.add_parser("join"))
    for f in ("--member-id", "--name", "--gender", "--role", "--on"):
        p.add_argument(f, required=True)
    p = cli.with_command_id(lgs.add_parser("forget", help="forget a team member for good: name and role destroyed"))
    p.add_argument("member_id")
    p.add_argument("--reason", required=True, help="kept in clear: never the person's name")
    p.add_argument("--on", default=date.today().isoformat(), help="the day (default: today)")
    p.add_argument("--as", dest="as_role", default="admin", choices=["ops", "admin"], help=AS_HELP)
    tm = lgs.add_parser("team", help="the team members, their roles and stints")
    tm.add_argument("--year", type=int, help="on the team at any time in this year")
    p = cli.with_command_id(lgs.add_parser("book", help="book a flight"))
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
    lg.set_defaults(fn=cli.run(logistics_cmd))
