"""Every aggregate folds every event of its stream: a handler or a stated ignore for each, and a handler
named after the event it is annotated with. A missing handler fails here, not silently at run time."""

from __future__ import annotations

from typing import ClassVar

import pytest

import services.actions.domain
import services.carbon.domain
import services.experts.domain
import services.logistics.domain
import services.requests.domain  # noqa: F401  (each declares its aggregates)
from services.kernel.application import Aggregate, UnhandledEvent
from services.kernel.envelope import Event


def aggregates() -> list[type[Aggregate]]:
    found, todo = [], list(Aggregate.__subclasses__())
    while todo:
        cls = todo.pop()
        if cls.__module__.startswith("services."):
            found.append(cls)
        todo.extend(cls.__subclasses__())
    return sorted(found, key=lambda c: c.__name__)


def test_the_contexts_declare_their_aggregates() -> None:
    names = {a.__name__ for a in aggregates()}
    assert names == {"Request", "Action", "Expert", "Team", "Booking", "FlightEmissions", "OffsetLot"}


@pytest.mark.parametrize("aggregate", aggregates(), ids=lambda a: a.__name__)
def test_every_event_of_the_stream_is_handled_or_ignored(aggregate: type[Aggregate]) -> None:
    assert aggregate.unhandled() == []


class Pinged(Event, abstract=True):
    source: ClassVar[str] = "test"


class PingSent(Pinged, register=False):
    n: int


class PingLost(Pinged, register=False):
    pass


def test_a_handler_misnamed_for_its_event_is_refused_when_declared() -> None:
    with pytest.raises(TypeError, match="name it when_PingSent"):

        class Pinger(Aggregate):
            folds = Pinged

            def when_PingSnet(self, e: PingSent) -> None:
                pass


def test_folding_an_event_without_a_handler_raises() -> None:
    class Pinger(Aggregate):
        folds = Pinged

        def __init__(self, stream_id: str) -> None:
            super().__init__(stream_id)
            self.total = 0

        def when_PingSent(self, e: PingSent) -> None:
            self.total += e.n

    assert Pinger.fold("p", [PingSent(n=2), PingSent(n=3)]).total == 5
    with pytest.raises(UnhandledEvent, match="Pinger has no handler for PingLost"):
        Pinger.fold("p", [PingSent(n=1), PingLost()])

    class Tolerant(Pinger):
        ignores = (PingLost,)

    agg = Tolerant.fold("p", [PingSent(n=1), PingLost()])
    assert (agg.total, agg.version) == (1, 2)


class Other(Event, abstract=True):
    source: ClassVar[str] = "test"


class OtherHappened(Other, register=False):
    pass


def test_an_event_of_another_stream_or_of_an_unknown_type_changes_nothing() -> None:
    """A stream id may name another aggregate's stream (a caller's mistake): its events, and events of a type
    this build does not know (a newer writer's, during a rolling deploy), are folded as no change, so the
    command is refused by the rules instead of failing."""
    from services.kernel.envelope import UnknownEvent

    class Pinger(Aggregate):
        folds = Pinged

        def when_PingSent(self, e: PingSent) -> None:
            pass

    agg = Pinger.fold("p", [OtherHappened(), UnknownEvent(x=1), PingSent(n=1)])
    assert agg.version == 3


def test_an_aggregate_with_handlers_must_say_which_stream_it_folds() -> None:
    with pytest.raises(TypeError, match="folds"):

        class Pinger(Aggregate):
            def when_PingSent(self, e: PingSent) -> None:
                pass


def test_an_event_class_may_not_declare_a_type_other_than_its_name() -> None:
    with pytest.raises(TypeError, match="class name"):

        class Renamed(Pinged, register=False):
            event_type: ClassVar[str] = "SomethingElse"
