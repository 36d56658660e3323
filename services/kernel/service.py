"""One service process: gRPC server (with EventLog.ReadAll) + outbox relay + its consumers.

A context's `__main__.py` builds a `Service` and calls `main()`; `python -m services.<context>` then
runs until SIGTERM/SIGINT and stops gracefully (health NOT_SERVING, gRPC drain, consumers, relay).

The gRPC health (the whole server, "", and each service name) says SERVING only while every consumer of the
process consumes: a projection or policy runner whose loop is not running, or has been failing for longer
than a few seconds, turns it NOT_SERVING until it recovers (checked every HEALTH_EVERY_S; see consuming.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from grpc_health.v1 import health_pb2

from services.kernel import eventlog, metrics
from services.kernel.consuming import own_cancellation
from services.kernel.db import Pool, create_pool
from services.kernel.grpckit import READERS, Access, GrpcServer, Registrar, run_until_signalled
from services.kernel.policy import Policy, PolicyRunner, policy_group
from services.kernel.projection import Projection
from services.kernel.relay import Relay
from services.kernel.runner import ProjectionRunner, projection_group
from services.kernel.settings import Role, Settings, service_port
from services.kernel.store import EventStore

log = logging.getLogger(__name__)

HEALTH_EVERY_S = 0.5


def settle_heap() -> None:
    """Leave what the process holds once started (modules, schemas, settings, the pool, the gRPC server's set-up)
    out of Python's cyclic garbage collections from now on (`gc.freeze`, after a last collection): it lives as
    long as the process, and every full collection would otherwise scan all of it again. What the consumers,
    the relay and the handlers allocate is collected as before. Measured (bench/projection.py, which does the
    same before its runner starts; runs side by side with raw): the projection runner went from 10.5-13.5k to
    15.1-16.9k events/s verifying signatures and from 14.7-16.1k to 22.7-23.0k not verifying; the time went
    to the collections that pydantic's parsing set off, each scanning the whole heap. What is frozen stays
    for the process's life even if it later becomes garbage in a cycle: at most the heap as started."""
    gc.collect()
    gc.freeze()


class ExtraServer(Protocol):
    """Another server a service process runs beside gRPC (e.g. the stats service's HTTP report pages)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@dataclass
class Service:
    """What a context plugs into the kernel."""

    name: str
    grpc_services: Sequence[str]
    access: Mapping[str, frozenset[Role]]
    registrars: Callable[[Service], Iterable[Registrar]]
    # the calls this service makes of the others (full method names): its principal's allow-list, which
    # services/ops/catalog.py gathers for the tokens the dev stack, the deploy and the tests issue
    calls: Sequence[str] = ()
    projections: Sequence[Projection] = ()
    policies: Sequence[Policy] = ()
    # other servers of the process: started after gRPC, stopped before it
    extra_servers: Callable[[Service], Iterable[ExtraServer]] = lambda svc: ()
    settings: Settings = field(default_factory=Settings)
    store: EventStore | None = None
    pool: Pool | None = None
    server: GrpcServer | None = None
    tasks: list[asyncio.Task] = field(default_factory=list)
    runners: list = field(default_factory=list)
    relay: Relay | None = None
    serving: bool = True  # what the gRPC health says (while the server runs)
    _stop_metrics: Callable[[], None] | None = None
    _stopping: bool = False
    _watcher: asyncio.Task | None = None
    _extra: list[ExtraServer] = field(default_factory=list)

    def __post_init__(self) -> None:
        # its projections keep their tracking in this service's schema, under its database role (schemas.py)
        foreign = [p.name for p in self.projections if p.service != self.name]
        if foreign:
            raise ValueError(f"service {self.name}: projections of another service: {', '.join(foreign)}")

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
            self._stop_metrics = metrics.serve(self.settings.metrics_host, self.settings.metrics_port)
            log.info("%s serving metrics on %s:%s", self.name, self.settings.metrics_host, self.settings.metrics_port)

        self.pool = await create_pool(
            self.settings.dsn(self.name), max_size=20, acquire_timeout=self.settings.db_acquire_timeout_s
        )
        self.store = EventStore(self.pool, self.name)
        await self.store.setup()
        async with self.pool.acquire() as conn:
            for p in self.projections:
                await p.setup(conn)
        access = Access({**self.access, eventlog.READ_ALL: READERS})
        self.server = GrpcServer(
            self.settings,
            self.port,
            [eventlog.register(self.store, self.settings), *self.registrars(self)],
            [*self.grpc_services, eventlog.SERVICE_NAME],
            access,
        )
        settle_heap()
        self.relay = Relay(self.store, self.settings)
        self.tasks.append(asyncio.create_task(self._supervise("relay", self.relay.run)))
        if self.projections:
            runner = self.projection_runner()
            self.runners.append(runner)
            await runner.start()
        for pol in self.policies:
            pol.store = self.store
            prunner = PolicyRunner(
                pol, self.settings, group=policy_group(self.name, pol), pool=self.pool, service=self.name
            )
            self.runners.append(prunner)
            await prunner.start()
        await self.server.start()
        for extra in self.extra_servers(self):
            await extra.start()
            self._extra.append(extra)
        self.serving = True
        self._watcher = asyncio.create_task(self._watch_consumers())
        log.info("%s serving gRPC on %s:%s", self.name, self.settings.grpc_host, self.server.port)

    def projection_runner(self) -> ProjectionRunner:
        """The runner of all this service's projections, on the group `mieux.<service>.projections`."""
        assert self.pool is not None
        return ProjectionRunner(self.projections, self.pool, self.settings, group=projection_group(self.name))

    async def _supervise(self, what: str, fn: Callable) -> None:
        """Run `fn` again whenever it fails, until the service stops: a CancelledError that is not the
        service's own stop (one raised inside a client library) is a failure like any other."""
        while not self._stopping:
            try:
                await fn()
                return
            except asyncio.CancelledError:
                if self._stopping or own_cancellation():
                    raise
                log.error("%s %s: a CancelledError raised inside it (not a stop); restarting in 1s", self.name, what)
            except Exception:
                log.exception("%s %s crashed; restarting in 1s", self.name, what)
            await asyncio.sleep(1.0)

    async def _watch_consumers(self) -> None:
        """The gRPC health follows the consumers: NOT_SERVING while one is down, SERVING once all are up."""
        while not self._stopping:
            for r in self.runners:  # which replica holds which share of each group (mieux_consumer_partitions)
                metrics.CONSUMER_PARTITIONS.labels(r.group).set(r.partitions())
            down = [r.group for r in self.runners if not r.health.up]
            if bool(down) == self.serving:
                self.serving = not down
                if down:
                    log.error("%s: NOT_SERVING: consumer group(s) %s not consuming", self.name, ", ".join(down))
                else:
                    log.warning("%s: SERVING again: every consumer group consumes", self.name)
                await self._set_health(
                    health_pb2.HealthCheckResponse.SERVING
                    if self.serving
                    else health_pb2.HealthCheckResponse.NOT_SERVING
                )
            await asyncio.sleep(HEALTH_EVERY_S)

    async def _set_health(self, status: int) -> None:
        assert self.server is not None
        for name in ["", *self.server.service_names]:
            r = self.server.health.set(name, status)
            if asyncio.iscoroutine(r):
                await r

    async def stop(self) -> None:
        self._stopping = True
        if self._stop_metrics:
            await asyncio.to_thread(self._stop_metrics)
        if self._watcher is not None:  # before the server says NOT_SERVING, for good
            self._watcher.cancel()
            await asyncio.wait({self._watcher})
        for extra in self._extra:
            with contextlib.suppress(Exception):
                await extra.stop()
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
