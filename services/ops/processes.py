"""Service processes started by `mieux up` and the demo: each `python -m services.<name>`, all stopped."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


async def serving(address: str) -> bool:
    from services.kernel.grpckit import channel  # TLS when the stack (or the environment) says so

    try:
        async with channel(address) as ch:
            r = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
            return r.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.aio.AioRpcError:
        return False


class Processes:
    def __init__(self, logs: Path | None = None) -> None:
        self.logs = logs
        self.procs: dict[str, asyncio.subprocess.Process] = {}

    async def start(self, service: str, env: dict[str, str], name: str | None = None) -> None:
        """`python -m services.<service>`, known (and logged) as `name` (a replica's), else as the service; with
        `env` less MIEUX_TOKEN: the caller's own token (a person's) is not the service's, which presents its own
        from the dev stack's tokens.json (its principal)."""
        name = name or service
        env = {k: v for k, v in env.items() if k != "MIEUX_TOKEN"}
        out = open(self.logs / f"{name}.log", "wb") if self.logs else None  # noqa: ASYNC230
        self.procs[name] = await asyncio.create_subprocess_exec(
            sys.executable, "-m", f"services.{service}", env=env, stdout=out, stderr=out
        )

    def exited(self) -> dict[str, int]:
        return {name: p.returncode for name, p in self.procs.items() if p.returncode is not None}

    async def stop(self, timeout: float = 20.0) -> None:
        for p in self.procs.values():
            if p.returncode is None:
                p.terminate()
        for p in self.procs.values():
            try:
                await asyncio.wait_for(p.wait(), timeout)
            except TimeoutError:
                p.kill()
                await p.wait()
