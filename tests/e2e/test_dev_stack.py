"""`mieux dev up | status | down` as a developer runs them (from the checkout, the stack's home the default
relative `.mieux/`): a stack in the background that answers, then stops, leaving nothing running."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import asyncpg
import pytest

from services.kernel import bus
from services.kernel.settings import Settings
from services.ops.devstack import pid_alive

pytestmark = pytest.mark.e2e


def mieux(checkout: Path, *args: str) -> str:
    """`mieux dev ...` run in `checkout` as the README says, with no MIEUX_HOME: the home is `.mieux/` there."""
    env = {k: v for k, v in os.environ.items() if k != "MIEUX_HOME"}
    proc = subprocess.run(
        [sys.executable, "-m", "services.ops.cli", "dev", *args],
        cwd=checkout,
        env={**env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


async def answers(state: dict) -> int:
    """PostgreSQL answers a query, and the broker creates a topic with the stack's partitions."""
    conn = await asyncpg.connect(state["database_url"])
    try:
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()
    settings = Settings()
    assert settings.bootstrap() == state["kafka_bootstrap_servers"]
    await bus.ensure_topics(settings, ["mieux.devcheck.events"])
    return len(await bus.end_offsets(settings, "mieux.devcheck.events"))


def test_dev_up_status_down(monkeypatch: pytest.MonkeyPatch) -> None:
    checkout = Path(tempfile.mkdtemp(prefix="mieux-test-dev-"))
    checkout.chmod(0o755)  # PostgreSQL runs as another user when we are root
    home = checkout / ".mieux"
    state: dict = {}
    try:
        assert "PostgreSQL" in mieux(checkout, "up")
        state = json.loads((home / "stack.json").read_text())
        status = mieux(checkout, "status").split()
        assert status == ["postgresql", "running", "broker", "running"]
        monkeypatch.setenv("MIEUX_HOME", str(home))
        assert asyncio.run(answers(state)) == Settings().topic_partitions

        mieux(checkout, "up")  # a second `up` keeps the running stack
        again = json.loads((home / "stack.json").read_text())
        assert (again["pg_pid"], again["kafka_pid"]) == (state["pg_pid"], state["kafka_pid"])
    finally:
        mieux(checkout, "down")
        status = mieux(checkout, "status").split()
        shutil.rmtree(checkout, ignore_errors=True)
    assert status == ["postgresql", "stopped", "broker", "stopped"]
    assert not pid_alive(state.get("pg_pid")) and not pid_alive(state.get("kafka_pid"))
