"""`mieux requests ...`: submit, assess, approve and reject requests; list them and count them per year."""

from __future__ import annotations

import argparse

from services.kernel import cli
from services.kernel.settings import Settings


async def requests_cmd(args: argparse.Namespace) -> None:
    from services.requests.client import RequestsClient

    async with RequestsClient.connect(Settings()) as c:
        cid = cli.command_id(args)
        if args.action == "submit":
            cli.ack(
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
            cli.ack("assessed", await c.assess(command_id=cid, request_id=args.request_id, assessed_on=args.on), cid)
            r = await c.get(args.request_id)
            cli.console.print(f"eligible: {r.eligible} {r.instrument} {'; '.join(r.ineligibility_reasons)}")
        elif args.action == "approve":
            cli.ack("approved", await c.approve(command_id=cid, request_id=args.request_id, approved_on=args.on), cid)
        elif args.action == "reject":
            cli.ack(
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
            cli.table(
                f"Requests ({page.total})",
                ["id", "received", "partner", "region", "status", "title"],
                [[r.request_id, r.received_on.iso, r.partner, r.region, r.status, r.title] for r in page.requests],
            )
        else:
            cli.table(
                "Requests received per year",
                ["year", "requests"],
                [[y.year, y.count] for y in (await c.per_year()).years],
            )


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `mieux requests ...` to the `mieux` command."""
    rq = sub.add_parser("requests", help="requests for assistance")
    rqs = rq.add_subparsers(dest="action", required=True)
    s = cli.with_command_id(rqs.add_parser("submit"))
    s.add_argument("--partner", required=True, help="ISO 3166-1 alpha-2 code or regional organisation")
    s.add_argument("--institution", required=True)
    s.add_argument("--institution-type", required=True)
    s.add_argument("--received-on", required=True, help="YYYY-MM-DD")
    s.add_argument("--title", required=True)
    s.add_argument("--theme", action="append")
    for name in ("assess", "approve"):
        p = cli.with_command_id(rqs.add_parser(name))
        p.add_argument("request_id")
        p.add_argument("--on", required=True, help="YYYY-MM-DD")
    p = cli.with_command_id(rqs.add_parser("reject"))
    p.add_argument("request_id")
    p.add_argument("--on", required=True)
    p.add_argument("--reason", required=True)
    ls = rqs.add_parser("list")
    for f in ("--region", "--partner", "--status"):
        ls.add_argument(f)
    ls.add_argument("--year", type=int)
    rqs.add_parser("per-year")
    rq.set_defaults(fn=cli.run(requests_cmd))
