"""Expert origin by UN M49 region (services/stats/origin.py, from the country-converter package)."""

from __future__ import annotations

import pytest

from services.stats.origin import EUROPE, OUTSIDE, origin, un_sub_region


@pytest.mark.parametrize(
    ("nationality", "where"),
    [
        ("BE", EUROPE),
        ("GB", EUROPE),  # a code the package matches by pattern (GB or UK)
        ("NO", EUROPE),
        ("MD", EUROPE),
        ("RU", EUROPE),
        ("ua", EUROPE),
        ("AM", OUTSIDE),  # Western Asia in M49, though a member of the Council of Europe
        ("CY", OUTSIDE),  # Western Asia too, though in the EU
        ("TR", OUTSIDE),
        ("SN", OUTSIDE),
        ("CR", OUTSIDE),
    ],
)
def test_europe_is_m49s_europe(nationality: str, where: str) -> None:
    assert origin(nationality) == where


def test_sub_regions_and_unknown_codes() -> None:
    assert (un_sub_region("PT"), un_sub_region("AM"), un_sub_region("TH")) == (
        "Southern Europe",
        "Western Asia",
        "South-eastern Asia",
    )
    assert un_sub_region("XX") == "" and origin("XX") == OUTSIDE
