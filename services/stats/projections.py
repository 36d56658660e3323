"""The stats read side: facts kept from every service's events (one projection per topic, and one for the
results, deliverables and expert origin across the actions and experts topics, whose tables are in
results_facts.py).

Events of different services arrive in any order (and a rebuild reads one service's log after another),
so no projection folds a figure incrementally. Each keeps *facts* keyed by the ids the events carry
(a request, an activity held, a deployment and its cancellation, an itinerary version, a team join ...),
written with `ON CONFLICT` so that applying an event again changes nothing, and the figures are computed
from the facts with SQL at query time (`queries.py`). An expert's profile is the one of the highest
stream version seen; a booking's itinerary is the one of its highest version, unless it was cancelled.

Every projection writes into one schema (`stats_views` by default; tests give each their own), so the
queries can join facts of different services.
"""

from __future__ import annotations

import asyncpg

from services.actions.events import ActionOpened, ActivityCancelled, ActivityHeld, ActivityPlanned
from services.carbon.events import (
    FlightEmissionsCalculated,
    FlightEmissionsReversed,
    OffsetsPurchased,
    OffsetsRetired,
)
from services.experts.events import (
    ExpertDeactivated,
    ExpertDeployed,
    ExpertDeploymentCancelled,
    ExpertEvaluationSubmitted,
    ExpertProfileUpdated,
    ExpertRegistered,
)
from services.kernel import reference
from services.kernel.envelope import Envelope, Event, topic_for
from services.logistics.events import (
    FlightBooked,
    FlightCancelled,
    FlightChanged,
    Segment,
    TeamMemberJoined,
    TeamMemberLeft,
)
from services.requests.events import RequestReceived
from services.stats.base import SCHEMA, StatsProjection
from services.stats.expert_pool import POOL_DDL, pool_moved
from services.stats.results_facts import ResultsFacts

# --- requests ---------------------------------------------------------------------------------------


class StatsRequests(StatsProjection):
    base_name = "stats_requests"
    topics = (topic_for("requests"),)
    table_names = ("requests",)
    ddl = """
    CREATE TABLE IF NOT EXISTS {s}.requests (
        request_id   text PRIMARY KEY,
        partner      text NOT NULL,
        received_on  date NOT NULL
    );
    -- the year query's range on received_on (queries.py), as the other facts' dates below
    CREATE INDEX IF NOT EXISTS requests_received ON {s}.requests (received_on);
    """

    async def apply(self, conn: asyncpg.Connection, env: Envelope, event: Event) -> None:
        if isinstance(event, RequestReceived):
            await conn.execute(
                f"INSERT INTO {self.t('requests')} VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                event.request_id,
                event.partner,
                event.received_on,
            )


# --- actions ----------------------------------------------------------------------------------------


class StatsActions(StatsProjection):
    base_name = "stats_actions"
    topics = (topic_for("actions"),)
    table_names = ("actions", "activities_planned", "activities_held", "activities_cancelled")
    ddl = """
    CREATE TABLE IF NOT EXISTS {s}.actions (
        action_code  text PRIMARY KEY,
        partner      text NOT NULL,
        partner_kind text NOT NULL,
        region       text NOT NULL,
        opened_on    date NOT NULL
    );
    CREATE TABLE IF NOT EXISTS {s}.activities_planned (
        activity_id  text PRIMARY KEY,
        action_code  text NOT NULL,
        partner      text NOT NULL,
        region       text NOT NULL,
        starts_on    date NOT NULL
    );
    CREATE TABLE IF NOT EXISTS {s}.activities_held (
        activity_id   text PRIMARY KEY,
        action_code   text NOT NULL,
        activity_type text NOT NULL,
        starts_on     date NOT NULL,
        ends_on       date NOT NULL,
        country       text NOT NULL,
        partner       text NOT NULL,
        region        text NOT NULL,
        male          integer NOT NULL,
        female        integer NOT NULL,
        other         integer NOT NULL
    );
    -- the year's held activities from the index alone (queries.py), as the deployments and answers below
    DROP INDEX IF EXISTS {s}.activities_held_starts;
    CREATE INDEX IF NOT EXISTS activities_held_year ON {s}.activities_held (starts_on)
        INCLUDE (activity_id, action_code, region, partner, male, female, other);
    CREATE TABLE IF NOT EXISTS {s}.activities_cancelled (
        activity_id  text PRIMARY KEY,
        action_code  text NOT NULL,
        cancelled_on date NOT NULL
    );
    """

    async def apply(self, conn: asyncpg.Connection, env: Envelope, event: Event) -> None:
        match event:
            case ActionOpened():
                await conn.execute(
                    f"INSERT INTO {self.t('actions')} VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                    event.action_code,
                    event.partner,
                    event.partner_kind,
                    event.region,
                    event.opened_on,
                )
            case ActivityPlanned():
                await conn.execute(
                    f"INSERT INTO {self.t('activities_planned')} VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                    event.activity_id,
                    event.action_code,
                    event.partner,
                    event.region,
                    event.starts_on,
                )
            case ActivityHeld():
                await conn.execute(
                    f"INSERT INTO {self.t('activities_held')} VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) "
                    "ON CONFLICT DO NOTHING",
                    event.activity_id,
                    event.action_code,
                    event.activity_type,
                    event.starts_on,
                    event.ends_on,
                    event.country,
                    event.partner,
                    event.region,
                    event.participants_male,
                    event.participants_female,
                    event.participants_other,
                )
            case ActivityCancelled():
                await conn.execute(
                    f"INSERT INTO {self.t('activities_cancelled')} VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                    event.activity_id,
                    event.action_code,
                    event.cancelled_on,
                )


# --- experts ----------------------------------------------------------------------------------------


class StatsExperts(StatsProjection):
    base_name = "stats_experts"
    topics = (topic_for("experts"),)
    table_names = ("experts", "deployments", "deployments_cancelled", "evaluation_answers", "expert_pool_days")
    ddl = (
        """
    CREATE TABLE IF NOT EXISTS {s}.experts (
        expert_id       text PRIMARY KEY,
        profile_version integer NOT NULL,
        gender          text NOT NULL,
        background      text NOT NULL,
        registered_on   date,
        deactivated_on  date
    );
    CREATE TABLE IF NOT EXISTS {s}.deployments (
        deployment_id text PRIMARY KEY,
        expert_id     text NOT NULL,
        action_code   text NOT NULL,
        activity_id   text NOT NULL,
        starts_on     date NOT NULL,
        ends_on       date NOT NULL
    );
    DROP INDEX IF EXISTS {s}.deployments_starts;
    CREATE INDEX IF NOT EXISTS deployments_year ON {s}.deployments (starts_on)
        INCLUDE (deployment_id, expert_id, action_code, activity_id);
    CREATE TABLE IF NOT EXISTS {s}.deployments_cancelled (
        deployment_id text PRIMARY KEY,
        cancelled_on  date NOT NULL
    );
    CREATE TABLE IF NOT EXISTS {s}.evaluation_answers (
        evaluation_id text NOT NULL,
        question      text NOT NULL,
        score         integer NOT NULL,
        deployment_id text NOT NULL,
        submitted_on  date NOT NULL,
        PRIMARY KEY (evaluation_id, question)
    );
    DROP INDEX IF EXISTS {s}.evaluation_answers_submitted;
    CREATE INDEX IF NOT EXISTS evaluation_answers_year ON {s}.evaluation_answers (submitted_on)
        INCLUDE (question, score);
    """
        + POOL_DDL
    )

    async def _pool_dates(self, conn: asyncpg.Connection, expert_id: str) -> asyncpg.Record | None:
        """The dates the expert pool follows (expert_pool.py), before an event moves them."""
        return await conn.fetchrow(
            f"SELECT registered_on, deactivated_on FROM {self.t('experts')} WHERE expert_id = $1", expert_id
        )

    async def _profile(
        self, conn: asyncpg.Connection, expert_id: str, version: int, gender: str, background: str
    ) -> None:
        """The profile of the highest stream version wins, whatever order the versions come in."""
        await conn.execute(
            f"""INSERT INTO {self.t("experts")} (expert_id, profile_version, gender, background)
            VALUES ($1, $2, $3, $4)
            ON CONFLICT (expert_id) DO UPDATE SET profile_version = EXCLUDED.profile_version,
                gender = EXCLUDED.gender, background = EXCLUDED.background
            WHERE experts.profile_version < EXCLUDED.profile_version""",
            expert_id,
            version,
            gender,
            background,
        )

    async def apply(self, conn: asyncpg.Connection, env: Envelope, event: Event) -> None:
        match event:
            case ExpertRegistered():
                before = await self._pool_dates(conn, event.expert_id)
                await self._profile(conn, event.expert_id, env.stream_version, event.gender, event.background)
                after = await conn.fetchrow(
                    f"UPDATE {self.t('experts')} SET registered_on = $2 WHERE expert_id = $1 "
                    "RETURNING registered_on, deactivated_on",
                    event.expert_id,
                    event.registered_on,
                )
                await pool_moved(conn, self.t("expert_pool_days"), before, after)
            case ExpertProfileUpdated():
                await self._profile(conn, event.expert_id, env.stream_version, event.gender, event.background)
            case ExpertDeactivated():
                # no profile known yet: a placeholder of version 0 that any profile replaces
                before = await self._pool_dates(conn, event.expert_id)
                after = await conn.fetchrow(
                    f"""INSERT INTO {self.t("experts")} (expert_id, profile_version, gender, background,
                        deactivated_on) VALUES ($1, 0, '', '', $2)
                    ON CONFLICT (expert_id) DO UPDATE SET deactivated_on = EXCLUDED.deactivated_on
                    RETURNING registered_on, deactivated_on""",
                    event.expert_id,
                    event.deactivated_on,
                )
                await pool_moved(conn, self.t("expert_pool_days"), before, after)
            case ExpertDeployed():
                await conn.execute(
                    f"INSERT INTO {self.t('deployments')} VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                    event.deployment_id,
                    event.expert_id,
                    event.action_code,
                    event.activity_id,
                    event.starts_on,
                    event.ends_on,
                )
            case ExpertDeploymentCancelled():
                await conn.execute(
                    f"INSERT INTO {self.t('deployments_cancelled')} VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    event.deployment_id,
                    event.cancelled_on,
                )
            case ExpertEvaluationSubmitted():
                await conn.executemany(
                    f"INSERT INTO {self.t('evaluation_answers')} VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                    [
                        (event.evaluation_id, a.question, a.score, event.deployment_id, event.submitted_on)
                        for a in event.answers
                    ],
                )


# --- logistics --------------------------------------------------------------------------------------


class StatsLogistics(StatsProjection):
    """Team stints and every version of each booking's itinerary. Each leg keeps its statute miles,
    computed here from the event's airports (`reference.statute_miles`: geodesic on WGS84, to three
    decimals, DESIGN.md section 7; the same method as the logistics read model)."""

    base_name = "stats_logistics"
    topics = (topic_for("logistics"),)
    table_names = ("team_joins", "team_leaves", "itineraries", "itinerary_legs", "bookings_cancelled")
    ddl = """
    CREATE TABLE IF NOT EXISTS {s}.team_joins (
        member_id  text NOT NULL,
        joined_on  date NOT NULL,
        PRIMARY KEY (member_id, joined_on)
    );
    CREATE TABLE IF NOT EXISTS {s}.team_leaves (
        member_id  text NOT NULL,
        left_on    date NOT NULL,
        PRIMARY KEY (member_id, left_on)
    );
    -- every version of a booking's itinerary (booked, then each change): the highest one counts
    CREATE TABLE IF NOT EXISTS {s}.itineraries (
        booking_id     text NOT NULL,
        version        integer NOT NULL,
        traveller_id   text NOT NULL,
        traveller_kind text NOT NULL,
        PRIMARY KEY (booking_id, version)
    );
    CREATE TABLE IF NOT EXISTS {s}.itinerary_legs (
        booking_id     text NOT NULL,
        version        integer NOT NULL,
        leg            integer NOT NULL,
        origin         text NOT NULL,
        destination    text NOT NULL,
        departs_on     date NOT NULL,
        statute_miles  numeric(14, 3) NOT NULL,
        PRIMARY KEY (booking_id, version, leg)
    );
    -- the team's miles of a year: the year's legs from the index alone (by year, an equality a prepared
    -- statement's generic plan estimates from the index's statistics), joined to team members' itineraries
    DROP INDEX IF EXISTS {s}.itinerary_legs_departs;
    CREATE INDEX IF NOT EXISTS itinerary_legs_year ON {s}.itinerary_legs ((extract(year FROM departs_on)::integer))
        INCLUDE (departs_on, booking_id, version, statute_miles);
    CREATE INDEX IF NOT EXISTS itineraries_team ON {s}.itineraries (booking_id, version)
        WHERE traveller_kind = 'team_member';
    CREATE TABLE IF NOT EXISTS {s}.bookings_cancelled (
        booking_id   text PRIMARY KEY,
        cancelled_on date NOT NULL
    );
    """

    async def _itinerary(
        self,
        conn: asyncpg.Connection,
        env: Envelope,
        booking_id: str,
        traveller_id: str,
        traveller_kind: str,
        segments: tuple[Segment, ...],
    ) -> None:
        inserted = await conn.fetchval(
            f"INSERT INTO {self.t('itineraries')} VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING 1",
            booking_id,
            env.stream_version,
            traveller_id,
            traveller_kind,
        )
        if inserted:
            await conn.executemany(
                f"INSERT INTO {self.t('itinerary_legs')} VALUES ($1, $2, $3, $4, $5, $6, $7)",
                [
                    (
                        booking_id,
                        env.stream_version,
                        i,
                        s.origin,
                        s.destination,
                        s.departs_on,
                        reference.statute_miles(s.origin, s.destination),
                    )
                    for i, s in enumerate(segments, start=1)
                ],
            )

    async def apply(self, conn: asyncpg.Connection, env: Envelope, event: Event) -> None:
        match event:
            case TeamMemberJoined():
                await conn.execute(
                    f"INSERT INTO {self.t('team_joins')} VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    event.member_id,
                    event.joined_on,
                )
            case TeamMemberLeft():
                await conn.execute(
                    f"INSERT INTO {self.t('team_leaves')} VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    event.member_id,
                    event.left_on,
                )
            case FlightBooked() | FlightChanged():
                await self._itinerary(
                    conn, env, event.booking_id, event.traveller_id, event.traveller_kind, event.segments
                )
            case FlightCancelled():
                await conn.execute(
                    f"INSERT INTO {self.t('bookings_cancelled')} VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    event.booking_id,
                    event.cancelled_on,
                )


# --- carbon -----------------------------------------------------------------------------------------


class StatsCarbon(StatsProjection):
    base_name = "stats_carbon"
    topics = (topic_for("carbon"),)
    table_names = ("emission_legs", "offsets_purchased", "offsets_retired")
    ddl = """
    -- each leg of a calculation (+1) or reversal (-1) of a booking's emissions, in the year the leg departs
    -- (DESIGN.md section 6): the footprint of a year is their signed sum
    CREATE TABLE IF NOT EXISTS {s}.emission_legs (
        stream_id      text NOT NULL,
        stream_version integer NOT NULL,
        leg            integer NOT NULL,
        booking_id     text NOT NULL,
        sign           integer NOT NULL,
        kg_co2e        numeric(18, 6) NOT NULL,
        departure_year integer NOT NULL,
        traveller_kind text NOT NULL,
        action_code    text,
        PRIMARY KEY (stream_id, stream_version, leg)
    );
    CREATE TABLE IF NOT EXISTS {s}.offsets_purchased (
        lot_id       text PRIMARY KEY,
        quantity     integer NOT NULL,
        purchased_on date NOT NULL,
        registry     text NOT NULL,
        project      text NOT NULL,
        vintage_year integer NOT NULL
    );
    CREATE TABLE IF NOT EXISTS {s}.offsets_retired (
        stream_id      text NOT NULL,
        stream_version integer NOT NULL,
        lot_id         text NOT NULL,
        quantity       integer NOT NULL,
        against_year   integer NOT NULL,
        retired_on     date NOT NULL,
        PRIMARY KEY (stream_id, stream_version)
    );
    -- the footprint of a year: its legs' entries alone hold what the sum needs (an index-only scan)
    CREATE INDEX IF NOT EXISTS emission_legs_year ON {s}.emission_legs (departure_year) INCLUDE (sign, kg_co2e);
    """

    async def apply(self, conn: asyncpg.Connection, env: Envelope, event: Event) -> None:
        match event:
            case FlightEmissionsCalculated() | FlightEmissionsReversed():
                sign = 1 if isinstance(event, FlightEmissionsCalculated) else -1
                # an event without segments (none the carbon service writes) counts whole in its departure year
                legs = [(s.kg_co2e, s.departs_on.year) for s in event.segments] or [
                    (event.kg_co2e, event.departure_year)
                ]
                await conn.executemany(
                    f"INSERT INTO {self.t('emission_legs')} VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) "
                    "ON CONFLICT DO NOTHING",
                    [
                        (
                            env.stream_id,
                            env.stream_version,
                            n,
                            event.booking_id,
                            sign,
                            kg,
                            year,
                            event.traveller_kind,
                            event.action_code,
                        )
                        for n, (kg, year) in enumerate(legs, start=1)
                    ],
                )
            case OffsetsPurchased():
                await conn.execute(
                    f"INSERT INTO {self.t('offsets_purchased')} VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                    event.lot_id,
                    event.quantity,
                    event.purchased_on,
                    event.registry,
                    event.project,
                    event.vintage_year,
                )
            case OffsetsRetired():
                await conn.execute(
                    f"INSERT INTO {self.t('offsets_retired')} VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                    env.stream_id,
                    env.stream_version,
                    event.lot_id,
                    event.quantity,
                    event.against_year,
                    event.retired_on,
                )


class StatsResults(ResultsFacts):
    """The results (feedback, assessments, deliverables, the fiches' themes and GAMM pillars) and the experts'
    nationalities, from the actions and experts topics: tables and apply in results_facts.py."""


def all_projections(schema: str = SCHEMA) -> list[StatsProjection]:
    classes = (StatsRequests, StatsActions, StatsExperts, StatsLogistics, StatsCarbon, StatsResults)
    return [cls(schema) for cls in classes]
