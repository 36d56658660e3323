"""`mieux events tail` against the real broker: filters, JSON lines, and a dead letter's headers."""

from __future__ import annotations

import asyncio
import json
import sys

import pytest
from support import make_envelope, signed

from services.kernel import bus
from services.kernel.envelope import Envelope, topic_for
from services.kernel.settings import Settings

pytestmark = pytest.mark.integration


def envelope(event_type: str, stream: str, version: int) -> Envelope:
    return make_envelope(event_type, {"version": version}, stream_id=stream, version=version)


async def send(topic: str, messages: list[tuple[bytes, str, list[tuple[str, bytes]]]]) -> None:
    """(value, key, headers) in order."""
    settings = Settings()
    await bus.ensure_topics(settings, [topic])
    producer = bus.producer(settings)
    await producer.start()
    try:
        for value, key, headers in messages:
            await producer.send_and_wait(topic, value=value, key=key.encode(), headers=headers)
    finally:
        await producer.stop()


async def tail(stack_env: dict[str, str], *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.ops.cli",
        "events",
        "tail",
        *args,
        "--from-beginning",
        "--exit-at-end",
        env={**stack_env, "COLUMNS": "200"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    return out.decode()


def lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


async def test_tail_prints_every_envelope_and_filters_by_type_and_stream(stack_env, schema) -> None:
    topic = topic_for(schema)
    events = [envelope("Opened", "a", 1), envelope("Opened", "b", 1), envelope("Closed", "a", 2)]
    events.append(envelope("Opened", "c[/]", 1))  # text that rich would read as markup
    await send(topic, [(e.to_bytes(), e.stream_id, []) for e in events])

    every = lines(await tail(stack_env, topic, "--json"))
    assert sorted(r["event_id"] for r in every) == sorted(str(e.event_id) for e in events)
    assert [r["stream_version"] for r in every if r["stream_id"] == "a"] == [1, 2]  # a stream stays in order
    assert all("headers" not in r for r in every)

    closed = lines(await tail(stack_env, topic, "--json", "--type", "Closed"))
    assert [r["event_id"] for r in closed] == [str(events[2].event_id)]
    stream_b = lines(await tail(stack_env, topic, "--json", "--stream", "b"))
    assert [r["event_id"] for r in stream_b] == [str(events[1].event_id)]

    text = await tail(stack_env, topic, "--stream", "c[/]")
    assert "Opened c[/] v1 by tester" in text


async def test_tail_of_a_dead_letter_topic_shows_why_each_message_is_there(stack_env, schema) -> None:
    topic = f"mieux.{schema}.projections.dlq"
    refused = envelope("Opened", "a", 1)
    origin = topic_for(schema)
    why = [("reason", b"apply failed: CheckViolation [total]"), ("origin", origin.encode()), ("projection", b"p1")]
    await send(
        topic,
        [
            (b"{not json", "x", [("reason", b"not JSON"), ("origin", origin.encode())]),
            (refused.to_bytes(), "a", why),
        ],
    )

    dead = lines(await tail(stack_env, topic, "--json"))
    assert len(dead) == 2
    bad = next(r for r in dead if "undecodable" in r)
    assert bad["headers"] == {"reason": "not JSON", "origin": origin}
    applied = next(r for r in dead if "event_id" in r)
    assert applied["event_id"] == str(refused.event_id)
    assert applied["headers"] == {
        "reason": "apply failed: CheckViolation [total]",
        "origin": origin,
        "projection": "p1",
    }

    text = await tail(stack_env, topic)
    assert "undecodable" in text
    assert "reason: apply failed: CheckViolation [total]" in text  # printed as it is, not read as markup
    assert "projection: p1" in text


async def test_tail_of_an_events_topic_says_whether_each_message_is_signed_by_its_producer(stack_env, schema) -> None:
    topic = topic_for(schema)
    genuine, doctored = signed(topic, [envelope("Opened", "s", 1), envelope("Opened", "d", 1)])
    unsigned = envelope("Opened", "u", 1)
    await send(
        topic,
        [
            (genuine.value, "s", genuine.headers),
            (doctored.value.replace(b'"version":1', b'"version":2'), "d", doctored.headers),
            (unsigned.to_bytes(), "u", []),
        ],
    )
    kid = Envelope.from_bytes(genuine.value).key_id
    every = {r["stream_id"]: r for r in lines(await tail(stack_env, topic, "--json"))}
    assert {s: r["signature"] for s, r in every.items()} == {
        "s": f"verified (key {kid})",
        "d": "signature does not verify",
        "u": "unsigned",
    }
    assert all("headers" not in r for r in every.values())  # the signature header is not printed as such
    text = await tail(stack_env, topic, "--stream", "s")
    assert f"signature: verified (key {kid})" in text
