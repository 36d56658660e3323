"""The actions application layer against the real PostgreSQL (a fresh schema per test): opening actions
under concurrency, codes never given twice, idempotent openings, and ABORTED on a concurrent change."""

from __future__ import annotations

import asyncio
from datetime import date

import grpc
import pytest

from services.actions import handlers
from services.actions.commands import AgreeActionFiche, OpenAction
from services.actions.events import ActionFicheAgreed, ActionOpened
from services.kernel.application import decode_all
from services.kernel.errors import ConcurrencyError
from services.kernel.grpckit import status_for
from services.kernel.store import EventStore, Metadata

pytestmark = pytest.mark.integration


def opening(i: int, partner: str = "NA", year: int = 2040, name: str = "Namibia") -> OpenAction:
    return OpenAction(
        command_id=f"open-{partner}-{year}-{i}",
        request_id=f"req-{partner}-{year}-{i}",
        partner=partner,
        partner_kind="country",
        partner_name=name,
        region="",
        themes=("migration_data_management",),
        approved_on=date(year, 3, 1 + i),
    )


async def openings(store: EventStore) -> list[ActionOpened]:
    envs = await store.read_all(0, limit=1000)
    return [e for e in decode_all(envs) if isinstance(e, ActionOpened)]


async def test_concurrent_openings_take_distinct_codes_and_count_follow_ups(store: EventStore) -> None:
    # one partner approved in two years at once: codes race within a year, follow-ups across both
    cmds = [opening(i, year=2040 + 2 * (i % 2)) for i in range(8)]
    results = await asyncio.gather(*[handlers.open_action(store, c) for c in cmds])
    assert sorted(r.stream_id for r in results if r) == [f"{y}-0{i}" for y in (2040, 2042) for i in range(1, 5)]
    opened = await openings(store)
    assert sorted(e.follow_up for e in opened) == list(range(1, 9))
    assert {e.title for e in opened} == {"Namibia", *(f"Namibia {r}" for r in "II III IV V VI VII VIII".split())}
    assert {e.region for e in opened} == {"africa_ces"}


async def test_a_taken_code_is_skipped(store: EventStore) -> None:
    # a stream that holds the code although no ActionOpened names it (e.g. written by another path)
    await store.append(
        "2041-01", 0, [ActionFicheAgreed(action_code="2041-01", agreed_on=date(2041, 1, 1))], Metadata("t")
    )
    result = await handlers.open_action(store, opening(1, year=2041))
    assert result is not None and result.stream_id == "2041-02"


async def test_an_opening_is_idempotent_by_command_and_by_request(store: EventStore) -> None:
    first = await handlers.open_action(store, opening(1, partner="GH", name="Ghana"))
    again = await handlers.open_action(store, opening(1, partner="GH", name="Ghana"))
    assert first is not None and again is not None
    assert again.duplicate and again.stream_id == first.stream_id
    other_command = opening(1, partner="GH", name="Ghana").model_copy(update={"command_id": "another"})
    assert await handlers.open_action(store, other_command) is None
    assert len(await openings(store)) == 1


class RacingStore(EventStore):
    """Reads a stream, then lets another writer append to it before the caller appends (a lost race)."""

    async def read_stream(self, stream_id: str, after_version: int = 0):  # type: ignore[no-untyped-def]
        envs = await super().read_stream(stream_id, after_version)
        await super().append(
            stream_id,
            len(envs),
            [ActionFicheAgreed(action_code=stream_id, agreed_on=date(2040, 1, 2))],
            Metadata("someone-else"),
        )
        return envs


async def test_a_concurrent_change_is_aborted_and_stores_nothing(pool, store: EventStore) -> None:
    result = await handlers.open_action(store, opening(1))
    assert result is not None
    racing = RacingStore(pool, store.schema)
    cmd = AgreeActionFiche(
        command_id="fiche-race", action_code=result.stream_id, agreed_on=date(2040, 2, 1), pillars=("legal_migration",)
    )
    with pytest.raises(ConcurrencyError) as info:
        await handlers.agree_action_fiche(racing, cmd)
    st = status_for(info.value)
    assert st is not None and st.code == grpc.StatusCode.ABORTED.value[0]
    assert await pool.fetchval(f"SELECT count(*) FROM {store.schema}.commands WHERE command_id = 'fiche-race'") == 0
    actors = [r["actor"] for r in await pool.fetch(f"SELECT actor FROM {store.schema}.events ORDER BY position")]
    assert actors.count("someone-else") == 1  # only the other writer's event
