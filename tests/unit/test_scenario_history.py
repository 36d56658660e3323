"""scenarios/history-2009-2016.yaml, replayed after scenarios/2017.yaml: it parses, the two files together are
consistent with the services' rules, and the report's figures of the years before 2017 (the file's `report:`)
come out of their entries with DESIGN.md section 6's definitions. These tests check the DATA; the figures the
running system gives are the stats tests' and the demo's."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest

from services.actions.domain import MAX_ACTIVITIES, title_for
from services.actions.events import GAMM_PILLARS
from services.kernel import reference
from services.kernel.reference import is_airport
from services.ops.scenario import ActionEntry, ActivityEntry, Scenario, load
from services.requests.domain import assess, partner_of

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"
END_2017 = date(2017, 12, 31)


@pytest.fixture(scope="module")
def history() -> Scenario:
    return load(SCENARIOS / "history-2009-2016.yaml")


@pytest.fixture(scope="module")
def both(history: Scenario) -> list[Scenario]:
    """The 2017 file, then the history, in the order they are replayed."""
    assert history.follows == "2017.yaml"
    return [load(SCENARIOS / history.follows), history]


def actions_of(both: list[Scenario]) -> list[ActionEntry]:
    return [a for sc in both for a in sc.actions]


def held(both: list[Scenario]) -> list[tuple[str, str, ActivityEntry]]:
    """(action code, partner, activity) of every activity held, in both files."""
    return [(a.code, a.partner, x) for a in actions_of(both) for x in a.activities if x.held is not None]


def held_per_year(both: list[Scenario], region: str | None = None) -> Counter[int]:
    return Counter(x.starts_on.year for _, p, x in held(both) if region is None or reference.region_of(p) == region)


def change_pct(now: int, before: int) -> Decimal:
    return (Decimal(now - before) * 100 / before).quantize(Decimal("0.1"), ROUND_HALF_UP)


# --- consistency of the two files together ---------------------------------------------------------------


def test_keys_codes_and_activities_are_unique_across_both_files(both: list[Scenario]) -> None:
    keys = [r.key for sc in both for r in sc.requests]
    assert len(keys) == len(set(keys))
    codes = [a.code for a in actions_of(both)]
    assert len(codes) == len(set(codes)), "an action is detailed in one file only"
    deployments = [d.key for sc in both for d in sc.deployments]
    assert len(deployments) == len(set(deployments))


def test_action_codes_follow_the_order_of_approval_within_each_year_across_both_files(both: list[Scenario]) -> None:
    """The history's approvals are replayed after the 2017 file's; within each year they are dated after them,
    so every year's codes are still given in the order of approval."""
    by_year: dict[int, list[tuple[date, str]]] = defaultdict(list)
    for sc in both:
        for r in sc.approvals():
            assert r.action is not None and r.decided_on is not None and int(r.action[:4]) == r.decided_on.year
            by_year[r.decided_on.year].append((r.decided_on, r.action))
    for year, approvals in by_year.items():
        assert [c for _, c in approvals] == [f"{year}-{n:02d}" for n in range(1, len(approvals) + 1)], year
        assert [d for d, _ in approvals] == sorted(d for d, _ in approvals), year


def test_new_requests_are_eligible_partners_with_their_first_action(history: Scenario, both: list[Scenario]) -> None:
    earlier = {r.partner for r in both[0].approvals()}
    for r in history.requests:
        kind = partner_of(r.partner)
        assert kind is not None and reference.region_of(r.partner) is not None, r.key
        assert not assess(r.partner, kind[0], r.institution_type, r.received_on)[1], r.key
        assert r.partner not in earlier and r.follow_up == 1, r.key
        assert r.received_on <= r.assessed_on <= r.decided_on, r.key  # type: ignore[operator]
        assert r.decided_on is not None and r.decided_on.year <= 2015, r.key


def test_the_historys_actions_follow_the_rules(history: Scenario, both: list[Scenario]) -> None:
    approved = {r.action: r for sc in both for r in sc.approvals()}
    for a in history.actions:
        r = approved[a.code]
        assert r.partner == a.partner and r.follow_up == a.follow_up, a.code
        assert a.report_name.endswith(title_for("", a.follow_up)), a.code  # "Ghana II": the follow-up's numeral
        assert a.fiche is not None and r.decided_on is not None and a.fiche.agreed_on > r.decided_on, a.code
        assert a.fiche.pillars and set(a.fiche.pillars) <= set(GAMM_PILLARS), a.code
        assert [x.n for x in a.activities] == list(range(1, len(a.activities) + 1)), a.code
        assert 1 <= len(a.activities) <= MAX_ACTIVITIES, a.code
        starts = [x.starts_on for x in a.activities]
        assert starts == sorted(starts) and starts[0] > a.fiche.agreed_on and starts[-1].year <= 2016, a.code
        for x in a.activities:
            assert x.held is not None and x.type in reference.activity_types(), (a.code, x.n)
            assert x.city and is_airport(x.airport) and x.ends_on >= x.starts_on, (a.code, x.n)
        assert a.closed_on is not None and a.closed_on > a.activities[-1].ends_on, a.code
        for d in a.deliverables:
            assert a.activities[0].starts_on <= d.delivered_on <= a.closed_on, a.code


def test_the_historys_missions_are_of_the_2017_roster_without_overlap(both: list[Scenario]) -> None:
    experts = {e.key: e for e in both[0].experts}
    acts = {f"{a.code}/A{x.n}": x for a in actions_of(both) for x in a.activities}
    spans: dict[str, list[tuple[date, date]]] = defaultdict(list)
    for sc in both:
        for d in sc.deployments:
            x = acts[d.activity]
            assert d.expert in experts and experts[d.expert].registered_on < x.starts_on, d.key
            assert experts[d.expert].deactivated_on is None or d.cancelled is not None, d.key
            if d.cancelled is None and x.cancelled is None:
                for s, e in spans[d.expert]:
                    assert x.ends_on < s or x.starts_on > e, f"{d.key} overlaps another deployment"
                spans[d.expert].append((x.starts_on, x.ends_on))


# --- the report's figures ----------------------------------------------------------------------------------


def test_four_activities_in_2009_and_2017_sixteen_percent_up_on_2016(both: list[Scenario], history: Scenario) -> None:
    per_year = held_per_year(both)
    assert per_year[2009] == history.report["activities_2009"] == 4
    assert min(per_year) == 2009
    assert round(change_pct(per_year[2017], per_year[2016])) == history.report["activities_change_2017_on_2016_pct"]
    assert (per_year[2016], per_year[2017]) == (55, 64)
    assert per_year[2017] == max(per_year.values())  # "the highest number of activities since MIEUX was launched"


def test_latin_america_and_the_caribbean_21_against_6_is_250_percent(both: list[Scenario], history: Scenario) -> None:
    lac = held_per_year(both, "lac")
    assert (lac[2016], lac[2017]) == (
        history.report["lac_activities_2016_printed"],
        history.report["lac_activities_2017"],
    )
    assert change_pct(lac[2017], lac[2016]) == Decimal("250.0")  # the report prints +280%
    assert history.report["lac_change_2017_on_2016_pct_printed"] == 280
    assert lac[2017] == max(lac.values())  # "the highest number since we began working in the region"


def test_almost_400_experts_engaged_since_2009(both: list[Scenario]) -> None:
    acts = {f"{a.code}/A{x.n}": x for a in actions_of(both) for x in a.activities}
    engaged = {
        d.expert
        for sc in both
        for d in sc.deployments
        if d.cancelled is None and acts[d.activity].cancelled is None and acts[d.activity].starts_on <= END_2017
    }
    assert len(engaged) == 396  # "almost 400"


def test_122_countries_worked_with_since_2009(both: list[Scenario], history: Scenario) -> None:
    served = {p for _, p, x in held(both) if x.cancelled is None and x.starts_on <= END_2017}
    assert len(served) == history.report["countries_worked_with_since_2009"]
    assert {"ECOWAS", "IberRed"} <= served  # partners are countries and regional organisations


def test_14_strategies_supported_since_2009(both: list[Scenario], history: Scenario) -> None:
    strategies = [
        d
        for a in actions_of(both)
        for d in a.deliverables
        if d.kind in ("strategy", "policy") and d.delivered_on <= END_2017
    ]
    assert len(strategies) == history.report["diaspora_and_md_strategies_supported_since_2009"]
    assert sum(1 for d in strategies if d.delivered_on.year == 2017) == 3
