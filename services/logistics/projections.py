"""Read models of the logistics service, fed from `mieux.logistics.events` (the queries over them: queries.py).

* `logistics_bookings`: one row per booking (its current itinerary, status and miles) and one row per leg
  (segment), with each leg's statute miles (services.kernel.reference) computed as the event is applied.
* `logistics_team`: team members and their stints on the team. The name and role columns hold what the
  event holds, sealed with the member's key: the queries open them, the projection never does.
  TeamMemberForgotten redacts them (empty, and the date the member was forgotten).

Both are idempotent (the kernel's tracking table) and guard on stream versions, so a replay or a rebuild
gives the same tables.
"""

from __future__ import annotations

from decimal import Decimal

import asyncpg

from services.kernel.envelope import Envelope, Event, topic_for
from services.kernel.projection import Projection
from services.kernel.reference import statute_miles
from services.logistics.events import (
    FlightBooked,
    FlightCancelled,
    FlightChanged,
    Segment,
    TeamMemberForgotten,
    TeamMemberJoined,
    TeamMemberLeft,
)

SCHEMA = "logistics_views"


# --- the bookings read model ------------------------------------------------------------------------


class BookingsView(Projection):
    name = "logistics_bookings"
    service = "logistics"
    topics = (topic_for("logistics"),)
    tables = (f"{SCHEMA}.bookings", f"{SCHEMA}.booking_legs")
    setup_sql = f"""
    CREATE SCHEMA IF NOT EXISTS {SCHEMA};
    CREATE TABLE IF NOT EXISTS {SCHEMA}.bookings (
        booking_id      text PRIMARY KEY,
        version         integer NOT NULL,
        traveller_id    text NOT NULL,
        traveller_kind  text NOT NULL,
        action_code     text,
        activity_id     text,
        cabin_class     text NOT NULL,
        fare_amount     text NOT NULL,
        fare_currency   text NOT NULL,
        booked_on       date NOT NULL,
        status          text NOT NULL,
        changes         integer NOT NULL DEFAULT 0,
        changed_on      date,
        cancelled_on    date,
        cancel_reason   text,
        first_departs_on date NOT NULL,
        year            integer NOT NULL,
        statute_miles   numeric(14, 3) NOT NULL
    );
    -- ListBookings' filters (queries.py), each with the page order (booking_id) after it: a page is read
    -- in order from the index, never sorted from every match; the replaced one-column indexes go
    DROP INDEX IF EXISTS {SCHEMA}.bookings_year;
    DROP INDEX IF EXISTS {SCHEMA}.bookings_traveller;
    DROP INDEX IF EXISTS {SCHEMA}.bookings_action;
    CREATE INDEX IF NOT EXISTS bookings_year_page ON {SCHEMA}.bookings (year, booking_id);
    CREATE INDEX IF NOT EXISTS bookings_traveller_page ON {SCHEMA}.bookings (traveller_id, booking_id);
    CREATE INDEX IF NOT EXISTS bookings_action_page ON {SCHEMA}.bookings (action_code, booking_id);
    CREATE INDEX IF NOT EXISTS bookings_activity_page ON {SCHEMA}.bookings (activity_id, booking_id);
    CREATE INDEX IF NOT EXISTS bookings_status_page ON {SCHEMA}.bookings (status, booking_id);
    CREATE INDEX IF NOT EXISTS bookings_kind_page ON {SCHEMA}.bookings (traveller_kind, booking_id);
    CREATE TABLE IF NOT EXISTS {SCHEMA}.booking_legs (
        booking_id      text NOT NULL,
        leg             integer NOT NULL,
        origin          text NOT NULL,
        destination     text NOT NULL,
        departs_on      date NOT NULL,
        statute_miles   numeric(14, 3) NOT NULL,
        PRIMARY KEY (booking_id, leg)
    );
    CREATE INDEX IF NOT EXISTS booking_legs_departs ON {SCHEMA}.booking_legs (departs_on);
    """

    async def apply(self, conn: asyncpg.Connection, env: Envelope, event: Event) -> None:
        if isinstance(event, FlightBooked):
            inserted = await conn.fetchval(
                f"""INSERT INTO {SCHEMA}.bookings (booking_id, version, traveller_id, traveller_kind, action_code,
                    activity_id, cabin_class, fare_amount, fare_currency, booked_on, status, first_departs_on, year,
                    statute_miles)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'booked', $11, $12, $13)
                ON CONFLICT (booking_id) DO NOTHING RETURNING 1""",
                event.booking_id,
                env.stream_version,
                event.traveller_id,
                event.traveller_kind,
                event.action_code,
                event.activity_id,
                event.cabin_class,
                event.fare.amount,
                event.fare.currency,
                event.booked_on,
                event.segments[0].departs_on,
                event.segments[0].departs_on.year,
                itinerary_miles(event.segments),
            )
            if inserted:
                await self._legs(conn, event.booking_id, event.segments)
        elif isinstance(event, FlightChanged):
            updated = await conn.fetchval(
                f"""UPDATE {SCHEMA}.bookings SET version = $2, cabin_class = $3, fare_amount = $4,
                    fare_currency = $5, changes = changes + 1, changed_on = $6, first_departs_on = $7, year = $8,
                    statute_miles = $9
                WHERE booking_id = $1 AND version < $2 RETURNING 1""",
                event.booking_id,
                env.stream_version,
                event.cabin_class,
                event.fare.amount,
                event.fare.currency,
                event.changed_on,
                event.segments[0].departs_on,
                event.segments[0].departs_on.year,
                itinerary_miles(event.segments),
            )
            if updated:
                await conn.execute(f"DELETE FROM {SCHEMA}.booking_legs WHERE booking_id = $1", event.booking_id)
                await self._legs(conn, event.booking_id, event.segments)
        elif isinstance(event, FlightCancelled):
            await conn.execute(
                f"""UPDATE {SCHEMA}.bookings SET version = $2, status = 'cancelled', cancelled_on = $3,
                    cancel_reason = $4
                WHERE booking_id = $1 AND version < $2""",
                event.booking_id,
                env.stream_version,
                event.cancelled_on,
                event.reason,
            )

    async def _legs(self, conn: asyncpg.Connection, booking_id: str, segments: tuple[Segment, ...]) -> None:
        await conn.executemany(
            f"INSERT INTO {SCHEMA}.booking_legs (booking_id, leg, origin, destination, departs_on, statute_miles) "
            "VALUES ($1, $2, $3, $4, $5, $6)",
            [
                (booking_id, i, s.origin, s.destination, s.departs_on, statute_miles(s.origin, s.destination))
                for i, s in enumerate(segments, start=1)
            ],
        )


def itinerary_miles(segments: tuple[Segment, ...]) -> Decimal:
    return sum((statute_miles(s.origin, s.destination) for s in segments), Decimal(0))


# --- the team read model ----------------------------------------------------------------------------


class TeamView(Projection):
    name = "logistics_team"
    service = "logistics"
    topics = (topic_for("logistics"),)
    tables = (f"{SCHEMA}.team_members", f"{SCHEMA}.team_stints")
    setup_sql = f"""
    CREATE SCHEMA IF NOT EXISTS {SCHEMA};
    CREATE TABLE IF NOT EXISTS {SCHEMA}.team_members (
        member_id   text PRIMARY KEY,
        name        text NOT NULL,  -- name and role sealed (services.kernel.personal); '' once forgotten
        gender      text NOT NULL,
        role        text NOT NULL
    );
    ALTER TABLE {SCHEMA}.team_members ADD COLUMN IF NOT EXISTS forgotten_on date;
    CREATE TABLE IF NOT EXISTS {SCHEMA}.team_stints (
        member_id   text NOT NULL,
        joined_on   date NOT NULL,
        left_on     date,
        PRIMARY KEY (member_id, joined_on)
    );
    """

    async def apply(self, conn: asyncpg.Connection, env: Envelope, event: Event) -> None:
        if isinstance(event, TeamMemberJoined):
            await conn.execute(
                f"INSERT INTO {SCHEMA}.team_members (member_id, name, gender, role) VALUES ($1, $2, $3, $4) "
                "ON CONFLICT (member_id) DO UPDATE SET name = EXCLUDED.name, gender = EXCLUDED.gender, "
                "role = EXCLUDED.role",
                event.member_id,
                event.name,
                event.gender,
                event.role,
            )
            await conn.execute(
                f"INSERT INTO {SCHEMA}.team_stints (member_id, joined_on) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                event.member_id,
                event.joined_on,
            )
        elif isinstance(event, TeamMemberForgotten):
            await conn.execute(
                f"UPDATE {SCHEMA}.team_members SET name = '', role = '', forgotten_on = $2 WHERE member_id = $1",
                event.member_id,
                event.forgotten_on,
            )
        elif isinstance(event, TeamMemberLeft):
            await conn.execute(
                f"""UPDATE {SCHEMA}.team_stints SET left_on = $2
                WHERE member_id = $1 AND left_on IS NULL AND joined_on <= $2""",
                event.member_id,
                event.left_on,
            )
