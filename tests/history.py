"""A small hand-made history of every service (requests, actions, experts, logistics, carbon), as data and
as the envelopes their relays would publish: a cancelled activity, a cancelled deployment, an expert
deployed twice in a year, a cancelled and a changed flight, a team member who left mid-year, offsets bought
and retired, and an expert and a team member of 2017 forgotten at the end (names and roles sealed with keys of
their own, as the services write them: forgetting changes no figure). The stats projections' test works its
figures out from this data; the projection contract test feeds the envelopes to every projection."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any

from support import make_envelope

from services.actions.events import (
    ActionFicheAgreed,
    ActionOpened,
    ActivityCancelled,
    ActivityHeld,
    ActivityPlanned,
    DeliverableRecorded,
    ParticipantFeedbackRecorded,
    PartnerAssessmentSubmitted,
)
from services.carbon.events import (
    FlightEmissionsCalculated,
    FlightEmissionsReversed,
    Money,
    OffsetsPurchased,
    OffsetsRetired,
    SegmentEmissions,
)
from services.experts.events import (
    Answer,
    ExpertDeactivated,
    ExpertDeployed,
    ExpertDeploymentCancelled,
    ExpertEvaluationSubmitted,
    ExpertForgotten,
    ExpertProfileUpdated,
    ExpertRegistered,
)
from services.kernel.envelope import Envelope, Event
from services.kernel.personal import SubjectKey
from services.logistics.events import (
    Fare,
    FlightBooked,
    FlightCancelled,
    FlightChanged,
    Segment,
    TeamMemberForgotten,
    TeamMemberJoined,
    TeamMemberLeft,
)
from services.requests.events import RequestReceived

D = date.fromisoformat


@dataclass
class History:
    """Envelopes in the order their services stored them; per stream, versions count up."""

    envelopes: list[Envelope] = field(default_factory=list)
    versions: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, stream: str, event: Event) -> Envelope:
        self.versions[stream] += 1
        env = make_envelope(
            event.event_type,
            event.model_dump(mode="json"),
            stream_id=stream,
            version=self.versions[stream],
            source=event.source,
            position=len(self.envelopes) + 1,
            schema_version=event.schema_version,
            correlation_id="test",
        )
        self.envelopes.append(env)
        return env

    def of(self, source: str) -> list[Envelope]:
        return [e for e in self.envelopes if e.source == source]


# --- the scenario, as data ------------------------------------------------------------------------


@dataclass(frozen=True)
class Held:
    activity_id: str
    action_code: str
    starts_on: date
    partner: str
    region: str
    male: int
    female: int
    other: int


@dataclass(frozen=True)
class Expert:
    expert_id: str
    gender: str
    background: str
    registered_on: date
    deactivated_on: date | None = None
    nationality: str = "FR"


@dataclass(frozen=True)
class Deployment:
    deployment_id: str
    expert_id: str
    activity_id: str
    starts_on: date
    cancelled: bool = False


@dataclass(frozen=True)
class Stint:
    member_id: str
    joined_on: date
    left_on: date | None = None


@dataclass(frozen=True)
class Booking:
    booking_id: str
    traveller_id: str
    kind: str
    segments: tuple[tuple[str, str, date], ...]
    changed_to: tuple[tuple[str, str, date], ...] | None = None
    cancelled: bool = False


@dataclass(frozen=True)
class Emission:
    booking_id: str
    kind: str
    kg: Decimal
    year: int  # the first leg's (the event's departure_year)
    sign: int  # +1 calculated, -1 reversed
    legs: tuple[tuple[date, Decimal], ...] = ()  # each leg's departure and kg; none: the event has no segments

    def in_year(self, year: int) -> Decimal:
        """What it adds to (or takes from) the footprint of `year`: each leg in the year it departs."""
        if not self.legs:
            return self.sign * self.kg if self.year == year else Decimal(0)
        return sum((self.sign * kg for on, kg in self.legs if on.year == year), Decimal(0))


# The scenario, as data. The expected figures below are computed from these lists, never typed in.
REQUESTS = [("req-1", "MG", D("2016-05-01")), ("req-2", "MG", D("2017-03-08")), ("req-3", "SN", D("2017-10-10"))]
REQUESTS += [("req-4", "MX", D("2019-01-02"))]  # no request in 2018: a zero year between the first and last
ACTIONS = [("2016-01", "MX", "lac", D("2016-03-01")), ("2017-01", "MG", "africa_ces", D("2017-02-01"))]
ACTIONS += [("2017-02", "SN", "africa_west", D("2017-04-01"))]
THEMES = {"2016-01": ("thb_and_som",), "2017-01": ("diaspora_engagement",), "2017-02": ("policy_development",)}
# fiches: pillars and themes; 2016-01's was agreed before fiches named them (a version 1 event, upcast with none:
# its themes are its request's); 2017-02 has none yet (its themes are its request's too)
FICHES = [
    ("2017-01", ("migration_and_development",), ("diaspora_engagement", "policy_development"), D("2017-02-15")),
]
FICHES_V1 = [("2016-01", D("2016-03-20"))]
HELD = [
    Held("2016-01/A1", "2016-01", D("2016-11-10"), "MX", "lac", 7, 3, 0),
    Held("2016-01/A2", "2016-01", D("2017-01-15"), "MX", "lac", 3, 3, 0),  # an older action, held in 2017
    Held("2017-01/A1", "2017-01", D("2017-03-01"), "MG", "africa_ces", 10, 5, 0),
    Held("2017-01/A3", "2017-01", D("2017-09-01"), "MG", "africa_ces", 2, 2, 0),  # MG twice: one partner
    Held("2017-02/A1", "2017-02", D("2017-06-05"), "SN", "africa_west", 4, 6, 1),
]
CANCELLED_ACTIVITIES = [("2017-01/A2", "2017-01", "africa_ces", "MG", D("2017-05-01"))]
EXPERTS = [
    Expert("exp-1", "female", "eu_ms_administration", D("2015-01-01")),
    Expert("exp-2", "male", "southern_administration", D("2016-02-01"), nationality="SN"),
    Expert("exp-3", "male", "icmpd", D("2017-04-01"), nationality="AM"),  # then academia from Norway
    Expert("exp-4", "female", "ngo", D("2016-06-01"), deactivated_on=D("2017-06-30"), nationality="MX"),
    Expert("exp-5", "male", "private_consultant", D("2017-12-31"), nationality="RU"),
    Expert("exp-6", "female", "eu_ms_administration", D("2018-01-01")),
]
PROFILE_UPDATES = {"exp-3": "academia"}
NATIONALITY_UPDATES = {"exp-3": "NO"}  # Armenia is in Western Asia (UN M49), Norway in Europe
DEPLOYMENTS = [
    Deployment("dep-1", "exp-1", "2017-01/A1", D("2017-03-01")),
    Deployment("dep-2", "exp-1", "2017-02/A1", D("2017-06-05")),  # exp-1 deployed twice in 2017
    Deployment("dep-3", "exp-2", "2017-01/A3", D("2017-09-01"), cancelled=True),
    Deployment("dep-4", "exp-3", "2016-01/A2", D("2017-01-15")),
    Deployment("dep-5", "exp-4", "2016-01/A1", D("2016-11-10")),
    Deployment("dep-6", "exp-5", "2017-01/A2", D("2017-05-01")),  # to the activity that was cancelled
]
EVALUATIONS = [  # evaluation id, deployment, submitted on, answers
    ("ev-1", "dep-1", D("2017-03-10"), {"peer_to_peer_beneficial": 5, "objectives_met": 5, "logistics": 3}),
    ("ev-2", "dep-4", D("2017-02-01"), {"peer_to_peer_beneficial": 4, "objectives_met": 4, "logistics": 2}),
    ("ev-3", "dep-2", D("2017-06-10"), {"peer_to_peer_beneficial": 2, "objectives_met": 2, "logistics": 4}),
    ("ev-4", "dep-5", D("2016-11-20"), {"peer_to_peer_beneficial": 4, "objectives_met": 1, "logistics": 1}),
]
# participants' feedback of held activities: (activity, action, region, starts on, respondents, skills, difference)
FEEDBACK = [
    ("2016-01/A1", "2016-01", "lac", D("2016-11-10"), 8, 6, 5),
    ("2016-01/A2", "2016-01", "lac", D("2017-01-15"), 5, 5, 4),  # an older action, held in 2017
    ("2017-01/A1", "2017-01", "africa_ces", D("2017-03-01"), 12, 11, 10),
    ("2017-02/A1", "2017-02", "africa_west", D("2017-06-05"), 10, 7, 9),
]
ASSESSMENTS = [  # action, partner, region, rating, submitted on
    ("2016-01", "MX", "lac", "good", D("2017-02-01")),
    ("2017-01", "MG", "africa_ces", "excellent", D("2017-10-01")),
    ("2017-02", "SN", "africa_west", "fair", D("2017-12-01")),
]
DELIVERABLES = [  # id, action, partner, region, kind, delivered on
    ("2016-01/D1", "2016-01", "MX", "lac", "policy", D("2016-12-01")),
    ("2017-01/D1", "2017-01", "MG", "africa_ces", "strategy", D("2017-09-15")),
    ("2017-01/D2", "2017-01", "MG", "africa_ces", "handbook", D("2017-09-20")),
    ("2017-02/D1", "2017-02", "SN", "africa_west", "action_plan", D("2018-01-10")),
]
TEAM = [
    Stint("tm-1", D("2015-01-01")),
    Stint("tm-2", D("2016-01-01"), D("2017-06-30")),  # left mid-2017: on the team in 2017
    Stint("tm-3", D("2015-03-01"), D("2016-12-31")),  # left before 2017
    Stint("tm-4", D("2018-01-01")),
]
BOOKINGS = [
    Booking("bk-1", "tm-1", "team_member", (("BRU", "TNR", D("2017-02-27")), ("TNR", "BRU", D("2017-03-05")))),
    Booking(
        "bk-2",
        "tm-2",
        "team_member",
        (("BRU", "DKR", D("2017-06-01")),),
        changed_to=(("VIE", "DKR", D("2017-06-02")), ("DKR", "VIE", D("2017-06-08"))),
    ),
    Booking("bk-3", "tm-1", "team_member", (("BRU", "MEX", D("2017-01-10")),), cancelled=True),
    Booking("bk-4", "tm-3", "team_member", (("BRU", "MEX", D("2016-11-08")),)),
    Booking("bk-5", "exp-1", "expert", (("BRU", "TNR", D("2017-02-27")),)),
    Booking("bk-6", "tm-1", "team_member", (("BRU", "MEX", D("2017-12-30")), ("MEX", "BRU", D("2018-01-05")))),
]
EMISSIONS = [
    Emission("bk-1", "team_member", Decimal("1234.5"), 2017, +1),
    Emission("bk-2", "team_member", Decimal("500.25"), 2017, +1),
    Emission("bk-2", "team_member", Decimal("500.25"), 2017, -1),  # changed: reversed and calculated again
    Emission("bk-2", "team_member", Decimal("640.125"), 2017, +1),
    Emission("bk-3", "team_member", Decimal("800"), 2017, +1),
    Emission("bk-3", "team_member", Decimal("800"), 2017, -1),  # cancelled
    Emission("bk-4", "team_member", Decimal("900"), 2016, +1),
    Emission("bk-5", "expert", Decimal("1100"), 2017, +1),
    # out on 30 December 2017, back on 5 January 2018: each leg in the year it departs
    Emission(
        "bk-6",
        "team_member",
        Decimal("1190.75"),
        2017,
        +1,
        legs=((D("2017-12-30"), Decimal("600.5")), (D("2018-01-05"), Decimal("590.25"))),
    ),
]
# forgotten at the end: an expert deployed twice and evaluated in 2017, a team member who left mid-2017
FORGOTTEN = [("exp-1", D("2019-03-01")), ("tm-2", D("2019-03-02"))]
LOTS = [("lot-1", 40, D("2017-12-15")), ("lot-2", 10, D("2016-12-01"))]
RETIREMENTS = [
    ("lot-1", 25, 2017, D("2018-01-10")),
    ("lot-1", 5, 2016, D("2018-01-11")),
    ("lot-2", 10, 2016, D("2017-01-05")),
]


# --- the history, step by step, in the order the services stored it --------------------------------


def build_history() -> History:
    h = History()
    for step in (
        the_requests,
        the_actions,
        the_activities_planned,
        the_activities_held,
        the_activities_cancelled,
        the_fiches,
        the_results,
        the_roster,
        the_deployments,
        the_evaluations,
        the_deactivations,
        the_team,
        the_flights,
        the_emissions,
        the_offsets,
        the_forgettings,
    ):
        step(h)
    return h


def the_requests(h: History) -> None:
    for rid, partner, on in REQUESTS:
        h.add(
            f"req-{rid}",
            RequestReceived(
                request_id=rid,
                partner=partner,
                partner_kind="country",
                partner_name=partner,
                institution="Ministry",
                institution_type="ministry",
                received_on=on,
                title=f"request {rid}",
            ),
        )


def the_actions(h: History) -> None:
    for code, partner, region, opened in ACTIONS:
        h.add(
            code,
            ActionOpened(
                action_code=code,
                request_id=f"req-for-{code}",
                partner=partner,
                partner_kind="country",
                partner_name=partner,
                region=region,
                themes=THEMES[code],
                title=partner,
                follow_up=1,
                year=opened.year,
                opened_on=opened,
            ),
        )


def the_activities_planned(h: History) -> None:
    """Every activity, held or cancelled later, numbered across the actions."""
    planned = [(a.activity_id, a.action_code, a.partner, a.region, a.starts_on) for a in HELD]
    planned += [(aid, code, partner, region, on) for aid, code, region, partner, on in CANCELLED_ACTIVITIES]
    for n, (aid, code, partner, region, on) in enumerate(planned, start=1):
        h.add(
            code,
            ActivityPlanned(
                action_code=code,
                activity_id=aid,
                number=n,
                title=aid,
                activity_type="workshop",
                starts_on=on,
                ends_on=on,
                country=partner,
                partner=partner,
                region=region,
            ),
        )


def the_activities_held(h: History) -> None:
    region_of = {code: region for code, _, region, _ in ACTIONS}
    for a in HELD:
        assert region_of[a.action_code] == a.region
        h.add(
            a.action_code,
            ActivityHeld(
                action_code=a.action_code,
                activity_id=a.activity_id,
                activity_type="workshop",
                starts_on=a.starts_on,
                ends_on=a.starts_on,
                country=a.partner,
                partner=a.partner,
                region=a.region,
                participants_male=a.male,
                participants_female=a.female,
                participants_other=a.other,
            ),
        )


def the_activities_cancelled(h: History) -> None:
    for aid, code, _, _, on in CANCELLED_ACTIVITIES:
        h.add(code, ActivityCancelled(action_code=code, activity_id=aid, cancelled_on=on, reason="postponed"))


def the_fiches(h: History) -> None:
    """The fiches naming pillars and themes, and one stored before they did (schema version 1)."""
    for code, pillars, themes, on in FICHES:
        h.add(code, ActionFicheAgreed(action_code=code, agreed_on=on, pillars=pillars, themes=themes))
    for code, on in FICHES_V1:
        h.versions[code] += 1
        env = make_envelope(
            "ActionFicheAgreed",
            {"action_code": code, "agreed_on": on.isoformat(), "summary": "agreed before fiches named pillars"},
            stream_id=code,
            version=h.versions[code],
            source="actions",
            position=len(h.envelopes) + 1,
            schema_version=1,
            correlation_id="test",
        )
        h.envelopes.append(env)


def the_results(h: History) -> None:
    """Participants' feedback, the partners' assessments and the deliverables."""
    for aid, code, region, starts, respondents, skills, difference in FEEDBACK:
        partner = next(p for c, p, _, _ in ACTIONS if c == code)
        h.add(
            code,
            ParticipantFeedbackRecorded(
                action_code=code,
                activity_id=aid,
                activity_starts_on=starts,
                partner=partner,
                region=region,
                respondents=respondents,
                skills_enhanced=skills,
                makes_a_difference=difference,
                recorded_on=starts,
            ),
        )
    for code, partner, region, rating, on in ASSESSMENTS:
        h.add(
            code,
            PartnerAssessmentSubmitted(
                action_code=code, partner=partner, region=region, rating=rating, submitted_on=on
            ),
        )
    for did, code, partner, region, kind, on in DELIVERABLES:
        h.add(
            code,
            DeliverableRecorded(
                action_code=code,
                deliverable_id=did,
                kind=kind,
                title=f"{kind} of {partner}",
                delivered_on=on,
                partner=partner,
                region=region,
            ),
        )


# each person's own key, as the experts and logistics services keep them (names and roles sealed with it)
KEYS: dict[str, SubjectKey] = {}


def sealed(subject: str, text: str) -> str:
    return KEYS.setdefault(subject, SubjectKey.new(subject)).seal(text)


def the_roster(h: History) -> None:
    """Every expert registered, each profile update right after its registration."""
    for e in EXPERTS:
        profile = {"name": sealed(e.expert_id, e.expert_id), "gender": e.gender, "nationality": e.nationality}
        h.add(
            e.expert_id,
            ExpertRegistered(expert_id=e.expert_id, background=e.background, registered_on=e.registered_on, **profile),
        )
        if e.expert_id in PROFILE_UPDATES:
            profile["nationality"] = NATIONALITY_UPDATES.get(e.expert_id, e.nationality)
            h.add(
                e.expert_id,
                ExpertProfileUpdated(
                    expert_id=e.expert_id,
                    background=PROFILE_UPDATES[e.expert_id],
                    changed=("background", "nationality"),
                    updated_on=e.registered_on,
                    **profile,
                ),
            )


def the_deployments(h: History) -> None:
    """Every deployment, a cancellation right after the deployment it cancels."""
    for d in DEPLOYMENTS:
        where = {"action_code": d.activity_id.split("/")[0], "activity_id": d.activity_id}
        h.add(
            d.expert_id,
            ExpertDeployed(
                expert_id=d.expert_id,
                deployment_id=d.deployment_id,
                starts_on=d.starts_on,
                ends_on=d.starts_on,
                **where,
            ),
        )
        if d.cancelled:
            h.add(
                d.expert_id,
                ExpertDeploymentCancelled(
                    expert_id=d.expert_id,
                    deployment_id=d.deployment_id,
                    reason="sick",
                    cancelled_on=d.starts_on,
                    **where,
                ),
            )


def the_evaluations(h: History) -> None:
    deployments = {d.deployment_id: d for d in DEPLOYMENTS}
    for ev, dep, on, answers in EVALUATIONS:
        d = deployments[dep]
        h.add(
            d.expert_id,
            ExpertEvaluationSubmitted(
                expert_id=d.expert_id,
                evaluation_id=ev,
                deployment_id=dep,
                action_code=d.activity_id.split("/")[0],
                activity_id=d.activity_id,
                answers=tuple(Answer(question=q, score=s) for q, s in answers.items()),
                submitted_on=on,
            ),
        )


def the_deactivations(h: History) -> None:
    for e in EXPERTS:
        if e.deactivated_on:
            h.add(
                e.expert_id, ExpertDeactivated(expert_id=e.expert_id, reason="retired", deactivated_on=e.deactivated_on)
            )


def the_team(h: History) -> None:
    """Everyone joins, then those who left leave."""
    for s in TEAM:
        h.add(
            "team",
            TeamMemberJoined(
                member_id=s.member_id,
                name=sealed(s.member_id, s.member_id),
                gender="female",
                role=sealed(s.member_id, "PO"),
                joined_on=s.joined_on,
            ),
        )
    for s in TEAM:
        if s.left_on:
            h.add("team", TeamMemberLeft(member_id=s.member_id, left_on=s.left_on))


def _segments(specs: Iterable[tuple[str, str, date]]) -> tuple[Segment, ...]:
    return tuple(Segment(origin=o, destination=d, departs_on=on) for o, d, on in specs)


def the_flights(h: History) -> None:
    """Every booking, its change or cancellation right after it."""
    fare = Fare(amount="500.00", currency="EUR")
    for b in BOOKINGS:
        traveller = {"traveller_id": b.traveller_id, "traveller_kind": b.kind}
        h.add(
            b.booking_id,
            FlightBooked(
                booking_id=b.booking_id,
                segments=_segments(b.segments),
                cabin_class="economy",
                fare=fare,
                booked_on=D("2016-01-01"),
                **traveller,
            ),
        )
        if b.changed_to:
            h.add(
                b.booking_id,
                FlightChanged(
                    booking_id=b.booking_id,
                    segments=_segments(b.changed_to),
                    cabin_class="economy",
                    fare=fare,
                    changed_on=D("2016-02-01"),
                    **traveller,
                ),
            )
        if b.cancelled:
            h.add(
                b.booking_id,
                FlightCancelled(
                    booking_id=b.booking_id, traveller_id=b.traveller_id, reason="x", cancelled_on=D("2016-03-01")
                ),
            )


EMISSION_METHOD: dict[str, Any] = {
    "cabin_class": "economy",
    "segments": (),
    "distance_km": Decimal(1),
    "distance_miles": Decimal(1),
    "factor_set": "DESNZ 2025",
    "factor_year": 2025,
    "radiative_forcing": True,
    "distance_uplift_applied": False,
}


def legs(em: Emission) -> tuple[SegmentEmissions, ...]:
    return tuple(
        SegmentEmissions(
            origin="BRU",
            destination="MEX",
            departs_on=on,
            distance_km=Decimal(1),
            distance_miles=Decimal(1),
            haul="international_non_uk",
            factor_cabin_class="economy",
            factor_id="f",
            kg_co2e_per_pkm=Decimal(1),
            kg_co2e=kg,
        )
        for on, kg in em.legs
    )


def the_emissions(h: History) -> None:
    """Each emission calculated or reversed on its booking's stream; a reversal names the version it reverses."""
    calculated_at: dict[str, int] = {}
    for em in EMISSIONS:
        stream = f"emissions-{em.booking_id}"
        ids = {"booking_id": em.booking_id, "traveller_id": "t", "traveller_kind": em.kind}
        figures = {"kg_co2e": em.kg, "departure_year": em.year, **EMISSION_METHOD, "segments": legs(em)}
        if em.sign > 0:
            env = h.add(
                stream, FlightEmissionsCalculated(**ids, **figures, calculated_on=D("2017-01-01"), cause="booked")
            )
            calculated_at[em.booking_id] = env.stream_version
        else:
            h.add(
                stream,
                FlightEmissionsReversed(
                    **ids,
                    **figures,
                    reverses_version=calculated_at[em.booking_id],
                    reversed_on=D("2017-01-02"),
                    cause="changed",
                ),
            )


def the_offsets(h: History) -> None:
    """Every lot purchased, then the retirements, each saying what is left of its lot."""
    price = Money(amount=Decimal("12.50"), currency="EUR")
    for lot, qty, on in LOTS:
        h.add(
            f"lot-{lot}",
            OffsetsPurchased(
                lot_id=lot,
                registry="Gold Standard",
                project="A project",
                vintage_year=on.year,
                quantity=qty,
                unit_price=price,
                total_cost=Money(amount=price.amount * qty, currency="EUR"),
                purchased_on=on,
            ),
        )
    held_by_lot = {lot: qty for lot, qty, _ in LOTS}
    for lot, qty, against, on in RETIREMENTS:
        held_by_lot[lot] -= qty
        h.add(
            f"lot-{lot}",
            OffsetsRetired(lot_id=lot, quantity=qty, against_year=against, retired_on=on, remaining=held_by_lot[lot]),
        )


def the_forgettings(h: History) -> None:
    """People forgotten: their keys destroyed, which the events say and nothing else."""
    for subject, on in FORGOTTEN:
        if subject.startswith("exp-"):
            h.add(subject, ExpertForgotten(expert_id=subject, reason="erasure request", forgotten_on=on))
        else:
            h.add("team", TeamMemberForgotten(member_id=subject, reason="retention over", forgotten_on=on))
