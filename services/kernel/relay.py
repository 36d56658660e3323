"""The outbox relay: publishes a service's stored events to `mieux.<service>.events`, in order.

* One active relay per service, whatever the number of replicas: a PostgreSQL session advisory lock, held
  on a connection of its own (`lock_key(service)`). Every other replica's relay is a standby that tries the
  lock every STANDBY_RETRY_S. When the holder dies (SIGKILL, a crash, its pod deleted) its kernel closes the
  TCP connection, PostgreSQL ends the session and releases the lock, and a standby takes it at its next try
  (well within 5 s). `mieux_relay_active{service}` is 1 on the replica whose relay holds it.
* A network partition between the holder and PostgreSQL: PostgreSQL learns the session is gone from TCP
  keepalives (this connection asks for them: LOCK_KEEPALIVES, about 8 s) and releases the lock, so a standby
  takes over while the old holder may still be alive. The old holder reads every batch over that same lock
  connection, so it can publish at most the batch it read before the partition; it reads nothing more and
  fails when its connection does. Such a batch, published twice, is what at-least-once means: consumers are
  idempotent (projections track event ids, policies answer a command id once), so the guarantee is unchanged.
* Low latency: woken in-process by every append of this service process; a standby relay (another
  replica's) tells the active one of its own process's appends with a NOTIFY (`<schema>_appended`), sent
  on its lock connection after their commits, one per wake-up however many appends it covers; anything
  else (a `mieux import` process, a lost notification) is found by a short poll
  (`MIEUX_RELAY_POLL_INTERVAL_S`, 0.05 s). No NOTIFY in the append itself: it would serialise every
  writer's commit on the notify queue lock.
* Per-stream order: key = stream id, so one stream is one partition; aiokafka keeps one request in flight
  per broker, and the relay only moves its checkpoint after the broker acknowledged (acks=all) the
  whole batch. After a failure it backs off and publishes again from the checkpoint: at-least-once,
  never a later event of a stream before an earlier one has been sent. The checkpoint is saved at most
  every 50 ms and when the relay stops, with synchronous_commit off (it is a hint: a relay that dies
  republishes up to the last 50 ms, which consumers drop as seen).
* Only what a crash cannot take back: `read_all` hands the relay an event only once its commit is
  flushed to the WAL (horizon.HighWaterMark), whatever `synchronous_commit` its writer used, so no consumer
  ever applies an event that a crash of PostgreSQL then takes back. Where commits are synchronous they
  are flushed already, and a read flushes what other sessions wrote after them in its own round trip;
  where they are not, the relay waits for the WAL writer (up to a few `wal_writer_delay`).
* A stuck relay says so: when it has not been able to publish for STUCK_AFTER_S (the broker away or
  refusing the batch, the WAL not flushed, a writer that does not end, ...), it logs an ERROR naming the
  service, the position it has published up to and why, every STUCK_LOG_EVERY_S while it lasts, and
  `mieux_relay_stuck_seconds` says for how long (0 when it publishes). A watcher beside the loop does
  it, so a call that hangs is reported too.
* Signed: every batch is signed with the service's key before it is published (signing.py: each message's
  value is the envelope with its `key_id`, its `mieux-signature` header the signature of the batch's Merkle
  root and the message's proof); a relay without a key of its service does not start.
* Replay: `mieux replay <service> --from N` moves the checkpoint back and wakes the relay; when no
  relay is running the replay command publishes by itself, under the same lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from collections.abc import Awaitable, Callable

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from services.kernel import bus, faults, metrics
from services.kernel.db import init_connection
from services.kernel.envelope import topic_for
from services.kernel.horizon import HighWaterMark
from services.kernel.settings import Settings
from services.kernel.signing import Signed, Signer, signer_for
from services.kernel.store import EventStore

log = logging.getLogger(__name__)

CHECKPOINT_EVERY_S = 0.05
STUCK_AFTER_S = 5.0  # unable to publish for longer than this: the relay is stuck, and says so
STUCK_LOG_EVERY_S = 30.0  # its ERROR is repeated this often while it is stuck
FLUSH_POLL_MAX_S = 0.008  # waiting for the WAL flush, it looks again after 1, 2, 4, then every 8 ms
# a standby tries the lock this often: a dead holder's lock is taken at most this long after PostgreSQL frees it
STANDBY_RETRY_S = 0.5
# the lock connection's server-side TCP keepalives and timeout: on a network partition PostgreSQL ends the
# holder's session (and frees the lock) after about idle + interval * count seconds, not the kernel's hours
LOCK_KEEPALIVES = {
    "tcp_keepalives_idle": "5",
    "tcp_keepalives_interval": "1",
    "tcp_keepalives_count": "3",
    "tcp_user_timeout": "8000",
}


def lock_key(service: str) -> int:
    return zlib.crc32(f"mieux-relay:{service}".encode()) - 2**31


async def lock_holder(conn: asyncpg.Connection, service: str) -> int | None:
    """The PostgreSQL backend pid of the session holding `service`'s relay lock (pg_locks), or None."""
    # a bigint advisory lock is in pg_locks as classid (high 32 bits) and objid (low 32 bits), objsubid 1
    return await conn.fetchval(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
        "AND ((classid::bigint << 32) | objid::bigint) = $1",
        lock_key(service),
    )


async def publish(producer: AIOKafkaProducer, topic: str, messages: list[Signed]) -> None:
    """Send a batch (signed: Signer.seal) and wait until the broker has acknowledged every message of it."""
    futures = [await producer.send(topic, value=m.value, key=m.key, headers=m.headers) for m in messages]
    await asyncio.gather(*futures)


def describe(e: BaseException) -> str:
    """What failed, for the log: never an exception's whole text, which may quote an event's data."""
    name = type(e).__name__
    if isinstance(e, KafkaError):
        text = str(e)  # the error's name and the broker's or client's own words
    elif isinstance(e, asyncpg.PostgresError):
        text = f"{name} (SQLSTATE {e.sqlstate})"
    elif isinstance(e, OSError) and e.strerror:
        text = f"{name}: {e.strerror}"
    else:
        text = name
    return f"{text}, a passing fault" if faults.is_transient(e) else f"{text}, not a passing fault"


def wal(position: int) -> str:
    """A WAL position as PostgreSQL writes it (X/Y)."""
    return f"{position >> 32:X}/{position & 0xFFFFFFFF:X}"


class Checkpoint:
    """The relay's published position, saved at most every CHECKPOINT_EVERY_S (checked after each
    publish and each empty read) and when it stops: not one more write per batch. A relay that dies republishes what it
    published since the last save, which consumers absorb (they drop events they have seen)."""

    def __init__(self, save: Callable[[int], Awaitable[None]], saved: int) -> None:
        self.save = save
        self.saved = saved
        self.pending: int | None = None
        self.at = time.monotonic()

    async def published(self, position: int | None = None) -> None:
        """After each publish (with its position) and each empty read (without)."""
        if position is not None:
            self.pending = position
        if self.pending is not None and time.monotonic() - self.at >= CHECKPOINT_EVERY_S:
            await self.flush()

    async def flush(self) -> None:
        if self.pending is not None and self.pending != self.saved:
            await self.save(self.pending)
            self.saved = self.pending
        self.pending = None
        self.at = time.monotonic()


class Relay:
    stuck_after_s = STUCK_AFTER_S
    stuck_log_every_s = STUCK_LOG_EVERY_S

    def __init__(self, store: EventStore, settings: Settings, signer: Signer | None = None) -> None:
        self.store = store
        self.settings = settings
        # what it publishes is signed (signing.py): without a key of its service it does not start
        self.signer = signer or signer_for(settings, store.service)
        self.topic = topic_for(store.service)
        self.published = 0
        self._active = metrics.RELAY_ACTIVE.labels(store.service)
        self._position = metrics.RELAY_POSITION.labels(store.service)
        self._readable = metrics.RELAY_READABLE.labels(store.service)
        self._stuck = metrics.RELAY_STUCK.labels(store.service)
        self.active = asyncio.Event()
        self._wake = asyncio.Event()
        self._replay_from: int | None = None
        # since when it has not been able to publish (None: it publishes, or has nothing to), and why
        self._blocked_since: float | None = None
        self._blocked_by = ""
        self._reported_at: float | None = None  # when the ERROR was last logged, in this episode

    # --- is it stuck? ------------------------------------------------------------------------------

    def _blocked(self, reason: str) -> None:
        """It has (or may have) something to publish and cannot yet, because of `reason`."""
        self._blocked_by = reason
        if self._blocked_since is None:
            self._blocked_since = time.monotonic()

    def _unblocked(self) -> None:
        """It has published a batch, or has nothing to publish."""
        if self._blocked_since is None:
            return
        if self._reported_at is not None:
            log.info(
                "relay %s: publishes again, after %.0fs stuck at position %d",
                self.store.service,
                time.monotonic() - self._blocked_since,
                self.published,
            )
            self._stuck.set(0)
        self._blocked_since = self._reported_at = None

    def _clear_stuck(self) -> None:
        self._blocked_since = self._reported_at = None
        self._stuck.set(0)

    def stuck_for(self) -> float:
        """How long it has been unable to publish, once that is longer than `stuck_after_s`; else 0."""
        if self._blocked_since is None:
            return 0.0
        stuck = time.monotonic() - self._blocked_since
        return stuck if stuck >= self.stuck_after_s else 0.0

    def _report(self) -> None:
        stuck = self.stuck_for()
        self._stuck.set(stuck)
        now = time.monotonic()
        if stuck and (self._reported_at is None or now - self._reported_at >= self.stuck_log_every_s):
            self._reported_at = now
            log.error(
                "relay %s: stuck for %.0fs at position %d (published up to it, nothing after it): %s",
                self.store.service,
                stuck,
                self.published,
                self._blocked_by,
            )

    async def _watch(self) -> None:
        """Beside the publish loop, so that a call that hangs is reported too."""
        while True:
            await asyncio.sleep(min(1.0, self.stuck_after_s / 4))
            self._report()

    # --- publishing ----------------------------------------------------------------------------------

    async def _checkpoint(self, conn: asyncpg.Connection) -> int:
        v = await conn.fetchval(f"SELECT position FROM {self.store.schema}.relay_state WHERE topic = $1", self.topic)
        return int(v or 0)

    async def _save(self, conn: asyncpg.Connection, position: int) -> None:
        await conn.execute(
            f"INSERT INTO {self.store.schema}.relay_state (topic, position) VALUES ($1, $2) "
            "ON CONFLICT (topic) DO UPDATE SET position = EXCLUDED.position",
            self.topic,
            position,
        )

    def _on_notify(self, _conn: object, _pid: int, channel: str, payload: str) -> None:
        if channel.endswith("_replay"):
            self._replay_from = int(payload)
        self._wake.set()

    async def run(self, *, until_caught_up: bool = False) -> None:
        """Hold the lock and publish for ever (or, for `replay`, until the store's end at start).

        When it fails (the database away, its lock connection lost), the relay is still stuck while its
        supervisor runs it again: it keeps saying so until it publishes, or finds another relay active."""
        watch = asyncio.create_task(self._watch())
        conn: asyncpg.Connection | None = None
        failed = False
        try:
            conn = await asyncpg.connect(self.settings.dsn(self.store.service), server_settings=LOCK_KEEPALIVES)
            await init_connection(conn)
            # the checkpoint is a hint (a lost one means republishing, which consumers absorb): no fsync for it
            await conn.execute("SET synchronous_commit TO off")
            await self._standby(conn, until_caught_up)
            log.info("relay %s: active (holds the relay lock)", self.store.service)
            self.active.set()
            self._active.set(1)
            schema = self.store.schema
            await conn.add_listener(f"{schema}_replay", self._on_notify)
            await conn.add_listener(f"{schema}_appended", self._on_notify)
            self.store.on_append.append(self._wake.set)
            end = await self.store.last_position() if until_caught_up else None
            await self._publish_loop(conn, end)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            failed = True
            self._blocked(describe(e))
            raise
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
            if not failed:
                self._clear_stuck()
            self.active.clear()
            self._active.set(0)
            self._position.set(0)
            self._readable.set(0)
            if self._wake.set in self.store.on_append:
                self.store.on_append.remove(self._wake.set)
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()

    async def _standby(self, conn: asyncpg.Connection, until_caught_up: bool) -> None:
        """Until this relay holds the lock (tried every STANDBY_RETRY_S): a standby, which tells the active
        relay (another replica's) of this process's appends, so that it publishes them at once rather than at
        its next poll. One NOTIFY per wake-up on this connection, however many appends it covers, sent after
        their commits: the appends themselves never wait on PostgreSQL's notify queue."""
        appended = asyncio.Event()
        self.store.on_append.append(appended.set)
        try:
            next_try = 0.0
            while True:
                if time.monotonic() >= next_try:
                    if await conn.fetchval("SELECT pg_try_advisory_lock($1)", lock_key(self.store.service)):
                        return
                    if until_caught_up:
                        raise RuntimeError("a relay is running: it will do the replay")
                    self._clear_stuck()  # a standby: the active relay publishes, and reports for itself
                    next_try = time.monotonic() + STANDBY_RETRY_S
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(appended.wait(), max(next_try - time.monotonic(), 0.0))
                if appended.is_set():
                    appended.clear()
                    await conn.execute("SELECT pg_notify($1, '')", f"{self.store.schema}_appended")
        finally:
            self.store.on_append.remove(appended.set)

    async def _publish_loop(self, conn: asyncpg.Connection, end: int | None) -> None:
        backoff = 0.1
        while True:
            producer = bus.producer(self.settings)
            checkpoint: Checkpoint | None = None
            try:
                # a fresh producer and explicit topics at each (re)start: a restarted broker may have lost
                # the topic, and a produce to a topic it does not know is not to be trusted (Tansu)
                self._blocked(f"creating the topic {self.topic} and starting a producer")
                await bus.ensure_topics(self.settings, [self.topic])
                await producer.start()
                hwm = HighWaterMark(self.store.schema)
                if self._replay_from is not None:
                    self.published, self._replay_from = self._replay_from, None
                    await self._save(conn, self.published)
                else:
                    self.published = await self._checkpoint(conn)
                self._position.set(self.published)
                checkpoint = Checkpoint(lambda position: self._save(conn, position), self.published)
                flush_poll = 0.001
                while end is None or self.published < end:
                    if self._replay_from is not None:
                        break  # start over from the replay position, with a fresh producer
                    self._wake.clear()
                    events = await self.store.read_all(self.published, self.settings.relay_batch_size, hwm, conn=conn)
                    # positions between the last event and the mark are gaps (refused appends): nothing waits
                    self._readable.set(hwm.safe if events or hwm.unflushed else self.published)
                    if not events:
                        await checkpoint.published()
                        if hwm.pending is not None:
                            self._blocked("a writer's transaction has not ended (it holds the writers' lock)")
                            await asyncio.sleep(0.001)  # a writer is committing: look again very soon
                            continue
                        if hwm.unflushed:
                            # committed but not flushed yet (synchronous_commit off): the WAL writer flushes
                            # it within a few wal_writer_delay, and any synchronous commit at once (an append
                            # of this process wakes the relay)
                            self._blocked(
                                f"waiting for PostgreSQL to flush the WAL past {wal(hwm.unflushed[0][1])} "
                                f"(flushed up to {wal(hwm.flushed)})"
                            )
                            with contextlib.suppress(TimeoutError):
                                await asyncio.wait_for(self._wake.wait(), flush_poll)
                            flush_poll = min(flush_poll * 2, FLUSH_POLL_MAX_S)
                            continue
                        self._unblocked()  # nothing to publish
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._wake.wait(), self.settings.relay_poll_interval_s)
                        continue
                    flush_poll = 0.001
                    self._blocked(
                        f"the broker has not acknowledged the next batch ({len(events)} events to {self.topic})"
                    )
                    await publish(producer, self.topic, self.signer.seal(events))
                    self.published = events[-1].position
                    self._position.set(self.published)
                    self._unblocked()
                    await checkpoint.published(self.published)
                    backoff = 0.1
                else:
                    return
            except asyncio.CancelledError:
                raise
            except (asyncpg.PostgresConnectionError, asyncpg.InterfaceError):
                raise  # the lock connection is gone: another relay may hold the lock now
            except Exception as e:
                reason = describe(e)
                self._blocked(reason)
                log.warning(
                    "relay %s: publishing after position %d failed (%s); retrying in %.1fs",
                    self.store.service,
                    self.published,
                    reason,
                    backoff,
                )
                log.debug("relay %s: the failure", self.store.service, exc_info=True)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                with contextlib.suppress(Exception):
                    await producer.stop()
                if checkpoint is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.shield(checkpoint.flush())


async def request_replay(
    store: EventStore, settings: Settings, from_position: int, topics: dict[str, int] | None = None
) -> str:
    """Republish from `from_position`: through the running relay, or here if none runs.

    `topics` (topic -> partitions; `mieux replay` passes every topic of the catalogue) are created first,
    before anything is published: on a new, empty broker the services' clients would otherwise have it
    auto-create them with its default partition count, and the dead-letter topics would be missing until
    their consumer groups restart. A topic that exists with another partition count is only reported."""
    topic = topic_for(store.service)
    after = max(from_position - 1, 0)
    misshapen = await bus.ensure_topic_layout(settings, topics) if topics else {}
    for name, (have, want) in sorted(misshapen.items()):
        log.warning(
            "replay %s: %s has %d partitions, not %d: it was created before; left as it is",
            store.service,
            name,
            have,
            want,
        )
    async with store.pool.acquire() as conn:
        held = not await conn.fetchval("SELECT pg_try_advisory_lock($1)", lock_key(store.service))
        if held:
            await conn.execute("SELECT pg_notify($1, $2)", f"{store.schema}_replay", str(after))
            return "the running relay republishes"
        try:
            await conn.execute(
                f"INSERT INTO {store.schema}.relay_state (topic, position) VALUES ($1, $2) "
                "ON CONFLICT (topic) DO UPDATE SET position = EXCLUDED.position",
                topic,
                after,
            )
        finally:
            await conn.fetchval("SELECT pg_advisory_unlock($1)", lock_key(store.service))
    await Relay(store, settings).run(until_caught_up=True)
    return "republished"


async def _main(service: str) -> None:
    from services.kernel.db import create_pool
    from services.kernel.grpckit import run_until_signalled

    settings = Settings()
    signer = signer_for(settings, service)  # before anything: without a key it does not start
    pool = await create_pool(settings.dsn(service), max_size=4)
    store = EventStore(pool, service)
    await store.setup()
    task: asyncio.Task | None = None

    async def supervise() -> None:
        relay = Relay(store, settings, signer)
        while True:
            try:
                await relay.run()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("relay %s crashed; restarting in 1s", service)
                await asyncio.sleep(1.0)

    async def start() -> None:
        nonlocal task
        task = asyncio.create_task(supervise())

    async def stop() -> None:
        if task:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await pool.close()

    await run_until_signalled(start, stop)


if __name__ == "__main__":
    # `python -m services.kernel.relay <service>`: a relay on its own (the service process runs one too)
    import sys

    logging.basicConfig(level=logging.INFO)
    asyncio.run(_main(sys.argv[1]))
