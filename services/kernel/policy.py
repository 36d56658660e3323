"""Policies (process managers): another context's event becomes a command of this one.

A policy runs as a faust-streaming agent, one event at a time: it calls other services over gRPC and
appends through its service's event store. The command it issues has an id derived from the event id
(`command_id_for`), so a redelivered event is answered with the first result and appends nothing.

An event is handled only once its producer's signature verifies (signing.py): what is unsigned or does not
verify is parked with the reason, its stream's later events behind it, and verified again when it is retried.
What its handle raises decides what happens (DESIGN.md section 11):
- a passing fault (faults.is_transient, or a concurrent change: ConcurrencyError, ABORTED) is retried with
  backoff (capped at 5 s) for as long as it lasts;
- a refused command (RuleBroken, InvalidArgument, NotFound, a validation error, a final gRPC status) is a
  decision: the event is parked at once with the refusal as its reason;
- anything else (a rotated token, CommandReused after a setting that feeds the payload changed, a bug) is
  retried `policy_max_attempts` times (backoff doubling up to `policy_max_backoff_s`), then parked with its
  reason.
Once an event of a stream is parked, the stream's later events are parked behind it (parking.py); ops retry
or drop them (`mieux parked ...`), and the runner performs that between two events. A supervisor starts the
faust app again if it crashes or stops on its own, until the runner is stopped.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any, ClassVar

import grpc
from aiokafka import AIOKafkaProducer
from pydantic import ValidationError

from services.kernel import bus, metrics, parking
from services.kernel.consuming import (
    BACKOFF_CAP_S,
    BACKOFF_FIRST_S,
    ConsumerHealth,
    Retrying,
    own_cancellation,
    quietly,
)
from services.kernel.db import Pool
from services.kernel.envelope import DecodeError, Envelope, Event, UnknownEvent, errors_of, parse_message, registry
from services.kernel.errors import InvalidArgument, NotFound, RuleBroken
from services.kernel.faults import describe, is_transient
from services.kernel.grpckit import correlation_var, principal_var
from services.kernel.parking import Delivery, Parked, Parking, Request, ToPark, behind_reason
from services.kernel.settings import Principal, Settings
from services.kernel.signing import Unverified, Verifier, signature_of
from services.kernel.store import ConcurrencyError, EventStore

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 10  # a non-final error: attempts before the event is parked (settings: policy_max_attempts)
MAX_BACKOFF_S = 60.0  # ... and the longest wait between two of them (settings: policy_max_backoff_s)
STOP_TIMEOUT_S = 15.0


def policy_group(service: str, policy: Policy) -> str:
    """The consumer group of one policy of a service."""
    return f"mieux.{service}.{policy.name}"


POLICY_NAMESPACE = uuid.UUID("0b8f5a0e-7d0c-4a55-b8f3-2f6c2f0f4c11")


def command_id_for(policy: str, env: Envelope) -> str:
    """The command a policy issues for an event has an id derived from the event id: redelivery is harmless."""
    return str(uuid.uuid5(POLICY_NAMESPACE, f"{policy}:{env.event_id}"))


class Policy:
    """A process manager: reacts to other contexts' events by issuing its own commands.

    `handle` runs as the principal `policy:<name>` (role `service`), with the event's correlation id, so
    the events it causes record who acted and why; `store` is the owning service's event store, bound
    by the service before the policy starts."""

    name: ClassVar[str]
    topics: ClassVar[tuple[str, ...]]
    store: EventStore | None = None

    async def handle(self, env: Envelope, event: Event, command_id: str) -> None:
        raise NotImplementedError


class PolicyRunner:
    """Runs one policy as a faust agent in this process's event loop, under a supervisor."""

    def __init__(
        self,
        policy: Policy,
        settings: Settings,
        group: str,
        pool: Pool | None = None,
        *,
        max_attempts: int | None = None,
        max_backoff_s: float | None = None,
        service: str | None = None,
    ) -> None:
        self.policy = policy
        self.settings = settings
        self.group = group
        if pool is None:
            if policy.store is None:
                raise ValueError(f"policy {policy.name}: no pool given and no event store bound")
            pool = policy.store.pool
        self.pool = pool
        # the service whose parking it uses (schemas.py): given, or the one whose event store it is bound to
        if service is None:
            if policy.store is None:
                raise ValueError(f"policy {policy.name}: no service given and no event store bound")
            service = policy.store.service
        self.service = service
        self.max_attempts = max_attempts or getattr(settings, "policy_max_attempts", MAX_ATTEMPTS)
        self.max_backoff_s = max_backoff_s or getattr(settings, "policy_max_backoff_s", MAX_BACKOFF_S)
        self.handled = 0
        self.dead = 0  # events parked (each also on the DLQ)
        self.errors = 0  # non-final errors retried
        self.restarts = 0  # times the supervisor started the faust app again
        self.health = ConsumerHealth(group)
        self._retrying = Retrying(group, self.health)
        self._errors = metrics.CONSUMER_RETRIES.labels(group, "error")
        self.parking = Parking(pool, group, [policy.name], "policy", service)
        # every event is verified before it is handled (signing.py); what does not verify is parked
        self.verifier = Verifier.from_settings(settings)
        self.app: Any = None
        self._producer: AIOKafkaProducer | None = None
        self._turn = asyncio.Lock()  # one event or one ops' request at a time
        self._assignment: frozenset[tuple[str, int]] = frozenset()
        self._stopping = False
        self._supervisor: asyncio.Task | None = None

    @property
    def retries(self) -> int:
        """Passing faults retried so far."""
        return self._retrying.retries

    def partitions(self) -> int:
        """Partitions of the policy's topics this process holds now (0 while its consumer is not started)."""
        try:
            return len(self.app.consumer.assignment())
        except Exception:  # no app, or its consumer is not started yet
            return 0

    async def start(self) -> None:
        await parking.setup(self.pool, self.service)
        await self._start_app()
        self._supervisor = asyncio.create_task(self._supervise())

    async def _start_app(self) -> None:
        from services.kernel.faust_transport import SCHEME, PolicyApp

        # before anything is consumed, at every (re)start: a broker that restarted has lost them
        await bus.ensure_topics(self.settings, [*self.policy.topics])
        await bus.ensure_dlq(self.settings, self.group)
        await self._retrying("reading the parked streams", self.parking.load)
        self._producer = producer = bus.producer(self.settings)
        await producer.start()
        await self._retrying("sending dead letters", lambda: self.parking.send_unsent(producer))
        datadir = self.settings.mieux_home / "faust" / self.group
        datadir.mkdir(parents=True, exist_ok=True)
        app = PolicyApp(
            self.group,
            self.settings.kafka_fetch_max_wait_ms,
            broker=f"{SCHEME}://{self.settings.bootstrap()}",
            broker_credentials=bus.faust_credentials(self.settings),
            store="memory://",
            web_enabled=False,
            datadir=str(datadir),
            topic_allow_declare=False,
            topic_disable_leader=True,
            broker_session_timeout=self.settings.kafka_session_timeout_ms / 1000,
            broker_heartbeat_interval=self.settings.kafka_heartbeat_interval_ms / 1000,
            broker_rebalance_timeout=self.settings.kafka_session_timeout_ms / 1000,
            broker_commit_interval=0.5,
            consumer_auto_offset_reset="earliest",
        )
        topic = app.topic(*self.policy.topics, value_serializer="raw")

        @app.agent(topic, name=f"{self.group}.agent")
        async def agent(stream):  # type: ignore[no-untyped-def]
            async for event in stream.events():
                m = event.message
                signature = signature_of(m.headers)
                await self._handle(Delivery(m.topic, m.partition, m.offset, m.key, event.value, signature))

        self.app = app
        try:
            await app.start()
        except BaseException:
            await self._stop_app()
            raise
        self.health.started()

    async def _stop_app(self) -> None:
        app, producer = self.app, self._producer
        self.app = self._producer = None
        self.health.stopped()
        if app is not None:
            await quietly(f"{self.group}: the faust app", asyncio.wait_for(app.stop(), STOP_TIMEOUT_S))
        if producer is not None:
            await quietly(f"{self.group}: the producer", producer.stop())

    async def stop(self) -> None:
        self._stopping = True
        self.health.ended = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.wait({self._supervisor}, timeout=STOP_TIMEOUT_S)
        await self._stop_app()

    async def _supervise(self) -> None:
        """Until the runner is stopped: a faust app that crashed or stopped on its own is replaced by a new one
        (topics ensured first), and ops' requests for the partitions this process holds are performed."""
        backoff = BACKOFF_FIRST_S
        while not self._stopping:
            try:
                await asyncio.sleep(parking.REQUESTS_EVERY_S)
                app = self.app
                if app is None or app.should_stop:
                    why = describe(app.crash_reason) if app is not None and app.crash_reason else "it is not running"
                    log.error("policy %s: its consumer stopped (%s); starting it again", self.group, why)
                    self.restarts += 1
                    self.health.fail()
                    await self._stop_app()
                    await self._start_app()
                    self.health.ok()
                else:
                    await self._serve_requests()
                backoff = BACKOFF_FIRST_S
            except asyncio.CancelledError:
                if self._stopping or own_cancellation():
                    raise
                log.error("policy %s: a CancelledError raised inside a client library (not a stop)", self.group)
            except Exception as e:
                log.error(
                    "policy %s: %s; trying again in %.1fs",
                    self.group,
                    describe(e),
                    backoff,
                    exc_info=None if is_transient(e) else e,
                )
                self.health.fail()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_CAP_S)

    async def _sync_heads(self) -> None:
        """Read the parked streams again when the partitions this process holds have changed."""
        try:
            current = frozenset((tp.topic, tp.partition) for tp in self.app.consumer.assignment())
        except Exception:  # the app's consumer is not started yet
            return
        if current != self._assignment:
            await self._retrying("reading the parked streams", self.parking.load)
            self._assignment = current

    async def _serve_requests(self) -> None:
        """Ops' requests for the partitions this process holds, performed between two events (the agent waits
        meanwhile), so no live event of a stream overtakes its parked ones."""
        await self._sync_heads()
        owned = self._assignment
        requests = await self._retrying("reading requests", lambda: self.parking.pending(lambda t, p: (t, p) in owned))
        if not requests:
            return
        async with self._turn:
            for request in requests:
                try:
                    await self._retrying(
                        f"performing request #{request.id}", lambda r=request: self.parking.perform(r, self._reapply)
                    )
                except Exception as e:
                    log.error("%s: request #%s failed", self.group, request.id, exc_info=e)
                    await self._retrying(
                        "recording a failed request", lambda r=request, e=e: self.parking.give_up(r, e)
                    )

    async def _handle(self, delivery: Delivery) -> None:
        """One event, whatever happens: what fails here (parking itself, a bug) is logged and tried again, and
        the consumer shows as failing meanwhile."""
        backoff = BACKOFF_FIRST_S
        while True:
            try:
                async with self._turn:
                    await self._handle_one(delivery)
                self.health.ok()
                return
            except asyncio.CancelledError:
                if own_cancellation():
                    raise
                log.error("policy %s: a CancelledError raised inside its handling (not a stop)", self.group)
            except Exception as e:
                log.error("policy %s: handling %s failed", self.group, delivery.offset, exc_info=e)
            self.health.fail()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_CAP_S)

    async def _handle_one(self, d: Delivery) -> None:
        await self._sync_heads()
        env = None
        try:
            env = parse_message(d.value)
            self.verifier.verify(d.topic, d.value, env, d.signature)
            event = registry.decode(env)
        except Unverified as e:  # parked in its stream's order, its claimed event id not recorded
            await self._park(ToPark(self.policy.name, d, env, str(e), verified=False))
            return
        except DecodeError as e:
            await self._park(ToPark(self.policy.name, d, env, str(e)))
            return
        head = self.parking.heads.get((self.policy.name, env.stream_id))
        if head is not None:
            await self._park(ToPark(self.policy.name, d, env, behind_reason(head), head))
            return
        if isinstance(event, UnknownEvent):
            return
        reason = await self._attempt(env, event, self.max_attempts)
        if reason is not None:
            await self._park(ToPark(self.policy.name, d, env, reason))
            return
        self.handled += 1

    async def _attempt(self, env: Envelope, event: Event, attempts: int) -> str | None:
        """Handle an event: None once done, else why it is to be parked (refused, or a non-final error
        `attempts` times). A passing fault is retried for as long as it lasts."""
        principal_var.set(Principal(name=f"policy:{self.policy.name}", roles=frozenset({"service"})))
        correlation_var.set(env.correlation_id or str(env.event_id))
        passing, backoff, failures = BACKOFF_FIRST_S, BACKOFF_FIRST_S, 0
        while True:
            try:
                await self.policy.handle(env, event, command_id_for(self.policy.name, env))
                return None
            except asyncio.CancelledError:
                if own_cancellation():
                    raise
                error: Exception = RuntimeError("CancelledError raised inside the handle (not a stop)")
            except Exception as e:
                error = e
            if is_refusal(error):
                return f"refused: {refusal_of(error)}"
            if is_transient(error) or is_concurrent(error):
                passing = await self._retrying.pause("handling an event", error, passing)
                continue
            failures += 1
            self.errors += 1
            self._errors.inc()
            if failures >= attempts:
                return f"failed {failures} times: {describe(error)}"
            self.health.fail()
            log.warning(
                "policy %s: %s (attempt %d of %d); retrying in %.1fs",
                self.group,
                describe(error),
                failures,
                attempts,
                backoff,
                exc_info=error if failures == 1 else None,
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff_s)

    async def _park(self, item: ToPark) -> None:
        new = await self._retrying("parking", lambda: self.parking.park([item]))
        if not new:
            return
        self.dead += 1
        producer = self._producer
        assert producer is not None
        await self._retrying("sending dead letters", lambda: self.parking.send_letters(producer, new))
        log.warning(
            "policy %s parked #%s (%s@%s): %s",
            self.group,
            new[0][1],
            item.delivery.topic,
            item.delivery.offset,
            new[0][2],
        )

    async def _reapply(self, row: Parked, request: Request) -> str | None:
        """Handle a parked event again (once; a passing fault is retried), and mark it retried; None once done,
        else why it stays parked."""
        try:
            env = parse_message(row.envelope)
            self.verifier.verify(row.topic, row.envelope, env, row.signature)
            event = registry.decode(env)
        except DecodeError as e:  # Unverified too: it stays parked, with the reason
            return str(e)
        if not isinstance(event, UnknownEvent):
            reason = await self._attempt(env, event, attempts=1)
            if reason is not None:
                return reason
            self.handled += 1
        why = f"{request.action} request #{request.id}"
        await self.pool.execute(self.parking.retried_sql, row.id, request.requested_by, why)
        return None


def is_refusal(e: BaseException) -> bool:
    """A refused command: a decision, parked at once with its reason."""
    return isinstance(e, RuleBroken | InvalidArgument | NotFound | ValidationError) or _is_final_grpc_error(e)


def is_concurrent(e: BaseException) -> bool:
    """A concurrent change of the stream (ABORTED): the next attempt sees it."""
    return isinstance(e, ConcurrencyError) or (
        isinstance(e, grpc.aio.AioRpcError) and e.code() == grpc.StatusCode.ABORTED
    )


def refusal_of(e: Exception) -> str:
    """Why a command was refused, as a dead letter may carry it: a rule in words (the service's own
    message), the fields that were wrong, or a gRPC status; never an input value."""
    if isinstance(e, ValidationError):
        return f"invalid {errors_of(e)}"
    if isinstance(e, InvalidArgument):
        return "invalid " + ", ".join(v.field for v in e.violations)
    if isinstance(e, grpc.aio.AioRpcError):
        return f"{e.code().name} from a collaborator"
    return shown_rule(str(e))


def shown_rule(text: str) -> str:
    return text if len(text) <= 300 else text[:299] + "…"


def _is_final_grpc_error(e: BaseException) -> bool:
    final = {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.PERMISSION_DENIED,
    }
    return isinstance(e, grpc.aio.AioRpcError) and e.code() in final
