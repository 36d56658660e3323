"""`mieux dev up --tls` as a developer runs it: the stack records mutual TLS in stack.json, so a service
started against it serves TLS only, and the CLI started against it reaches the service over TLS; a
plaintext client is refused; `mieux dev up --no-tls` goes back to plaintext."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import ServiceProcess

from services.ops.devstack import free_port, pid_alive
from services.ops.processes import serving

pytestmark = pytest.mark.e2e


def mieux(checkout: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`mieux ...` run in `checkout` as the README says: the stack's home is `.mieux/` there."""
    base = {k: v for k, v in os.environ.items() if k != "MIEUX_HOME"}
    return subprocess.run(
        [sys.executable, "-m", "services.ops.cli", *args],
        cwd=checkout,
        env={**base, "COLUMNS": "200", **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def wait_serving(svc: ServiceProcess, timeout: float = 90.0) -> None:
    """As `mieux up` waits: the kit's channel, which takes TLS from the stack's settings."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if svc.proc.poll() is not None:
            raise RuntimeError(f"requests exited with {svc.proc.returncode}:\n{svc.output()[-3000:]}")
        if asyncio.run(serving(svc.target)):
            return
        time.sleep(0.2)
    raise TimeoutError(f"requests not SERVING over TLS:\n{svc.output()[-3000:]}")


def test_dev_up_tls_makes_services_and_the_cli_speak_mutual_tls(monkeypatch: pytest.MonkeyPatch) -> None:
    checkout = Path(tempfile.mkdtemp(prefix="mieux-test-dev-tls-"))
    checkout.chmod(0o755)  # PostgreSQL runs as another user when we are root
    home = checkout / ".mieux"
    state: dict = {}
    svc: ServiceProcess | None = None
    try:
        up = mieux(checkout, "dev", "up", "--tls")
        assert up.returncode == 0, up.stderr
        assert "mutual TLS" in up.stdout
        state = json.loads((home / "stack.json").read_text())
        settings = state["settings"]
        assert settings["MIEUX_TLS_CLIENT_AUTH"] is True and settings["MIEUX_GRPC_REFLECTION"] is True
        for key in ("server.key", "client.key"):
            assert stat.S_IMODE((home / "tls" / key).stat().st_mode) == 0o600

        monkeypatch.setenv("MIEUX_HOME", str(home))  # this process's clients: the stack's settings
        port = free_port()
        env = {**os.environ, "MIEUX_HOME": str(home), "MIEUX_REQUESTS_PORT": str(port), "MIEUX_LOG_LEVEL": "WARNING"}
        svc = ServiceProcess("requests", env, port)
        wait_serving(svc)

        per_year = mieux(checkout, "requests", "per-year", env={"MIEUX_REQUESTS_PORT": str(port)})
        assert per_year.returncode == 0, per_year.stdout + per_year.stderr

        with grpc.insecure_channel(svc.target) as ch, pytest.raises(grpc.RpcError) as info:
            health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE

        assert svc.stop() == 0
        svc = None
        plain = mieux(checkout, "dev", "up", "--no-tls")
        assert plain.returncode == 0 and "plaintext" in plain.stdout
        assert "MIEUX_TLS_CA_FILE" not in json.loads((home / "stack.json").read_text())["settings"]
    finally:
        if svc is not None:
            svc.stop()
        mieux(checkout, "dev", "down")
        shutil.rmtree(checkout, ignore_errors=True)
    assert not pid_alive(state.get("pg_pid")) and not pid_alive(state.get("kafka_pid"))
