"""Pure parts of the stats read side: shares, growth, air miles per member, areas, the CLI's JSON."""

from __future__ import annotations

from decimal import Decimal

from support import YEAR_JSON_KEYS

from services.kernel import reference
from services.stats import api, cli
from services.stats.queries import YearAtAGlance, area_of, pct, shares


def test_pct_rounds_half_up_to_one_decimal_and_is_zero_of_nothing() -> None:
    assert pct(1, 3) == Decimal("33.3")
    assert pct(2, 3) == Decimal("66.7")
    assert pct(1, 8) == Decimal("12.5")
    assert pct(5, 0) == Decimal("0.0")


def test_shares_list_the_given_keys_first_with_zeros_then_the_others() -> None:
    got = shares({"male": 3, "x": 1}, ("female", "male"))
    assert [(s.key, s.count, s.share_pct) for s in got] == [
        ("female", 0, Decimal("0.0")),
        ("male", 3, Decimal("75.0")),
        ("x", 1, Decimal("25.0")),
    ]


def test_both_african_regions_are_one_area_and_every_region_has_one() -> None:
    african = [r for r, name in reference.regions().items() if name.startswith("Africa")]
    assert len(african) == 2
    assert {area_of(r) for r in african} == {"Africa"}
    others = [r for r in reference.regions() if r not in african]
    assert len({area_of(r) for r in others}) == len(others)
    assert area_of("nowhere") == "nowhere"


def test_year_figures_derived_from_counts() -> None:
    y = YearAtAGlance(2017, expert_pool=591, expert_pool_previous=514)
    assert y.expert_pool_growth_pct == pct(591 - 514, 514)
    assert YearAtAGlance(2017, expert_pool=5).expert_pool_growth_pct is None
    y.team_statute_miles, y.team_members = Decimal("1000.500"), 3
    assert y.air_miles_per_team_member == Decimal(334)  # 333.5 rounds half up
    assert YearAtAGlance(2017, team_statute_miles=Decimal(10)).air_miles_per_team_member == 0
    y.activities_by_region = {r: 1 for r in reference.regions()}
    areas = {s.key: s.count for s in y.activities_by_area}
    assert areas["Africa"] == 2 and sum(areas.values()) == len(reference.regions())


def test_json_numbers_keep_the_decimal_digits() -> None:
    assert cli.number("21536") == 21536
    assert cli.number("15.0") == 15.0
    assert cli.number("1234.567") == 1234.567
    assert cli.number("") is None


def test_year_json_has_the_keys_of_the_issue() -> None:
    y = YearAtAGlance(2017, activities=3, activities_by_region={"africa_west": 2, "asia": 1})
    y.participants_by_gender = shares({"male": 6, "female": 4, "other": 0}, ("male", "female", "other"))
    out = cli.year_json(api.year_pb(y))
    for key in YEAR_JSON_KEYS:
        assert key in out, key
    assert out["activities_by_region"] == {"africa_west": 2, "asia": 1}
    assert out["participants_by_gender"] == {"male": 6, "female": 4, "other": 0}
    assert out["expert_pool_growth_pct"] is None
    table = cli.year_table(api.year_pb(y))
    assert table.title == "MIEUX 2017 at a glance"
