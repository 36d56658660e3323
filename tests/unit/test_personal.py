"""Personal data keys (services/kernel/personal.py), without a database: sealing and opening, the sealed form,
wrapping under a master key, a wrong master key, tampering, the master key from settings, keyed command hashes
and reasons that name the person. The keyring's table (made, found, destroyed) is tested against PostgreSQL in
tests/integration/test_personal_keys.py."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from services.kernel.personal import (
    PREFIX,
    MasterKeys,
    PersonalDataError,
    SubjectKey,
    is_sealed,
    master_key_id,
    names_the_person,
    parse,
)
from services.kernel.settings import Settings, SettingsError


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def test_a_sealed_value_opens_with_its_key_and_says_whose_it_is() -> None:
    key = SubjectKey.new("expert-1")
    sealed = key.seal("Zoë Ångström")
    assert sealed.startswith(f"{PREFIX}expert-1:{key.key_id}:") and is_sealed(sealed)
    assert "Zo" not in sealed and key.reveal(sealed) == "Zoë Ångström"
    assert key.seal("Zoë Ångström") != sealed  # a fresh nonce each time
    assert parse(sealed)[:2] == ("expert-1", key.key_id)
    assert key.reveal(key.seal("")) == ""
    assert "secret" not in repr(key) and str(key.secret) not in repr(key)


def test_a_subject_id_with_colons_still_parses() -> None:
    key = SubjectKey.new("tm:a:b")
    assert parse(key.seal("x"))[0] == "tm:a:b" and key.reveal(key.seal("x")) == "x"


def test_another_persons_key_or_a_new_key_of_the_same_person_does_not_open_it() -> None:
    key = SubjectKey.new("expert-1")
    sealed = key.seal("Zoë")
    with pytest.raises(PersonalDataError, match="another subject"):
        SubjectKey.new("expert-2").reveal(sealed)
    with pytest.raises(PersonalDataError):
        SubjectKey.new("expert-1").reveal(sealed)  # another key id
    same_id = SubjectKey("expert-1", key.key_id, os.urandom(32))  # another secret under the same id
    with pytest.raises(PersonalDataError, match="tampered"):
        same_id.reveal(sealed)


def test_a_tampered_sealed_value_does_not_open() -> None:
    key = SubjectKey.new("expert-1")
    sealed = key.seal("Zoë Ångström")
    head, blob = sealed.rsplit(":", 1)
    raw = bytearray(base64.urlsafe_b64decode(blob + "=" * (-len(blob) % 4)))
    raw[-20] ^= 1
    flipped = head + ":" + base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    with pytest.raises(PersonalDataError, match="tampered"):
        key.reveal(flipped)
    # moved onto another subject's id: the additional data binds it to its subject
    moved = sealed.replace("expert-1", "expert-2")
    with pytest.raises(PersonalDataError, match="tampered"):
        SubjectKey("expert-2", key.key_id, key.secret).reveal(moved)


@pytest.mark.parametrize(
    "value", ["Zoë", "", "enc:v1:", "enc:v1:s:k:abc", "enc:v1:s:0123456789ab:" + "A" * 10, "enc:v2:s:0123456789ab:x"]
)
def test_what_is_not_a_sealed_value_is_refused(value: str) -> None:
    assert not is_sealed(value)
    with pytest.raises(PersonalDataError):
        parse(value)


def test_a_data_key_is_wrapped_under_the_master_key_and_a_wrong_master_key_does_not_unwrap_it() -> None:
    masters = MasterKeys(os.urandom(32))
    key = SubjectKey.new("expert-1")
    kid, wrapped = masters.wrap("experts", key)
    assert kid == masters.current_id and key.secret not in wrapped
    assert masters.unwrap("experts", "expert-1", key.key_id, kid, wrapped) == key
    with pytest.raises(PersonalDataError, match="neither MIEUX_PERSONAL_DATA_KEY"):
        MasterKeys(os.urandom(32)).unwrap("experts", "expert-1", key.key_id, kid, wrapped)
    with pytest.raises(PersonalDataError, match="does not unwrap"):
        masters.unwrap("experts", "expert-2", key.key_id, kid, wrapped)  # another row's
    with pytest.raises(PersonalDataError, match="does not unwrap"):
        masters.unwrap("logistics", "expert-1", key.key_id, kid, wrapped)  # another service's table
    tampered = wrapped[:-1] + bytes([wrapped[-1] ^ 1])
    with pytest.raises(PersonalDataError, match="does not unwrap"):
        masters.unwrap("experts", "expert-1", key.key_id, kid, tampered)


def test_a_previous_master_key_still_unwraps_what_it_wrapped() -> None:
    old, new = os.urandom(32), os.urandom(32)
    key = SubjectKey.new("tm-1")
    kid, wrapped = MasterKeys(old).wrap("logistics", key)
    assert kid == master_key_id(old) != master_key_id(new)
    assert MasterKeys(new, (old,)).unwrap("logistics", "tm-1", key.key_id, kid, wrapped) == key


def test_the_master_key_comes_from_the_setting_or_its_file_and_a_service_without_one_does_not_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("MIEUX_PERSONAL_DATA_KEY", "MIEUX_PERSONAL_DATA_KEY_FILE", "MIEUX_PERSONAL_DATA_PREVIOUS_KEYS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MIEUX_HOME", str(tmp_path))  # no dev stack there
    with pytest.raises(SettingsError, match="the experts service keeps personal data and has no master key"):
        MasterKeys.from_settings(Settings(), "experts")
    key, old = os.urandom(32), os.urandom(32)
    monkeypatch.setenv("MIEUX_PERSONAL_DATA_KEY", b64(key))
    monkeypatch.setenv("MIEUX_PERSONAL_DATA_PREVIOUS_KEYS", f"{b64(old)}, ")
    assert MasterKeys.from_settings(Settings(), "experts") == MasterKeys(key, (old,))
    monkeypatch.delenv("MIEUX_PERSONAL_DATA_KEY")
    path = tmp_path / "key"
    path.write_text(b64(key) + "\n")
    monkeypatch.setenv("MIEUX_PERSONAL_DATA_KEY_FILE", str(path))
    assert MasterKeys.from_settings(Settings(), "logistics").current == key
    path.write_text(b64(os.urandom(16)))
    with pytest.raises(SettingsError, match="32 random bytes"):
        MasterKeys.from_settings(Settings(), "logistics")
    path.write_text("not base64 at all!")
    with pytest.raises(SettingsError, match="not base64"):
        MasterKeys.from_settings(Settings(), "logistics")
    path.unlink()
    with pytest.raises(SettingsError, match="cannot read it"):
        MasterKeys.from_settings(Settings(), "logistics")


@pytest.mark.parametrize(
    ("reason", "names"),
    [
        ("erasure request of 2017-05-01", False),
        ("asked by Tanja by e-mail", True),
        ("VAN VELDHUIZEN asked", True),
        ("veldhuízen", True),
        ("tanja van veldhuizen", True),
        ("van der Berg's request", True),  # a word of her name of three letters or more: refused, to be safe
        ("retention period over", False),
        ("tanjavan", False),  # words, not substrings
    ],
)
def test_a_reason_that_names_the_person_is_told(reason: str, names: bool) -> None:
    assert names_the_person(reason, "Tanja van Veldhuizen") is names
