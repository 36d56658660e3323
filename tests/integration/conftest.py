"""Fixtures of the integration tests (besides tests/conftest.py's stack, pool and schema)."""

from __future__ import annotations

import pytest

from services.kernel.db import Pool
from services.kernel.store import EventStore


@pytest.fixture
async def store(pool: Pool, schema: str) -> EventStore:
    """An event store of a fresh schema (a service name of the test's own), set up."""
    s = EventStore(pool, schema)
    await s.setup()
    return s
