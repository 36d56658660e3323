"""Generate the deploy's secrets: a password for PostgreSQL and one bearer token per principal.

    python3 deploy/make_secrets.py            # writes deploy/.env and deploy/kubernetes/mieux-tokens.env

Each service gets a token of its own (role `service`, principal named after the service, so the events a
call causes record which service acted), and people get `ops`, `finance` and `admin` tokens. The services
only ever see the sha256 of a token (`MIEUX_AUTH_TOKENS`). Existing files are kept unless --force: a new
token would lock out every client holding the old one.

- `deploy/.env` is read by `docker compose` (interpolation of compose.yaml);
- `deploy/kubernetes/mieux-tokens.env` is for `kubectl create secret generic mieux-tokens --from-env-file=...`.

Both are git-ignored (deploy/.gitignore). Standard library only: runs with any python3.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import secrets
from pathlib import Path

# the contexts, as in services/kernel/settings.py SERVICE_PORTS (the unit tests check they agree)
SERVICES = ("requests", "actions", "experts", "logistics", "carbon", "stats")
PEOPLE = ("ops", "finance", "admin")

DEPLOY = Path(__file__).resolve().parent


def sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def generate() -> dict[str, str]:
    """principal -> token: one per service and one per people role."""
    return {name: f"mieux-{name}-{secrets.token_urlsafe(24)}" for name in (*SERVICES, *PEOPLE)}


def auth_tokens(tokens: dict[str, str]) -> dict[str, dict[str, object]]:
    """What MIEUX_AUTH_TOKENS holds: sha256(token) -> {name, roles}."""
    out: dict[str, dict[str, object]] = {}
    for name, token in tokens.items():
        roles = ["service"] if name in SERVICES else [name]
        out[sha256(token)] = {"name": name, "roles": roles}
    return out


def compose_env(tokens: dict[str, str], pg_password: str) -> str:
    """deploy/.env: single quotes keep the JSON literal for compose."""
    lines = [
        f"POSTGRES_PASSWORD='{pg_password}'",
        f"MIEUX_AUTH_TOKENS='{json.dumps(auth_tokens(tokens), separators=(',', ':'))}'",
    ]
    lines += [f"MIEUX_TOKEN_{name.upper()}='{token}'" for name, token in tokens.items()]
    return "\n".join(lines) + "\n"


def kubernetes_env(tokens: dict[str, str]) -> str:
    """Secret data for `kubectl create secret generic --from-env-file` (values taken verbatim, no quotes)."""
    lines = [f"auth-tokens={json.dumps(auth_tokens(tokens), separators=(',', ':'))}"]
    lines += [f"{name}-token={token}" for name, token in tokens.items()]
    return "\n".join(lines) + "\n"


def write(path: Path, text: str, force: bool) -> bool:
    if path.exists() and not force:
        return False
    path.write_text(text)
    path.chmod(0o600)
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=DEPLOY, help="the deploy folder (default: this script's)")
    p.add_argument("--force", action="store_true", help="replace existing files (rotates every token)")
    args = p.parse_args(argv)
    tokens = generate()
    pg_password = secrets.token_urlsafe(24)
    for path, text in (
        (args.out / ".env", compose_env(tokens, pg_password)),
        (args.out / "kubernetes" / "mieux-tokens.env", kubernetes_env(tokens)),
    ):
        path.parent.mkdir(parents=True, exist_ok=True)
        print(("wrote " if write(path, text, args.force) else "kept (use --force to replace) ") + str(path))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
