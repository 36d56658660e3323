"""The queries of the logistics service: their input models and the SELECTs over the read models
(projections.py).

* bookings and their legs -> GetBooking, ListBookings, itineraries per activity and per traveller, statute
  miles per traveller and year;
* the team and its stints -> GetTeamMember, ListTeam, and the denominator of air miles per team member
  (DESIGN.md section 6).

Lists are keyset-paged: the page token carries the last row's sort key, checked when the query is
validated. Page sizes are the kernel's (paging.DEFAULT_PAGE_SIZE, paging.MAX_PAGE_SIZE).
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
from services.logistics.projections import SCHEMA

# --- the queries' input ---------------------------------------------------------------------------


class _ById(BaseModel):
    model_config = ConfigDict(frozen=True, str_strip_whitespace=True, extra="forbid")


class GetBooking(_ById):
    booking_id: str = Field(min_length=1, max_length=100)


class GetTeamMember(_ById):
    member_id: str = Field(min_length=1, max_length=100)


class _Paged(BaseModel):
    model_config = ConfigDict(frozen=True, str_strip_whitespace=True, extra="forbid")
    key_types: ClassVar[tuple[type, ...]] = (str,)  # of the sort key a page token carries
    page_size: int = Field(default=0, ge=0, le=paging.MAX_PAGE_SIZE)
    page_token: str = ""

    @field_validator("page_token")
    @classmethod
    def token(cls, v: str) -> str:
        if v:
            paging.decode_key(v, *cls.key_types)
        return v

    @property
    def limit(self) -> int:
        return self.page_size or paging.DEFAULT_PAGE_SIZE

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


# --- what the queries answer ----------------------------------------------------------------------


@dataclass(frozen=True)
class BookingRow:
    row: asyncpg.Record
    legs: list[asyncpg.Record]


@dataclass(frozen=True)
class MemberRow:
    row: asyncpg.Record
    stints: list[asyncpg.Record]

    @property
    def status(self) -> str:
        return "on_team" if self.stints and self.stints[-1]["left_on"] is None else "left"


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


# --- the SELECTs ----------------------------------------------------------------------------------


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


def _on_team_in_year(alias: str, param: str) -> str:
    """A stint overlapping the year `param` (on the team at any time in it)."""
    return (
        f"{alias}.joined_on <= make_date({param}, 12, 31) "
        f"AND ({alias}.left_on IS NULL OR {alias}.left_on >= make_date({param}, 1, 1))"
    )


class LogisticsQueries:
    """The logistics queries over `logistics_views` (the BookingsView and TeamView projections' tables)."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def get_booking(self, booking_id: str) -> BookingRow | None:
        row = await self.pool.fetchrow(f"SELECT * FROM {SCHEMA}.bookings WHERE booking_id = $1", booking_id)
        if row is None:
            return None
        legs = await self.pool.fetch(
            f"SELECT * FROM {SCHEMA}.booking_legs WHERE booking_id = $1 ORDER BY leg", booking_id
        )
        return BookingRow(row, list(legs))

    async def list_bookings(self, q: ListBookings) -> tuple[list[BookingRow], str]:
        w = _Where()
        if q.year:
            w.add("year = ?", q.year)
        for col in ("traveller_id", "action_code", "status", "activity_id", "traveller_kind"):
            if getattr(q, col):
                w.add(f"{col} = ?", getattr(q, col))
        if after := q.after:
            w.add("booking_id > ?", *after)
        rows = await self.pool.fetch(
            f"SELECT * FROM {SCHEMA}.bookings {w} ORDER BY booking_id LIMIT {q.limit + 1}", *w.args
        )
        page, token = paging.next_page(rows, q.limit, lambda r: [r["booking_id"]])
        legs: dict[str, list[asyncpg.Record]] = {r["booking_id"]: [] for r in page}
        if page:
            for leg in await self.pool.fetch(
                f"SELECT * FROM {SCHEMA}.booking_legs WHERE booking_id = ANY($1::text[]) ORDER BY booking_id, leg",
                list(legs),
            ):
                legs[leg["booking_id"]].append(leg)
        return [BookingRow(r, legs[r["booking_id"]]) for r in page], token

    async def _stints(self, ids: list[str]) -> dict[str, list[asyncpg.Record]]:
        out: dict[str, list[asyncpg.Record]] = {i: [] for i in ids}
        if ids:
            for s in await self.pool.fetch(
                f"SELECT * FROM {SCHEMA}.team_stints WHERE member_id = ANY($1::text[]) ORDER BY member_id, joined_on",
                ids,
            ):
                out[s["member_id"]].append(s)
        return out

    async def get_team_member(self, member_id: str) -> MemberRow | None:
        row = await self.pool.fetchrow(f"SELECT * FROM {SCHEMA}.team_members WHERE member_id = $1", member_id)
        if row is None:
            return None
        return MemberRow(row, (await self._stints([member_id]))[member_id])

    async def list_team(self, q: ListTeam) -> tuple[list[MemberRow], str]:
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
        rows = await self.pool.fetch(
            f"SELECT m.* FROM {SCHEMA}.team_members m {w} ORDER BY m.member_id LIMIT {q.limit + 1}", *w.args
        )
        page, token = paging.next_page(rows, q.limit, lambda r: [r["member_id"]])
        stints = await self._stints([r["member_id"] for r in page])
        return [MemberRow(r, stints[r["member_id"]]) for r in page], token

    async def list_itineraries(self, q: ListItineraries) -> tuple[list[asyncpg.Record], str]:
        w = _Where()
        for col in ("activity_id", "action_code", "traveller_id"):
            if getattr(q, col):
                w.add(f"b.{col} = ?", getattr(q, col))
        if q.year:
            # a range on departs_on, which its index serves (extract(year FROM ...) no index does)
            w.add("l.departs_on BETWEEN make_date(?, 1, 1) AND make_date(?, 12, 31)", q.year, q.year)
        if not q.include_cancelled:
            w.add("b.status <> 'cancelled'")
        if after := q.after:
            w.add("(l.departs_on, l.booking_id, l.leg) > (?::date, ?, ?::int)", *after)
        rows = await self.pool.fetch(
            f"""SELECT l.*, b.traveller_id, b.traveller_kind, b.action_code, b.activity_id, b.cabin_class,
                b.status = 'cancelled' AS cancelled
            FROM {SCHEMA}.booking_legs l JOIN {SCHEMA}.bookings b USING (booking_id) {w}
            ORDER BY l.departs_on, l.booking_id, l.leg LIMIT {q.limit + 1}""",
            *w.args,
        )
        return paging.next_page(rows, q.limit, lambda r: [r["departs_on"], r["booking_id"], r["leg"]])

    async def list_traveller_miles(self, q: ListTravellerMiles) -> list[asyncpg.Record]:
        """Statute miles of non-cancelled flights per traveller and year of departure."""
        w = _Where()
        w.add("b.status <> 'cancelled'")
        if q.year:  # a range on departs_on, which its index serves
            w.add("l.departs_on BETWEEN make_date(?, 1, 1) AND make_date(?, 12, 31)", q.year, q.year)
        if q.traveller_id:
            w.add("b.traveller_id = ?", q.traveller_id)
        if q.traveller_kind:
            w.add("b.traveller_kind = ?", q.traveller_kind)
        return list(
            await self.pool.fetch(
                f"""SELECT b.traveller_id, b.traveller_kind, extract(year FROM l.departs_on)::int AS year,
                    count(*) AS flights, sum(l.statute_miles) AS statute_miles
                FROM {SCHEMA}.booking_legs l JOIN {SCHEMA}.bookings b USING (booking_id) {w}
                GROUP BY 1, 2, 3 ORDER BY 3, 1, 2""",
                *w.args,
            )
        )

    async def air_miles_per_team_member(self, year: int) -> AirMiles:
        """DESIGN.md section 6: statute miles of non-cancelled flights flown by team members departing in Y,
        divided by the team members on the team at any time in Y."""
        miles = await self.pool.fetchval(
            f"""SELECT coalesce(sum(l.statute_miles), 0) FROM {SCHEMA}.booking_legs l
            JOIN {SCHEMA}.bookings b USING (booking_id)
            WHERE b.status <> 'cancelled' AND b.traveller_kind = 'team_member'
              AND l.departs_on >= make_date($1, 1, 1) AND l.departs_on <= make_date($1, 12, 31)""",
            year,
        )
        members = await self.pool.fetchval(
            f"SELECT count(DISTINCT s.member_id) FROM {SCHEMA}.team_stints s WHERE " + _on_team_in_year("s", "$1"),
            year,
        )
        return AirMiles(year, Decimal(miles), members)
