"""Signed events (DESIGN.md sections 9 and 11): a service signs what its relay publishes; every consumer verifies
it with the producer's public key before anything is applied, and parks what is unsigned or does not verify.

**What is signed.** A message's value is the envelope's JSON as the relay publishes it, with `key_id` (which key
of its producer signed it) set in it. The consumer verifies the exact bytes it received, so no canonical JSON
is needed and everything a consumer reads from an envelope (event id and type, source, stream and version,
actor, correlation, data, key id) is covered as it is. The Kafka key and the other headers are not trusted by
any consumer (the stream is the envelope's `stream_id`).

**How.** The relay signs a batch at once: the leaves of a Merkle tree are SHA-256(0x00 || value) of each
message (at most SEAL_BATCH per tree), an inner node SHA-256(0x01 || left || right), and the Ed25519 signature
is over `mieux-events-v1 <service> <root>`. Each message carries, in its `mieux-signature` header, the
signature and its inclusion proof (the sibling hashes from its leaf up to the root): `<base64 signature>` for a
tree of one, `<base64 signature>.<base64 proof>` otherwise, each proof step a side byte (0: the sibling is on
the left, 1: on the right) and the sibling's 32 bytes. A consumer hashes the bytes it received up to the root
and verifies the signature on the root; a message is as authentic as the root its proof leads to, so a
message taken out of its batch still verifies alone (replays, parked retries, a new consumer group).
*Why a tree:* an Ed25519 verification costs 75-110 us on the machine the README's benchmarks ran on
(`cryptography` holds the GIL while OpenSSL verifies, so threads do not help), more than twice the cost of
applying an event to a read model; one per message would cap a consumer near 9,000 events/s. `Verifier`
remembers the nodes of the trees it has verified (KNOWN_NODES, about 4 MB; a node of a tree whose root
verified is authentic, as are its children: SHA-256 gives a node one pair of children), so a message's
proof is followed only up to the first node already known: a consumer verifies about one signature per tree
and, per message, hashes the message and a node or two (about 6 us here, against 75-110 us).

**Whose key.** The topic `mieux.<service>.events` is <service>'s: a message on it must name a key id of that
service (MIEUX_VERIFY_KEYS[service]) and say `source` <service>; the signed bytes name the service too, so a
valid signature by another service's key vouches for nothing here. What fails is parked with its reason:
"unsigned", "signature malformed", "unknown key id <id> for <service>", "signed with a key of <other>, not
of <service>, the topic's producer", "signature does not verify", "source <x> is not <service>, the topic's
producer". A reason never quotes more of the message than a key id or a service name of at most 64 safe
characters.

**Keys and rotation.** A service signs with MIEUX_SIGNING_KEY (or MIEUX_SIGNING_KEY_FILE; in the dev stack its
`signing/<service>.pem`), under MIEUX_SIGNING_KEY_ID (default: the first 16 hex digits of SHA-256 of the raw
public key). It refuses to start without one, or when its key is not the one MIEUX_VERIFY_KEYS holds for it
under that id (its own consumers, and everyone else's, would park all it publishes). Rotating: add the new
public key to MIEUX_VERIFY_KEYS everywhere first, then give the service the new private key; the old key id
stays in MIEUX_VERIFY_KEYS for as long as messages signed with it may be read (a consumer group reading
from the beginning, parked retries). A replay (`mieux replay`) republishes with the current key.

**Rebuilds** read the owning service's `ReadAll` over gRPC (the caller authenticated, TLS where configured),
not the bus: the events come from the producer's own store, and a signature is made when the relay
publishes, so there is nothing to verify there.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from services.kernel.envelope import DecodeError, Envelope
from services.kernel.settings import Settings, SettingsError

HEADER = "mieux-signature"
SEAL_BATCH = 256  # messages per signed tree at most: a proof of 8 steps (264 bytes)
DOMAIN = b"mieux-events-v1 "
SIGNING_DIR = "signing"  # the dev stack's private keys, <MIEUX_HOME>/signing/<service>.pem
MAX_PROOF_STEPS = 32
KNOWN_NODES = 1 << 15  # tree nodes a Verifier remembers as authentic (the older half forgotten at once): ~4 MB
_STEP = 33
_STEP_TEXT = 44  # a step in base64: 33 bytes are 44 characters, without padding
_SIGNATURE_TEXT = 88
_SAFE = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_TOPIC = re.compile(r"mieux\.([A-Za-z0-9_-]+)\.events")


class Unverified(DecodeError):
    """A message whose producer's signature is missing or does not verify: parked with the reason, never applied."""


def owner_of(topic: str) -> str | None:
    """The service whose relay publishes onto `topic` (`mieux.<service>.events`), or None."""
    m = _TOPIC.fullmatch(topic)
    return m.group(1) if m else None


def key_id_of(public: Ed25519PublicKey) -> str:
    """The default key id of a public key: 16 hex digits of the SHA-256 of its raw bytes."""
    return hashlib.sha256(raw_public(public)).hexdigest()[:16]


def raw_public(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_text(public: Ed25519PublicKey) -> str:
    """A public key as MIEUX_VERIFY_KEYS holds it: base64 of its 32 raw bytes."""
    return base64.b64encode(raw_public(public)).decode()


def private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def shown(text: str) -> str:
    """A key id or service name from a message, as a reason may quote it (never arbitrary input)."""
    return text if _SAFE.fullmatch(text) else "(malformed)"


def _leaf(value: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + value).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _signed(service: str, root: bytes) -> bytes:
    return DOMAIN + service.encode() + b" " + root


def tree(leaves: Sequence[bytes]) -> tuple[bytes, list[bytes]]:
    """The root of the Merkle tree over `leaves` and each leaf's proof. An odd node out is carried up a level
    unchanged (no step in the proofs below it)."""
    proofs = [bytearray() for _ in leaves]
    at = list(range(len(leaves)))  # each leaf's ancestor in the current level
    level = list(leaves)
    while len(level) > 1:
        for leaf, i in enumerate(at):
            if i % 2:
                proofs[leaf] += b"\x00" + level[i - 1]
            elif i + 1 < len(level):
                proofs[leaf] += b"\x01" + level[i + 1]
            at[leaf] = i // 2
        up = [_node(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            up.append(level[-1])
        level = up
    return level[0], [bytes(p) for p in proofs]


def root_of(value: bytes, proof: bytes) -> bytes:
    """The root a message's proof leads to (ValueError when the proof is malformed)."""
    h = _leaf(value)
    for k in range(0, len(proof), _STEP):
        side, sibling = proof[k], proof[k + 1 : k + _STEP]
        if side == 0:
            h = _node(sibling, h)
        elif side == 1:
            h = _node(h, sibling)
        else:
            raise ValueError("proof step side")
    return h


def header_value(signature: bytes, proof: bytes) -> bytes:
    sig = base64.b64encode(signature)
    return sig + b"." + base64.b64encode(proof) if proof else sig


def signature_of(headers: Iterable[tuple[str, bytes | None]] | None) -> bytes | None:
    """The `mieux-signature` header of a Kafka record's headers, if any."""
    for name, value in headers or ():
        if name == HEADER:
            return value
    return None


@dataclass(frozen=True)
class Signed:
    """A message as the relay publishes it."""

    key: bytes  # the Kafka key: the stream id
    value: bytes  # the envelope's JSON, with the key id
    headers: list[tuple[str, bytes]]


@dataclass(frozen=True)
class Signer:
    """A service's signing key."""

    service: str
    key_id: str
    private: Ed25519PrivateKey

    def seal(self, envelopes: Sequence[Envelope]) -> list[Signed]:
        """The envelopes as the relay publishes them, in order: each with the key id, signed by trees of at most
        SEAL_BATCH messages."""
        out: list[Signed] = []
        for start in range(0, len(envelopes), SEAL_BATCH):
            chunk = envelopes[start : start + SEAL_BATCH]
            values = [e.model_copy(update={"key_id": self.key_id}).to_bytes() for e in chunk]
            root, proofs = tree([_leaf(v) for v in values])
            signature = self.private.sign(_signed(self.service, root))
            out += [
                Signed(e.stream_id.encode(), v, [(HEADER, header_value(signature, p))])
                for e, v, p in zip(chunk, values, proofs, strict=True)
            ]
        return out


class Verifier:
    """Verifies messages against the public keys of every producer: {service: {key id: key}}."""

    def __init__(self, keys: Mapping[str, Mapping[str, Ed25519PublicKey]]) -> None:
        self.keys = {service: dict(ks) for service, ks in keys.items()}
        self._owners: dict[str, list[str]] = {}  # key id -> the services that have a key of that id
        for service, ks in self.keys.items():
            for kid in ks:
                self._owners.setdefault(kid, []).append(service)
        # tree nodes known to be authentic: hash -> the (service, key id, signature) of the signed root above them,
        # by number (_scopes)
        self._known: dict[bytes, int] = {}
        self._scopes: dict[tuple[str, str, bytes], int] = {}
        self._numbers = itertools.count()

    @classmethod
    def from_settings(cls, settings: Settings) -> Verifier:
        """MIEUX_VERIFY_KEYS (or the dev stack's), checked: each an Ed25519 public key, none under two services."""
        if settings.verify_keys is None:
            raise SettingsError(
                "no keys to verify events with: set MIEUX_VERIFY_KEYS (JSON {service: {key id: public key}}) or "
                "start the dev stack with `mieux dev up`"
            )
        return cls(load_public_keys(settings.verify_keys))

    def check(self, topic: str, value: bytes | None, env: Envelope, header: bytes | str | None) -> str | None:
        """None when `value` (the bytes received, parsed as `env`) was signed by `topic`'s producer; else why not."""
        owner = owner_of(topic)
        if owner is None:
            return f"no producer owns the topic {shown(topic)}"
        if not header:
            return "unsigned"
        text = header.encode() if isinstance(header, str) else bytes(header)
        sig_text, _, proof_text = text.partition(b".")
        steps, odd = divmod(len(proof_text), _STEP_TEXT)
        if len(sig_text) != _SIGNATURE_TEXT or odd or steps > MAX_PROOF_STEPS:
            return "signature malformed"
        kid = env.key_id
        key = self.keys.get(owner, {}).get(kid)
        if key is None:
            if not kid:
                return "unsigned: no key id"
            others = [s for s in self._owners.get(kid, ()) if s != owner]
            if others:
                return f"signed with a key of {others[0]} ({shown(kid)}), not of {owner}, the topic's producer"
            return f"unknown key id {shown(kid)} for {owner}"
        # up the proof from the message's leaf until a node known to be authentic (a node of the tree whose root
        # this producer's key signed with this signature), or the root, whose signature is then verified; every
        # node on the way, and each sibling, is then authentic too (SHA-256: a node has one pair of children)
        scope = self._scopes.get((owner, kid, sig_text), -1)  # -1: no node of this tree is known yet
        known = self._known
        h = _leaf(value or b"")
        seen: list[bytes] = []
        proof = b""
        for k in range(steps + 1):
            if known.get(h) == scope:
                break
            if k == steps:
                try:
                    key.verify(base64.b64decode(sig_text, validate=True), _signed(owner, h))
                except binascii.Error:
                    return "signature malformed"
                except InvalidSignature:
                    return "signature does not verify"
                break
            if not proof:  # read only when the leaf is not known already
                try:
                    proof = base64.b64decode(proof_text, validate=True)
                except binascii.Error:
                    return "signature malformed"
            side, sibling = proof[k * _STEP], proof[k * _STEP + 1 : (k + 1) * _STEP]
            if side > 1:
                return "signature malformed"
            seen += (h, sibling)
            h = _node(sibling, h) if side == 0 else _node(h, sibling)
        if scope < 0:  # registered once it verified (what does not verify leaves nothing behind)
            scope = self._scopes[(owner, kid, sig_text)] = next(self._numbers)
        for node in (*seen, h):
            known[node] = scope
        if len(known) > KNOWN_NODES:  # the older half forgotten, in one go (deleting one by one from the front of
            # a dict makes each next deletion slower); the roots' signatures are verified again if they come again
            self._known = dict(itertools.islice(known.items(), len(known) // 2, None))
            live = set(self._known.values())
            self._scopes = {k: n for k, n in self._scopes.items() if n in live}
        if env.source != owner:
            return f"source {shown(env.source)} is not {owner}, the topic's producer"
        return None

    def verify(self, topic: str, value: bytes | None, env: Envelope, header: bytes | str | None) -> None:
        """Raise Unverified with the reason unless `value` was signed by the producer of `topic`."""
        reason = self.check(topic, value, env, header)
        if reason is not None:
            raise Unverified(reason)


def load_public_keys(config: Mapping[str, Mapping[str, str]]) -> dict[str, dict[str, Ed25519PublicKey]]:
    """{service: {key id: base64 raw key or PEM}} -> Ed25519 public keys (SettingsError naming what is wrong)."""
    keys: dict[str, dict[str, Ed25519PublicKey]] = {}
    seen: dict[bytes, str] = {}
    for service, ks in config.items():
        keys[service] = {}
        for kid, text in ks.items():
            where = f"MIEUX_VERIFY_KEYS[{service!r}][{kid!r}]"
            if not _SAFE.fullmatch(kid):
                raise SettingsError(f"{where}: a key id is 1 to 64 of A-Z a-z 0-9 . _ : -")
            public = _public_key(text, where)
            raw = raw_public(public)
            if raw in seen and seen[raw] != service:
                raise SettingsError(
                    f"{where}: the same public key is also {seen[raw]}'s; a service's key may vouch only for its own "
                    "topic, so each service has keys of its own"
                )
            seen[raw] = service
            keys[service][kid] = public
    return keys


def _public_key(text: str, where: str) -> Ed25519PublicKey:
    try:
        if text.lstrip().startswith("-----BEGIN"):
            public: Any = serialization.load_pem_public_key(text.encode())
        else:
            public = Ed25519PublicKey.from_public_bytes(base64.b64decode(text, validate=True))
    except ValueError as e:
        raise SettingsError(f"{where}: not an Ed25519 public key (base64 of its 32 raw bytes, or PEM)") from e
    if not isinstance(public, Ed25519PublicKey):
        raise SettingsError(f"{where}: not an Ed25519 public key")
    return public


def dev_key_file(home: Path, service: str) -> Path:
    """Where the dev stack keeps a service's private key."""
    return home / SIGNING_DIR / f"{service}.pem"


def signer_for(settings: Settings, service: str) -> Signer:
    """The key `service` signs with (fail fast, with a clear message, when it has none or a wrong one)."""
    if settings.signing_key is not None and settings.signing_key_file is not None:
        raise SettingsError("MIEUX_SIGNING_KEY and MIEUX_SIGNING_KEY_FILE are both set: set one")
    if settings.signing_key is not None:
        pem, where = settings.signing_key.get_secret_value().encode(), "MIEUX_SIGNING_KEY"
    else:
        path = settings.signing_key_file or dev_key_file(settings.mieux_home, service)
        where = "MIEUX_SIGNING_KEY_FILE" if settings.signing_key_file else f"the dev stack's {path}"
        try:
            pem = path.read_bytes()
        except FileNotFoundError:
            if settings.signing_key_file is not None:
                raise SettingsError(f"MIEUX_SIGNING_KEY_FILE {path}: no such file") from None
            raise SettingsError(
                f"no signing key for {service}: set MIEUX_SIGNING_KEY_FILE (or MIEUX_SIGNING_KEY), an Ed25519 "
                "private key in PKCS#8 PEM, or start the dev stack with `mieux dev up`; every service signs the "
                "events it publishes"
            ) from None
    try:
        private = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as e:
        raise SettingsError(f"{where}: not an unencrypted PKCS#8 PEM private key") from e
    if not isinstance(private, Ed25519PrivateKey):
        raise SettingsError(f"{where}: not an Ed25519 private key")
    kid = settings.signing_key_id or key_id_of(private.public_key())
    if not _SAFE.fullmatch(kid):
        raise SettingsError("MIEUX_SIGNING_KEY_ID: a key id is 1 to 64 of A-Z a-z 0-9 . _ : -")
    known = load_public_keys(settings.verify_keys or {}).get(service, {}).get(kid)
    if known is None:
        raise SettingsError(
            f"{service} signs with key id {kid}, which MIEUX_VERIFY_KEYS does not hold for {service}: every consumer "
            f"would park what it publishes. Add {{{service!r}: {{{kid!r}: {public_text(private.public_key())!r}}}}} "
            "to MIEUX_VERIFY_KEYS everywhere first"
        )
    if raw_public(known) != raw_public(private.public_key()):
        raise SettingsError(
            f"{service}'s signing key is not the public key MIEUX_VERIFY_KEYS holds for {service} under {kid}"
        )
    return Signer(service, kid, private)


def new_key() -> tuple[Ed25519PrivateKey, str, str]:
    """A new key: (private key, its default key id, its public key as MIEUX_VERIFY_KEYS holds it)."""
    private = Ed25519PrivateKey.generate()
    return private, key_id_of(private.public_key()), public_text(private.public_key())
