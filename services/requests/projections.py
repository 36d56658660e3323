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
    """

    async def apply(self, conn: asyncpg.Connection, env: Envelope, event: Event) -> None:
        t = "requests_views.requests"
        match event:
            case RequestReceived():
                await conn.execute(
                    f"INSERT INTO {t} (request_id, partner, partner_kind, partner_name, region, institution, "
                    "institution_type, received_on, title, themes, status) "
                    "VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,'received') ON CONFLICT (request_id) DO NOTHING",
                    event.request_id,
                    event.partner,
                    event.partner_kind,
                    event.partner_name,
                    reference.region_of(event.partner) or "",
                    event.institution,
                    event.institution_type,
                    event.received_on,
                    event.title,
                    list(event.themes),
                )
            case RequestEligibilityAssessed():
                await conn.execute(
                    f"UPDATE {t} SET status = 'assessed', eligible = $2, instrument = $3, reasons = $4 "
                    "WHERE request_id = $1",
                    event.request_id,
                    event.eligible,
                    event.instrument or "",
                    list(event.reasons),
                )
            case RequestApproved() | RequestRejected() | RequestWithdrawn():
                status = {RequestApproved: "approved", RequestRejected: "rejected", RequestWithdrawn: "withdrawn"}
                await conn.execute(
                    f"UPDATE {t} SET status = $2 WHERE request_id = $1", event.request_id, status[type(event)]
                )
