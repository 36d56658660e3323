"""Read models of the experts service, fed from `mieux.experts.events` (the queries over them: queries.py).

`experts_views.experts`: one row per expert (profile, active or not). `experts_views.deployments`: one
row per deployment (deployed or cancelled, evaluated or not). Both are indexed for the keyset paging of
the queries (registration date, id; start date, id).

The name column holds the name as the event holds it, sealed with the expert's key: the queries open it
(queries.py, api.py), the projection never does. ExpertForgotten redacts it (an empty name and the date the
expert was forgotten), so a rebuild gives the same rows; a query shows a placeholder.
"""

from __future__ import annotations

import asyncpg

from services.experts.events import (
    ExpertDeactivated,
    ExpertDeployed,
    ExpertDeploymentCancelled,
    ExpertEvaluationSubmitted,
    ExpertForgotten,
    ExpertProfileUpdated,
    ExpertRegistered,
)
from services.kernel.envelope import Envelope, Event, topic_for
from services.kernel.projection import Projection


class Roster(Projection):
    """Experts and their deployments, for ListExperts and ListDeployments."""

    name = "experts_roster"
    service = "experts"
    topics = (topic_for("experts"),)
    tables = ("experts_views.experts", "experts_views.deployments")
    setup_sql = """
    CREATE SCHEMA IF NOT EXISTS experts_views;
    CREATE TABLE IF NOT EXISTS experts_views.experts (
        expert_id       text PRIMARY KEY,
        name            text NOT NULL,  -- sealed (services.kernel.personal); '' once forgotten
        gender          text NOT NULL,
        background      text NOT NULL,
        nationality     text NOT NULL,
        themes          text[] NOT NULL,
        registered_on   date NOT NULL,
        deactivated_on  date
    );
    ALTER TABLE experts_views.experts ADD COLUMN IF NOT EXISTS forgotten_on date;
    CREATE INDEX IF NOT EXISTS experts_page ON experts_views.experts (registered_on, expert_id);
    -- ListExperts' filters (queries.py): each equality filter with the page order after it, themes by GIN,
    -- the inactive (the few) by a partial index; active ones page along experts_page
    CREATE INDEX IF NOT EXISTS experts_background_page ON experts_views.experts (background, registered_on, expert_id);
    CREATE INDEX IF NOT EXISTS experts_gender_page ON experts_views.experts (gender, registered_on, expert_id);
    CREATE INDEX IF NOT EXISTS experts_nationality_page ON experts_views.experts
        (nationality, registered_on, expert_id);
    CREATE INDEX IF NOT EXISTS experts_themes ON experts_views.experts USING gin (themes);
    CREATE INDEX IF NOT EXISTS experts_inactive_page ON experts_views.experts (registered_on, expert_id)
        WHERE deactivated_on IS NOT NULL;
    CREATE TABLE IF NOT EXISTS experts_views.deployments (
        deployment_id   text PRIMARY KEY,
        expert_id       text NOT NULL,
        action_code     text NOT NULL,
        activity_id     text NOT NULL,
        starts_on       date NOT NULL,
        ends_on         date NOT NULL,
        cancelled_on    date,
        evaluated       boolean NOT NULL DEFAULT false
    );
    CREATE INDEX IF NOT EXISTS deployments_page ON experts_views.deployments (starts_on, deployment_id);
    -- ListDeployments' filters (queries.py) with the page order after them; the year is a range on starts_on
    DROP INDEX IF EXISTS experts_views.deployments_expert;
    DROP INDEX IF EXISTS experts_views.deployments_action;
    CREATE INDEX IF NOT EXISTS deployments_expert_page ON experts_views.deployments
        (expert_id, starts_on, deployment_id);
    CREATE INDEX IF NOT EXISTS deployments_action_page ON experts_views.deployments
        (action_code, starts_on, deployment_id);
    CREATE INDEX IF NOT EXISTS deployments_cancelled_page ON experts_views.deployments (starts_on, deployment_id)
        WHERE cancelled_on IS NOT NULL;
    """

    async def apply(self, conn: asyncpg.Connection, env: Envelope, e: Event) -> None:
        match e:
            case ExpertRegistered():
                await conn.execute(
                    "INSERT INTO experts_views.experts (expert_id, name, gender, background, nationality, themes, "
                    "registered_on) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (expert_id) DO NOTHING",
                    e.expert_id,
                    e.name,
                    e.gender,
                    e.background,
                    e.nationality,
                    list(e.themes),
                    e.registered_on,
                )
            case ExpertProfileUpdated():
                await conn.execute(
                    "UPDATE experts_views.experts SET name = $2, gender = $3, background = $4, nationality = $5, "
                    "themes = $6 WHERE expert_id = $1",
                    e.expert_id,
                    e.name,
                    e.gender,
                    e.background,
                    e.nationality,
                    list(e.themes),
                )
            case ExpertDeactivated():
                await conn.execute(
                    "UPDATE experts_views.experts SET deactivated_on = $2 WHERE expert_id = $1",
                    e.expert_id,
                    e.deactivated_on,
                )
            case ExpertForgotten():
                await conn.execute(
                    "UPDATE experts_views.experts SET name = '', forgotten_on = $2 WHERE expert_id = $1",
                    e.expert_id,
                    e.forgotten_on,
                )
            case ExpertDeployed():
                await conn.execute(
                    "INSERT INTO experts_views.deployments (deployment_id, expert_id, action_code, activity_id, "
                    "starts_on, ends_on) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (deployment_id) DO NOTHING",
                    e.deployment_id,
                    e.expert_id,
                    e.action_code,
                    e.activity_id,
                    e.starts_on,
                    e.ends_on,
                )
            case ExpertDeploymentCancelled():
                await conn.execute(
                    "UPDATE experts_views.deployments SET cancelled_on = $2 WHERE deployment_id = $1",
                    e.deployment_id,
                    e.cancelled_on,
                )
            case ExpertEvaluationSubmitted():
                await conn.execute(
                    "UPDATE experts_views.deployments SET evaluated = true WHERE deployment_id = $1", e.deployment_id
                )
