"""Who may call: the token registry every gRPC server (and the stats report page) authenticates against.

A registry entry keeps a token's principal (name, roles and, for a service, its allow-list of calls), an id to
revoke it by, and sha256(salt + token) with a random salt of its own: the token itself is never stored. A bearer
token is checked against every entry with `hmac.compare_digest` (constant time, no early exit on a hit), and one
under MIN_TOKEN_LENGTH characters is refused before any hashing.

Entries come from MIEUX_AUTH_TOKENS (JSON, fixed for the life of the process) and MIEUX_AUTH_TOKENS_FILE (the
same JSON in a file: the dev stack's `auth-tokens.json`, a mounted Secret in a deployment). The file is read
again when its modification time or size changes, so tokens issued or revoked by `mieux tokens` count at the
next call without restarting a server.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, field_serializer, model_validator

from services.kernel.files import write_private
from services.kernel.settings import Principal, Role, SettingsError

MIN_TOKEN_LENGTH = 32


class TokenEntry(BaseModel):
    """One token of the registry: its principal, an id (never secret) and its salted hash."""

    id: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=200)
    roles: frozenset[Role]
    # full method names (`/pkg.Service/Method`) a service principal may call; None: whatever its roles admit
    calls: frozenset[str] | None = None
    salt: str = Field(min_length=32)
    hash: str = Field(min_length=64, max_length=64)

    @field_serializer("roles", "calls")
    def _sorted(self, values: frozenset[str] | None) -> list[str] | None:
        """Sets written in order: the same entry always gives the same JSON (a set's own order follows the
        process's string hashing, so an entry read back and written again would differ from run to run)."""
        return None if values is None else sorted(values)

    @model_validator(mode="after")
    def _service_has_calls(self) -> TokenEntry:
        if "service" in self.roles and self.calls is None:
            raise ValueError(f"token {self.id} ({self.name}): a service principal needs its list of calls")
        return self

    def principal(self) -> Principal:
        return Principal(name=self.name, roles=self.roles, calls=self.calls)


def salted_hash(salt: str, token: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + token.encode()).hexdigest()


def new_token() -> str:
    """A fresh random token (43 URL-safe characters, 256 bits)."""
    return secrets.token_urlsafe(32)


def entry_for(
    token: str, name: str, roles: Iterable[Role], calls: Iterable[str] | None = None, token_id: str | None = None
) -> TokenEntry:
    """The registry entry of `token` (refused when shorter than MIN_TOKEN_LENGTH)."""
    if len(token) < MIN_TOKEN_LENGTH:
        raise SettingsError(f"a token has at least {MIN_TOKEN_LENGTH} characters")
    salt = secrets.token_hex(16)
    return TokenEntry(
        id=token_id or f"tok-{secrets.token_hex(6)}",
        name=name,
        roles=frozenset(roles),
        calls=None if calls is None else frozenset(calls),
        salt=salt,
        hash=salted_hash(salt, token),
    )


def parse_entries(raw: Any, where: str) -> list[TokenEntry]:
    """Entries of the registry's JSON form: `{"tokens": [entry, ...]}` (or the bare list)."""
    items = raw.get("tokens") if isinstance(raw, dict) else raw
    if not isinstance(items, list):
        raise SettingsError(f'{where}: expected {{"tokens": [...]}} of salted entries')
    try:
        return [TokenEntry.model_validate(i) for i in items]
    except ValueError as e:
        raise SettingsError(f"{where}: {e}") from e


def dump_entries(entries: Sequence[TokenEntry]) -> str:
    return json.dumps({"tokens": [e.model_dump(mode="json") for e in entries]}, indent=2, sort_keys=True)


def read_file(path: Path) -> list[TokenEntry]:
    try:
        text = path.read_text()
    except OSError as e:
        raise SettingsError(f"MIEUX_AUTH_TOKENS_FILE={path}: cannot read it ({e.strerror or e})") from e
    return parse_entries(json.loads(text) if text.strip() else {"tokens": []}, str(path))


def write_file(path: Path, entries: Sequence[TokenEntry]) -> None:
    """Replace the registry file whole (a reader sees the old or the new one, never half), private (0600) from
    its creation (files.write_private)."""
    write_private(path, dump_entries(entries))


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """One writer of the registry file at a time (a read-modify-write would lose another's entry otherwise)."""
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


class TokenRegistry:
    """The entries of MIEUX_AUTH_TOKENS and MIEUX_AUTH_TOKENS_FILE; the file's reloaded when it changes."""

    def __init__(self, fixed: Sequence[TokenEntry] = (), path: Path | None = None) -> None:
        self.fixed = list(fixed)
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._from_file: list[TokenEntry] = []
        # (salt, digest, principal) of every entry, in bytes: what a call compares against, made once per change
        self._compiled: list[tuple[bytes, bytes, Principal]] = []
        self._refresh(force=True)

    def _refresh(self, force: bool = False) -> None:
        """Read the file again if its mtime or size changed (one stat per call otherwise). A file that cannot be
        read or parsed keeps the last good entries: a half-written Secret must not lock everybody out."""
        if self.path is None:
            if force:
                self._compile()
            return
        stamp = _stamp(self.path)
        if stamp == self._stamp and not force:
            return
        with self._lock:
            try:
                self._from_file = read_file(self.path) if stamp is not None else []
            except (SettingsError, ValueError):
                if force:  # at start: say so
                    raise
                return
            self._stamp = stamp
            self._compile()

    def _compile(self) -> None:
        entries = [*self.fixed, *self._from_file]
        self._compiled = [(bytes.fromhex(e.salt), bytes.fromhex(e.hash), e.principal()) for e in entries]

    def entries(self) -> list[TokenEntry]:
        self._refresh()
        return [*self.fixed, *self._from_file]

    def principals(self) -> list[Principal]:
        return [e.principal() for e in self.entries()]

    def authenticate(self, token: str) -> Principal | None:
        """The principal of `token`, or None. Every entry is compared (hmac.compare_digest), hit or not."""
        if len(token) < MIN_TOKEN_LENGTH or len(token) > 4096:
            return None
        self._refresh()
        raw = token.encode()
        found: Principal | None = None
        for salt, digest, principal in self._compiled:
            if hmac.compare_digest(hashlib.sha256(salt + raw).digest(), digest) and found is None:
                found = principal
        return found
