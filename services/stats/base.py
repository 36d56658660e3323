"""The base of the stats projections: facts tables in one schema, and the statute-miles method."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from functools import cache
from typing import Any

import airportsdata
from geographiclib.geodesic import Geodesic

from services.kernel.projection import Projection

SCHEMA = "stats_views"
KM_PER_STATUTE_MILE = Decimal("1.609344")


@cache
def _airports() -> dict[str, dict[str, Any]]:
    return airportsdata.load("IATA")


def statute_miles(origin: str, destination: str) -> Decimal:
    """Geodesic (WGS84) distance between two airports in statute miles, to three decimals (DESIGN.md
    section 7; the same method as the logistics read model, computed here from the event's airports)."""
    a, b = _airports()[origin], _airports()[destination]
    metres = Geodesic.WGS84.Inverse(a["lat"], a["lon"], b["lat"], b["lon"])["s12"]
    km = Decimal(repr(metres)) / 1000
    return (km / KM_PER_STATUTE_MILE).quantize(Decimal("0.001"), ROUND_HALF_UP)


class StatsProjection(Projection):
    """A stats projection: its tables live in `schema`; `name` is suffixed when the schema is not the
    default, so tests can run side by side."""

    base_name: str
    table_names: tuple[str, ...]
    ddl: str

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        cls.name = cls.base_name
        cls.tables = tuple(f"{SCHEMA}.{t}" for t in cls.table_names)

    def __init__(self, schema: str = SCHEMA) -> None:
        self.schema = schema
        self.name = self.base_name if schema == SCHEMA else f"{self.base_name}_{schema}"  # type: ignore[misc]
        self.tables = tuple(f"{schema}.{t}" for t in self.table_names)  # type: ignore[misc]
        self.setup_sql = f"CREATE SCHEMA IF NOT EXISTS {schema};\n" + self.ddl.format(s=schema)  # type: ignore[misc]

    def t(self, table: str) -> str:
        return f"{self.schema}.{table}"
