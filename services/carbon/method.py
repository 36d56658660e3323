"""The carbon method (DESIGN.md section 7): distances between real airports and DESNZ emission factors.

Pure functions over maintained reference data: airports and the geodesic distance on the WGS84 ellipsoid
from the kernel's reference module (`services.kernel.reference`), and the DESNZ 2025 business-travel-air
factors in `data/desnz-2025-business-travel-air.csv` (source named in `data/SOURCE.md`). The method keeps
its own rounding (km to the metre, miles and kg to three decimals, half even). Every figure is a Decimal
and carries the factor id and the note of any cabin fallback, so a result can be checked by hand.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_EVEN, Decimal
from functools import cache
from pathlib import Path

from services.carbon.events import Haul
from services.kernel import reference
from services.kernel.errors import RuleBroken

METHOD = "DESNZ"
FACTOR_SET = "DESNZ 2025 GHG conversion factors, business travel - air"
FACTOR_YEAR = 2025
FACTOR_FILE = Path(__file__).parent / "data" / "desnz-2025-business-travel-air.csv"
SHORT_HAUL_LIMIT_KM = Decimal(3700)  # UK short haul: under 3,700 km; long haul: 3,700 km and over
DISTANCE_UPLIFT = Decimal("1.08")  # the 8% uplift some sources add for indirect routes and circling
UK = "GB"
KM = Decimal("0.001")
KG = Decimal("0.001")

# Short haul has no premium economy or first rows; domestic has only an average row (DESIGN.md section 7).
FALLBACKS: dict[tuple[str, str], str] = {
    ("short_haul_uk", "first"): "business",
    ("short_haul_uk", "premium_economy"): "average",
    ("domestic_uk", "economy"): "average",
    ("domestic_uk", "premium_economy"): "average",
    ("domestic_uk", "business"): "average",
    ("domestic_uk", "first"): "average",
}


@dataclass(frozen=True)
class Factor:
    factor_id: str
    year: int
    haul: str
    cabin_class: str
    radiative_forcing: bool
    kg_co2e_per_pkm: Decimal


@dataclass(frozen=True)
class Airport:
    iata: str
    name: str
    country: str
    lat: float
    lon: float


@dataclass(frozen=True)
class SegmentFigure:
    origin: str
    destination: str
    departs_on: date
    distance_km: Decimal
    distance_miles: Decimal
    haul: Haul
    cabin_class: str  # the cabin booked
    factor_cabin_class: str  # the row used (differs after a fallback)
    factor_id: str
    kg_co2e_per_pkm: Decimal
    kg_co2e: Decimal
    fallback: str | None


@cache
def factors() -> dict[tuple[str, str, bool], Factor]:
    """(haul, cabin, with radiative forcing) -> factor, from the data file."""
    out: dict[tuple[str, str, bool], Factor] = {}
    with FACTOR_FILE.open(newline="") as f:
        for row in csv.DictReader(f):
            factor = Factor(
                factor_id=row["factor_id"],
                year=int(row["year"]),
                haul=row["haul"],
                cabin_class=row["cabin_class"],
                radiative_forcing=row["radiative_forcing"] == "with_rf",
                kg_co2e_per_pkm=Decimal(row["kg_co2e_per_passenger_km"]),
            )
            out[(factor.haul, factor.cabin_class, factor.radiative_forcing)] = factor
    return out


def airport(code: str) -> Airport:
    a = reference.airport(code.upper())
    if a is None:
        raise RuleBroken(f"{code} is not a known IATA airport code")
    return Airport(a["iata"], a["name"], a["country"], float(a["lat"]), float(a["lon"]))


def distance_km(origin: str, destination: str) -> Decimal:
    """Geodesic distance on WGS84 between two airports, in km (to the metre, half even)."""
    for code in (origin, destination):
        airport(code)  # an unknown airport breaks a rule, named
    return reference.geodesic_km(origin.upper(), destination.upper()).quantize(KM, ROUND_HALF_EVEN)


def miles(km: Decimal) -> Decimal:
    """Statute miles (of the km to the metre), to three decimals, half even."""
    return (km / reference.KM_PER_STATUTE_MILE).quantize(KM, ROUND_HALF_EVEN)


def haul_band(origin: str, destination: str, km: Decimal) -> Haul:
    uk_ends = sum(airport(c).country == UK for c in (origin, destination))
    if uk_ends == 2:
        return "domestic_uk"
    if uk_ends == 0:
        return "international_non_uk"
    return "short_haul_uk" if km < SHORT_HAUL_LIMIT_KM else "long_haul_uk"


def factor_for(haul: str, cabin: str, radiative_forcing: bool) -> tuple[Factor, str | None]:
    """The factor for a band and cabin; a cabin the band has no row for falls back, and says so."""
    table = factors()
    if (haul, cabin, radiative_forcing) in table:
        return table[(haul, cabin, radiative_forcing)], None
    used = FALLBACKS.get((haul, cabin))
    if used is None or (haul, used, radiative_forcing) not in table:
        raise RuleBroken(f"the {FACTOR_SET} have no factor for {cabin} on {haul}")
    note = f"{haul} has no {cabin} factor: the {used} factor is used"
    return table[(haul, used, radiative_forcing)], note


def segment_figure(
    origin: str,
    destination: str,
    departs_on: date,
    cabin: str,
    *,
    radiative_forcing: bool = True,
    distance_uplift: bool = False,
) -> SegmentFigure:
    """One flight's distance and emissions. The uplift, when applied, multiplies the distance flown."""
    origin, destination = origin.upper(), destination.upper()
    if origin == destination:
        raise RuleBroken(f"a flight goes somewhere: origin and destination are both {origin}")
    km = distance_km(origin, destination)
    haul = haul_band(origin, destination, km)
    factor, note = factor_for(haul, cabin, radiative_forcing)
    flown = km * DISTANCE_UPLIFT if distance_uplift else km
    kg = (flown * factor.kg_co2e_per_pkm).quantize(KG, ROUND_HALF_EVEN)
    return SegmentFigure(
        origin=origin,
        destination=destination,
        departs_on=departs_on,
        distance_km=km,
        distance_miles=miles(km),
        haul=haul,
        cabin_class=cabin,
        factor_cabin_class=factor.cabin_class,
        factor_id=factor.factor_id,
        kg_co2e_per_pkm=factor.kg_co2e_per_pkm,
        kg_co2e=kg,
        fallback=note,
    )
