"""Read models of the actions service: the actions and activities lists (ListActions, ListActivities).

Every statement is an idempotent upsert or update keyed by code / activity id, and the projection runner
records each event id in the same transaction, so a redelivered event changes nothing.

Both lists page by keyset on an immutable total order (year, seq, action code; then activity number,
activity id): the page token is the last row's key (paging.encode_key, opaque to clients), so a page
never repeats or skips a row when rows are added or changed between pages.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from services.actions.events import (
    ActionClosed,
    ActionFicheAgreed,
    ActionOpened,
    ActivityCancelled,
    ActivityHeld,
    ActivityPlanned,
)
from services.kernel.db import Pool
from services.kernel.envelope import Envelope, Event, topic_for
from services.kernel.paging import DEFAULT_PAGE_SIZE, key_after, next_page
from services.kernel.projection import Projection


class ActionsView(Projection):
    name = "actions_view"
    topics = (topic_for("actions"),)
    tables = ("actions_views.actions", "actions_views.activities")
    setup_sql = """
    CREATE SCHEMA IF NOT EXISTS actions_views;
    CREATE TABLE IF NOT EXISTS actions_views.actions (
        action_code     text PRIMARY KEY,
        request_id      text NOT NULL,
        partner         text NOT NULL,
        partner_kind    text NOT NULL,
        partner_name    text NOT NULL,
        region          text NOT NULL,
        themes          text[] NOT NULL,
        title           text NOT NULL,
        follow_up       integer NOT NULL,
        year            integer NOT NULL,
        seq             integer NOT NULL,
        opened_on       date NOT NULL,
        status          text NOT NULL,
        fiche_agreed_on date,
        closed_on       date
    );
    CREATE INDEX IF NOT EXISTS actions_year_seq ON actions_views.actions (year, seq);
    CREATE TABLE IF NOT EXISTS actions_views.activities (
        activity_id     text PRIMARY KEY,
        action_code     text NOT NULL,
        number          integer NOT NULL,
        planned_version bigint NOT NULL,
        status          text NOT NULL,
        title           text NOT NULL,
        activity_type   text NOT NULL,
        starts_on       date NOT NULL,
        ends_on         date NOT NULL,
        country         text NOT NULL,
        city            text NOT NULL,
        airport         text NOT NULL,
        partner         text NOT NULL,
        region          text NOT NULL,
        participants_male   integer NOT NULL DEFAULT 0,
        participants_female integer NOT NULL DEFAULT 0,
        participants_other  integer NOT NULL DEFAULT 0,
        cancelled_on    date
    );
    CREATE INDEX IF NOT EXISTS activities_action ON actions_views.activities (action_code, number);
    """

    async def apply(self, conn: asyncpg.Connection, env: Envelope, event: Event) -> None:
        match event:
            case ActionOpened():
                await conn.execute(
                    "INSERT INTO actions_views.actions (action_code, request_id, partner, partner_kind, "
                    "partner_name, region, themes, title, follow_up, year, seq, opened_on, status) "
                    "VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,'opened') ON CONFLICT (action_code) DO NOTHING",
                    event.action_code,
                    event.request_id,
                    event.partner,
                    event.partner_kind,
                    event.partner_name,
                    event.region,
                    list(event.themes),
                    event.title,
                    event.follow_up,
                    event.year,
                    int(event.action_code.split("-", 1)[1]),
                    event.opened_on,
                )
            case ActionFicheAgreed():
                await conn.execute(
                    "UPDATE actions_views.actions SET fiche_agreed_on = $2, "
                    "status = CASE WHEN status = 'closed' THEN status ELSE 'fiche_agreed' END WHERE action_code = $1",
                    event.action_code,
                    event.agreed_on,
                )
            case ActivityPlanned():
                await conn.execute(
                    "INSERT INTO actions_views.activities (activity_id, action_code, number, planned_version, "
                    "status, title, activity_type, starts_on, ends_on, country, city, airport, partner, region) "
                    "VALUES ($1,$2,$3,$4,'planned',$5,$6,$7,$8,$9,$10,$11,$12,$13) "
                    "ON CONFLICT (activity_id) DO NOTHING",
                    event.activity_id,
                    event.action_code,
                    event.number,
                    env.stream_version,
                    event.title,
                    event.activity_type,
                    event.starts_on,
                    event.ends_on,
                    event.country,
                    event.city,
                    event.airport,
                    event.partner,
                    event.region,
                )
            case ActivityHeld():
                await conn.execute(
                    "UPDATE actions_views.activities SET status = 'held', starts_on = $2, ends_on = $3, "
                    "participants_male = $4, participants_female = $5, participants_other = $6 "
                    "WHERE activity_id = $1",
                    event.activity_id,
                    event.starts_on,
                    event.ends_on,
                    event.participants_male,
                    event.participants_female,
                    event.participants_other,
                )
            case ActivityCancelled():
                await conn.execute(
                    "UPDATE actions_views.activities SET status = 'cancelled', cancelled_on = $2 "
                    "WHERE activity_id = $1",
                    event.activity_id,
                    event.cancelled_on,
                )
            case ActionClosed():
                await conn.execute(
                    "UPDATE actions_views.actions SET status = 'closed', closed_on = $2 WHERE action_code = $1",
                    event.action_code,
                    event.closed_on,
                )

    # --- queries ---

    async def list_actions(self, pool: Pool, f: ActionFilter) -> tuple[list[asyncpg.Record], str]:
        where, args = ["true"], []
        for column, value in (("year", f.year), ("region", f.region), ("partner", f.partner), ("status", f.status)):
            if value:
                args.append(value)
                where.append(f"a.{column} = ${len(args)}")
        if f.theme:
            args.append(f.theme)
            where.append(f"${len(args)} = ANY(a.themes)")
        after = key_after(f.page_token, int, int, str)
        if after:
            args.extend(after)
            where.append(f"(a.year, a.seq, a.action_code) > (${len(args) - 2}, ${len(args) - 1}, ${len(args)})")
        args.append(f.size + 1)
        rows = await pool.fetch(
            "SELECT a.*, "
            "(SELECT count(*) FROM actions_views.activities t WHERE t.action_code = a.action_code "
            " AND t.status = 'planned') AS activities_planned, "
            "(SELECT count(*) FROM actions_views.activities t WHERE t.action_code = a.action_code "
            " AND t.status = 'held') AS activities_held, "
            "(SELECT count(*) FROM actions_views.activities t WHERE t.action_code = a.action_code "
            " AND t.status = 'cancelled') AS activities_cancelled "
            f"FROM actions_views.actions a WHERE {' AND '.join(where)} ORDER BY a.year, a.seq, a.action_code "
            f"LIMIT ${len(args)}",
            *args,
        )
        return next_page(rows, f.size, lambda r: [r["year"], r["seq"], r["action_code"]])

    async def list_activities(self, pool: Pool, f: ActivityFilter) -> tuple[list[asyncpg.Record], str]:
        where, args = ["true"], []
        for column, value in (
            ("region", f.region),
            ("partner", f.partner),
            ("status", f.status),
            ("action_code", f.action_code),
            ("activity_type", f.activity_type),
            ("country", f.country),
        ):
            if value:
                args.append(value)
                where.append(f"t.{column} = ${len(args)}")
        if f.year:
            args.append(f.year)
            where.append(f"extract(year FROM t.starts_on)::int = ${len(args)}")
        after = key_after(f.page_token, int, int, int, str)
        if after:
            args.extend(after)
            n = len(args)
            where.append(f"(a.year, a.seq, t.number, t.activity_id) > (${n - 3}, ${n - 2}, ${n - 1}, ${n})")
        args.append(f.size + 1)
        rows = await pool.fetch(
            "SELECT t.*, a.year AS action_year, a.seq AS action_seq "
            "FROM actions_views.activities t JOIN actions_views.actions a USING (action_code) "
            f"WHERE {' AND '.join(where)} ORDER BY a.year, a.seq, t.number, t.activity_id "
            f"LIMIT ${len(args)}",
            *args,
        )
        return next_page(rows, f.size, lambda r: [r["action_year"], r["action_seq"], r["number"], r["activity_id"]])


# --- filters ---------------------------------------------------------------------


@dataclass(frozen=True)
class ActionFilter:
    year: int = 0
    region: str = ""
    partner: str = ""
    status: str = ""
    theme: str = ""
    size: int = DEFAULT_PAGE_SIZE
    page_token: str = ""


@dataclass(frozen=True)
class ActivityFilter:
    year: int = 0
    region: str = ""
    partner: str = ""
    status: str = ""
    action_code: str = ""
    activity_type: str = ""
    country: str = ""
    size: int = DEFAULT_PAGE_SIZE
    page_token: str = ""
