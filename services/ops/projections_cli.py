"""`mieux replay ...` and `mieux projections ...`: republishing a service's events, the read models' lag and
history, and their rebuild without downtime.

mieux replay SERVICE --from N          create every topic of the catalogue, then republish the service's events
mieux projections lag                  per projection: its group's lag, and whether its history is complete
mieux projections rebuild NAME...      build each beside the live one from its sources' ReadAll, catch up and
mieux projections rebuild --all        swap (kernel/bluegreen.py): queries answer from the live version until
                                       the swap, and the live projection keeps applying meanwhile
"""

from __future__ import annotations

import argparse
import asyncio
from datetime import datetime

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from services.kernel.settings import SERVICE_PORTS, Settings
from services.ops import catalog
from services.ops.tokens_cli import refuse_unless_admin

console = Console()


async def needs_rebuild(settings: Settings) -> dict[str, datetime]:
    """Projections flagged by their runner as lacking the events before they joined their group."""
    import asyncpg

    from services.kernel.schemas import services_with

    conn = await asyncpg.connect(settings.dsn())
    try:  # each service flags its own (<service>_projections.needs_rebuild)
        out = {}
        for k in await services_with(conn, "needs_rebuild"):
            out.update({r["projection"]: r["since"] for r in await conn.fetch(f"SELECT * FROM {k.needs_rebuild}")})
        return out
    finally:
        await conn.close()


async def lag(settings: Settings) -> int:
    from services.kernel.bus import group_lag
    from services.kernel.runner import projection_group

    known = catalog.projections()
    flagged = await needs_rebuild(settings)
    table = Table("projection", "service", "lag (events)", "history")
    for name, (svc, p) in sorted(known.items()):
        behind = await group_lag(settings, projection_group(svc), p.topics)
        history = "complete"
        if name in flagged:
            history = f"[red]incomplete since {flagged[name]:%Y-%m-%d %H:%M}: rebuild it[/]"
        table.add_row(name, svc, str(behind), history)
    console.print(table)
    return 0


async def rebuild(settings: Settings, names: list[str], every: bool) -> int:
    from services.kernel.bluegreen import RebuildRunning, RepeatedEvents, rebuild_beside
    from services.kernel.db import create_pool
    from services.kernel.eventlog import sources_of

    known = catalog.projections()
    names = sorted(known) if every else names
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        missing = ", ".join(unknown) or "(none given)"
        console.print(f"[red]unknown projection(s): {missing}[/]; known: {', '.join(sorted(known))}")
        return 2
    pool = await create_pool(settings.dsn())
    try:
        for name in names:
            _, p = known[name]
            try:
                with console.status(f"rebuilding {name} beside the live one"):
                    done = await rebuild_beside(pool, p, sources_of(p, settings, "ops"))
            except RebuildRunning as e:
                console.print(f"[red]{e}[/]")
                return 1
            except RepeatedEvents as e:
                console.print(f"[red]{name} was not rebuilt (the live version is as it was): {e}[/]")
                return 1
            console.print(
                f"rebuilt [bold]{name}[/] from {done.events} events and swapped it in; the live projection was "
                f"held {done.held_s * 1000:.0f} ms (for the last {done.caught_up} events and the swap)"
            )
    finally:
        await pool.close()
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    import importlib.util

    from services.kernel import bus
    from services.kernel.db import create_pool
    from services.kernel.envelope import topic_for
    from services.kernel.relay import request_replay
    from services.kernel.store import EventStore

    async def go() -> str:
        settings = Settings()
        # every topic of the catalogue, created before anything is published, not only this service's: on
        # a new, empty broker the running services' clients would have it auto-create the topics they read
        # with its default partition count, and the dead-letter topics would be missing until their
        # consumer groups restart
        groups = catalog.consumer_groups()
        events = [c for c in catalog.CONTEXTS if importlib.util.find_spec(f"services.{c}.events") is not None]
        topics = {topic_for(c): settings.topic_partitions for c in events}
        topics.update({t: settings.topic_partitions for _, read in groups for t in read})
        topics.update({bus.dlq_topic(group): bus.DLQ_PARTITIONS for group, _ in groups})
        pool = await create_pool(settings.dsn())
        try:
            store = EventStore(pool, args.service)
            return await request_replay(store, settings, args.from_position, topics)
        finally:
            await pool.close()

    if why := refuse_unless_admin(Settings(), "replaying events"):  # replay is admin's (DESIGN.md section 11)
        console.print(f"[red]{escape(why)}[/]")
        return 2
    console.print(f"replay {args.service} from position {args.from_position}: {asyncio.run(go())}")
    return 0


def cmd_projections(args: argparse.Namespace) -> int:
    catalog.load_events()
    settings = Settings()
    if args.action == "lag":
        return asyncio.run(lag(settings))
    return asyncio.run(rebuild(settings, args.names, args.all))


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `mieux replay` and `mieux projections` to the `mieux` command."""
    r = sub.add_parser("replay", help="republish a service's events from its store to its topic")
    r.add_argument("service", choices=sorted(SERVICE_PORTS))
    r.add_argument("--from", dest="from_position", type=int, default=1, help="first position to republish")
    r.set_defaults(fn=cmd_replay)
    pr = sub.add_parser("projections", help="read models: lag, rebuild (beside the live one, then swapped)")
    pr.add_argument("action", choices=["lag", "rebuild"])
    pr.add_argument("names", nargs="*")
    pr.add_argument("--all", action="store_true")
    pr.set_defaults(fn=cmd_projections)
