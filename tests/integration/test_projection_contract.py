"""The projection contract, for every projection the services run: the list comes from each service's
`__main__.build()` (`services.ops.catalog.projections()`), and every test here is parametrised by
projection name, so a new projection is checked without a new test.

Each projection is set up in a database of its own (so the read models other tests share are untouched)
and fed the envelopes of its topics from tests/history.py, completed here with the event types that
history has no use for, through the kernel's apply path (`apply_batch`, `rebuild`, `rebuild_beside`). Then:

- every event delivered twice (the whole history again, and each event twice within one batch) gives the
  model that delivering it once gave;
- a rebuild (from the history as the services' ReadAll would serve it) gives the model the live run gave,
  built beside the live model and swapped in (kernel/bluegreen.py, as `mieux projections rebuild` runs),
  in place over the live model, and over a model whose tables were lost;
- a batch gives the model its events give applied one at a time (each in a batch of its own), whether the
  batch starts from an empty model or from one where some of its streams have rows already;
- an event of a type it does not know is skipped (not dead) and changes nothing;
- setting it up again (a restart) keeps its model and what it applied.

A model is compared as every row of every table in `projection.tables`, sorted, as Python values.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from datetime import date

import pytest
from history import History, build_history
from support import make_envelope, own_database

from services.actions.events import ActionClosed
from services.kernel.bluegreen import rebuild_beside
from services.kernel.db import Pool, create_pool
from services.kernel.envelope import Envelope, registry, topic_for
from services.kernel.projection import AsyncSource, BatchResult, Projection, apply_batch, rebuild
from services.ops import catalog
from services.ops.devstack import DevStack
from services.requests.events import (
    RequestApproved,
    RequestEligibilityAssessed,
    RequestRejected,
    RequestWithdrawn,
)

pytestmark = pytest.mark.integration

PROJECTIONS = catalog.projections()
NAMES = sorted(PROJECTIONS)
UNKNOWN = "ContractTestUnheardOf"  # an event type no reader knows


# --- the history -------------------------------------------------------------------------------------


def the_decisions(h: History) -> None:
    """What the stats history has no use for: requests assessed, approved, rejected and withdrawn, and an
    action closed (streams and ids of tests/history.py)."""
    h.add(
        "req-req-2",
        RequestEligibilityAssessed(request_id="req-2", eligible=True, instrument="EDF", assessed_on=date(2017, 3, 20)),
    )
    h.add(
        "req-req-2",
        RequestApproved(
            request_id="req-2",
            partner="MG",
            partner_kind="country",
            partner_name="MG",
            region="africa_ces",
            title="request req-2",
            approved_on=date(2017, 4, 1),
        ),
    )
    h.add(
        "req-req-3",
        RequestEligibilityAssessed(
            request_id="req-3", eligible=False, instrument=None, reasons=("not covered",), assessed_on=date(2017, 11, 1)
        ),
    )
    h.add("req-req-3", RequestRejected(request_id="req-3", reason="not eligible", rejected_on=date(2017, 11, 2)))
    h.add("req-req-4", RequestWithdrawn(request_id="req-4", reason="no longer needed", withdrawn_on=date(2019, 2, 1)))
    h.add("2016-01", ActionClosed(action_code="2016-01", closed_on=date(2017, 6, 30), activities_held=2))


@pytest.fixture(scope="module")
def history() -> list[Envelope]:
    h = build_history()
    the_decisions(h)
    return h.envelopes


def as_the_bus_delivers(envelopes: Sequence[Envelope], seed: int) -> list[Envelope]:
    """An order a consumer of the topics may see: each stream's events in order (a stream's events share
    a key, so a partition), the streams interleaved at random."""
    rng = random.Random(seed)
    streams: dict[tuple[str, str], list[Envelope]] = {}
    for env in envelopes:
        streams.setdefault((env.source, env.stream_id), []).append(env)
    for events in streams.values():
        events.reverse()  # popped from the end
    order = []
    while streams:
        key = rng.choice(sorted(streams))
        order.append(streams[key].pop())
        if not streams[key]:
            del streams[key]
    return order


def in_batches(envelopes: Sequence[Envelope], size: int) -> list[Sequence[Envelope]]:
    return [envelopes[i : i + size] for i in range(0, len(envelopes), size)]


def unknown_on(topic: str, n: int) -> Envelope:
    source = topic.removeprefix("mieux.").removesuffix(".events")
    return make_envelope(UNKNOWN, {"anything": n}, stream_id=f"unknown-{n}", source=source)


# --- a projection in a database of its own -------------------------------------------------------------


def source_of(envelopes: Sequence[Envelope], topic: str) -> AsyncSource:
    """The events of `topic` in order, as its service's ReadAll serves them."""

    async def read_all() -> AsyncIterator[Envelope]:
        for env in envelopes:
            if topic_for(env.source) == topic:
                yield env

    return read_all


@dataclass
class Model:
    pool: Pool
    projection: Projection

    def mine(self, envelopes: Iterable[Envelope]) -> list[Envelope]:
        """The envelopes of the projection's topics, in order."""
        return [e for e in envelopes if topic_for(e.source) in self.projection.topics]

    async def deliver(self, envelopes: Sequence[Envelope]) -> BatchResult:
        """One batch, as the runner hands it over: (topic, bytes) per message."""
        return await apply_batch(self.pool, [self.projection], [(topic_for(e.source), e.to_bytes()) for e in envelopes])

    async def rebuild(self, envelopes: Sequence[Envelope]) -> int:
        """A rebuild from one source per topic, each serving its events in order, as a service's ReadAll."""

        return await rebuild(self.pool, self.projection, [source_of(envelopes, t) for t in self.projection.topics])

    async def rebuild_beside(self, envelopes: Sequence[Envelope]) -> int:
        """`rebuild` as `mieux projections rebuild` runs it: beside the live model, then swapped in."""
        sources = [source_of(envelopes, t) for t in self.projection.topics]
        return (await rebuild_beside(self.pool, self.projection, sources)).events

    async def snapshot(self) -> dict[str, list[tuple]]:
        """Every row of every table of the model, sorted, as Python values."""
        async with self.pool.acquire() as conn:
            return {
                t: sorted((tuple(r) for r in await conn.fetch(f"SELECT * FROM {t}")), key=repr)
                for t in self.projection.tables
            }

    async def setup(self) -> None:
        async with self.pool.acquire() as conn:
            await self.projection.setup(conn)

    async def reset(self) -> None:
        """Empty the model and forget what it applied."""
        async with self.pool.acquire() as conn:
            await self.projection.reset(conn)

    async def lose_tables(self) -> None:
        """Empty the model's tables but not the tracking of what it applied."""
        async with self.pool.acquire() as conn:
            for t in self.projection.tables:
                await conn.execute(f"TRUNCATE {t}")


@pytest.fixture(scope="module", params=NAMES)
async def set_up(request: pytest.FixtureRequest, stack: DevStack) -> AsyncIterator[Model]:
    """The projection named by the parameter, as its service runs it, set up in a database of its own."""
    _, projection = PROJECTIONS[request.param]
    async with own_database(stack.database_url) as dsn:
        pool = await create_pool(dsn, max_size=4)
        try:
            m = Model(pool, projection)
            await m.setup()
            yield m
        finally:
            await pool.close()


@pytest.fixture
async def model(set_up: Model) -> Model:
    """The projection's model, empty and having applied nothing."""
    await set_up.reset()
    return set_up


async def deliver_once(model: Model, envelopes: Sequence[Envelope]) -> dict[str, list[tuple]]:
    """Deliver the envelopes once, in one batch; every one applied, and the model has rows."""
    r = await model.deliver(envelopes)
    assert (r.applied, r.duplicates, r.skipped, r.dead) == (len(envelopes), 0, 0, [])
    model_rows = await model.snapshot()
    assert any(model_rows.values()), f"{model.projection.name} made no row of the history"
    return model_rows


# --- the contract --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_the_history_has_events_of_every_type_of_its_topics(name: str, history: list[Envelope]) -> None:
    _, projection = PROJECTIONS[name]
    catalog.load_events()
    types = {
        t
        for t, cls in registry.types.items()
        if cls.__module__.startswith("services.") and topic_for(cls.source) in projection.topics
    }
    seen = {e.event_type for e in history if topic_for(e.source) in projection.topics}
    assert seen, f"no event of {projection.topics} in the history"
    assert not types - seen, f"add events of these types to the_decisions() above: {sorted(types - seen)}"


async def test_every_event_delivered_twice_gives_the_model_of_once(model: Model, history: list[Envelope]) -> None:
    mine = model.mine(history)
    once = await deliver_once(model, mine)
    # the whole history again, in one batch
    r = await model.deliver(mine)
    assert (r.applied, r.duplicates, r.dead) == (0, len(mine), [])
    assert await model.snapshot() == once
    # each event twice within one batch, into an empty model
    await model.reset()
    assert await model.snapshot() != once
    r = await model.deliver([e for e in mine for _ in (1, 2)])
    assert (r.applied, r.duplicates, r.dead) == (len(mine), len(mine), [])
    assert await model.snapshot() == once


async def test_a_rebuild_gives_the_model_of_the_live_run(model: Model, history: list[Envelope]) -> None:
    mine = model.mine(history)
    # live: the streams interleaved as the partitions may deliver them, in small batches, a few redelivered
    order = as_the_bus_delivers(mine, seed=11)
    for batch in [*in_batches(order, 7), order[:10]]:
        r = await model.deliver(batch)
        assert not r.dead, r.dead
    live_rows = await model.snapshot()
    assert any(live_rows.values()), f"{model.projection.name} made no row of the history"
    # beside the live model, then swapped in, as `mieux projections rebuild` runs
    assert await model.rebuild_beside(mine) == len(mine)
    assert await model.snapshot() == live_rows
    # over the live model, in place
    assert await model.rebuild(mine) == len(mine)
    assert await model.snapshot() == live_rows
    # over a model whose tables were lost while what it applied is still tracked
    await model.lose_tables()
    assert await model.rebuild(mine) == len(mine)
    assert await model.snapshot() == live_rows


async def test_a_batch_gives_the_model_of_one_event_at_a_time(model: Model, history: list[Envelope]) -> None:
    """What `apply_many` folds into a few statements (a batch, a rebuild's pages) must be what applying its
    events one by one gives."""
    order = as_the_bus_delivers(model.mine(history), seed=5)
    for env in order:
        r = await model.deliver([env])
        assert (r.applied, r.dead) == (1, [])
    one_by_one = await model.snapshot()
    assert any(one_by_one.values()), f"{model.projection.name} made no row of the history"
    for size in (len(order), 5):  # the whole history in one batch; batches that find rows of earlier ones
        await model.reset()
        for batch in in_batches(order, size):
            r = await model.deliver(batch)
            assert (r.applied, r.dead) == (len(batch), [])
        assert await model.snapshot() == one_by_one, f"batches of {size}"


async def test_an_event_of_an_unknown_type_is_skipped(model: Model, history: list[Envelope]) -> None:
    mine = model.mine(history)
    before = await deliver_once(model, mine)
    unknown = [unknown_on(topic, n) for n, topic in enumerate(model.projection.topics)]
    r = await model.deliver(unknown)
    assert (r.applied, r.duplicates, r.skipped, r.dead) == (0, 0, len(unknown), [])
    assert await model.snapshot() == before
    # and among known events, in an empty model: the same model as without them
    await model.reset()
    topic = model.projection.topics[0]
    mixed = [e for n, env in enumerate(mine) for e in ([env, unknown_on(topic, n)] if n % 10 == 5 else [env])]
    r = await model.deliver(mixed)
    assert (r.applied, r.skipped, r.dead) == (len(mine), len(mixed) - len(mine), [])
    assert await model.snapshot() == before


async def test_setting_up_again_keeps_the_model(model: Model, history: list[Envelope]) -> None:
    """A service that restarts sets its projections up again: the model and its tracking stay."""
    mine = model.mine(history)
    before = await deliver_once(model, mine)
    await model.setup()
    assert await model.snapshot() == before
    r = await model.deliver(mine)
    assert (r.applied, r.duplicates, r.dead) == (0, len(mine), [])
    assert await model.snapshot() == before
