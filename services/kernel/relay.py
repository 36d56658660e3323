"""The outbox relay: publishes a service's stored events to `mieux.<service>.events`, in order.

* One active relay per service: a PostgreSQL advisory lock, held on a connection of its own. A second
  relay waits for the lock; if the holder dies its connection closes and the lock passes on.
* Low latency: woken in-process by every append of this service process; events appended by other
  processes (another replica of the service) are found by a short poll (`MIEUX_RELAY_POLL_INTERVAL_S`,
  0.05 s). No NOTIFY in the append: it would serialise every writer's commit on the notify queue lock.
* Per-stream order: key = stream id, so one stream is one partition; aiokafka keeps one request in flight
  per broker, and the relay only moves its checkpoint after the broker acknowledged (acks=all) the
  whole batch. After a failure it backs off and publishes again from the checkpoint: at-least-once,
  never a later event of a stream before an earlier one has been sent. The checkpoint is saved at most
  every 50 ms and when the relay stops, with synchronous_commit off (it is a hint: a relay that dies
  republishes up to the last 50 ms, which consumers drop as seen).
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

from services.kernel import bus, metrics
from services.kernel.db import init_connection
from services.kernel.envelope import Envelope, topic_for
from services.kernel.settings import Settings
from services.kernel.store import EventStore, HighWaterMark

log = logging.getLogger(__name__)

CHECKPOINT_EVERY_S = 0.05


def lock_key(service: str) -> int:
    return zlib.crc32(f"mieux-relay:{service}".encode()) - 2**31


async def publish(producer: AIOKafkaProducer, topic: str, events: list[Envelope]) -> None:
    """Send a batch and wait until the broker has acknowledged every message of it."""
    futures = [await producer.send(topic, value=e.to_bytes(), key=e.stream_id.encode()) for e in events]
    await asyncio.gather(*futures)


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
    def __init__(self, store: EventStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.topic = topic_for(store.service)
        self.published = 0
        self._active = metrics.RELAY_ACTIVE.labels(store.service)
        self._position = metrics.RELAY_POSITION.labels(store.service)
        self._readable = metrics.RELAY_READABLE.labels(store.service)
        self.active = asyncio.Event()
        self._wake = asyncio.Event()
        self._replay_from: int | None = None

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
        """Hold the lock and publish for ever (or, for `replay`, until the store's end at start)."""
        conn = await asyncpg.connect(self.settings.dsn())
        await init_connection(conn)
        # the checkpoint is a hint (a lost one means republishing, which consumers absorb): no fsync for it
        await conn.execute("SET synchronous_commit TO off")
        try:
            while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", lock_key(self.store.service)):
                if until_caught_up:
                    raise RuntimeError("a relay is running: it will do the replay")
                await asyncio.sleep(1.0)
            self.active.set()
            self._active.set(1)
            schema = self.store.schema
            await conn.add_listener(f"{schema}_replay", self._on_notify)
            self.store.on_append.append(self._wake.set)
            end = await self.store.last_position() if until_caught_up else None
            await self._publish_loop(conn, end)
        finally:
            self.active.clear()
            self._active.set(0)
            self._position.set(0)
            self._readable.set(0)
            if self._wake.set in self.store.on_append:
                self.store.on_append.remove(self._wake.set)
            with contextlib.suppress(Exception):
                await conn.close()

    async def _publish_loop(self, conn: asyncpg.Connection, end: int | None) -> None:
        backoff = 0.1
        while True:
            producer = bus.producer(self.settings)
            checkpoint: Checkpoint | None = None
            try:
                # a fresh producer and explicit topics at each (re)start: a restarted broker may have lost
                # the topic, and a produce to a topic it does not know is not to be trusted (Tansu)
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
                while end is None or self.published < end:
                    if self._replay_from is not None:
                        break  # start over from the replay position, with a fresh producer
                    self._wake.clear()
                    events = await self.store.read_all(self.published, self.settings.relay_batch_size, hwm, conn=conn)
                    # positions between the last event and the mark are gaps (refused appends): nothing waits
                    self._readable.set(hwm.safe if events else self.published)
                    if not events:
                        await checkpoint.published()
                        if hwm.pending is not None:
                            await asyncio.sleep(0.001)  # a writer is committing: look again very soon
                            continue
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._wake.wait(), self.settings.relay_poll_interval_s)
                        continue
                    await publish(producer, self.topic, events)
                    self.published = events[-1].position
                    self._position.set(self.published)
                    await checkpoint.published(self.published)
                    backoff = 0.1
                else:
                    return
            except asyncio.CancelledError:
                raise
            except (asyncpg.PostgresConnectionError, asyncpg.InterfaceError):
                raise  # the lock connection is gone: another relay may hold the lock now
            except Exception as e:
                log.warning("relay %s: publish failed (%s); retrying in %.1fs", self.topic, e, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                with contextlib.suppress(Exception):
                    await producer.stop()
                if checkpoint is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.shield(checkpoint.flush())


async def request_replay(store: EventStore, settings: Settings, from_position: int) -> str:
    """Republish from `from_position`: through the running relay, or here if none runs."""
    topic = topic_for(store.service)
    after = max(from_position - 1, 0)
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
    pool = await create_pool(settings.dsn(), max_size=4)
    store = EventStore(pool, service)
    await store.setup()
    task: asyncio.Task | None = None

    async def start() -> None:
        nonlocal task
        task = asyncio.create_task(Relay(store, settings).run())

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
