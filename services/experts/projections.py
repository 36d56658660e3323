"""Read models of the experts service (fed from `mieux.experts.events`) and the queries over them.

`experts_views.experts`: one row per expert (profile, active or not). `experts_views.deployments`: one
row per deployment (deployed or cancelled, evaluated or not). Paging is keyset paging on an immutable
order (registration date, id; start date, id), so a page never repeats or skips a row when rows change
meanwhile (offset paging can); the page token is that key, opaque to clients. Page sizes are the
kernel's (paging.DEFAULT_PAGE_SIZE, paging.MAX_PAGE_SIZE).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Annotated, Any, Literal

import asyncpg
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from services.experts.domain import (
    canonical_background,
    canonical_gender,
    canonical_nationality,
    canonical_themes,
)
from services.experts.events import (
    ExpertDeactivated,
    ExpertDeployed,
    ExpertDeploymentCancelled,
    ExpertEvaluationSubmitted,
    ExpertProfileUpdated,
    ExpertRegistered,
)
from services.kernel import paging
from services.kernel.db import Pool
from services.kernel.envelope import Envelope, Event, topic_for
from services.kernel.projection import Projection


def _unless_empty(check: Callable[[str], str]) -> AfterValidator:
    """A filter: empty means "any"; anything else must be a value `check` accepts."""
    return AfterValidator(lambda v: v and check(v))


class Page(BaseModel):
    model_config = ConfigDict(frozen=True, str_strip_whitespace=True)
    page_size: int = Field(default=0, ge=0, le=paging.MAX_PAGE_SIZE)
    page_token: str = ""

    @property
    def size(self) -> int:
        return paging.page_size(self.page_size)


class ListExpertsQuery(Page):
    background: Annotated[str, _unless_empty(canonical_background)] = ""
    gender: Annotated[str, _unless_empty(canonical_gender)] = ""
    active: bool | None = None
    nationality: Annotated[str, _unless_empty(canonical_nationality)] = ""
    theme: Annotated[str, _unless_empty(lambda v: canonical_themes((v,))[0])] = ""


class ListDeploymentsQuery(Page):
    year: int = Field(default=0, ge=0, le=9999)
    action_code: str = Field(default="", pattern=r"^(\d{4}-\d{2,})?$")
    expert_id: str = ""
    status: Literal["", "deployed", "cancelled"] = ""

    @field_validator("year")
    @classmethod
    def plausible_year(cls, v: int) -> int:
        if v and not 1900 <= v <= 2200:
            raise ValueError("a year between 1900 and 2200, or 0 for every year")
        return v


class Roster(Projection):
    """Experts and their deployments, for ListExperts and ListDeployments."""

    name = "experts_roster"
    topics = (topic_for("experts"),)
    tables = ("experts_views.experts", "experts_views.deployments")
    setup_sql = """
    CREATE SCHEMA IF NOT EXISTS experts_views;
    CREATE TABLE IF NOT EXISTS experts_views.experts (
        expert_id       text PRIMARY KEY,
        name            text NOT NULL,
        gender          text NOT NULL,
        background      text NOT NULL,
        nationality     text NOT NULL,
        themes          text[] NOT NULL,
        registered_on   date NOT NULL,
        deactivated_on  date
    );
    CREATE INDEX IF NOT EXISTS experts_page ON experts_views.experts (registered_on, expert_id);
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
    CREATE INDEX IF NOT EXISTS deployments_expert ON experts_views.deployments (expert_id);
    CREATE INDEX IF NOT EXISTS deployments_action ON experts_views.deployments (action_code);
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

    async def list_experts(self, pool: Pool, q: ListExpertsQuery) -> tuple[list[asyncpg.Record], str]:
        where, args = ["true"], []

        def arg(v: Any) -> str:
            args.append(v)
            return f"${len(args)}"

        if q.background:
            where.append(f"background = {arg(q.background)}")
        if q.gender:
            where.append(f"gender = {arg(q.gender)}")
        if q.nationality:
            where.append(f"nationality = {arg(q.nationality)}")
        if q.theme:
            where.append(f"{arg(q.theme)} = ANY(themes)")
        if q.active is not None:
            where.append("deactivated_on IS NULL" if q.active else "deactivated_on IS NOT NULL")
        after = paging.key_after(q.page_token, date, str)
        if after:
            where.append(f"(registered_on, expert_id) > ({arg(after[0])}::date, {arg(after[1])})")
        rows = await pool.fetch(
            f"SELECT * FROM experts_views.experts WHERE {' AND '.join(where)} "
            f"ORDER BY registered_on, expert_id LIMIT {arg(q.size + 1)}",
            *args,
        )
        return paging.next_page(rows, q.size, lambda r: [r["registered_on"], r["expert_id"]])

    async def list_deployments(self, pool: Pool, q: ListDeploymentsQuery) -> tuple[list[asyncpg.Record], str]:
        where, args = ["true"], []

        def arg(v: Any) -> str:
            args.append(v)
            return f"${len(args)}"

        if q.year:
            where.append(f"starts_on >= {arg(date(q.year, 1, 1))} AND starts_on < {arg(date(q.year + 1, 1, 1))}")
        if q.action_code:
            where.append(f"action_code = {arg(q.action_code)}")
        if q.expert_id:
            where.append(f"expert_id = {arg(q.expert_id)}")
        if q.status:
            where.append("cancelled_on IS NULL" if q.status == "deployed" else "cancelled_on IS NOT NULL")
        after = paging.key_after(q.page_token, date, str)
        if after:
            where.append(f"(starts_on, deployment_id) > ({arg(after[0])}::date, {arg(after[1])})")
        rows = await pool.fetch(
            f"SELECT * FROM experts_views.deployments WHERE {' AND '.join(where)} "
            f"ORDER BY starts_on, deployment_id LIMIT {arg(q.size + 1)}",
            *args,
        )
        return paging.next_page(rows, q.size, lambda r: [r["starts_on"], r["deployment_id"]])
