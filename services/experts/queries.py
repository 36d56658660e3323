"""The queries of the experts service: their input models and the SELECTs over the roster (projections.py).

GetExpert reads the expert's stream (handlers.get_expert), consistent with every acknowledged command;
ListExperts and ListDeployments read the read model. Paging is keyset paging on an immutable order
(registration date, id; start date, id), so a page never repeats or skips a row when rows change
meanwhile (offset paging can); the page token is that key, opaque to clients. Page sizes are the
kernel's (paging.DEFAULT_PAGE_SIZE, paging.MAX_PAGE_SIZE).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Annotated, Any, Literal

import asyncpg
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from services.experts.commands import ExpertId, canonical_background, canonical_gender, canonical_themes
from services.kernel import paging, reference
from services.kernel.db import Pool


def _unless_empty(check: Callable[[str], str]) -> AfterValidator:
    """A filter: empty means "any"; anything else must be a value `check` accepts."""
    return AfterValidator(lambda v: v and check(v))


class GetExpertQuery(BaseModel):
    model_config = ConfigDict(frozen=True)
    expert_id: ExpertId


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
    nationality: Annotated[str, _unless_empty(reference.country_code)] = ""
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


class ExpertsQueries:
    """ListExperts and ListDeployments over `experts_views` (the Roster projection's tables)."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def list_experts(self, q: ListExpertsQuery) -> tuple[list[asyncpg.Record], str]:
        where: list[str] = ["true"]
        args: list[Any] = []

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
            where.append(f"themes @> {arg([q.theme])}::text[]")  # GIN-served; = ANY() is not
        if q.active is not None:
            where.append("deactivated_on IS NULL" if q.active else "deactivated_on IS NOT NULL")
        after = paging.key_after(q.page_token, date, str)
        if after:
            where.append(f"(registered_on, expert_id) > ({arg(after[0])}::date, {arg(after[1])})")
        rows = await self.pool.fetch(
            f"SELECT * FROM experts_views.experts WHERE {' AND '.join(where)} "
            f"ORDER BY registered_on, expert_id LIMIT {arg(q.size + 1)}",
            *args,
        )
        return paging.next_page(rows, q.size, lambda r: [r["registered_on"], r["expert_id"]])

    async def list_deployments(self, q: ListDeploymentsQuery) -> tuple[list[asyncpg.Record], str]:
        where: list[str] = ["true"]
        args: list[Any] = []

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
        rows = await self.pool.fetch(
            f"SELECT * FROM experts_views.deployments WHERE {' AND '.join(where)} "
            f"ORDER BY starts_on, deployment_id LIMIT {arg(q.size + 1)}",
            *args,
        )
        return paging.next_page(rows, q.size, lambda r: [r["starts_on"], r["deployment_id"]])
