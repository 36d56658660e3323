"""Reference data every context shares, each loaded once: the published language of the report (regions,
themes, activity types, expert backgrounds, from `data/reference.yaml` with its source named there),
countries and currencies (pycountry), airports (airportsdata) and the geodesic distance between two
airports (geographiclib, WGS84; DESIGN.md section 7)."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from functools import cache
from pathlib import Path
from typing import Any

import airportsdata
import pycountry
import yaml
from geographiclib.geodesic import Geodesic

KM_PER_STATUTE_MILE = Decimal("1.609344")


@cache
def _data() -> dict[str, Any]:
    return yaml.safe_load((Path(__file__).parent / "data" / "reference.yaml").read_text())


def regions() -> dict[str, str]:
    """region code -> name."""
    return {code: r["name"] for code, r in _data()["regions"].items()}


def region_of(partner: str) -> str | None:
    """The region code of a partner (ISO alpha-2 country code or regional organisation code)."""
    for code, r in _data()["regions"].items():
        if partner in r["partners"]:
            return code
    return None


def themes() -> dict[str, str]:
    return dict(_data()["themes"])


def activity_types() -> dict[str, str]:
    return dict(_data()["activity_types"])


def expert_backgrounds() -> dict[str, str]:
    return dict(_data()["expert_backgrounds"])


def genders() -> tuple[str, ...]:
    return tuple(_data()["genders"])


# --- countries and currencies (pycountry) ------------------------------------------------------------


def country(code: str) -> Any | None:
    """The ISO 3166-1 country of an alpha-2 code, or None."""
    return pycountry.countries.get(alpha_2=code) if len(code) == 2 else None


def country_name(code: str) -> str | None:
    """A country's common name where ISO has one ("Bolivia", not "Bolivia, Plurinational State of")."""
    c = country(code)
    return None if c is None else getattr(c, "common_name", None) or c.name


def country_code(v: str) -> str:
    """`v` as an ISO 3166-1 alpha-2 code in upper case (`be` becomes `BE`), or ValueError."""
    code = v.strip().upper()
    if country(code) is None:
        raise ValueError("not an ISO 3166-1 alpha-2 country code")
    return code


def is_currency(code: str) -> bool:
    return len(code) == 3 and pycountry.currencies.get(alpha_3=code) is not None


# --- airports (airportsdata) and distances (geographiclib) --------------------------------------------


@cache
def airports() -> dict[str, dict[str, Any]]:
    """IATA code -> airport record (airportsdata, a maintained dataset)."""
    return airportsdata.load("IATA")


def airport(code: str) -> dict[str, Any] | None:
    return airports().get(code)


def is_airport(code: str) -> bool:
    return code in airports()


def airport_code(v: str) -> str:
    """`v` as a known IATA airport code in upper case, or ValueError."""
    code = v.strip().upper()
    if len(code) != 3 or code not in airports():
        raise ValueError("not a known IATA airport code")
    return code


def geodesic_km(origin: str, destination: str) -> Decimal:
    """Geodesic distance on WGS84 between two airports, in km, unrounded."""
    a, b = airports()[origin], airports()[destination]
    metres = Geodesic.WGS84.Inverse(a["lat"], a["lon"], b["lat"], b["lon"])["s12"]
    return Decimal(repr(metres)) / 1000


def statute_miles(origin: str, destination: str) -> Decimal:
    """Statute miles between two airports (km / 1.609344), to three decimals."""
    return (geodesic_km(origin, destination) / KM_PER_STATUTE_MILE).quantize(Decimal("0.001"), ROUND_HALF_UP)
