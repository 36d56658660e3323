"""Kafka plumbing shared by the relay, the runners and the ops tools (aiokafka)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.structs import TopicPartition

from services.kernel.settings import Settings

log = logging.getLogger(__name__)

DLQ_PARTITIONS = 1  # a dead-letter topic is read by people, in the order its letters came


def faust_credentials(settings: Settings) -> Any:
    """The policy runners' faust broker credentials for MIEUX_KAFKA_SECURITY_PROTOCOL (None for PLAINTEXT)."""
    security = settings.kafka_security()
    if not security:
        return None
    from faust.auth import SASLCredentials, SSLCredentials

    if security["security_protocol"] == "SSL":
        return SSLCredentials(security["ssl_context"])
    return SASLCredentials(
        username=security["sasl_plain_username"],
        password=security["sasl_plain_password"],
        ssl_context=security["ssl_context"],
        mechanism=security["sasl_mechanism"],
    )


def dlq_topic(group: str) -> str:
    """The dead-letter topic of a consumer group."""
    return f"{group}.dlq"


async def ensure_dlq(settings: Settings, group: str) -> None:
    await ensure_topics(settings, [dlq_topic(group)], partitions=DLQ_PARTITIONS)


async def send_dead(
    producer: AIOKafkaProducer, group: str, raw: bytes | None, reason: str, origin: str, projection: str = ""
) -> None:
    """A message a consumer group could not decode or apply, onto its dead-letter topic: `origin` is the
    topic it came from, `projection` the one that could not apply it (if any)."""
    headers = [("reason", reason.encode()[:4000]), ("origin", origin.encode())]
    if projection:
        headers.append(("projection", projection.encode()))
    await producer.send_and_wait(dlq_topic(group), value=raw or b"", headers=headers)


def producer(settings: Settings, **overrides: Any) -> AIOKafkaProducer:
    """acks=all; the idempotent producer only where the broker has it (not Tansu)."""
    kwargs: dict[str, Any] = dict(
        bootstrap_servers=settings.bootstrap(),
        acks="all",
        enable_idempotence=settings.kafka_idempotent_producer,
        linger_ms=1,
        max_batch_size=256 * 1024,
        request_timeout_ms=settings.kafka_request_timeout_ms,
        retry_backoff_ms=100,
        **settings.kafka_security(),
    )
    kwargs.update(overrides)
    return AIOKafkaProducer(**kwargs)


def consumer(settings: Settings, *topics: str, **overrides: Any) -> AIOKafkaConsumer:
    kwargs: dict[str, Any] = dict(
        bootstrap_servers=settings.bootstrap(),
        fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
        session_timeout_ms=settings.kafka_session_timeout_ms,
        heartbeat_interval_ms=settings.kafka_heartbeat_interval_ms,
        request_timeout_ms=max(settings.kafka_request_timeout_ms, settings.kafka_session_timeout_ms + 1000),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **settings.kafka_security(),
    )
    kwargs.update(overrides)
    return AIOKafkaConsumer(*topics, **kwargs)


async def ensure_topics(settings: Settings, topics: Iterable[str], partitions: int | None = None) -> None:
    """Create topics explicitly (Tansu would auto-create them with 4 partitions, whatever we want)."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap(), request_timeout_ms=10000, **settings.kafka_security()
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(t, partitions or settings.topic_partitions, settings.topic_replication)
            for t in topics
            if t not in existing
        ]
        if wanted:
            try:
                await admin.create_topics(wanted)
            except TopicAlreadyExistsError:
                pass
    finally:
        await admin.close()


async def end_offsets(settings: Settings, topic: str, timeout: float = 10.0) -> dict[TopicPartition, int]:
    """Each partition's end (high watermark), read from a fetch response.

    Not ListOffsets: Tansu answers it with a count of record batches, not of records (measured: 100
    records sent in one batch -> ListOffsets says 1, the fetch's high watermark says 100).
    """
    import asyncio
    import time

    c = consumer(settings, group_id=None, max_partition_fetch_bytes=1024)
    await c.start()
    try:
        parts = c.partitions_for_topic(topic)
        if not parts:
            await c._client.force_metadata_update()
            parts = c.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return {}
        c.assign(tps)
        for tp in tps:
            c.seek(tp, 0)
        deadline = time.monotonic() + timeout
        ends: dict[TopicPartition, int] = {}
        while len(ends) < len(tps):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no high watermark for {sorted(set(tps) - set(ends))}")
            await c.getmany(*[tp for tp in tps if tp not in ends], timeout_ms=200, max_records=1)
            for tp in tps:
                hw = c.highwater(tp)
                if hw is not None:
                    ends[tp] = hw
            await asyncio.sleep(0)
        return ends
    finally:
        await c.stop()


async def group_offsets(settings: Settings, group: str, topics: Sequence[str]) -> dict[TopicPartition, tuple[int, int]]:
    """Each partition of `topics` with (committed offset of `group`, end offset); 0 if never committed."""
    c = consumer(settings, group_id=group)
    await c.start()
    try:
        out = {}
        for topic in topics:
            for tp, end in (await end_offsets(settings, topic)).items():
                out[tp] = (await c.committed(tp) or 0, end)
        return out
    finally:
        await c.stop()


async def group_lag(settings: Settings, group: str, topics: Sequence[str]) -> int:
    """Lag of a consumer group as Kafka defines it: end offsets minus committed offsets."""
    return sum(max(end - committed, 0) for committed, end in (await group_offsets(settings, group, topics)).values())


async def ensure_topic_layout(settings: Settings, layout: dict[str, int]) -> dict[str, tuple[int, int]]:
    """Create every topic of `layout` (topic -> partitions) that the broker lacks, in one request, before
    anything is published: a produce, or a consumer's metadata request, would have the broker auto-create
    it with its default partition count (Tansu's is 4), and a dead-letter topic is otherwise created only
    when its consumer group starts. Raises if one is still missing after. Returns the topics that exist
    with another partition count, as topic -> (partitions, wanted): those are left as they are (more
    partitions would send a stream's later events to another partition than its earlier ones)."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap(), request_timeout_ms=10000, **settings.kafka_security()
    )
    await admin.start()
    try:

        async def partitions() -> dict[str, int]:
            return {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics() if t["error_code"] == 0}

        existing = await partitions()
        wanted = [NewTopic(t, n, settings.topic_replication) for t, n in layout.items() if t not in existing]
        if wanted:
            try:
                await admin.create_topics(wanted)
            except TopicAlreadyExistsError:
                pass
            existing = await partitions()
        if missing := sorted(set(layout) - set(existing)):
            raise RuntimeError(f"the broker did not create {', '.join(missing)}")
        return {t: (existing[t], n) for t, n in layout.items() if existing[t] != n}
    finally:
        await admin.close()


async def send_parked(
    producer: AIOKafkaProducer,
    group: str,
    raw: bytes | None,
    reason: str,
    origin: str,
    parked_id: int,
    projection: str = "",
) -> None:
    """A parked message onto its group's dead-letter topic, as send_dead, with a `parked` header: its id in
    `mieux parked show|retry|drop`."""
    headers = [("reason", reason.encode()[:4000]), ("origin", origin.encode()), ("parked", str(parked_id).encode())]
    if projection:
        headers.append(("projection", projection.encode()))
    await producer.send_and_wait(dlq_topic(group), value=raw or b"", headers=headers)
