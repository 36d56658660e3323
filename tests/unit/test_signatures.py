"""Signed events, without a broker (services/kernel/signing.py): every message of a signed batch verifies alone and
nothing else does (a changed byte, another message's proof, a forged or foreign key, a wrong source); the
reasons; what a consumer remembers never lets through what does not verify; a service without a (known) key
does not start; rotation keeps what the old key signed readable."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support import make_envelope

from services.kernel.envelope import Envelope
from services.kernel.settings import Settings, SettingsError
from services.kernel.signing import (
    HEADER,
    SEAL_BATCH,
    Signed,
    Signer,
    Verifier,
    _leaf,  # the tree's leaf hash
    key_id_of,
    load_public_keys,
    new_key,
    owner_of,
    private_pem,
    public_text,
    root_of,
    signature_of,
    signer_for,
    tree,
)

TOPIC = "mieux.requests.events"


def envelopes(n: int, source: str = "requests") -> list[Envelope]:
    return [
        make_envelope("RequestReceived", {"n": i, "title": "Support"}, stream_id=f"req-{i}", source=source)
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def keys() -> dict[str, tuple[Ed25519PrivateKey, str, str]]:
    return {service: new_key() for service in ("requests", "actions")}


def signer(keys, service: str = "requests") -> Signer:
    private, kid, _ = keys[service]
    return Signer(service, kid, private)


def verifier(keys) -> Verifier:
    return Verifier(load_public_keys({s: {kid: public} for s, (_, kid, public) in keys.items()}))


def check(v: Verifier, m: Signed, topic: str = TOPIC, value: bytes | None = None) -> str | None:
    value = m.value if value is None else value
    return v.check(topic, value, Envelope.from_bytes(value), signature_of(m.headers))


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13, SEAL_BATCH - 1, SEAL_BATCH, SEAL_BATCH + 1, 2 * SEAL_BATCH + 7])
def test_every_message_of_a_signed_batch_verifies_alone(keys, n: int) -> None:
    sealed = signer(keys).seal(envelopes(n))
    v = verifier(keys)
    assert [check(v, m) for m in sealed] == [None] * n
    assert all(Envelope.from_bytes(m.value).key_id == keys["requests"][1] for m in sealed)
    fresh = verifier(keys)  # a consumer that sees only the last one (a new group, a parked retry)
    assert check(fresh, sealed[-1]) is None


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7, 9, 16, 17, 100])
def test_each_leafs_proof_leads_to_the_root_and_no_other_leafs_does(n: int) -> None:
    values = [f"message {i}".encode() for i in range(n)]
    root, proofs = tree([_leaf(v) for v in values])
    assert [root_of(v, p) for v, p in zip(values, proofs, strict=True)] == [root] * n
    if n > 1:
        assert root_of(values[0], proofs[1]) != root
    assert max(len(p) for p in proofs) <= 33 * (n - 1).bit_length()


def test_the_key_id_travels_in_the_signed_bytes_and_the_stored_envelope_is_left_as_it_was(keys) -> None:
    stored = envelopes(1)[0]
    [m] = signer(keys).seal([stored])
    assert stored.key_id == ""
    assert Envelope.from_bytes(m.value).model_copy(update={"key_id": ""}) == stored
    assert m.key == stored.stream_id.encode() and [name for name, _ in m.headers] == [HEADER]


def test_a_changed_byte_another_messages_proof_or_a_wrong_topic_does_not_verify(keys) -> None:
    sealed = signer(keys).seal(envelopes(7))
    v = verifier(keys)
    doctored = sealed[2].value.replace(b'"actor":"tester"', b'"actor":"dev-admin"')
    assert doctored != sealed[2].value
    assert check(v, sealed[2], value=doctored) == "signature does not verify"
    swapped = Signed(sealed[2].key, sealed[2].value, sealed[3].headers)
    assert check(v, swapped) == "signature does not verify"
    # the requests service's message copied onto the actions topic: not the actions service's key
    assert check(v, sealed[2], topic="mieux.actions.events") == (
        f"signed with a key of requests ({keys['requests'][1]}), not of actions, the topic's producer"
    )
    assert check(v, sealed[2], topic="bench.somewhere") == "no producer owns the topic bench.somewhere"


def test_what_is_not_signed_by_the_topics_producer_is_refused_with_its_reason(keys) -> None:
    v = verifier(keys)
    env = envelopes(1)[0]
    assert v.check(TOPIC, env.to_bytes(), env, None) == "unsigned"
    assert v.check(TOPIC, env.to_bytes(), env, b"not base64!") == "signature malformed"
    [signed_without_kid] = Signer("requests", "", keys["requests"][0]).seal([env])
    assert check(v, signed_without_kid) == "unsigned: no key id"
    forger = Signer("requests", keys["requests"][1], Ed25519PrivateKey.generate())  # its key id, another key
    assert check(v, forger.seal([env])[0]) == "signature does not verify"
    rogue = Signer("requests", "rogue-1", Ed25519PrivateKey.generate())
    assert check(v, rogue.seal([env])[0]) == "unknown key id rogue-1 for requests"
    odd = Signer("requests", "rogue\n[red]x", Ed25519PrivateKey.generate())  # a reason never quotes input
    assert check(v, odd.seal([env])[0]) == "unknown key id (malformed) for requests"
    foreign = signer(keys, "actions").seal([env])[0]
    assert (
        check(v, foreign)
        == f"signed with a key of actions ({keys['actions'][1]}), not of requests, the topic's producer"
    )
    # the producer's own key, but an envelope that says it comes from another service
    wrong_source = signer(keys).seal([env.model_copy(update={"source": "actions"})])[0]
    assert check(v, wrong_source) == "source actions is not requests, the topic's producer"


def test_what_a_consumer_remembers_never_lets_through_what_does_not_verify(keys) -> None:
    sealed = signer(keys).seal(envelopes(4))
    v = verifier(keys)
    assert check(v, sealed[0]) is None  # its batch's tree is now known
    _, _, proof = signature_of(sealed[1].headers).partition(b".")
    other_signature = base64.b64encode(Ed25519PrivateKey.generate().sign(b"x"))
    tampered = Signed(sealed[1].key, sealed[1].value, [(HEADER, other_signature + b"." + proof)])
    assert check(v, tampered) == "signature does not verify"  # the tree is known, not with this signature
    assert check(v, sealed[1], value=sealed[1].value + b" ") == "signature does not verify"
    assert [check(v, m) for m in sealed] == [None] * 4  # every node of the tree is known now
    value, env, header = sealed[2].value, Envelope.from_bytes(sealed[2].value), signature_of(sealed[2].headers)
    for i in range(0, len(value), 7):  # any byte changed: its leaf is not a known node, and its proof fails
        flipped = value[:i] + bytes([value[i] ^ 1]) + value[i + 1 :]
        assert v.check(TOPIC, flipped, env, header) == "signature does not verify", i


def test_a_rotated_key_signs_new_events_and_what_the_old_one_signed_still_verifies(keys) -> None:
    old = signer(keys).seal(envelopes(3))
    new_private, new_kid, new_public = new_key()
    new = Signer("requests", new_kid, new_private).seal(envelopes(3))
    both = {"requests": {keys["requests"][1]: keys["requests"][2], new_kid: new_public}}
    v = Verifier(load_public_keys(both))
    assert [check(v, m) for m in old + new] == [None] * 6
    assert {Envelope.from_bytes(m.value).key_id for m in new} == {new_kid} != {keys["requests"][1]}
    only_new = Verifier(load_public_keys({"requests": {new_kid: new_public}}))
    assert check(only_new, old[0]) == f"unknown key id {keys['requests'][1]} for requests"


def test_topics_are_owned_by_the_service_they_name() -> None:
    assert owner_of("mieux.requests.events") == "requests"
    assert owner_of("mieux.requests.projections.dlq") is None
    assert owner_of("requests") is None


# --- settings ---------------------------------------------------------------------------------------------


def settings(home: Path, **values: object) -> Settings:
    return Settings(MIEUX_HOME=home, **values)  # type: ignore[arg-type]


def test_a_service_signs_with_its_key_file_under_the_id_derived_from_it(tmp_path: Path) -> None:
    private, kid, public = new_key()
    path = tmp_path / "requests.pem"
    path.write_bytes(private_pem(private))
    s = settings(tmp_path, MIEUX_SIGNING_KEY_FILE=path, MIEUX_VERIFY_KEYS={"requests": {kid: public}})
    got = signer_for(s, "requests")
    assert (got.service, got.key_id) == ("requests", kid) and kid == key_id_of(private.public_key())
    inline = settings(
        tmp_path,
        MIEUX_SIGNING_KEY=private_pem(private).decode(),
        MIEUX_SIGNING_KEY_ID="2026-01",
        MIEUX_VERIFY_KEYS={"requests": {"2026-01": public}},
    )
    assert signer_for(inline, "requests").key_id == "2026-01"


def test_a_service_without_a_key_or_with_one_nobody_can_verify_does_not_start(tmp_path: Path) -> None:
    private, kid, public = new_key()
    with pytest.raises(SettingsError, match="no signing key for requests: set MIEUX_SIGNING_KEY_FILE"):
        signer_for(settings(tmp_path, MIEUX_VERIFY_KEYS={}), "requests")
    unknown = settings(tmp_path, MIEUX_SIGNING_KEY=private_pem(private).decode(), MIEUX_VERIFY_KEYS={})
    with pytest.raises(SettingsError, match=f"signs with key id {kid}, which MIEUX_VERIFY_KEYS does not hold"):
        signer_for(unknown, "requests")
    other_public = public_text(Ed25519PrivateKey.generate().public_key())
    mismatched = settings(
        tmp_path, MIEUX_SIGNING_KEY=private_pem(private).decode(), MIEUX_VERIFY_KEYS={"requests": {kid: other_public}}
    )
    with pytest.raises(SettingsError, match="not the public key MIEUX_VERIFY_KEYS holds for requests"):
        signer_for(mismatched, "requests")
    both = settings(
        tmp_path,
        MIEUX_SIGNING_KEY=private_pem(private).decode(),
        MIEUX_SIGNING_KEY_FILE=tmp_path / "k.pem",
        MIEUX_VERIFY_KEYS={"requests": {kid: public}},
    )
    with pytest.raises(SettingsError, match="both set"):
        signer_for(both, "requests")
    not_a_key = settings(tmp_path, MIEUX_SIGNING_KEY="hello", MIEUX_VERIFY_KEYS={})
    with pytest.raises(SettingsError, match="not an unencrypted PKCS#8 PEM private key"):
        signer_for(not_a_key, "requests")


def test_verify_keys_are_checked_at_start(tmp_path: Path) -> None:
    _, kid, public = new_key()
    with pytest.raises(SettingsError, match="no keys to verify events with"):
        Verifier.from_settings(settings(tmp_path))
    with pytest.raises(SettingsError, match="the same public key is also requests's"):
        load_public_keys({"requests": {kid: public}, "actions": {kid: public}})
    with pytest.raises(SettingsError, match=r"MIEUX_VERIFY_KEYS\['requests'\]\['k1'\]: not an Ed25519 public key"):
        load_public_keys({"requests": {"k1": "bm90IGEga2V5"}})
    with pytest.raises(SettingsError, match="a key id is 1 to 64"):
        load_public_keys({"requests": {"bad id": public}})
    pem = Ed25519PrivateKey.generate().public_key()
    text = pem.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    assert load_public_keys({"requests": {"k1": text}})["requests"]["k1"] is not None
