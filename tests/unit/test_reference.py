"""The shared reference data: distances pinned to the values the product computed before they moved into
the kernel (logistics, stats and carbon at fb6d12d), so that a
change of method or of the airport data shows here before it moves a figure."""

from __future__ import annotations

from decimal import Decimal

from services.carbon.method import distance_km, miles
from services.kernel import reference


def test_statute_miles_between_airports_are_pinned() -> None:
    assert reference.statute_miles("BRU", "SJO") == Decimal("5624.968")
    assert reference.statute_miles("BRU", "NBO") == Decimal("4057.032")
    assert reference.statute_miles("LHR", "NBO") == Decimal("4242.468")


def test_the_carbon_method_rounds_its_own_way() -> None:
    """Carbon rounds km to the metre (half even) before miles; the air-miles figures round the unrounded km
    (half up). They may differ by 0.001 mile on a route: both are stated methods."""
    km = distance_km("LHR", "NBO")
    assert km == Decimal("6827.590")
    assert miles(km) == Decimal("4242.468")


def test_countries_and_airports() -> None:
    assert reference.country_code(" be ") == "BE"
    assert reference.country_name("BO") == "Bolivia"
    assert reference.airport_code("nbo") == "NBO" and reference.is_airport("NBO") and not reference.is_airport("XXX")
    assert reference.is_currency("EUR") and not reference.is_currency("EURO")
