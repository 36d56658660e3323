"""Ops' view of every service's parked events (`mieux parked ...`, services/kernel/parking.py), on an ops
connection: each service keeps its own in `<service>_parking` (services/kernel/schemas.py), and numbers them
itself, so the CLI names a row by its id and, when two services hold that id, by its consumer group as well."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Sequence

import asyncpg
from rich.markup import escape
from rich.table import Table

from services.kernel.schemas import KernelTables, services_with
from services.kernel.settings import Settings
from services.ops.cli import console
from services.ops.tokens_cli import who_asks


class AmbiguousId(LookupError):
    """A parked id held by more than one consumer group: name the group."""

    def __init__(self, parked_id: int, groups: Sequence[str]) -> None:
        super().__init__(f"#{parked_id} is parked in several groups ({', '.join(groups)}): name the group")
        self.groups = list(groups)


async def ready(conn: asyncpg.Connection) -> bool:
    """Whether any consumer has created its service's parking tables yet."""
    return bool(await services_with(conn, "requests"))


async def listing(conn: asyncpg.Connection, group: str | None, every: bool = False) -> list[asyncpg.Record]:
    out: list[asyncpg.Record] = []
    for k in await services_with(conn, "parked"):
        out += await conn.fetch(
            "SELECT id, consumer_group, consumer, kind, stream_id, event_type, reason, parked_at, state, settled_by, "
            f"settled_why FROM {k.parked} WHERE ($1::text IS NULL OR consumer_group = $1) "
            "AND ($2 OR state = 'parked') ORDER BY id",
            group,
            every,
        )
    return sorted(out, key=lambda r: (r["parked_at"], r["consumer_group"], r["id"]))


async def _with_id(conn: asyncpg.Connection, parked_id: int, group: str | None) -> list[tuple[KernelTables, str]]:
    found = []
    for k in await services_with(conn, "parked"):
        g = await conn.fetchval(
            f"SELECT consumer_group FROM {k.parked} WHERE id = $1 AND ($2::text IS NULL OR consumer_group = $2)",
            parked_id,
            group,
        )
        if g is not None:
            found.append((k, g))
    if len(found) > 1:
        raise AmbiguousId(parked_id, [g for _, g in found])
    return found


async def one(conn: asyncpg.Connection, parked_id: int, group: str | None = None) -> asyncpg.Record | None:
    """The parked row `parked_id` (of `group`, needed when two services hold that id: else AmbiguousId)."""
    for k, _ in await _with_id(conn, parked_id, group):
        return await conn.fetchrow(f"SELECT * FROM {k.parked} WHERE id = $1", parked_id)
    return None


RequestRef = tuple[str, int]  # (the service's requests table, the request's id there)


async def request(
    conn: asyncpg.Connection,
    action: str,
    by: str,
    *,
    group: str | None = None,
    stream: str | None = None,
    parked_id: int | None = None,
    why: str = "",
) -> list[RequestRef]:
    """Record a request for every partition that holds what it covers; returns them (none when nothing parked
    matches). The consumers holding those partitions perform them (Parking.perform)."""
    if parked_id is not None:
        services = [k for k, _ in await _with_id(conn, parked_id, group)]
    else:
        services = await services_with(conn, "parked")
    refs: list[RequestRef] = []
    async with conn.transaction():
        for k in services:
            if parked_id is not None:
                where = await conn.fetch(
                    f"SELECT DISTINCT consumer_group, topic, kafka_partition FROM {k.parked} "
                    "WHERE id = $1 AND state = 'parked'",
                    parked_id,
                )
            else:
                where = await conn.fetch(
                    f"SELECT DISTINCT consumer_group, topic, kafka_partition FROM {k.parked} "
                    "WHERE consumer_group = $1 AND state = 'parked' AND ($2::text IS NULL OR stream_id = $2) "
                    "ORDER BY topic, kafka_partition",
                    group,
                    stream,
                )
            for w in where:
                made = await conn.fetchval(
                    f"INSERT INTO {k.requests} (consumer_group, action, topic, kafka_partition, stream_id, "
                    "parked_id, requested_by, why) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
                    w["consumer_group"],
                    action,
                    w["topic"],
                    w["kafka_partition"],
                    stream,
                    parked_id,
                    by,
                    why,
                )
                refs.append((k.requests, made))
    return refs


async def wait_done(conn: asyncpg.Connection, refs: Sequence[RequestRef], timeout: float) -> list[asyncpg.Record]:
    """The requests once every one is performed, or as they are when `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    tables = sorted({table for table, _ in refs})
    while True:
        rows: list[asyncpg.Record] = []
        for table in tables:
            rows += await conn.fetch(
                f"SELECT id, consumer_group, topic, kafka_partition, done_at, outcome FROM {table} "
                "WHERE id = ANY($1) ORDER BY id",
                [i for t, i in refs if t == table],
            )
        if all(r["done_at"] is not None for r in rows) or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.1)


# --- the commands ----------------------------------------------------------------------------------


def cmd_parked(args: argparse.Namespace) -> int:
    async def go() -> int:
        settings = Settings()
        conn = await asyncpg.connect(settings.dsn())
        try:
            if not await ready(conn):
                console.print("nothing parked: no consumer has created the parking tables yet")
                return 0 if args.action == "list" else 1
            if args.action == "list":
                return await parked_list(conn, args)
            if args.action == "show":
                return await parked_show(conn, args)
            by = who_asks(settings)
            if args.action == "retry":
                ids = await request(conn, "retry", by, group=args.group, stream=args.stream)
            elif args.target.isdigit():
                ids = await request(conn, "drop", by, parked_id=int(args.target), group=args.group, why=args.reason)
            elif args.stream:
                ids = await request(conn, "drop", by, group=args.target, stream=args.stream, why=args.reason)
            else:
                console.print("[red]drop takes a parked event's id, or a consumer group with --stream[/]")
                return 2
            if not ids:
                console.print("nothing parked matches")
                return 1
            console.print(f"asked the consumers that hold the partitions ({len(ids)} request(s)); waiting ...")
            ok = True
            for r in await wait_done(conn, ids, args.wait):
                where = f"#{r['id']} {r['consumer_group']} {r['topic']}[{r['kafka_partition']}]"
                if r["done_at"] is None:
                    ok = False
                    console.print(
                        f"{escape(where)}: [yellow]not performed yet[/] (it is, once a consumer of the group "
                        "holds that partition: is the service running?)"
                    )
                else:
                    ok = ok and "still parked" not in r["outcome"] and not r["outcome"].startswith("failed")
                    console.print(f"{escape(where)}: {escape(r['outcome'])}", highlight=False)
            return 0 if ok else 1
        except AmbiguousId as e:
            console.print(f"[red]{escape(str(e))}[/]: add --group")
            return 2
        finally:
            await conn.close()

    return asyncio.run(go())


async def parked_list(conn: asyncpg.Connection, args: argparse.Namespace) -> int:
    rows = await listing(conn, args.group, args.all)
    if args.json:
        for r in rows:
            print(json.dumps(dict(r), default=str), flush=True)
        return 0
    table = Table("id", "group", "consumer", "stream", "event type", "reason", "since")
    if args.all:
        table.add_column("state")
    for r in rows:
        cells = [str(r["id"]), r["consumer_group"], r["consumer"], r["stream_id"], r["event_type"], r["reason"]]
        cells.append(f"{r['parked_at']:%Y-%m-%d %H:%M:%S}")
        if args.all:
            settled = f" by {r['settled_by']}: {r['settled_why']}" if r["state"] != "parked" else ""
            cells.append(r["state"] + settled)
        table.add_row(*(escape(c) for c in cells))
    console.print(table)
    console.print(f"{len(rows)} {'rows' if args.all else 'parked'}")
    return 0


async def parked_show(conn: asyncpg.Connection, args: argparse.Namespace) -> int:
    row = await one(conn, args.id, args.group)
    if row is None:
        console.print(f"[red]no parked event #{args.id}[/]")
        return 2
    fields = {k: v for k, v in dict(row).items() if k != "envelope"}
    if fields.get("signature") is not None:  # the mieux-signature header it came with (text: base64)
        fields["signature"] = bytes(fields["signature"]).decode(errors="replace")
    raw = bytes(row["envelope"])
    try:
        envelope: object = json.loads(raw)
    except ValueError:
        envelope = raw.decode(errors="replace")
    if args.json:
        print(json.dumps({**fields, "envelope": envelope}, default=str))
        return 0
    for k, v in fields.items():
        console.print(f"[bold]{k:15}[/] {escape(str(v))}", highlight=False)
    text = envelope if isinstance(envelope, str) else json.dumps(envelope, indent=2)
    console.print(f"[bold]envelope[/]\n{escape(text)}", highlight=False)
    return 0
