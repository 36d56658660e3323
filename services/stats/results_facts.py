"""The facts of the report's results, deliverables and expert origin (DESIGN.md section 6): the tables and
how events fill them of the projection `stats_results` (declared in projections.py), kept like the other
stats facts: keyed by the ids the events carry, written with `ON CONFLICT`, so any
order of arrival, a redelivery or a rebuild gives the same tables; the figures are SQL at query time
(results.py).

- an action's themes: those its request gave (ActionOpened) and those its fiche names, with its GAMM
  pillars (ActionFicheAgreed); the fiche's win where it names any;
- participants' feedback per held activity, the partner's assessment per action, deliverables;
- each expert's nationality (the profile of the highest stream version, as for gender and background).
"""

from __future__ import annotations

import asyncpg

from services.actions.events import (
    ActionFicheAgreed,
    ActionOpened,
    DeliverableRecorded,
    ParticipantFeedbackRecorded,
    PartnerAssessmentSubmitted,
)
from services.experts.events import ExpertProfileUpdated, ExpertRegistered
from services.kernel.envelope import Envelope, Event, topic_for
from services.stats.base import StatsProjection


class ResultsFacts(StatsProjection):
    base_name = "stats_results"
    topics = (topic_for("actions"), topic_for("experts"))
    table_names = ("action_themes", "feedback", "assessments", "deliverables", "nationalities")
    ddl = """
    CREATE TABLE IF NOT EXISTS {s}.action_themes (
        action_code   text PRIMARY KEY,
        opened_themes text[],            -- the request's (ActionOpened)
        fiche_themes  text[],            -- the fiche's (ActionFicheAgreed), when agreed
        pillars       text[]
    );
    CREATE TABLE IF NOT EXISTS {s}.feedback (
        activity_id        text PRIMARY KEY,
        action_code        text NOT NULL,
        activity_starts_on date NOT NULL,
        partner            text NOT NULL,
        region             text NOT NULL,
        respondents        integer NOT NULL,
        skills_enhanced    integer NOT NULL,
        makes_a_difference integer NOT NULL,
        recorded_on        date NOT NULL
    );
    CREATE TABLE IF NOT EXISTS {s}.assessments (
        action_code  text PRIMARY KEY,
        partner      text NOT NULL,
        region       text NOT NULL,
        rating       text NOT NULL,
        submitted_on date NOT NULL
    );
    CREATE TABLE IF NOT EXISTS {s}.deliverables (
        deliverable_id text PRIMARY KEY,
        action_code    text NOT NULL,
        kind           text NOT NULL,
        title          text NOT NULL,
        delivered_on   date NOT NULL,
        partner        text NOT NULL,
        region         text NOT NULL
    );
    CREATE TABLE IF NOT EXISTS {s}.nationalities (
        expert_id       text PRIMARY KEY,
        profile_version integer NOT NULL,
        nationality     text NOT NULL
    );
    """

    async def apply(self, conn: asyncpg.Connection, env: Envelope, event: Event) -> None:
        match event:
            case ActionOpened():
                await conn.execute(
                    f"""INSERT INTO {self.t("action_themes")} (action_code, opened_themes) VALUES ($1, $2)
                    ON CONFLICT (action_code) DO UPDATE SET opened_themes = EXCLUDED.opened_themes""",
                    event.action_code,
                    list(event.themes),
                )
            case ActionFicheAgreed():
                await conn.execute(
                    f"""INSERT INTO {self.t("action_themes")} (action_code, fiche_themes, pillars) VALUES ($1, $2, $3)
                    ON CONFLICT (action_code) DO UPDATE SET fiche_themes = EXCLUDED.fiche_themes,
                        pillars = EXCLUDED.pillars""",
                    event.action_code,
                    list(event.themes),
                    list(event.pillars),
                )
            case ParticipantFeedbackRecorded():
                await conn.execute(
                    f"INSERT INTO {self.t('feedback')} VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) "
                    "ON CONFLICT DO NOTHING",
                    event.activity_id,
                    event.action_code,
                    event.activity_starts_on,
                    event.partner,
                    event.region,
                    event.respondents,
                    event.skills_enhanced,
                    event.makes_a_difference,
                    event.recorded_on,
                )
            case PartnerAssessmentSubmitted():
                await conn.execute(
                    f"INSERT INTO {self.t('assessments')} VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                    event.action_code,
                    event.partner,
                    event.region,
                    event.rating,
                    event.submitted_on,
                )
            case DeliverableRecorded():
                await conn.execute(
                    f"INSERT INTO {self.t('deliverables')} VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
                    event.deliverable_id,
                    event.action_code,
                    event.kind,
                    event.title,
                    event.delivered_on,
                    event.partner,
                    event.region,
                )
            case ExpertRegistered() | ExpertProfileUpdated():
                # the profile of the highest stream version wins, whatever order the versions come in
                await conn.execute(
                    f"""INSERT INTO {self.t("nationalities")} VALUES ($1, $2, $3)
                    ON CONFLICT (expert_id) DO UPDATE SET profile_version = EXCLUDED.profile_version,
                        nationality = EXCLUDED.nationality
                    WHERE nationalities.profile_version < EXCLUDED.profile_version""",
                    event.expert_id,
                    env.stream_version,
                    event.nationality,
                )
