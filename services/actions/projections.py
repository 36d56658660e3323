"""Read models of the actions service: the tables of the actions and activities lists (ListActions,
ListActivities) and how each event changes them. What the API reads from them is in queries.py.

Every statement is an idempotent upsert or update keyed by code / activity id, and the projection runner
records each event id in the same transaction, so a redelivered event changes nothing.
"""

from __future__ import annotations

import asyncpg

from services.actions.events import (
    ActionClosed,
    ActionFicheAgreed,
    ActionOpened,
    ActivityCancelled,
    ActivityHeld,
    ActivityPlanned,
)
from services.kernel.envelope import Envelope, Event, topic_for
from services.kernel.projection import Projection


class ActionsView(Projection):
    name = "actions_view"
    service = "actions"
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
    -- ListActions' filters (queries.py), each with the page order after it, themes by GIN; ListActivities'
    -- (whose order is its action's, from the join), one index each, the year a range on starts_on
    CREATE INDEX IF NOT EXISTS actions_region_page ON actions_views.actions (region, year, seq);
    CREATE INDEX IF NOT EXISTS actions_partner_page ON actions_views.actions (partner, year, seq);
    CREATE INDEX IF NOT EXISTS actions_status_page ON actions_views.actions (status, year, seq);
    CREATE INDEX IF NOT EXISTS actions_themes ON actions_views.actions USING gin (themes);
    CREATE INDEX IF NOT EXISTS activities_starts ON actions_views.activities (starts_on);
    CREATE INDEX IF NOT EXISTS activities_region ON actions_views.activities (region);
    CREATE INDEX IF NOT EXISTS activities_partner ON actions_views.activities (partner);
    CREATE INDEX IF NOT EXISTS activities_status ON actions_views.activities (status);
    CREATE INDEX IF NOT EXISTS activities_type ON actions_views.activities (activity_type);
    CREATE INDEX IF NOT EXISTS activities_country ON actions_views.activities (country);
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
            case ActionFicheAgreed():  # its themes, when it names any, are the action's from then on
                await conn.execute(
                    "UPDATE actions_views.actions SET fiche_agreed_on = $2, "
                    "status = CASE WHEN status = 'closed' THEN status ELSE 'fiche_agreed' END, "
                    "themes = CASE WHEN cardinality($3::text[]) > 0 THEN $3::text[] ELSE themes END "
                    "WHERE action_code = $1",
                    event.action_code,
                    event.agreed_on,
                    list(event.themes),
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
