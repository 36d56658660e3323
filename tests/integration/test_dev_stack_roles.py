"""The dev stack's PostgreSQL roles (services/ops/devstack_pg.py), on the test stack: a password on every
connection; each service's role does everything on its own schemas and nothing on another's, nor on `public`,
nor in another database; a service process connects as its own role; the passwords sit in private files only."""

from __future__ import annotations

import json
import stat
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import asyncpg
import pytest
from support import eventually, running_service

from services.kernel.schemas import kernel_tables, service_schemas
from services.kernel.settings import SERVICE_PORTS, Settings
from services.ops.devstack import DevStack

pytestmark = pytest.mark.integration


@asynccontextmanager
async def connected(url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(url)
    try:
        yield conn
    finally:
        await conn.close()


async def test_a_service_role_does_everything_on_its_own_schemas_and_nothing_on_another_services(
    stack: DevStack,
) -> None:
    own, other = stack.role_url("carbon"), stack.role_url("requests")
    schema = "carbon_views"  # one of carbon's own (schemas.service_schemas)
    assert schema in service_schemas("carbon")
    table = f"{schema}.t_{uuid.uuid4().hex[:10]}"
    async with connected(own) as carbon, connected(other) as requests:
        assert await carbon.fetchval("SELECT current_user") == "carbon"
        # its own: create (its schemas, as at every start), write, read, alter, drop
        await carbon.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}; CREATE TABLE {table} (x int)")
        await carbon.execute(f"INSERT INTO {table} VALUES (1), (2); UPDATE {table} SET x = 3 WHERE x = 2")
        await carbon.execute(f"ALTER TABLE {table} ADD COLUMN y text; DELETE FROM {table} WHERE x = 1")
        assert await carbon.fetchval(f"SELECT sum(x) FROM {table}") == 3
        owner = await carbon.fetchval("SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = $1", schema)
        assert owner == "carbon"
        try:
            # another service's role: nothing on it, whatever it tries
            for attempt in (
                f"SELECT * FROM {table}",
                f"INSERT INTO {table} VALUES (4)",
                f"UPDATE {table} SET x = 0",
                f"DELETE FROM {table}",
                f"TRUNCATE {table}",
                f"DROP TABLE {table}",
                f"CREATE TABLE {schema}.squat (x int)",
                f"DROP SCHEMA {schema} CASCADE",
                f"ALTER SCHEMA {schema} OWNER TO requests",
                "CREATE TABLE public.anything (x int)",
                "CREATE ROLE intruder",
                "CREATE DATABASE intruder",
            ):
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await requests.execute(attempt)
            assert await carbon.fetchval(f"SELECT sum(x) FROM {table}") == 3  # untouched
        finally:
            await carbon.execute(f"DROP TABLE {table}")
    # nor in another database of the server
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await asyncpg.connect(urlsplit(other)._replace(path="/postgres").geturl())


async def test_every_connection_needs_its_password(stack: DevStack) -> None:
    for role in ("postgres", *SERVICE_PORTS):
        no_passfile = stack.role_url(role).split("?")[0]
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(no_passfile, password="")
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(no_passfile, password="not-it")
        async with connected(stack.role_url(role)) as conn:
            assert await conn.fetchval("SELECT current_user") == role
    async with connected(stack.database_url) as admin:
        superusers = await admin.fetchval("SELECT array_agg(rolname ORDER BY rolname) FROM pg_roles WHERE rolsuper")
        assert superusers == ["postgres"]
        rights = await admin.fetch(
            "SELECT rolname, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls FROM pg_roles "
            "WHERE rolname = ANY($1::text[])",
            list(SERVICE_PORTS),
        )
        assert {r["rolname"] for r in rights} == set(SERVICE_PORTS)
        assert not any(any(r[1:]) for r in rights)


async def test_a_service_process_connects_as_its_own_role(stack: DevStack, stack_env: dict[str, str]) -> None:
    """The stack gives each service its own database URL (Settings.dsn(service)); the CLI gets the superuser's."""
    assert urlsplit(Settings().dsn("experts")).username == "experts"
    assert urlsplit(Settings().dsn()).username == "postgres"
    async with running_service("experts", stack_env), connected(stack.database_url) as admin:

        async def connected_as_experts() -> bool:
            return bool(await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE usename = 'experts'"))

        await eventually(connected_as_experts, 30, "the experts service's connections")
        owners = dict(
            await admin.fetch(
                "SELECT nspname, nspowner::regrole::text FROM pg_namespace WHERE nspname = ANY($1::text[])",
                list(service_schemas("experts")),
            )
        )
        k = kernel_tables("experts")
        assert {"experts", "experts_views", k.projections_schema, k.parking_schema} <= set(owners)
        assert set(owners.values()) == {"experts"}


def test_the_passwords_are_in_private_files_only(stack: DevStack) -> None:
    home = stack.home
    secrets = [home / "postgres.password", home / "pgpass", home / "tokens.json", home / "personal-data.key"]
    secrets += sorted((home / "signing").glob("*.pem")) + sorted((home / "tls").glob("*.key"))
    for path in secrets:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    passwords = {}
    for line in (home / "pgpass").read_text().splitlines():
        host, port, database, role, password = line.split(":")
        assert (host, port, database) == ("*", "*", "*")
        passwords[role] = password
    assert set(passwords) == {"postgres", *SERVICE_PORTS}
    assert passwords["postgres"] == (home / "postgres.password").read_text().strip()
    assert len(set(passwords.values())) == len(passwords) and min(len(p) for p in passwords.values()) >= 32
    state = (home / "stack.json").read_text()  # readable by the stack's processes: URLs naming the file only
    assert not [role for role, password in passwords.items() if password in state]
    assert json.loads(state)["service_database_urls"]["stats"] == stack.role_url("stats")
