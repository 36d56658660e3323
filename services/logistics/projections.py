"""Read models of the logistics service and their queries.

* `logistics_bookings`: one row per booking (its current itinerary, status and miles) and one row per leg
  (segment) -> GetBooking, ListBookings, itineraries per activity and per traveller, statute miles per
  traveller and year.
* `logistics_team`: team members and their stints on the team -> GetTeamMember, ListTeam, and the
  denominator of air miles per team member (DESIGN.md section 6).

Both are idempotent (the kernel's tracking table) and guard on stream versions, so a replay or a rebuild
gives the same tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, ClassVar, Literal

import asyncpg
from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.kernel import paging
from services.kernel.db import Pool
from services.kernel.envelope import Envelope, Event, topic_for
from services.kernel.projection import Projection
from services.logistics.domain import statute_miles
from services.logistics.events import (
    FlightBooked,
    FlightCancelled,
    FlightChanged,
    Segment,
    TeamMemberJoined,
    TeamMemberLeft,
)

SCHEMA = "logistics_views"
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


# --- the bookings read model ------------------------------------------------------------------------


class BookingsView(Projection):
    name = "logistics_bookings"
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
    CREATE INDEX IF NOT EXISTS bookings_year ON {SCHEMA}.bookings (year);
    CREATE INDEX IF NOT EXISTS bookings_traveller ON {SCHEMA}.bookings (traveller_id);
    CREATE INDEX IF NOT EXISTS bookings_action ON {SCHEMA}.bookings (action_code);
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
    topics = (topic_for("logistics"),)
    tables = (f"{SCHEMA}.team_members", f"{SCHEMA}.team_stints")
    setup_sql = f"""
    CREATE SCHEMA IF NOT EXISTS {SCHEMA};
    CREATE TABLE IF NOT EXISTS {SCHEMA}.team_members (
        member_id   text PRIMARY KEY,
        name        text NOT NULL,
        gender      text NOT NULL,
        role        text NOT NULL
    );
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
        elif isinstance(event, TeamMemberLeft):
            await conn.execute(
                f"""UPDATE {SCHEMA}.team_stints SET left_on = $2
                WHERE member_id = $1 AND left_on IS NULL AND joined_on <= $2""",
                event.member_id,
                event.left_on,
            )


# --- queries ----------------------------------------------------------------------------------------


class _Paged(BaseModel):
    model_config = ConfigDict(frozen=True, str_strip_whitespace=True, extra="forbid")
    key_types: ClassVar[tuple[type, ...]] = (str,)  # of the sort key a page token carries
    page_size: int = Field(default=0, ge=0, le=MAX_PAGE_SIZE)
    page_token: str = ""

    @field_validator("page_token")
    @classmethod
    def token(cls, v: str) -> str:
        if v:
            paging.decode_key(v, *cls.key_types)
        return v

    @property
    def limit(self) -> int:
        return self.page_size or DEFAULT_PAGE_SIZE

    @property
    def after(self) -> list[Any] | None:
        """The sort key the page token carries (checked by the validator), None for the first page."""
        return paging.decode_key(self.page_token, *self.key_types) if self.page_token else None


YEAR = Field(default=0, ge=0, le=9999)


class ListBookings(_Paged):
    year: int = YEAR
    traveller_id: str = ""
    action_code: str = ""
    status: Literal["", "booked", "cancelled"] = ""
    activity_id: str = ""
    traveller_kind: Literal["", "expert", "team_member"] = ""


class ListTeam(_Paged):
    year: int = YEAR
    status: Literal["", "on_team", "left"] = ""


class ListItineraries(_Paged):
    key_types = (date, str, int)  # departs_on, booking_id, leg
    activity_id: str = ""
    action_code: str = ""
    traveller_id: str = ""
    year: int = YEAR
    include_cancelled: bool = False


class ListTravellerMiles(BaseModel):
    model_config = ConfigDict(frozen=True, str_strip_whitespace=True, extra="forbid")
    year: int = YEAR
    traveller_id: str = ""
    traveller_kind: Literal["", "expert", "team_member"] = ""


class AirMilesQuery(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    year: int = Field(ge=1900, le=9999)


class _Where:
    """A WHERE clause built from the filters that are set, with numbered parameters."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.args: list[Any] = []

    def add(self, sql: str, *values: Any) -> None:
        for v in values:
            self.args.append(v)
            sql = sql.replace("?", f"${len(self.args)}", 1)
        self.parts.append(sql)

    def __str__(self) -> str:
        return ("WHERE " + " AND ".join(self.parts)) if self.parts else ""


@dataclass(frozen=True)
class BookingRow:
    row: asyncpg.Record
    legs: list[asyncpg.Record]


async def get_booking(pool: Pool, booking_id: str) -> BookingRow | None:
    row = await pool.fetchrow(f"SELECT * FROM {SCHEMA}.bookings WHERE booking_id = $1", booking_id)
    if row is None:
        return None
    legs = await pool.fetch(f"SELECT * FROM {SCHEMA}.booking_legs WHERE booking_id = $1 ORDER BY leg", booking_id)
    return BookingRow(row, list(legs))


async def list_bookings(pool: Pool, q: ListBookings) -> tuple[list[BookingRow], str]:
    w = _Where()
    if q.year:
        w.add("year = ?", q.year)
    for col in ("traveller_id", "action_code", "status", "activity_id", "traveller_kind"):
        if getattr(q, col):
            w.add(f"{col} = ?", getattr(q, col))
    if after := q.after:
        w.add("booking_id > ?", *after)
    rows = await pool.fetch(f"SELECT * FROM {SCHEMA}.bookings {w} ORDER BY booking_id LIMIT {q.limit + 1}", *w.args)
    page, token = paging.next_page(rows, q.limit, lambda r: [r["booking_id"]])
    legs: dict[str, list[asyncpg.Record]] = {r["booking_id"]: [] for r in page}
    if page:
        for leg in await pool.fetch(
            f"SELECT * FROM {SCHEMA}.booking_legs WHERE booking_id = ANY($1::text[]) ORDER BY booking_id, leg",
            list(legs),
        ):
            legs[leg["booking_id"]].append(leg)
    return [BookingRow(r, legs[r["booking_id"]]) for r in page], token


@dataclass(frozen=True)
class MemberRow:
    row: asyncpg.Record
    stints: list[asyncpg.Record]

    @property
    def status(self) -> str:
        return "on_team" if self.stints and self.stints[-1]["left_on"] is None else "left"


async def _stints(pool: Pool, ids: list[str]) -> dict[str, list[asyncpg.Record]]:
    out: dict[str, list[asyncpg.Record]] = {i: [] for i in ids}
    if ids:
        for s in await pool.fetch(
            f"SELECT * FROM {SCHEMA}.team_stints WHERE member_id = ANY($1::text[]) ORDER BY member_id, joined_on",
            ids,
        ):
            out[s["member_id"]].append(s)
    return out


async def get_team_member(pool: Pool, member_id: str) -> MemberRow | None:
    row = await pool.fetchrow(f"SELECT * FROM {SCHEMA}.team_members WHERE member_id = $1", member_id)
    if row is None:
        return None
    return MemberRow(row, (await _stints(pool, [member_id]))[member_id])


def _on_team_in_year(alias: str, param: str) -> str:
    """A stint overlapping the year `param` (on the team at any time in it)."""
    return (
        f"{alias}.joined_on <= make_date({param}, 12, 31) "
        f"AND ({alias}.left_on IS NULL OR {alias}.left_on >= make_date({param}, 1, 1))"
    )


async def list_team(pool: Pool, q: ListTeam) -> tuple[list[MemberRow], str]:
    w = _Where()
    if q.year:
        stint_in_year = _on_team_in_year("s", "?::int")
        w.add(
            f"EXISTS (SELECT 1 FROM {SCHEMA}.team_stints s WHERE s.member_id = m.member_id AND {stint_in_year})",
            q.year,
            q.year,
        )
    on_team = f"EXISTS (SELECT 1 FROM {SCHEMA}.team_stints s WHERE s.member_id = m.member_id AND s.left_on IS NULL)"
    if q.status == "on_team":
        w.add(on_team)
    elif q.status == "left":
        w.add("NOT " + on_team)
    if after := q.after:
        w.add("m.member_id > ?", *after)
    rows = await pool.fetch(
        f"SELECT m.* FROM {SCHEMA}.team_members m {w} ORDER BY m.member_id LIMIT {q.limit + 1}", *w.args
    )
    page, token = paging.next_page(rows, q.limit, lambda r: [r["member_id"]])
    stints = await _stints(pool, [r["member_id"] for r in page])
    return [MemberRow(r, stints[r["member_id"]]) for r in page], token


async def list_itineraries(pool: Pool, q: ListItineraries) -> tuple[list[asyncpg.Record], str]:
    w = _Where()
    for col in ("activity_id", "action_code", "traveller_id"):
        if getattr(q, col):
            w.add(f"b.{col} = ?", getattr(q, col))
    if q.year:
        w.add("extract(year FROM l.departs_on)::int = ?", q.year)
    if not q.include_cancelled:
        w.add("b.status <> 'cancelled'")
    if after := q.after:
        w.add("(l.departs_on, l.booking_id, l.leg) > (?::date, ?, ?::int)", *after)
    rows = await pool.fetch(
        f"""SELECT l.*, b.traveller_id, b.traveller_kind, b.action_code, b.activity_id, b.cabin_class,
            b.status = 'cancelled' AS cancelled
        FROM {SCHEMA}.booking_legs l JOIN {SCHEMA}.bookings b USING (booking_id) {w}
        ORDER BY l.departs_on, l.booking_id, l.leg LIMIT {q.limit + 1}""",
        *w.args,
    )
    return paging.next_page(rows, q.limit, lambda r: [r["departs_on"], r["booking_id"], r["leg"]])


async def list_traveller_miles(pool: Pool, q: ListTravellerMiles) -> list[asyncpg.Record]:
    """Statute miles of non-cancelled flights per traveller and year of departure."""
    w = _Where()
    w.add("b.status <> 'cancelled'")
    if q.year:
        w.add("extract(year FROM l.departs_on)::int = ?", q.year)
    if q.traveller_id:
        w.add("b.traveller_id = ?", q.traveller_id)
    if q.traveller_kind:
        w.add("b.traveller_kind = ?", q.traveller_kind)
    return list(
        await pool.fetch(
            f"""SELECT b.traveller_id, b.traveller_kind, extract(year FROM l.departs_on)::int AS year,
                count(*) AS flights, sum(l.statute_miles) AS statute_miles
            FROM {SCHEMA}.booking_legs l JOIN {SCHEMA}.bookings b USING (booking_id) {w}
            GROUP BY 1, 2, 3 ORDER BY 3, 1, 2""",
            *w.args,
        )
    )


@dataclass(frozen=True)
class AirMiles:
    year: int
    team_statute_miles: Decimal
    team_members: int

    @property
    def per_member(self) -> Decimal:
        if not self.team_members:
            return Decimal(0)
        return (self.team_statute_miles / self.team_members).quantize(Decimal(1), ROUND_HALF_UP)


async def air_miles_per_team_member(pool: Pool, year: int) -> AirMiles:
    """DESIGN.md section 6: statute miles of non-cancelled flights flown by team members departing in Y,
    divided by the team members on the team at any time in Y."""
    miles = await pool.fetchval(
        f"""SELECT coalesce(sum(l.statute_miles), 0) FROM {SCHEMA}.booking_legs l
        JOIN {SCHEMA}.bookings b USING (booking_id)
        WHERE b.status <> 'cancelled' AND b.traveller_kind = 'team_member'
          AND l.departs_on >= make_date($1, 1, 1) AND l.departs_on <= make_date($1, 12, 31)""",
        year,
    )
    members = await pool.fetchval(
        f"SELECT count(DISTINCT s.member_id) FROM {SCHEMA}.team_stints s WHERE " + _on_team_in_year("s", "$1"), year
    )
    return AirMiles(year, Decimal(miles), members)
