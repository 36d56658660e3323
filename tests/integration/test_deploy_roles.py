"""compose's PostgreSQL roles (deploy/postgres/init-roles.sh, as the postgres image's entrypoint sources it),
run against the test stack's PostgreSQL in a database of its own, with role names of its own: each service's
role creates and owns its schemas (the services' `CREATE SCHEMA IF NOT EXISTS` at every start included), and
can neither read nor write another's, nor use the public schema; `ops` reads every service's. CloudNativePG's
Cluster (kubernetes/postgres.yaml) grants the same (tests/unit/test_deploy.py checks its SQL)."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest
from support import own_database

from services.ops.devstack import DevStack, _pg_bin

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "postgres" / "init-roles.sh"


def run_init_roles(dsn: str, roles: list[str], ops: str) -> None:
    url = urlsplit(dsn)
    env = {
        **os.environ,
        "PATH": f"{Path(_pg_bin('psql')).parent}:{os.environ['PATH']}",
        "PGHOST": url.hostname or "127.0.0.1",
        "PGPORT": str(url.port),
        "POSTGRES_USER": url.username or "postgres",
        "POSTGRES_DB": url.path.lstrip("/"),
        "PGPASSFILE": parse_qs(url.query)["passfile"][0],  # the test stack's superuser password
        "SERVICE_ROLES": " ".join(roles),
        "OPS_ROLE": ops,
        **{f"PG_PASSWORD_{r.upper()}": f"pw-{r}" for r in [*roles, ops]},
    }
    # as the image's entrypoint runs a non-executable *.sh of docker-entrypoint-initdb.d: sourced, in bash
    subprocess.run(["bash", "-c", f"set -Eeo pipefail; source {SCRIPT}"], env=env, check=True, capture_output=True)


def as_role(dsn: str, role: str) -> str:
    """`dsn` as `role`, with the password run_init_roles gave it."""
    return urlsplit(dsn)._replace(netloc=f"{role}:pw-{role}@{urlsplit(dsn).netloc.split('@')[-1]}").geturl()


async def test_each_service_role_owns_its_schemas_only_and_ops_reads_them(stack: DevStack) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    a, b, ops = f"{prefix}_requests", f"{prefix}_actions", f"{prefix}_ops"
    try:
        async with own_database(stack.database_url) as dsn:
            run_init_roles(dsn, [a, b], ops)
            conn_a = await asyncpg.connect(as_role(dsn, a))
            conn_b = await asyncpg.connect(as_role(dsn, b))
            conn_ops = await asyncpg.connect(as_role(dsn, ops))
            try:
                for _ in range(2):  # the service's start-up DDL, at every start
                    await conn_a.execute(
                        f"CREATE SCHEMA IF NOT EXISTS {a}; CREATE TABLE IF NOT EXISTS {a}.events (x int)"
                    )
                await conn_a.execute(f"INSERT INTO {a}.events VALUES (1)")
                await conn_b.execute(f"CREATE SCHEMA IF NOT EXISTS {b}")
                for attempt in (
                    f"SELECT * FROM {a}.events",
                    f"INSERT INTO {a}.events VALUES (2)",
                    f"CREATE TABLE {a}.mine (x int)",
                    "CREATE TABLE public.anything (x int)",
                ):
                    with pytest.raises(asyncpg.InsufficientPrivilegeError):
                        await conn_b.execute(attempt)
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn_a.execute("CREATE TABLE public.anything (x int)")
                assert await conn_ops.fetchval(f"SELECT count(*) FROM {a}.events") == 1
                owner = await conn_ops.fetchval(
                    "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = $1", a
                )
                assert owner == a
            finally:
                for c in (conn_a, conn_b, conn_ops):
                    await c.close()
    finally:  # once their database (and what they owned in it) is gone
        await drop_roles(stack, a, b, ops)


async def drop_roles(stack: DevStack, *roles: str) -> None:
    admin = await asyncpg.connect(stack.database_url)
    try:
        for role in roles:
            await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
    finally:
        await admin.close()


async def test_every_service_sets_itself_up_under_its_own_role(stack: DevStack) -> None:
    """What each service does at start (its event store, its projections' tables and tracking, its parking),
    each under its own role, in one database, twice (every start): as compose and Kubernetes run them. Then
    each service owns every schema it made, and none of another's."""
    from services.kernel import parking
    from services.kernel.db import create_pool
    from services.kernel.schemas import kernel_tables, service_schemas
    from services.kernel.store import EventStore
    from services.ops import catalog

    prefix = f"t{uuid.uuid4().hex[:8]}"
    built = catalog.services()
    roles = {svc: f"{prefix}_{svc}" for svc in built}
    try:
        async with own_database(stack.database_url) as dsn:
            run_init_roles(dsn, list(roles.values()), f"{prefix}_ops")
            for _ in range(2):  # every start sets up again
                for svc, service in built.items():
                    pool = await create_pool(as_role(dsn, roles[svc]))
                    try:
                        await EventStore(pool, svc).setup()
                        async with pool.acquire() as conn:
                            for projection in service.projections:
                                await projection.setup(conn)
                        if service.projections or service.policies:
                            await parking.setup(pool, svc)
                    finally:
                        await pool.close()
            admin = await asyncpg.connect(dsn)
            try:
                owners = dict(await admin.fetch("SELECT nspname, nspowner::regrole::text FROM pg_namespace"))
            finally:
                await admin.close()
            for svc, service in built.items():
                k = kernel_tables(svc)
                expected = {svc} | {t.split(".")[0] for p in service.projections for t in p.tables}
                expected |= {k.projections_schema} if service.projections else set()
                expected |= {k.parking_schema} if service.projections or service.policies else set()
                assert {s for s, owner in owners.items() if owner == roles[svc]} == expected, svc
                assert expected <= set(service_schemas(svc)), svc  # the kernel's list of a service's schemas
    finally:
        await drop_roles(stack, *roles.values(), f"{prefix}_ops")
