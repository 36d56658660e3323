"""The annual report page from a year's API answers (no service): every year-at-a-glance figure is marked with the
API's key and value, every chart draws one mark per data point with the table of its numbers beside it, the page
holds no script and loads nothing, prints (print CSS), and escapes what it shows; charts and number formatting."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from mieux.actions.v1 import actions_pb2 as a
from mieux.carbon.v1 import carbon_pb2 as c
from mieux.common.v1 import common_pb2 as cm
from mieux.logistics.v1 import logistics_pb2 as lg
from mieux.stats.v1 import stats_pb2 as s

from services.stats.report.charts import Point, fmt, hbars, vbars
from services.stats.report.page import Sources, change_label, render


def sources() -> Sources:
    def sh(k: str, n: int, p: str) -> s.Share:
        return s.Share(key=k, count=n, share_pct=p)

    g = s.YearAtAGlance(
        year=2017,
        new_requests=8,
        activities=64,
        activities_by_region=[
            s.RegionCount(region="africa_ces", name="Africa (Central, Eastern and Southern)", area="Africa", count=13),
            s.RegionCount(region="africa_west", name="Africa (West)", area="Africa", count=18),
            s.RegionCount(region="asia", name="Asia", area="Asia", count=6),
            s.RegionCount(region="eu_neighbourhood", name="EU Neighbourhood", area="EU Neighbourhood", count=6),
            s.RegionCount(
                region="lac", name="Latin America and the Caribbean", area="Latin America and the Caribbean", count=21
            ),
        ],
        activities_by_area=[
            sh("Africa", 31, "48.4"),
            sh("Asia", 6, "9.4"),
            sh("EU Neighbourhood", 6, "9.4"),
            sh("Latin America and the Caribbean", 21, "32.8"),
        ],
        experts_deployed=84,
        experts_by_gender=[sh("female", 37, "44.0"), sh("male", 47, "56.0"), sh("other", 0, "0.0")],
        experts_by_background=[
            sh("eu_ms_administration", 43, "51.2"),
            sh("southern_administration", 9, "10.7"),
            sh("academia", 8, "9.5"),
            sh("ngo", 11, "13.1"),
            sh("private_consultant", 10, "11.9"),
            sh("icmpd", 3, "3.6"),
        ],
        countries_benefitted=40,
        participants=1794,
        participants_by_gender=[sh("male", 1005, "56.0"), sh("female", 789, "44.0"), sh("other", 0, "0.0")],
        expert_pool=591,
        expert_pool_previous=514,
        expert_pool_growth_pct="15.0",
        air_miles_per_team_member="21529",
        team_statute_miles="279877.765",
        team_members=13,
        footprint_kg_co2e="202277.925",
        vers_purchased=3750,
        vers_retired=3750,
    )
    regions = s.RegionReport(
        year=2017,
        regions=[
            s.RegionRow(
                region=r.region,
                name=r.name,
                area=r.area,
                activities=r.count,
                countries_benefitted=3,
                partners=["CI", "SL", "ECOWAS"],
                participants=100,
                participants_male=60,
                participants_female=40,
                experts_deployed=10,
            )
            for r in g.activities_by_region
        ],
    )
    r = s.Results(
        year=2017,
        experts_agreeing=s.Satisfaction(question="peer_to_peer_beneficial", agreeing=90, answers=95, share_pct="94.7"),
        partner_ratings=[sh("poor", 0, "0.0"), sh("fair", 0, "0.0"), sh("good", 6, "50.0"), sh("excellent", 6, "50.0")],
        partners_good_or_excellent=sh("good_or_excellent", 12, "100.0"),
        feedback_activities=60,
        respondents=1358,
        skills_enhanced=sh("skills_enhanced", 1190, "87.6"),
        makes_a_difference=sh("makes_a_difference", 1167, "85.9"),
        deliverables=[
            s.Deliverable(
                deliverable_id="2015-02/D1",
                action_code="2015-02",
                kind="policy",
                title="National Migration Policy of Sierra Leone",
                delivered_on="2017-10-12",
                partner="SL",
                region="africa_west",
            )
        ],
        deliverables_by_region=[
            s.RegionCount(region=x.region, name=x.name, area=x.area, count=1 if x.region == "africa_west" else 0)
            for x in g.activities_by_region
        ],
        interventions=44,
        policy_development=sh("policy_development", 11, "25.0"),
        pillars=[
            sh("legal_migration", 10, "22.7"),
            sh("irregular_migration", 15, "34.1"),
            sh("international_protection", 8, "18.2"),
            sh("migration_and_development", 20, "45.5"),
        ],
        other_backgrounds_from_europe=[
            sh("academia", 5, "27.8"),
            sh("ngo", 6, "33.3"),
            sh("private_consultant", 7, "38.9"),
        ],
        other_backgrounds_outside_europe=[
            sh("academia", 3, "27.3"),
            sh("ngo", 5, "45.5"),
            sh("private_consultant", 3, "27.3"),
        ],
        from_europe=sh("europe", 18, "62.1"),
        outside_europe=sh("outside", 11, "37.9"),
        nationalities=["AT", "BE", "ES"],
    )
    h = s.History(
        year=2017,
        first_year=2009,
        changes=[
            s.Change(figure="activities", value="64", previous="55", change_pct="16.4"),
            s.Change(figure="experts_agreeing_pct", value="94.7", previous="", change_points=""),
        ],
        experts_deployed=396,
        partners_served=122,
        strategies_supported=14,
        activities_per_year=[
            s.YearCount(year=y, count=n)
            for y, n in zip(range(2009, 2018), (4, 9, 15, 21, 27, 33, 42, 55, 64), strict=True)
        ],
        requests_per_year=[
            s.YearCount(year=y, count=n)
            for y, n in zip(range(2009, 2018), (5, 8, 9, 10, 11, 12, 14, 22, 8), strict=True)
        ],
    )
    actions = [
        a.Action(
            action_code="2017-03",
            title="Madagascar",
            partner="MG",
            partner_name="Madagascar",
            region="africa_ces",
            status="fiche_agreed",
            activities_held=2,
            activities_planned=1,
        )
    ]
    air = lg.AirMilesPerTeamMember(
        year=2017, team_statute_miles="279877.765", team_members=13, miles_per_member="21529"
    )
    fp = c.Footprint(
        year=2017, kg_co2e="202277.925", kg_co2e_by_region={"africa_west": "80000.5", "lac": "70000", "": "1200.4"}
    )
    bm = c.FootprintByMonth(
        year=2017,
        kg_co2e="202277.925",
        months=[c.MonthFootprint(month=m, legs=m * 3, kg_co2e=f"{m * 1000}.5") for m in range(1, 13)],
    )
    led = c.OffsetLedger(
        year=2017,
        vers_purchased=3750,
        vers_retired=3750,
        balance=0,
        cost=[cm.Money(amount="33750.00", currency="EUR")],
        footprint_kg_co2e="202277.925",
        coverage="18.5389",
        lots=[
            c.OffsetLot(
                lot_id="lot-1",
                registry="Gold Standard",
                project="African Biomass Energy Conservation PoA",
                vintage_year=2016,
                quantity=3750,
                retired=3750,
                remaining=0,
                purchased_on=cm.Date(iso="2017-12-12"),
            )
        ],
    )
    return Sources(g, regions, r, h, actions, air, fp, bm, led)


class Collect(HTMLParser):
    """The page's glance figures, charts (with their marks) and tables, as a browser would see the elements."""

    def __init__(self) -> None:
        super().__init__()
        self.glance: dict[str, str] = {}
        self.charts: dict[str, int] = {}  # chart -> data-points
        self.marks: dict[str, list[str]] = {}
        self.rows: dict[str, int] = {}
        self.tags: set[str] = set()
        self._chart = self._table = ""
        self._in_body = False

    def handle_starttag(self, tag: str, attrs: list) -> None:  # type: ignore[type-arg]
        d = dict(attrs)
        self.tags.add(tag)
        if "data-glance" in d:
            self.glance[d["data-glance"]] = d["data-value"]
        if tag == "figure" and "data-chart" in d:
            self._chart = d["data-chart"]
            self.charts[self._chart] = int(d["data-points"])
        if tag == "rect" and "mark" in d.get("class", ""):
            self.marks.setdefault(self._chart, []).append(d["data-value"])
        if tag == "table" and "data-for" in d:
            self._table = d["data-for"]
        if tag == "tbody":
            self._in_body = True
        if tag == "tr" and self._table and self._in_body:
            self.rows[self._table] = self.rows.get(self._table, 0) + 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._table = ""
        if tag == "tbody":
            self._in_body = False


def parsed(html: str) -> Collect:
    p = Collect()
    p.feed(html)
    return p


def test_every_glance_figure_is_marked_with_the_apis_value() -> None:
    src = sources()
    page = parsed(render(src))
    g = src.glance
    assert page.glance["new_requests"] == "8" and page.glance["activities"] == "64"
    assert page.glance["participants"] == "1794" and page.glance["footprint_kg_co2e"] == "202277.925"
    assert page.glance["expert_pool_growth_pct"] == "15.0" and page.glance["air_miles_per_team_member"] == "21529"
    assert page.glance["activities_by_area:Latin America and the Caribbean"] == "21"
    assert page.glance["experts_by_gender_pct:female"] == "44.0"
    for key in ("experts_deployed", "countries_benefitted", "expert_pool", "vers_purchased", "vers_retired"):
        assert page.glance[key] == str(getattr(g, key)), key


def test_each_chart_draws_one_mark_per_data_point_beside_a_table_of_them() -> None:
    src = sources()
    page = parsed(render(src))
    expected = {
        "activities-by-region": 5,
        "requests-per-year": 9,
        "activities-per-year": 9,
        "experts-by-gender": 3,
        "experts-by-background": 6,
        "participants-by-gender": 3,
        "partner-ratings": 4,
        "gamm-pillars": 4,
        "deliverables-by-region": 5,
        "footprint-by-month": 12,
        "footprint-by-region": 3,
    }
    assert page.charts == expected
    assert {k: len(v) for k, v in page.marks.items()} == expected
    assert page.rows == expected
    assert page.marks["footprint-by-month"][0] == "1000.5" and page.marks["activities-per-year"][-1] == "64"


def test_the_page_is_self_contained_and_prints() -> None:
    html = render(sources())
    assert "script" not in page_tags(html)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "@media print" in html and "@page" in html


def page_tags(html: str) -> set[str]:
    return parsed(html).tags


def test_what_the_page_shows_is_escaped() -> None:
    src = sources()
    src.actions[0].title = "<b>Madagascar</b> & co"
    html = render(src)
    assert "&lt;b&gt;Madagascar&lt;/b&gt; &amp; co" in html and "<b>Madagascar</b>" not in html


def test_charts_and_numbers() -> None:
    assert fmt("202277.925") == "202,277.925" and fmt(1794) == "1,794" and fmt("") == "" and fmt("-3.5") == "-3.5"
    svg = str(hbars("x", "T <t>", [Point("a", 0), Point("b", "2.5"), Point("c", 5)]))
    assert svg.count('class="mark"') == 3 and "<title" in svg and "T &lt;t&gt;" in svg
    assert 'width="0.0"' in svg  # a zero is a mark of no length
    assert str(vbars("y", "T", [])).count('class="mark"') == 0
    assert change_label("activities: africa_west") == "activities in Africa (West)"
    assert change_label("activities: Africa") == "activities in Africa"
    assert change_label("new_requests") == "new requests"
