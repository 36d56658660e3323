"""One service process: gRPC server (with EventLog.ReadAll) + outbox relay + its consumers.

A context's `__main__.py` builds a `Service` and calls `main()`; `python -m services.<context>` then
runs until SIGTERM/SIGINT and stops gracefully (health NOT_SERVING, gRPC drain, consumers, relay).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from services.kernel import eventlog, metrics
from services.kernel.db import Pool, create_pool
from services.kernel.grpckit import READERS, Access, GrpcServer, Registrar, run_until_signalled
from services.kernel.policy import Policy, PolicyRunner, policy_group
from services.kernel.projection import Projection
from services.kernel.relay import Relay
from services.kernel.runner import ProjectionRunner, projection_group
from services.kernel.settings import Role, Settings, service_port
from services.kernel.store import EventStore

log = logging.getLogger(__name__)


@dataclass
class Service:
    """What a context plugs into the kernel."""

    name: str
    grpc_services: Sequence[str]
    access: Mapping[str, frozenset[Role]]
    registrars: Callable[[Service], Iterable[Registrar]]
    projections: Sequence[Projection] = ()
    policies: Sequence[Policy] = ()
    settings: Settings = field(default_factory=Settings)
    store: EventStore | None = None
    pool: Pool | None = None
    server: GrpcServer | None = None
    tasks: list[asyncio.Task] = field(default_factory=list)
    runners: list = field(default_factory=list)
    relay: Relay | None = None
    _stop_metrics: Callable[[], None] | None = None

    @property
    def port(self) -> int:
        return service_port(self.name)

    def consumer_groups(self) -> list[tuple[str, tuple[str, ...]]]:
        """The consumer groups this service runs, with their topics: one for all its projections, and
        one per policy."""
        groups = []
        if self.projections:
            groups.append((projection_group(self.name), tuple(sorted({t for p in self.projections for t in p.topics}))))
        return groups + [(policy_group(self.name, pol), tuple(pol.topics)) for pol in self.policies]

    async def start(self) -> None:
        if self.settings.metrics_port is not None:  # first: a port that is taken stops the start before anything runs
            self._stop_metrics = metrics.serve(self.settings.grpc_host, self.settings.metrics_port)
            log.info("%s serving metrics on %s:%s", self.name, self.settings.grpc_host, self.settings.metrics_port)

        self.pool = await create_pool(self.settings.dsn(), max_size=20)
        self.store = EventStore(self.pool, self.name)
        await self.store.setup()
        async with self.pool.acquire() as conn:
            for p in self.projections:
                await p.setup(conn)
        access = Access({**self.access, eventlog.READ_ALL: READERS})
        self.server = GrpcServer(
            self.settings,
            self.port,
            [eventlog.register(self.store), *self.registrars(self)],
            [*self.grpc_services, eventlog.SERVICE_NAME],
            access,
        )
        self.relay = Relay(self.store, self.settings)
        self.tasks.append(asyncio.create_task(self._supervise("relay", self.relay.run)))
        if self.projections:
            runner = ProjectionRunner(self.projections, self.pool, self.settings, group=projection_group(self.name))
            self.runners.append(runner)
            await runner.start()
        for pol in self.policies:
            pol.store = self.store
            prunner = PolicyRunner(pol, self.settings, group=policy_group(self.name, pol))
            self.runners.append(prunner)
            await prunner.start()
        await self.server.start()
        log.info("%s serving gRPC on %s:%s", self.name, self.settings.grpc_host, self.server.port)

    async def _supervise(self, what: str, fn: Callable) -> None:
        while True:
            try:
                await fn()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s %s crashed; restarting in 1s", self.name, what)
                await asyncio.sleep(1.0)

    async def stop(self) -> None:
        if self._stop_metrics:
            await asyncio.to_thread(self._stop_metrics)
        if self.server:
            await self.server.stop()
        for r in self.runners:
            with contextlib.suppress(Exception):
                await r.stop()
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self.pool:
            await self.pool.close()

    def main(self) -> None:
        level = os.environ.get("MIEUX_LOG_LEVEL", "INFO")
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        if level != "DEBUG":  # the libraries' start/stop chatter
            for noisy in ("faust", "mode", "aiokafka"):
                logging.getLogger(noisy).setLevel(logging.WARNING)
        asyncio.run(run_until_signalled(self.start, self.stop))
