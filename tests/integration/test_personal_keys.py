"""The keyring of personal data (services/kernel/personal.py) against the real PostgreSQL: a person's key made
once and found again, destroyed for good (a tombstone, never made again), values opened a page at a time, a
wrong master key, master-key rotation, and two writers making one person's key at once."""

from __future__ import annotations

import asyncio
import os

import pytest

from services.kernel.db import Pool
from services.kernel.personal import UNREADABLE, Forgotten, Keyring, MasterKeys, PersonalDataError, SubjectKey

pytestmark = pytest.mark.integration


@pytest.fixture
def masters() -> MasterKeys:
    return MasterKeys(os.urandom(32))


@pytest.fixture
async def keyring(pool: Pool, schema: str, masters: MasterKeys) -> Keyring:
    k = Keyring(pool, schema, masters)
    await k.ready()
    return k


async def test_a_key_is_made_once_kept_wrapped_and_found_again(keyring: Keyring, pool: Pool, schema: str) -> None:
    key = await keyring.key_for("expert-1")
    assert await keyring.key_for("expert-1") == key == await keyring.find("expert-1")
    assert await keyring.find("expert-2") is None  # never had one
    row = await pool.fetchrow(f"SELECT * FROM {schema}.subject_keys WHERE subject_id = 'expert-1'")
    assert row["key_id"] == key.key_id and row["master_key_id"] == keyring.masters.current_id
    assert key.secret not in bytes(row["wrapped_key"]) and row["destroyed_at"] is None
    # another process (another keyring, the same master key) opens what this one sealed
    other = Keyring(pool, schema, keyring.masters)
    sealed = key.seal("Philippa Thistlewood")
    assert await other.reveal_all([sealed]) == {sealed: "Philippa Thistlewood"}


async def test_a_destroyed_key_is_gone_for_good_and_its_values_open_to_nothing(
    keyring: Keyring, pool: Pool, schema: str
) -> None:
    a, b = await keyring.key_for("tm-a"), await keyring.key_for("tm-b")
    values = [a.seal("Zebulon"), a.seal("Chief Zeppelin Liaison"), b.seal("Ottoline"), "", "(forgotten)"]
    assert await keyring.reveal_all(values) == {
        values[0]: "Zebulon",
        values[1]: "Chief Zeppelin Liaison",
        values[2]: "Ottoline",
    }
    await keyring.destroy("tm-a")
    await keyring.destroy("tm-a")  # again: nothing changes
    row = await pool.fetchrow(f"SELECT * FROM {schema}.subject_keys WHERE subject_id = 'tm-a'")
    assert (row["wrapped_key"], row["master_key_id"]) == (None, None) and row["destroyed_at"] is not None
    assert await keyring.reveal_all(values) == {values[0]: None, values[1]: None, values[2]: "Ottoline"}
    assert await keyring.find("tm-a") is None
    with pytest.raises(Forgotten, match="tm-a was forgotten"):
        await keyring.key_for("tm-a")  # never made again
    # a person with no key yet can be forgotten too: the tombstone stops a key being made later
    await keyring.destroy("tm-c")
    with pytest.raises(Forgotten):
        await keyring.key_for("tm-c")


async def test_a_value_without_a_key_here_or_tampered_is_unreadable_and_the_others_still_open(
    keyring: Keyring, caplog: pytest.LogCaptureFixture
) -> None:
    stray = SubjectKey.new("expert-stray").seal("Stray Person")  # e.g. an event not of this service's store
    key = await keyring.key_for("expert-3")
    sealed = key.seal("Augustin")
    tampered = sealed[:-2] + ("AA" if sealed[-2:] != "AA" else "BB")
    assert await keyring.reveal_all([stray, tampered, sealed]) == {
        stray: UNREADABLE,
        tampered: UNREADABLE,
        sealed: "Augustin",
    }
    logged = caplog.text
    assert "expert-stray, who has no key here" in logged and "tampered" in logged
    assert "Stray" not in logged and "Augustin" not in logged


async def test_a_wrong_master_key_opens_nothing(keyring: Keyring, pool: Pool, schema: str) -> None:
    key = await keyring.key_for("expert-4")
    wrong = Keyring(pool, schema, MasterKeys(os.urandom(32)))
    with pytest.raises(PersonalDataError, match="neither MIEUX_PERSONAL_DATA_KEY"):
        await wrong.reveal_all([key.seal("Augustin")])


async def test_rotating_the_master_key_rewraps_every_live_key(
    keyring: Keyring, pool: Pool, schema: str, masters: MasterKeys
) -> None:
    kept, gone = await keyring.key_for("expert-5"), await keyring.key_for("expert-6")
    await keyring.destroy("expert-6")
    new = MasterKeys(os.urandom(32), (masters.current,))
    rotated = Keyring(pool, schema, new)
    await rotated.ready()  # a restart with the new master key and the old one as previous
    rows = {r["subject_id"]: r for r in await pool.fetch(f"SELECT * FROM {schema}.subject_keys")}
    assert rows["expert-5"]["master_key_id"] == new.current_id and rows["expert-6"]["wrapped_key"] is None
    assert await Keyring(pool, schema, MasterKeys(new.current)).find("expert-5") == kept  # old key no longer needed
    assert gone != kept and await rotated.find("expert-6") is None
    assert await rotated.rewrap() == 0


async def test_two_writers_making_one_persons_key_get_the_same_key(keyring: Keyring) -> None:
    keys = await asyncio.gather(*(keyring.key_for("tm-race") for _ in range(8)))
    assert len({k.secret for k in keys}) == 1
