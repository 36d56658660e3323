"""`mieux tokens`: people's own tokens, and who the CLI acts as.

`mieux tokens issue --person NAME --role ops|finance|admin` makes a random token (43 characters), prints it once
and adds its salted hash to the token registry file (MIEUX_AUTH_TOKENS_FILE; the dev stack's auth-tokens.json),
which every running service reads again when it changes: the token works at once, and the events its calls
append record the person as their actor. `mieux tokens revoke --person NAME` (or `--id ID`) removes it, at once
too; `mieux tokens list` shows ids, names and roles, never a token. Whoever may write the registry file may issue
tokens: it is private (0600) and, in a deployment, a Secret.

Operations that act on the database directly (`mieux replay`, `mieux parked retry|drop`) are admin's: the CLI
checks that the token it presents (MIEUX_TOKEN, else the dev stack's admin token) is an admin's.
"""

from __future__ import annotations

import argparse
import getpass
import os
import re
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from services.kernel import principals
from services.kernel.settings import SERVICE_PORTS, Principal, Settings, SettingsError

console = Console()

PERSON_ROLES = ("ops", "finance", "admin")
# a person's name, as it is recorded as the actor of events: not a service's, not the dev stack's nor a policy's
PERSON_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9._@-]{0,99}$")


def caller(settings: Settings, who: str = "ops") -> Principal | None:
    """The principal of the token the CLI presents (MIEUX_TOKEN, else the dev stack's token of `who`)."""
    return settings.tokens().authenticate(settings.client_token(who))


def refuse_unless_admin(settings: Settings, what: str) -> str | None:
    """Why `what` is refused to the CLI's caller (None: it is an admin's token). Replaying and redriving events
    are admin's (DESIGN.md section 11); they act on the database, so this is the CLI's check of its token."""
    try:
        p = caller(settings, "admin")
    except SettingsError as e:
        return f"{what} is admin's, and there is no token to check: {e}"
    if p is None:
        return f"{what} is admin's: the token presented is unknown"
    if "admin" not in p.roles:
        return f"{what} is admin's: {p.name} is not an admin"
    return None


def who_asks(settings: Settings) -> str:
    """Who retries or drops parked events, as the parked rows record it: the principal of the token the CLI
    presents, and the OS user running it."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container's arbitrary uid)
        user = f"uid {os.getuid()}"
    try:
        principal = caller(settings, "admin")
        name = principal.name if principal is not None else "an unknown token"
    except SettingsError:
        name = "no token"
    return f"{name} (os user {user})"


def registry_file(settings: Settings) -> Path:
    if settings.auth_tokens_file is None:
        raise SettingsError("no token registry file: set MIEUX_AUTH_TOKENS_FILE or start the dev stack")
    return settings.auth_tokens_file


def issue(settings: Settings, person: str, role: str) -> tuple[str, str]:
    """A new token of `person` with `role`, added to the registry: (its id, the token)."""
    if not PERSON_NAME.match(person) or person in SERVICE_PORTS or person.startswith("dev-"):
        raise SettingsError(
            "--person: 1-100 characters of [A-Za-z0-9._@-] starting with a letter, not a service's name nor dev-*"
        )
    if role not in PERSON_ROLES:
        raise SettingsError(f"--role: one of {', '.join(PERSON_ROLES)}")
    path = registry_file(settings)
    token = principals.new_token()
    entry = principals.entry_for(token, person, [role])  # type: ignore[list-item]
    with principals.locked(path):
        entries = principals.read_file(path) if path.exists() else []
        principals.write_file(path, [*entries, entry])
    return entry.id, token


def revoke(settings: Settings, person: str | None = None, token_id: str | None = None) -> list[str]:
    """Remove a person's tokens (all of them), or the token of an id; the ids removed. A service's token is
    not a person's: only `--id` removes it."""
    path = registry_file(settings)
    with principals.locked(path):
        entries = principals.read_file(path) if path.exists() else []
        gone = [e for e in entries if e.id == token_id or (e.name == person and "service" not in e.roles)]
        if gone:
            principals.write_file(path, [e for e in entries if e not in gone])
    return [e.id for e in gone]


def cmd_tokens(args: argparse.Namespace) -> int:
    settings = Settings()
    try:
        if args.action == "issue":
            token_id, token = issue(settings, args.person, args.role)
            console.print(f"issued [bold]{token_id}[/] to {escape(args.person)} ({args.role}); the token, shown once:")
            print(token)
            return 0
        if args.action == "revoke":
            if (args.person is None) == (args.id is None):
                console.print("[red]revoke takes --person NAME or --id ID[/]")
                return 2
            gone = revoke(settings, args.person, args.id)
            console.print(f"revoked {', '.join(gone)}" if gone else "no such token")
            return 0 if gone else 1
        table = Table("id", "name", "roles", "calls")
        for e in principals.read_file(registry_file(settings)):
            calls = "by role" if e.calls is None else ", ".join(sorted(c.rsplit("/", 1)[-1] for c in e.calls)) or "-"
            table.add_row(e.id, escape(e.name), ", ".join(sorted(e.roles)), calls)
        console.print(table)
        return 0
    except SettingsError as e:
        console.print(f"[red]{escape(str(e))}[/]")
        return 2


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("tokens", help="people's own tokens: issue, revoke, list (never shows a token twice)")
    ts = t.add_subparsers(dest="action", required=True)
    ti = ts.add_parser("issue", help="a new token of a person, printed once")
    ti.add_argument("--person", required=True, help="the person's name: the actor of the events their calls append")
    ti.add_argument("--role", required=True, choices=PERSON_ROLES)
    tr = ts.add_parser("revoke", help="remove a person's tokens (--person) or one token (--id)")
    tr.add_argument("--person")
    tr.add_argument("--id")
    ts.add_parser("list", help="ids, names, roles and calls of the tokens (never a token)")
    t.set_defaults(fn=cmd_tokens)
