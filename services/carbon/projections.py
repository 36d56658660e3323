"""Read models of the carbon service: flight emissions by booking, offset lots, the footprint per year,
and each action's region. This file declares their tables and applies events to them; what reads them
is in queries.py.

Each is idempotent through the kernel's tracking table; a stream's events arrive in order (keyed by
stream on the bus), and each row also keeps the stream version it reflects, so an older event never
overwrites a newer one.
"""

from __future__ import annotations

from decimal import Decimal

import asyncpg

from services.actions.events import ActionOpened
from services.carbon.events import (
    FlightEmissionsCalculated,
    FlightEmissionsReversed,
    OffsetsPurchased,
    OffsetsRetired,
)
from services.kernel.envelope import Envelope, Event, topic_for
from services.kernel.projection import Projection

TOPIC = topic_for("carbon")


class FlightEmissionsView(Projection):
    """The emissions in force for every booking (status `recorded`), or the last ones taken back
    (`reversed` between a change's two events, `cancelled` for good). `departure_year` is the first leg's;
    a listing by year finds a booking in the year of each of its legs (queries.py)."""

    name = "carbon_flight_emissions"
    service = "carbon"
    topics = (TOPIC,)
    tables = ("carbon_views.flight_emissions",)
    setup_sql = """
    CREATE SCHEMA IF NOT EXISTS carbon_views;
    CREATE TABLE IF NOT EXISTS carbon_views.flight_emissions (
        booking_id      text PRIMARY KEY,
        stream_id       text NOT NULL,
        version         integer NOT NULL,
        status          text NOT NULL,
        traveller_id    text NOT NULL,
        traveller_kind  text NOT NULL,
        action_code     text,
        activity_id     text,
        cabin_class     text NOT NULL,
        departure_year  integer NOT NULL,
        distance_km     numeric NOT NULL,
        distance_miles  numeric NOT NULL,
        kg_co2e         numeric NOT NULL,
        method          text NOT NULL,
        factor_set      text NOT NULL,
        factor_year     integer NOT NULL,
        radiative_forcing boolean NOT NULL,
        distance_uplift_applied boolean NOT NULL,
        segments        jsonb NOT NULL,
        calculated_on   date NOT NULL,
        calculations    integer NOT NULL,
        reversals       integer NOT NULL
    );
    CREATE INDEX IF NOT EXISTS flight_emissions_year ON carbon_views.flight_emissions (departure_year);
    -- ListFlightEmissions' year filter (queries.py): the years the booking's legs depart in (its
    -- departure_year without legs), GIN-indexed; the date is ISO text in the JSON, so its first four
    -- characters are the year (immutable, unlike a cast to date)
    CREATE OR REPLACE FUNCTION carbon_views.departure_years(segments jsonb, departure_year integer)
    RETURNS integer[] LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
        SELECT CASE WHEN jsonb_array_length(segments) = 0 THEN ARRAY[departure_year]
            ELSE ARRAY(SELECT DISTINCT left(s->>'departs_on', 4)::int FROM jsonb_array_elements(segments) s) END
    $$;
    CREATE INDEX IF NOT EXISTS flight_emissions_years ON carbon_views.flight_emissions
        USING gin (carbon_views.departure_years(segments, departure_year));
    -- its other filters, each with the page order (booking_id) after it
    CREATE INDEX IF NOT EXISTS flight_emissions_kind_page ON carbon_views.flight_emissions (traveller_kind, booking_id);
    CREATE INDEX IF NOT EXISTS flight_emissions_action_page ON carbon_views.flight_emissions (action_code, booking_id);
    CREATE INDEX IF NOT EXISTS flight_emissions_status_page ON carbon_views.flight_emissions (status, booking_id);
    """

    async def apply(self, conn: asyncpg.Connection, env: Envelope, event: Event) -> None:
        if isinstance(event, FlightEmissionsCalculated):
            e = event
            await conn.execute(
                """
                INSERT INTO carbon_views.flight_emissions AS f VALUES
                    ($1, $2, $3, 'recorded', $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                     $18, $19, 1, 0)
                ON CONFLICT (booking_id) DO UPDATE SET
                    stream_id = EXCLUDED.stream_id, version = EXCLUDED.version, status = 'recorded',
                    traveller_id = EXCLUDED.traveller_id, traveller_kind = EXCLUDED.traveller_kind,
                    action_code = EXCLUDED.action_code, activity_id = EXCLUDED.activity_id,
                    cabin_class = EXCLUDED.cabin_class, departure_year = EXCLUDED.departure_year,
                    distance_km = EXCLUDED.distance_km, distance_miles = EXCLUDED.distance_miles,
                    kg_co2e = EXCLUDED.kg_co2e, method = EXCLUDED.method, factor_set = EXCLUDED.factor_set,
                    factor_year = EXCLUDED.factor_year, radiative_forcing = EXCLUDED.radiative_forcing,
                    distance_uplift_applied = EXCLUDED.distance_uplift_applied, segments = EXCLUDED.segments,
                    calculated_on = EXCLUDED.calculated_on, calculations = f.calculations + 1
                WHERE f.version < EXCLUDED.version
                """,
                e.booking_id,
                env.stream_id,
                env.stream_version,
                e.traveller_id,
                e.traveller_kind,
                e.action_code,
                e.activity_id,
                e.cabin_class,
                e.departure_year,
                e.distance_km,
                e.distance_miles,
                e.kg_co2e,
                e.method,
                e.factor_set,
                e.factor_year,
                e.radiative_forcing,
                e.distance_uplift_applied,
                [s.model_dump(mode="json") for s in e.segments],
                e.calculated_on,
            )
        elif isinstance(event, FlightEmissionsReversed):
            await conn.execute(
                "UPDATE carbon_views.flight_emissions SET version = $2, status = $3, reversals = reversals + 1 "
                "WHERE booking_id = $1 AND version < $2",
                event.booking_id,
                env.stream_version,
                "cancelled" if event.cause == "cancelled" else "reversed",
            )


class OffsetLotsView(Projection):
    """Every lot of offsets: what was bought, what was retired (and against which year), what is left."""

    name = "carbon_offset_lots"
    service = "carbon"
    topics = (TOPIC,)
    tables = ("carbon_views.offset_lots", "carbon_views.offset_retirements")
    setup_sql = """
    CREATE SCHEMA IF NOT EXISTS carbon_views;
    CREATE TABLE IF NOT EXISTS carbon_views.offset_lots (
        lot_id          text PRIMARY KEY,
        version         integer NOT NULL,
        registry        text NOT NULL,
        project         text NOT NULL,
        vintage_year    integer NOT NULL,
        quantity        bigint NOT NULL,
        retired         bigint NOT NULL,
        remaining       bigint NOT NULL,
        unit_price      numeric NOT NULL,
        total_cost      numeric NOT NULL,
        currency        text NOT NULL,
        purchased_on    date NOT NULL,
        purchase_year   integer NOT NULL
    );
    CREATE TABLE IF NOT EXISTS carbon_views.offset_retirements (
        lot_id          text NOT NULL,
        version         integer NOT NULL,
        quantity        bigint NOT NULL,
        against_year    integer NOT NULL,
        retired_on      date NOT NULL,
        PRIMARY KEY (lot_id, version)
    );
    -- ListOffsetLots' filters (queries.py), each with the page order (lot_id) after it
    CREATE INDEX IF NOT EXISTS offset_lots_year_page ON carbon_views.offset_lots (purchase_year, lot_id);
    CREATE INDEX IF NOT EXISTS offset_lots_registry_page ON carbon_views.offset_lots (registry, lot_id);
    CREATE INDEX IF NOT EXISTS offset_lots_open_page ON carbon_views.offset_lots (lot_id) WHERE remaining > 0;
    """

    async def apply(self, conn: asyncpg.Connection, env: Envelope, event: Event) -> None:
        if isinstance(event, OffsetsPurchased):
            e = event
            await conn.execute(
                "INSERT INTO carbon_views.offset_lots VALUES ($1, $2, $3, $4, $5, $6, 0, $6, $7, $8, $9, $10, $11) "
                "ON CONFLICT (lot_id) DO NOTHING",
                e.lot_id,
                env.stream_version,
                e.registry,
                e.project,
                e.vintage_year,
                e.quantity,
                e.unit_price.amount,
                e.total_cost.amount,
                e.unit_price.currency,
                e.purchased_on,
                e.purchased_on.year,
            )
        elif isinstance(event, OffsetsRetired):
            e2 = event
            inserted = await conn.fetchval(
                "INSERT INTO carbon_views.offset_retirements VALUES ($1, $2, $3, $4, $5) "
                "ON CONFLICT DO NOTHING RETURNING 1",
                e2.lot_id,
                env.stream_version,
                e2.quantity,
                e2.against_year,
                e2.retired_on,
            )
            if inserted:
                await conn.execute(
                    "UPDATE carbon_views.offset_lots SET retired = retired + $2, remaining = remaining - $2, "
                    "version = greatest(version, $3) WHERE lot_id = $1",
                    e2.lot_id,
                    e2.quantity,
                    env.stream_version,
                )


def legs_by_year(event: FlightEmissionsCalculated | FlightEmissionsReversed) -> dict[int, tuple[Decimal, ...]]:
    """A booking's figures split by the year each leg departs (DESIGN.md section 6: a leg counts in the year
    it departs, so a booking out on 29 December and back on 1 January counts in both years): year -> (km,
    miles, kg CO2e). An event without segments (none the service writes) counts whole in its departure_year."""
    if not event.segments:
        return {event.departure_year: (event.distance_km, event.distance_miles, event.kg_co2e)}
    years: dict[int, tuple[Decimal, ...]] = {}
    for leg in event.segments:
        km, miles, kg = years.get(leg.departs_on.year, (Decimal(0), Decimal(0), Decimal(0)))
        years[leg.departs_on.year] = (km + leg.distance_km, miles + leg.distance_miles, kg + leg.kg_co2e)
    return years


class FootprintView(Projection):
    """kg CO2e of flights by year, traveller kind and action (DESIGN.md section 6): each leg counts in the year
    it departs; a calculation adds its figures, a reversal subtracts exactly the same ones. `flights` counts
    the bookings with a leg in the year. For finance (GetFootprint, GetOffsetLedger, the CSV)."""

    name = "carbon_footprint"
    service = "carbon"
    topics = (TOPIC,)
    tables = ("carbon_views.footprint",)
    setup_sql = """
    CREATE SCHEMA IF NOT EXISTS carbon_views;
    CREATE TABLE IF NOT EXISTS carbon_views.footprint (
        year            integer NOT NULL,
        traveller_kind  text NOT NULL,
        action_code     text NOT NULL,
        flights         bigint NOT NULL,
        distance_km     numeric NOT NULL,
        distance_miles  numeric NOT NULL,
        kg_co2e         numeric NOT NULL,
        PRIMARY KEY (year, traveller_kind, action_code)
    );
    """

    async def apply(self, conn: asyncpg.Connection, env: Envelope, event: Event) -> None:
        if isinstance(event, FlightEmissionsCalculated | FlightEmissionsReversed):
            sign = 1 if isinstance(event, FlightEmissionsCalculated) else -1
            await conn.executemany(
                """
                INSERT INTO carbon_views.footprint AS f VALUES ($1, $2, $3, $4, $5, $6, $7)
                ON CONFLICT (year, traveller_kind, action_code) DO UPDATE SET
                    flights = f.flights + EXCLUDED.flights, distance_km = f.distance_km + EXCLUDED.distance_km,
                    distance_miles = f.distance_miles + EXCLUDED.distance_miles,
                    kg_co2e = f.kg_co2e + EXCLUDED.kg_co2e
                """,
                [
                    (year, event.traveller_kind, event.action_code or "", sign, sign * km, sign * miles, sign * kg)
                    for year, (km, miles, kg) in sorted(legs_by_year(event).items())
                ],
            )


class ActionRegions(Projection):
    """Each action's region, from the actions service's ActionOpened: the footprint by region."""

    name = "carbon_action_regions"
    service = "carbon"
    topics = (topic_for("actions"),)
    tables = ("carbon_views.action_regions",)
    setup_sql = """
    CREATE SCHEMA IF NOT EXISTS carbon_views;
    CREATE TABLE IF NOT EXISTS carbon_views.action_regions (
        action_code  text PRIMARY KEY,
        region       text NOT NULL
    );
    """

    async def apply(self, conn: asyncpg.Connection, env: Envelope, event: Event) -> None:
        if isinstance(event, ActionOpened):
            await conn.execute(
                "INSERT INTO carbon_views.action_regions VALUES ($1, $2) ON CONFLICT (action_code) DO NOTHING",
                event.action_code,
                event.region,
            )
