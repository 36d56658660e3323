"""Read models of the requests service: their tables and how each event changes them. What the API reads
from them is in queries.py."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import asyncpg

from services.kernel import reference
from services.kernel.envelope import Envelope, Event, topic_for
from services.kernel.projection import Projection
from services.requests.events import (
    RequestApproved,
    RequestEligibilityAssessed,
    RequestReceived,
    RequestRejected,
    RequestWithdrawn,
)


class RequestsPerYear(Projection):
    """How many requests were received in each year (by the date the request was received)."""

    name = "requests_per_year"
    service = "requests"
    topics = (topic_for("requests"),)
    tables = ("requests_views.requests_per_year",)
    setup_sql = """
    CREATE SCHEMA IF NOT EXISTS requests_views;
    CREATE TABLE IF NOT EXISTS requests_views.requests_per_year (
        year    integer PRIMARY KEY,
        count   bigint NOT NULL
    );
    """

    async def apply_many(self, conn: asyncpg.Connection, items: Sequence[tuple[Envelope, Event]]) -> None:
        years = Counter(e.received_on.year for _, e in items if isinstance(e, RequestReceived))
        if years:
            await conn.executemany(
                "INSERT INTO requests_views.requests_per_year (year, count) VALUES ($1, $2) "
                "ON CONFLICT (year) DO UPDATE SET count = requests_per_year.count + EXCLUDED.count",
                sorted(years.items()),
            )


class RequestRegister(Projection):
    """One row per request with its current status: ListRequests filters and pages over it (queries.py),
    in the order of its index (received_on, request_id)."""

    name = "request_register"
    service = "requests"
    topics = (topic_for("requests"),)
    tables = ("requests_views.requests",)
    setup_sql = """
    CREATE SCHEMA IF NOT EXISTS requests_views;
    CREATE TABLE IF NOT EXISTS requests_views.requests (
        request_id        text PRIMARY KEY,
        partner           text NOT NULL,
        partner_kind      text NOT NULL,
        partner_name      text NOT NULL,
        region            text NOT NULL,
        institution       text NOT NULL,
        institution_type  text NOT NULL,
        received_on       date NOT NULL,
        title             text NOT NULL,
        themes            text[] NOT NULL,
        status            text NOT NULL,
        eligible          boolean NOT NULL DEFAULT false,
        instrument        text NOT NULL DEFAULT '',
        reasons           text[] NOT NULL DEFAULT '{}'
    );
    CREATE INDEX IF NOT EXISTS requests_received_on ON requests_views.requests (received_on, request_id);
    -- ListRequests' filters (queries.py): each equality filter with the page order after it, themes by GIN
    CREATE INDEX IF NOT EXISTS requests_region_page ON requests_views.requests (region, received_on, request_id);
    CREATE INDEX IF NOT EXISTS requests_partner_page ON requests_views.requests (partner, received_on, request_id);
    CREATE INDEX IF NOT EXISTS requests_status_page ON requests_views.requests (status, received_on, request_id);
    CREATE INDEX IF NOT EXISTS requests_themes ON requests_views.requests USING gin (themes);
    """

    async def apply_many(self, conn: asyncpg.Connection, items: Sequence[tuple[Envelope, Event]]) -> None:
        """A batch folded into two statements, the same model as applying its events one by one: an event
        received inserts the request's row (if it is not there: ON CONFLICT DO NOTHING) and a later event of
        it changes fields of the row. Folded per request: (1) every change of the batch, in order, to the
        rows there before it (an UPDATE, which finds none of the rows the batch inserts); (2) the rows the
        batch receives, with the changes after their RequestReceived in them (an INSERT that leaves a row
        there before it alone, which (1) changed). A change before its request is received in the batch
        finds no row one by one unless the row was there: (1) alone applies it."""
        received: dict[str, list] = {}  # request_id -> the row, with the changes after its RequestReceived
        changed: dict[str, dict[str, object]] = {}  # request_id -> every change of the batch (field -> value)
        regions: dict[str, str] = {}  # partner -> region, looked up once per batch
        for _, event in items:
            kind = type(event)  # events are final classes: a lookup, not a match of every case
            if kind is RequestReceived:
                e: RequestReceived = event  # type: ignore[assignment]
                if e.request_id not in received:
                    if (region := regions.get(e.partner)) is None:
                        region = regions[e.partner] = reference.region_of(e.partner) or ""
                    received[e.request_id] = [
                        *(e.request_id, e.partner, e.partner_kind, e.partner_name, region, e.institution),
                        *(e.institution_type, e.received_on, e.title, text_array(e.themes)),
                        *("received", False, "", "{}"),
                    ]
                continue
            if kind is RequestEligibilityAssessed:
                a: RequestEligibilityAssessed = event  # type: ignore[assignment]
                change = {"status": "assessed", "eligible": a.eligible, "instrument": a.instrument or ""}
                change["reasons"] = text_array(a.reasons)
            elif (status := STATUS.get(kind)) is not None:
                change = {"status": status}
            else:
                continue
            request_id = event.request_id  # type: ignore[attr-defined]
            changed.setdefault(request_id, {}).update(change)
            if (row := received.get(request_id)) is not None:
                for field, value in change.items():
                    row[CHANGEABLE[field]] = value
        t = "requests_views.requests"
        if changed:
            ids, changes = list(changed), list(changed.values())
            await conn.execute(
                f"UPDATE {t} r SET status = coalesce(u.status, r.status), eligible = coalesce(u.eligible, r.eligible), "
                "instrument = coalesce(u.instrument, r.instrument), reasons = coalesce(u.reasons::text[], r.reasons) "
                "FROM unnest($1::text[], $2::text[], $3::boolean[], $4::text[], $5::text[]) "
                "AS u(request_id, status, eligible, instrument, reasons) WHERE r.request_id = u.request_id",
                ids,
                *([c.get(f) for c in changes] for f in CHANGEABLE),
            )
        if received:
            await conn.execute(
                f"INSERT INTO {t} (request_id, partner, partner_kind, partner_name, region, institution, "
                "institution_type, received_on, title, themes, status, eligible, instrument, reasons) "
                "SELECT request_id, partner, partner_kind, partner_name, region, institution, institution_type, "
                "received_on, title, themes::text[], status, eligible, instrument, reasons::text[] "
                "FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], "
                "$8::date[], $9::text[], $10::text[], $11::text[], $12::boolean[], $13::text[], $14::text[]) "
                "AS u(request_id, partner, partner_kind, partner_name, region, institution, institution_type, "
                "received_on, title, themes, status, eligible, instrument, reasons) "
                "ON CONFLICT (request_id) DO NOTHING",
                *map(list, zip(*received.values(), strict=True)),
            )


def text_array(values: Sequence[str]) -> str:
    """A PostgreSQL array literal of texts (each quoted, its backslashes and double quotes escaped): a text[]
    per row goes into unnest as one text, cast back (unnest cannot take arrays of arrays of other lengths)."""
    return "{" + ",".join('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values) + "}"


STATUS = {RequestApproved: "approved", RequestRejected: "rejected", RequestWithdrawn: "withdrawn"}
# the fields an event after RequestReceived changes, and their place in a received row (RequestRegister)
CHANGEABLE = {"status": 10, "eligible": 11, "instrument": 12, "reasons": 13}
