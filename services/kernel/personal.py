"""Personal data that can be forgotten: crypto-shredding (DESIGN.md sections 9 and 11).

**What.** The identifying fields of a person (an expert's name, a team member's name and role) never sit in an
event in clear: each is sealed with AES-256-GCM under a data key of that person's own (a *subject*), and the
event holds the sealed text, a self-describing string `enc:v1:<subject>:<key id>:<base64url(nonce | ciphertext
| tag)>` (the additional data binds it to the subject and key id), so events stay JSON, the store and the bus
stay unaware of it, and a reader knows what to open with which key. Event fields of the type `Sealed` refuse
anything else: an event with a clear name cannot even be made.

**Where the keys are.** The owning service keeps them in its own schema, `<service>.subject_keys`: one row per
subject (subject id, key id, the id of the master key that wrapped it, the wrapped key, created, destroyed).
A data key is wrapped with AES-256-GCM under the master key (MIEUX_PERSONAL_DATA_KEY, base64 of 32 bytes; the
dev stack makes one), the additional data naming the schema, subject and key id, so a wrapped key moved to
another row does not open. It is made when the person's first event is written.

**Forgetting** destroys the key: the row's wrapped key is deleted and the row kept as a tombstone (destroyed
at), so a key is never made again for that subject, and the table is vacuumed so that the old row version goes
too. Every sealed value of the person, in the store, on the topics, in dead letters, in read models and in
backups of them, is then ciphertext without a key. What may still hold a destroyed key for a while: PostgreSQL's
WAL until it is recycled and backups of the keys' table (both useless without the master key); keep backups of
`<service>.subject_keys` short-lived.

**Who opens.** Only the owning service, when it answers a query (read models keep the sealed text; queries
open it at read time, one key lookup per page) or decides a command that compares a name. A destroyed key
opens nothing: the query says the person was forgotten.

**Master-key rotation.** Each wrapped key names its master key (`master_key_id`, derived from the key). Put the
new key in MIEUX_PERSONAL_DATA_KEY and the old one in MIEUX_PERSONAL_DATA_PREVIOUS_KEYS, restart: the service
rewraps every live key under the new one when its keyring is first used (`Keyring.ready`), after which the old
master key can go. The data keys and the events never change.

**Command hashes.** A command's payload hash (kept to answer a retry) would let one confirm a guessed name of
a forgotten person: the command's other fields are in its event. `PersonalCommand` hashes its personal fields
through an HMAC under a key derived from the person's data key, which forgetting destroys with it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import re
import secrets
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, ClassVar, Self

import asyncpg
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import AfterValidator, PrivateAttr

from services.kernel.command import Command, payload_hash
from services.kernel.db import Pool
from services.kernel.errors import RuleBroken
from services.kernel.settings import Settings, SettingsError

log = logging.getLogger(__name__)

PREFIX = "enc:v1:"
FORGOTTEN = "(forgotten)"  # what a query shows in place of a forgotten person's field
UNREADABLE = "(unreadable)"  # ... of a field that does not open although its person was not forgotten
KEY_FILE = "personal-data.key"  # the dev stack's master key, <MIEUX_HOME>/personal-data.key (0600)
_NONCE = 12
_KEY_ID = re.compile(r"[0-9a-f]{12}")
_BLOB = re.compile(r"[A-Za-z0-9_-]{38,}")  # a nonce and a tag at least (28 bytes)


class Forgotten(RuleBroken):
    """The person was forgotten: their key is destroyed, nothing of theirs can be read or written again."""

    def __init__(self, subject: str) -> None:
        self.subject = subject
        super().__init__(f"{subject} was forgotten: their personal data can no longer be read or written")


class PersonalDataError(Exception):
    """A sealed value or a wrapped key that does not open (tampered, another master key, no key): never a name."""


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def parse(value: str) -> tuple[str, str, bytes]:
    """(subject, key id, nonce | ciphertext | tag) of a sealed value; PersonalDataError if it is not one."""
    if not value.startswith(PREFIX):
        raise PersonalDataError("not a sealed value")
    head, key_id, blob = value[len(PREFIX) :].rsplit(":", 2) if value.count(":") >= 4 else ("", "", "")
    if not head or not _KEY_ID.fullmatch(key_id) or not _BLOB.fullmatch(blob):
        raise PersonalDataError("a malformed sealed value")
    return head, key_id, _unb64(blob)


def is_sealed(value: str) -> bool:
    try:
        parse(value)
    except PersonalDataError:
        return False
    return True


def must_be_sealed(value: str) -> str:
    if not is_sealed(value):
        raise ValueError("personal data must be sealed (services.kernel.personal), never in clear")
    return value


# an event field holding personal data: only a sealed value is accepted
Sealed = Annotated[str, AfterValidator(must_be_sealed)]


def _aad(subject: str, key_id: str) -> bytes:
    return f"mieux-personal-v1\x00{subject}\x00{key_id}".encode()


@dataclass(frozen=True)
class SubjectKey:
    """A person's data key (never printed): seals and opens their fields."""

    subject: str
    key_id: str
    secret: bytes = field(repr=False)

    @classmethod
    def new(cls, subject: str) -> SubjectKey:
        return cls(subject, secrets.token_hex(6), AESGCM.generate_key(bit_length=256))

    def seal(self, text: str) -> str:
        nonce = os.urandom(_NONCE)
        sealed = AESGCM(self.secret).encrypt(nonce, text.encode(), _aad(self.subject, self.key_id))
        return f"{PREFIX}{self.subject}:{self.key_id}:{_b64(nonce + sealed)}"

    def reveal(self, value: str) -> str:
        subject, key_id, blob = parse(value)
        if (subject, key_id) != (self.subject, self.key_id):
            raise PersonalDataError(f"a value sealed for another subject or key than {self.subject}'s")
        try:
            return AESGCM(self.secret).decrypt(blob[:_NONCE], blob[_NONCE:], _aad(subject, key_id)).decode()
        except InvalidTag as e:
            raise PersonalDataError(f"a sealed value of {subject} does not open: tampered") from e

    @property
    def digest_key(self) -> bytes:
        """The key command hashes of this person use (derived: destroyed with the data key)."""
        return hmac.new(self.secret, b"mieux-command-digest-v1", hashlib.sha256).digest()


# --- master keys --------------------------------------------------------------------------------------


def master_key_id(key: bytes) -> str:
    """A master key's id: 16 hex digits of an HMAC under it (names it without revealing it)."""
    return hmac.new(key, b"mieux-personal-data-master-key-id", hashlib.sha256).hexdigest()[:16]


def _master(text: str, where: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except ValueError as e:
        raise SettingsError(f"{where} is not base64") from e
    if len(key) != 32:
        raise SettingsError(f"{where} must be base64 of 32 random bytes (AES-256), not {len(key)} bytes")
    return key


@dataclass(frozen=True)
class MasterKeys:
    """The master key data keys are wrapped with, and the previous ones (rotation), by id."""

    current: bytes = field(repr=False)
    previous: tuple[bytes, ...] = field(default=(), repr=False)

    @property
    def current_id(self) -> str:
        return master_key_id(self.current)

    def by_id(self, kid: str) -> bytes:
        for key in (self.current, *self.previous):
            if master_key_id(key) == kid:
                return key
        raise PersonalDataError(
            f"a data key is wrapped under master key {kid}, which is neither MIEUX_PERSONAL_DATA_KEY "
            f"({self.current_id}) nor one of MIEUX_PERSONAL_DATA_PREVIOUS_KEYS"
        )

    @classmethod
    def from_settings(cls, settings: Settings, service: str) -> MasterKeys:
        """MIEUX_PERSONAL_DATA_KEY, else the file MIEUX_PERSONAL_DATA_KEY_FILE names (the dev stack's): a service
        that keeps personal data refuses to start without one."""
        where = "MIEUX_PERSONAL_DATA_KEY"
        if settings.personal_data_key is not None:
            text = settings.personal_data_key.get_secret_value()
        elif settings.personal_data_key_file is not None:
            where = f"MIEUX_PERSONAL_DATA_KEY_FILE {settings.personal_data_key_file}"
            try:
                text = Path(settings.personal_data_key_file).read_text()
            except OSError as e:
                raise SettingsError(f"{where}: cannot read it ({e.strerror or e})") from e
        else:
            raise SettingsError(
                f"the {service} service keeps personal data and has no master key: set MIEUX_PERSONAL_DATA_KEY "
                f"(base64 of 32 random bytes, e.g. `python -c 'import os,base64; print(base64.b64encode("
                f"os.urandom(32)).decode())'`) or MIEUX_PERSONAL_DATA_KEY_FILE, or start the dev stack"
            )
        previous = ()
        if settings.personal_data_previous_keys is not None:
            texts = [t for t in settings.personal_data_previous_keys.get_secret_value().split(",") if t.strip()]
            previous = tuple(_master(t, "a key of MIEUX_PERSONAL_DATA_PREVIOUS_KEYS") for t in texts)
        return cls(_master(text, where), previous)

    def wrap(self, schema: str, key: SubjectKey) -> tuple[str, bytes]:
        nonce = os.urandom(_NONCE)
        aad = f"mieux-subject-key-v1\x00{schema}\x00{key.subject}\x00{key.key_id}".encode()
        return self.current_id, nonce + AESGCM(self.current).encrypt(nonce, key.secret, aad)

    def unwrap(self, schema: str, subject: str, key_id: str, kid: str, wrapped: bytes) -> SubjectKey:
        aad = f"mieux-subject-key-v1\x00{schema}\x00{subject}\x00{key_id}".encode()
        try:
            secret = AESGCM(self.by_id(kid)).decrypt(wrapped[:_NONCE], wrapped[_NONCE:], aad)
        except InvalidTag as e:
            raise PersonalDataError(f"the data key of {subject} does not unwrap: tampered, or another row's") from e
        return SubjectKey(subject, key_id, secret)


# --- the keys of one service's people -----------------------------------------------------------------------


def keys_sql(schema: str) -> str:
    return f"""
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS {schema}.subject_keys (
    subject_id      text PRIMARY KEY,
    key_id          text NOT NULL,
    master_key_id   text,
    wrapped_key     bytea,
    created_at      timestamptz NOT NULL DEFAULT now(),
    destroyed_at    timestamptz,
    CONSTRAINT subject_keys_destroyed_or_kept CHECK ((destroyed_at IS NULL) = (wrapped_key IS NOT NULL))
);"""


class Keyring:
    """The data keys of the people a service keeps data of, in `<schema>.subject_keys`."""

    def __init__(self, pool: Pool, schema: str, masters: MasterKeys) -> None:
        self.pool = pool
        self.schema = schema
        self.masters = masters
        self.table = f"{schema}.subject_keys"
        self._ready = False

    async def ready(self) -> None:
        """Make the table if it is not there, and rewrap the keys of older master keys (once per process)."""
        if self._ready:
            return
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('mieux-schema-setup'))")
            await conn.execute(keys_sql(self.schema))
        await self.rewrap()
        self._ready = True

    async def rewrap(self) -> int:
        """Wrap every live key held under a previous master key under the current one; how many."""
        rows = await self.pool.fetch(
            f"SELECT subject_id, key_id, master_key_id, wrapped_key FROM {self.table} "
            "WHERE destroyed_at IS NULL AND master_key_id <> $1",
            self.masters.current_id,
        )
        for r in rows:
            key = self.masters.unwrap(self.schema, r["subject_id"], r["key_id"], r["master_key_id"], r["wrapped_key"])
            kid, wrapped = self.masters.wrap(self.schema, key)
            await self.pool.execute(
                f"UPDATE {self.table} SET master_key_id = $2, wrapped_key = $3 "
                "WHERE subject_id = $1 AND master_key_id = $4 AND destroyed_at IS NULL",
                key.subject,
                kid,
                wrapped,
                r["master_key_id"],
            )
        return len(rows)

    def _key_of(self, subject: str, row: asyncpg.Record) -> SubjectKey:
        if row["destroyed_at"] is not None:
            raise Forgotten(subject)
        return self.masters.unwrap(self.schema, subject, row["key_id"], row["master_key_id"], row["wrapped_key"])

    async def key_for(self, subject: str) -> SubjectKey:
        """The person's key, made (and stored wrapped) if they have none; Forgotten if it was destroyed."""
        await self.ready()
        key = SubjectKey.new(subject)
        kid, wrapped = self.masters.wrap(self.schema, key)
        made = await self.pool.fetchval(
            f"INSERT INTO {self.table} (subject_id, key_id, master_key_id, wrapped_key) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (subject_id) DO NOTHING RETURNING true",
            subject,
            key.key_id,
            kid,
            wrapped,
        )
        if made:
            return key
        row = await self._row(subject)
        assert row is not None  # the insert found it
        return self._key_of(subject, row)

    async def find(self, subject: str) -> SubjectKey | None:
        """The person's key, or None when they were forgotten or never had one."""
        await self.ready()
        row = await self._row(subject)
        return None if row is None or row["destroyed_at"] is not None else self._key_of(subject, row)

    async def _row(self, subject: str) -> asyncpg.Record | None:
        return await self.pool.fetchrow(
            f"SELECT key_id, master_key_id, wrapped_key, destroyed_at FROM {self.table} WHERE subject_id = $1", subject
        )

    async def destroy(self, subject: str) -> None:
        """Forget the person: delete their wrapped key for good, keep the row as a tombstone (a key is never
        made for them again), then vacuum the table so that the old row version goes too (best effort)."""
        await self.ready()
        await self.pool.execute(
            f"INSERT INTO {self.table} (subject_id, key_id, destroyed_at) VALUES ($1, '', now()) "
            "ON CONFLICT (subject_id) DO UPDATE SET master_key_id = NULL, wrapped_key = NULL, "
            f"destroyed_at = coalesce({self.table}.destroyed_at, now())",
            subject,
        )
        try:
            await self.pool.execute(f"VACUUM {self.table}")
        except Exception:  # not the table's owner, or a vacuum running: autovacuum gets there later
            pass

    async def reveal_all(self, values: Iterable[str]) -> dict[str, str | None]:
        """Each sealed value opened, or None when its person was forgotten; one query for all their keys.
        Values that are not sealed (a redacted '') are left out. A value that cannot be opened although its
        person was not forgotten (no key kept for them here, or the value tampered with) is UNREADABLE, logged
        with the subject's id, so one bad row does not fail a whole page; a data key that does not unwrap (the
        wrong master key) raises PersonalDataError."""
        wanted = {v: parse(v) for v in values if v and v.startswith(PREFIX)}
        if not wanted:
            return {}
        await self.ready()
        rows = await self.pool.fetch(
            f"SELECT subject_id, key_id, master_key_id, wrapped_key, destroyed_at FROM {self.table} "
            "WHERE subject_id = ANY($1::text[])",
            sorted({s for s, _, _ in wanted.values()}),
        )
        keys: dict[str, SubjectKey | None] = {}
        for r in rows:
            keys[r["subject_id"]] = None if r["destroyed_at"] is not None else self._key_of(r["subject_id"], r)
        out: dict[str, str | None] = {}
        for value, (subject, _, _) in wanted.items():
            if subject not in keys:
                log.error("%s: a value sealed for %s, who has no key here: unreadable", self.table, subject)
                out[value] = UNREADABLE
                continue
            key = keys[subject]
            try:
                out[value] = None if key is None else key.reveal(value)
            except PersonalDataError as e:
                log.error("%s: a value sealed for %s does not open (%s): unreadable", self.table, subject, e)
                out[value] = UNREADABLE
        return out


# --- commands that carry personal data ----------------------------------------------------------------


class PersonalCommand(Command):
    """A command with personal fields (`personal`): its hash covers them through an HMAC under the person's
    key, so it must be `keyed()` with that key before it is hashed (its handler does)."""

    personal: ClassVar[tuple[str, ...]] = ()
    _digest_key: bytes | None = PrivateAttr(default=None)

    def keyed(self, key: SubjectKey) -> Self:
        copy = self.model_copy()
        copy._digest_key = key.digest_key
        return copy

    def digest(self) -> str:
        data = self.model_dump(mode="json")
        for name in self.personal:
            if data.get(name) is None:
                continue
            if self._digest_key is None:
                raise RuntimeError(f"{type(self).__name__} carries personal data: keyed() it before hashing it")
            data[name] = {"hmac": hmac.new(self._digest_key, data[name].encode(), hashlib.sha256).hexdigest()}
        return payload_hash(data)


def _folded(text: str) -> str:
    plain = unicodedata.normalize("NFKD", text)
    return "".join(c for c in plain if not unicodedata.combining(c)).casefold()


def names_the_person(text: str, name: str) -> bool:
    """Whether `text` (a reason kept in clear after the person is forgotten) holds their name or a word of it of
    three letters or more, whatever the case and accents."""
    words = re.findall(r"\w+", _folded(text))
    name_words = [w for w in re.findall(r"\w+", _folded(name)) if len(w) >= 3]
    joined = " ".join(words)
    whole = " ".join(re.findall(r"\w+", _folded(name)))
    return bool(whole and f" {whole} " in f" {joined} ") or any(w in words for w in name_words)
