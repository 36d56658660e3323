"""Where an expert comes from: the UN M49 region of their nationality, from the maintained package
`country-converter` (its `UNregion` classification: the M49 sub-regions, "Western Europe", "Western Asia" ...),
from the data the package ships (nothing is fetched at run time), once per nationality.

Europe is M49's Europe: its four sub-regions (Northern, Western, Eastern and Southern Europe). So Norway,
Moldova and the Russian Federation are in Europe; Cyprus, Turkey, Armenia, Georgia and Azerbaijan are in
Western Asia.
"""

from __future__ import annotations

import logging
from functools import cache
from typing import Any

EUROPE = "europe"
OUTSIDE = "outside_europe"


@cache
def _converter() -> Any:
    logging.getLogger("country_converter").setLevel(logging.ERROR)  # it logs each code it does not know
    import country_converter

    return country_converter.CountryConverter()


@cache
def un_sub_region(nationality: str) -> str:
    """The M49 sub-region of a nationality (ISO 3166-1 alpha-2), "" when the package knows none."""
    code = nationality.upper()
    region = _converter().convert(code, src="ISO2", to="UNregion", not_found=None)
    return region if isinstance(region, str) and region != code else ""  # not found: the code given back


def origin(nationality: str) -> str:
    """`europe` when the nationality is in M49's Europe, else `outside_europe`."""
    return EUROPE if un_sub_region(nationality).endswith("Europe") else OUTSIDE
