"""`mieux export events` and `mieux import` as a person runs them: a round trip into an empty store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import pytest
from support import mieux_cli
from test_import import fresh_store, rows_of

from services.kernel.db import Pool
from services.kernel.envelope import Event
from services.kernel.store import EventStore, Metadata
from services.ops.devstack import DevStack

pytestmark = pytest.mark.integration
META = Metadata(actor="tester")


class Moved(Event, register=False):
    source: ClassVar[str] = "test"
    n: int


async def test_export_then_import_into_an_empty_store_round_trips(
    store: EventStore, pool: Pool, stack: DevStack, stack_env: dict[str, str], tmp_path: Path
) -> None:
    for v in range(5):
        for s in range(3):
            await store.append(f"s{s}", v, [Moved(n=v)], META, command_id=f"c{s}{v}", command_hash="h")
    # a command of three events, which a batch of 4 would cut in two: the import keeps it whole
    await store.append("multi", 0, [Moved(n=1), Moved(n=2), Moved(n=3)], META, command_id="cm", command_hash="h")
    out = tmp_path / "events.jsonl"
    code, text = await mieux_cli(stack_env, "export", "events", store.service, "--out", str(out), "--no-progress")
    assert code == 0, text
    lines = out.read_text().splitlines()
    assert len(lines) == 18 and json.loads(lines[0])["source"] == store.service
    assert [json.loads(line)["position"] for line in lines] == list(range(1, 19))

    async with fresh_store(pool, stack) as target:
        args = ("import", str(out), "--service", target.service, "--batch", "4", "--no-progress")
        code, text = await mieux_cli(stack_env, *args)
        assert code == 0, text
        assert "imported 18 events" in text
        assert await rows_of(target) == await rows_of(store)

        # the same file again: its first line's stream is at version 5 already; nothing more is stored
        code, text = await mieux_cli(stack_env, *args)
        assert code == 1 and "line 1" in text and "not at the expected version 0" in text, text
        assert len(await rows_of(target)) == 18


async def test_a_file_of_two_services_or_not_events_is_refused(
    store: EventStore, stack_env: dict[str, str], tmp_path: Path
) -> None:
    await store.append("a", 0, [Moved(n=1)], META)
    out = tmp_path / "events.jsonl"
    code, text = await mieux_cli(stack_env, "export", "events", store.service, "--out", str(out), "--no-progress")
    assert code == 0, text
    line = out.read_text().splitlines()[0]
    other = json.dumps({**json.loads(line), "source": "elsewhere"})
    out.write_text(f"{line}\n{other}\n")
    code, text = await mieux_cli(stack_env, "import", str(out), "--no-progress")
    assert code == 1 and "line 2: an event of elsewhere" in text, text
    out.write_text("{}\n")
    code, text = await mieux_cli(stack_env, "import", str(out), "--no-progress")
    assert code == 1 and "line 1: not an exported event" in text, text
    assert len(await rows_of(store)) == 1
