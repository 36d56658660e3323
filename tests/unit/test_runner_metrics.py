"""What a projection runner reports as each projection's lag: the events behind on its own topics."""

from __future__ import annotations

from aiokafka.structs import TopicPartition
from prometheus_client import REGISTRY

from services.kernel.projection import Projection
from services.kernel.runner import ProjectionRunner
from services.kernel.settings import Settings


class OnOne(Projection):
    name = "lag_on_one"
    service = "test"
    topics = ("mieux.a.events",)
    tables = ()
    setup_sql = ""


class OnTwo(Projection):
    name = "lag_on_two"
    service = "test"
    topics = ("mieux.a.events", "mieux.b.events")
    tables = ()
    setup_sql = ""


def lag(projection: str) -> float | None:
    return REGISTRY.get_sample_value("mieux_projection_lag_events", {"group": "test.lag", "projection": projection})


def test_each_projection_reports_the_lag_of_its_own_topics() -> None:
    settings = Settings(MIEUX_VERIFY_KEYS={})  # type: ignore[call-arg]  # a runner verifies what it reads: no keys here
    runner = ProjectionRunner([OnOne(), OnTwo()], None, settings, group="test.lag")  # type: ignore[arg-type]
    runner._lag = {
        TopicPartition("mieux.a.events", 0): 3,
        TopicPartition("mieux.a.events", 1): 2,
        TopicPartition("mieux.b.events", 0): 4,
    }
    runner._export_lag()
    assert (lag("lag_on_one"), lag("lag_on_two")) == (5, 9)
    assert runner.lag() == 9
    runner._lag = {TopicPartition("mieux.b.events", 0): 1}
    runner._export_lag()
    assert (lag("lag_on_one"), lag("lag_on_two")) == (0, 1)
