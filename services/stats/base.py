"""The base of the stats projections: their facts tables live in one schema (`stats_views` by default;
tests give each set of projections its own)."""

from __future__ import annotations

from typing import Any

from services.kernel.projection import Projection

SCHEMA = "stats_views"


class StatsProjection(Projection):
    """A stats projection: its tables live in `schema`; `name` is suffixed (and `service`, which
    names its tracking table's schema, is the schema) when the schema is not the default, so tests can run side by
    side."""

    base_name: str
    table_names: tuple[str, ...]
    ddl: str

    service = "stats"

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        cls.name = cls.base_name
        cls.tables = tuple(f"{SCHEMA}.{t}" for t in cls.table_names)

    def __init__(self, schema: str = SCHEMA) -> None:
        self.schema = schema
        if schema != SCHEMA:  # a test's own: its tracking is kept apart from the stats service's, in its own schema
            self.service = schema  # type: ignore[misc]
        self.name = self.base_name if schema == SCHEMA else f"{self.base_name}_{schema}"  # type: ignore[misc]
        self.tables = tuple(f"{schema}.{t}" for t in self.table_names)  # type: ignore[misc]
        self.setup_sql = f"CREATE SCHEMA IF NOT EXISTS {schema};\n" + self.ddl.format(s=schema)  # type: ignore[misc]

    def t(self, table: str) -> str:
        return f"{self.schema}.{table}"
