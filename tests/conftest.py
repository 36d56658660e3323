"""Fixtures: the real dev stack (embedded PostgreSQL + Tansu) on free loopback ports, always stopped; its
tokens; a pool on its database; a fresh schema name."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from services.kernel.db import Pool, create_pool
from services.ops.devstack import DevStack


@pytest.fixture(scope="session")
def stack(request: pytest.FixtureRequest) -> Iterator[DevStack]:
    home = Path(tempfile.mkdtemp(prefix="mieux-test-"))
    home.chmod(0o755)
    s = DevStack(home, fsync=False)
    os.environ["MIEUX_HOME"] = str(home)  # Settings() here and in child processes use this stack
    try:
        s.up()
        yield s
    finally:
        s.down()
        # the data directory and the services' logs: kept only when a test failed, to read them
        if request.session.testsfailed:
            print(f"\ntest stack kept in {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def stack_env(stack: DevStack) -> dict[str, str]:
    """Environment for a child process (a service, the CLI) that uses the test stack."""
    return {**os.environ, "MIEUX_HOME": str(stack.home)}


@pytest.fixture(scope="session")
def tokens(stack: DevStack) -> dict[str, str]:
    """The stack's tokens (tokens.json): a person's by role (`ops`, `finance`, `admin`; principals `dev-<role>`), and
    each service's own by its name (`experts`, ...: its principal, allowed only its calls)."""
    return json.loads((stack.home / "tokens.json").read_text())


@pytest.fixture
async def pool(stack: DevStack) -> AsyncIterator[Pool]:
    p = await create_pool(stack.database_url, max_size=20)
    try:
        yield p
    finally:
        await p.close()


@pytest.fixture
def schema(stack: DevStack) -> str:
    """A fresh schema (service name) per test, so tests never see each other's events. Like every service of the
    stack it has a signing key (signing.py): its relay signs what it publishes onto its topic (`support.signed`
    signs hand-made envelopes as it would), and consumers verify it."""
    name = f"t_{uuid.uuid4().hex[:10]}"
    stack.new_signing_key(name)
    return name
