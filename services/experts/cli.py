"""`mieux experts ...`: register, deploy and forget experts; list the Expert and Action Roster."""

from __future__ import annotations

import argparse
from datetime import date

from services.kernel import cli
from services.kernel.settings import Settings

AS_HELP = "the dev stack's token of this role (default admin: forgetting is admin's); MIEUX_TOKEN wins when set"


async def experts_cmd(args: argparse.Namespace) -> None:
    from services.experts.client import ExpertsClient

    async with ExpertsClient.connect(Settings(), role=getattr(args, "as_role", "ops")) as c:
        cid = cli.command_id(args)
        if args.action == "register":
            cli.ack(
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
        elif args.action == "forget":
            cli.ack(
                "forgotten",
                await c.forget(command_id=cid, expert_id=args.expert_id, reason=args.reason, forgotten_on=args.on),
                cid,
            )
        elif args.action == "deploy":
            cli.ack(
                "deployed", await c.deploy(command_id=cid, expert_id=args.expert_id, activity_id=args.activity_id), cid
            )
        else:
            page = await c.list_experts(page_size=500)
            cli.table(
                "Expert and Action Roster",
                ["id", "name", "gender", "background", "nationality", "active"],
                [[e.expert_id, e.name, e.gender, e.background, e.nationality, e.active] for e in page.experts],
            )


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `mieux experts ...` to the `mieux` command."""
    ex = sub.add_parser("experts", help="the Expert and Action Roster")
    exs = ex.add_subparsers(dest="action", required=True)
    p = cli.with_command_id(exs.add_parser("register"))
    for f in ("--name", "--gender", "--background", "--nationality", "--on"):
        p.add_argument(f, required=True)
    p.add_argument("--theme", action="append")
    p = cli.with_command_id(exs.add_parser("deploy"))
    p.add_argument("expert_id")
    p.add_argument("activity_id")
    p = cli.with_command_id(exs.add_parser("forget", help="forget an expert for good: their name is destroyed"))
    p.add_argument("expert_id")
    p.add_argument("--reason", required=True, help="kept in clear: never the person's name")
    p.add_argument("--on", default=date.today().isoformat(), help="the day (default: today)")
    p.add_argument("--as", dest="as_role", default="admin", choices=["ops", "admin"], help=AS_HELP)
    exs.add_parser("list")
    ex.set_defaults(fn=cli.run(experts_cmd))
