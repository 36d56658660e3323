"""Where the kernel keeps each service's own tables: the one place naming them (DESIGN.md section 11).

Every service has a database role limited to its own schemas (deploy/postgres/init-roles.sh, CloudNativePG,
and the dev stack), so nothing the kernel keeps is shared between services: a service's projections track
what they applied in `<service>_projections` and park what they cannot apply in `<service>_parking`,
beside its event store `<service>` and its read models (`<service>_views` by convention). A service creates
them at start (`CREATE ... IF NOT EXISTS`), so its role owns them; ops read every service's.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import asyncpg


@dataclass(frozen=True)
class KernelTables:
    """The schema-qualified names of the kernel's tables of one service."""

    service: str

    @property
    def projections_schema(self) -> str:
        return f"{self.service}_projections"

    @property
    def tracking(self) -> str:
        """(projection, event_id) of every event a projection of the service applied."""
        return f"{self.projections_schema}.tracking"

    @property
    def needs_rebuild(self) -> str:
        """The service's projections that joined their group late (runner.flag_joined_late)."""
        return f"{self.projections_schema}.needs_rebuild"

    @property
    def parking_schema(self) -> str:
        return f"{self.service}_parking"

    @property
    def parked(self) -> str:
        return f"{self.parking_schema}.parked"

    @property
    def requests(self) -> str:
        """Ops' requests to retry or drop parked events of the service's consumer groups."""
        return f"{self.parking_schema}.requests"


@functools.cache
def kernel_tables(service: str) -> KernelTables:
    return KernelTables(service)


def service_schemas(service: str) -> tuple[str, ...]:
    """The schemas a service of the catalogue creates and owns: its event store (and its people's keys,
    personal.py), its read models, and the kernel's tables above."""
    k = kernel_tables(service)
    return (service, f"{service}_views", k.projections_schema, k.parking_schema)


# --- for ops (the CLI), who read every service's tables ------------------------------------------------

_WITH_TABLE = (
    "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE c.relname = $1 AND c.relkind IN ('r', 'p') AND n.nspname LIKE $2 ORDER BY 1"
)


async def services_with(conn: asyncpg.Connection, table: str) -> list[KernelTables]:
    """The services (and tests' own) whose kernel schema holds `table` (`tracking`, `needs_rebuild`: the
    projections schema; `parked`, `requests`: the parking schema)."""
    suffix = "_projections" if table in ("tracking", "needs_rebuild") else "_parking"
    rows = await conn.fetch(_WITH_TABLE, table, f"%\\{suffix}")
    return [kernel_tables(r["nspname"].removesuffix(suffix)) for r in rows]
