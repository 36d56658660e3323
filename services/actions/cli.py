"""`mieux actions ...`: list and show actions (with their activities and experts), agree fiches, plan and
hold activities, and record their results (participants' feedback, the partner's assessment, deliverables)."""

from __future__ import annotations

import argparse

from services.kernel import cli
from services.kernel.settings import Settings


async def actions_cmd(args: argparse.Namespace) -> None:
    from services.actions.client import ActionsClient
    from services.experts.client import ExpertsClient

    settings = Settings()
    async with ActionsClient.connect(settings) as c:
        cid = cli.command_id(args)
        if args.action == "list":
            page = await c.list_actions(year=args.year or 0, region=args.region or "", page_size=500)
            cli.table(
                "Actions",
                ["code", "title", "partner", "region", "status", "planned", "held"],
                [
                    [a.action_code, a.title, a.partner, a.region, a.status, a.activities_planned, a.activities_held]
                    for a in page.actions
                ],
            )
        elif args.action == "agree-fiche":
            ack = await c.agree_fiche(
                command_id=cid,
                action_code=args.code,
                agreed_on=args.on,
                pillars=args.pillar or (),
                themes=args.theme or (),
            )
            cli.ack("fiche agreed for", ack, cid)
        elif args.action == "feedback":
            ack = await c.record_feedback(
                command_id=cid,
                activity_id=args.activity_id,
                respondents=args.respondents,
                skills_enhanced=args.skills_enhanced,
                makes_a_difference=args.makes_a_difference,
                recorded_on=args.on,
            )
            cli.ack("feedback recorded for", ack, cid)
        elif args.action == "assess":
            ack = await c.assess(command_id=cid, action_code=args.code, rating=args.rating, submitted_on=args.on)
            cli.ack("partner assessment recorded for", ack, cid)
        elif args.action == "deliverable":
            ack = await c.record_deliverable(
                command_id=cid, action_code=args.code, kind=args.kind, title=args.title, delivered_on=args.on
            )
            cli.ack("deliverable recorded for", ack, cid)
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
            cli.ack(f"activity {activity_id} planned in", ack, cid)
        elif args.action == "held":
            cli.ack(
                "held:",
                await c.record_held(
                    command_id=cid, activity_id=args.activity_id, male=args.male, female=args.female, other=args.other
                ),
                cid,
            )
        else:  # show
            a = await c.get_action(args.code)
            cli.console.print(
                f"[bold]{a.action_code} {a.title}[/]  {a.partner_name} ({a.region})  status {a.status}, "
                f"opened {a.opened_on.iso}, themes {', '.join(a.fiche_themes or a.themes)}, "
                f"GAMM pillars {', '.join(a.pillars) or '-'}, partner's rating {a.partner_rating or '-'}"
            )
            for d in a.deliverables:
                cli.console.print(f"  deliverable {d.deliverable_id} ({d.kind}, {d.delivered_on.iso}): {d.title}")
            activities = await c.list_activities(action_code=args.code, page_size=500)
            async with ExpertsClient.connect(settings) as experts:
                deployments = await experts.list_deployments(action_code=args.code, page_size=500)
            by_activity: dict[str, list[str]] = {}
            for d in deployments.deployments:
                if d.status == "deployed":
                    by_activity.setdefault(d.activity_id, []).append(d.expert_id)
            cli.table(
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


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `mieux actions ...` to the `mieux` command."""
    ac = sub.add_parser("actions", help="actions and their activities")
    acs = ac.add_subparsers(dest="action", required=True)
    ls = acs.add_parser("list")
    ls.add_argument("--year", type=int)
    ls.add_argument("--region")
    sh = acs.add_parser("show", help="an action with its activities and the experts deployed")
    sh.add_argument("code")
    p = cli.with_command_id(acs.add_parser("agree-fiche"))
    p.add_argument("code")
    p.add_argument("--on", required=True)
    p.add_argument("--pillar", action="append", help="a GAMM pillar (repeat for several)")
    p.add_argument("--theme", action="append", help="a theme (repeat; none: the request's)")
    p = cli.with_command_id(acs.add_parser("plan", help="plan an activity"))
    p.add_argument("code")
    for f in ("--title", "--type", "--starts-on", "--ends-on", "--country"):
        p.add_argument(f, required=True)
    p.add_argument("--city")
    p.add_argument("--airport", help="IATA code")
    p = cli.with_command_id(acs.add_parser("held", help="record an activity held"))
    p.add_argument("activity_id")
    for f in ("--male", "--female", "--other"):
        p.add_argument(f, type=int, default=0)
    p = cli.with_command_id(acs.add_parser("feedback", help="record the participants' feedback of a held activity"))
    p.add_argument("activity_id")
    for f in ("--respondents", "--skills-enhanced", "--makes-a-difference"):
        p.add_argument(f, type=int, required=True)
    p.add_argument("--on", required=True)
    p = cli.with_command_id(acs.add_parser("assess", help="the partner's assessment of an action"))
    p.add_argument("code")
    p.add_argument("--rating", required=True, choices=("poor", "fair", "good", "excellent"))
    p.add_argument("--on", required=True)
    p = cli.with_command_id(acs.add_parser("deliverable", help="record a deliverable of an action"))
    p.add_argument("code")
    for f in ("--kind", "--title", "--on"):
        p.add_argument(f, required=True)
    ac.set_defaults(fn=cli.run(actions_cmd))
