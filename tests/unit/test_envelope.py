"""The envelope and the event registry: decoding, tolerant reading, upcasting, bad messages. Pure."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime
from typing import Any, ClassVar

import pytest

from services.kernel import projection
from services.kernel.envelope import (
    DecodeError,
    Envelope,
    Event,
    Registry,
    UnknownEvent,
    parse_message,
    registry,
)
from services.requests.events import RequestReceived

RECEIVED_DATA = {
    "request_id": "req-1",
    "partner": "CR",
    "partner_kind": "country",
    "partner_name": "Costa Rica",
    "institution": "Dirección General de Migración",
    "institution_type": "agency",
    "received_on": "2017-03-14",
    "title": "Costa Rica III",
    "themes": ["labour migration"],
}


def envelope(event_type: str, data: dict[str, Any], schema_version: int = 1, **over: Any) -> Envelope:
    fields: dict[str, Any] = {
        "event_id": uuid.uuid4(),
        "event_type": event_type,
        "schema_version": schema_version,
        "source": "requests",
        "stream_id": "req-1",
        "stream_version": 1,
        "position": 7,
        "occurred_at": datetime(2017, 3, 14, 9, 30, tzinfo=UTC),
        "recorded_at": datetime(2017, 3, 14, 9, 30, 1, 250000, tzinfo=UTC),
        "correlation_id": "corr-1",
        "causation_id": "cause-1",
        "actor": "dev-ops",
        "data": data,
    }
    fields.update(over)
    return Envelope(**fields)


# --- test-only events, in a private registry so the global one is not polluted -------------------


class Greeted(Event, register=False):
    """Version 2: v1 had a single `name`; v2 splits it."""

    schema_version: ClassVar[int] = 2
    source: ClassVar[str] = "test"
    first_name: str
    last_name: str


class Waved(Event, register=False):
    source: ClassVar[str] = "test"
    hand: str


@pytest.fixture
def reg() -> Registry:
    r = Registry()
    r.register(Greeted)
    r.register(Waved)

    @r.upcaster("Greeted", 1)
    def split_name(data: dict[str, Any]) -> dict[str, Any]:
        first, _, last = data.pop("name").partition(" ")
        return {**data, "first_name": first, "last_name": last}

    return r


def test_private_registry_leaves_the_global_one_alone(reg: Registry) -> None:
    assert "Greeted" in reg.types
    assert "Greeted" not in registry.types and "Waved" not in registry.types


def test_global_registry_decodes_a_known_event() -> None:
    ev = registry.decode(envelope("RequestReceived", RECEIVED_DATA))
    assert isinstance(ev, RequestReceived)
    assert ev.request_id == "req-1"
    assert ev.partner_kind == "country"
    assert ev.received_on == date(2017, 3, 14)
    assert ev.themes == ("labour migration",)


def test_known_event_whose_data_does_not_match_its_schema_is_a_decode_error() -> None:
    bad = {**RECEIVED_DATA, "partner_kind": "planet"}
    with pytest.raises(DecodeError, match="RequestReceived"):
        registry.decode(envelope("RequestReceived", bad))
    missing = {k: v for k, v in RECEIVED_DATA.items() if k != "title"}
    with pytest.raises(DecodeError):
        registry.decode(envelope("RequestReceived", missing))


def test_registering_a_different_class_under_a_taken_event_type_is_refused(reg: Registry) -> None:
    class Waved(Event, register=False):  # another class of the same name, so of the same event type
        source: ClassVar[str] = "test"

    with pytest.raises(ValueError, match="registered twice"):
        reg.register(Waved)
    original = reg.types["Waved"]
    reg.register(original)  # the same class again is harmless
    assert reg.types["Waved"] is original is not Waved


def test_an_event_type_is_its_class_name_and_registers_itself() -> None:
    class SomethingHappened(Event):
        source: ClassVar[str] = "test"

    class Abstract(Event, abstract=True):
        source: ClassVar[str] = "test"

    try:
        assert SomethingHappened.event_type == "SomethingHappened"
        assert registry.types["SomethingHappened"] is SomethingHappened
        assert "Abstract" not in registry.types and not hasattr(Abstract, "event_type")
    finally:
        del registry.types["SomethingHappened"]


def test_unknown_event_type_decodes_to_unknown_event(reg: Registry) -> None:
    ev = reg.decode(envelope("SomethingNew", {"x": 1, "y": "two"}))
    assert isinstance(ev, UnknownEvent)
    assert ev.model_dump() == {"x": 1, "y": "two"}
    # the global registry is just as tolerant
    assert isinstance(registry.decode(envelope("SomethingNew", {"x": 1})), UnknownEvent)


class _Counting(projection.Projection):
    name = "test_counting"
    service = "test"
    topics = ("mieux.test.events",)
    tables = ()
    setup_sql = ""

    def __init__(self) -> None:
        self.applied: list[str] = []

    async def apply_many(self, conn: Any, items: Any) -> None:
        self.applied.extend(env.event_type for env, _ in items)


class _FakeConn:
    """Answers the tracking-table insert as if every (projection, event id) were new."""

    async def fetch(self, sql: str, names: list[str], event_ids: list[uuid.UUID]) -> list[dict[str, Any]]:
        assert "test_projections.tracking" in sql
        return [{"projection": n, "event_id": i} for n, i in zip(names, event_ids, strict=True)]


async def test_projections_skip_unknown_events_without_dead_lettering_them() -> None:
    known = envelope("RequestReceived", RECEIVED_DATA)
    unknown = envelope("SomethingNew", {"x": 1})
    t = _Counting.topics[0]
    good, dead = projection.decode([(t, known.to_bytes()), (t, unknown.to_bytes())])
    assert dead == []
    assert [type(ev) for _, _, ev in good] == [RequestReceived, UnknownEvent]

    p = _Counting()
    routed = projection.route([p], good)
    applied, duplicates, skipped = await projection._apply_items(_FakeConn(), routed)  # type: ignore[arg-type]
    assert (applied, duplicates, skipped) == (1, 0, 1)
    assert p.applied == ["RequestReceived"]


def test_upcasting_turns_a_v1_envelope_into_the_v2_model(reg: Registry) -> None:
    ev = reg.decode(envelope("Greeted", {"name": "Ada Lovelace"}, schema_version=1))
    assert isinstance(ev, Greeted)
    assert (ev.first_name, ev.last_name) == ("Ada", "Lovelace")
    # a current-version envelope is taken as it is, the upcaster not applied
    ev2 = reg.decode(envelope("Greeted", {"first_name": "Grace", "last_name": "Hopper"}, schema_version=2))
    assert (ev2.first_name, ev2.last_name) == ("Grace", "Hopper")


def test_upcasting_does_not_mutate_the_envelope(reg: Registry) -> None:
    env = envelope("Greeted", {"name": "Ada Lovelace"}, schema_version=1)
    reg.decode(env)
    assert env.data == {"name": "Ada Lovelace"}


def test_a_missing_upcaster_is_a_decode_error() -> None:
    r = Registry()
    r.register(Greeted)  # version 2, but no upcaster from 1
    with pytest.raises(DecodeError, match="no upcaster"):
        r.decode(envelope("Greeted", {"name": "Ada Lovelace"}, schema_version=1))


@pytest.mark.parametrize("version", [3, 99, 0, -1])
def test_an_unknown_schema_version_is_a_decode_error(reg: Registry, version: int) -> None:
    with pytest.raises(DecodeError, match="schema version"):
        reg.decode(envelope("Greeted", {"first_name": "A", "last_name": "B"}, schema_version=version))


@pytest.mark.parametrize(
    "raw",
    [
        None,
        b"",
        b"{not json",
        b"\xff\xfe\x00garbage",
        b"[1, 2, 3]",
        b'"a string"',
        b"null",
        b'{"event_type": "RequestReceived"}',
        b'{"hello": "world"}',
    ],
    ids=["none", "empty", "bad-json", "bad-bytes", "array", "string", "null", "partial", "other-object"],
)
def test_parse_message_refuses_what_is_not_an_envelope(raw: bytes | None) -> None:
    with pytest.raises(DecodeError):
        parse_message(raw)


def test_parse_message_refuses_an_envelope_with_a_bad_field() -> None:
    doc = json.loads(envelope("RequestReceived", RECEIVED_DATA).to_bytes())
    doc["event_id"] = "not-a-uuid"
    with pytest.raises(DecodeError, match="not an envelope"):
        parse_message(json.dumps(doc).encode())


def test_envelope_json_round_trip() -> None:
    env = envelope("RequestReceived", RECEIVED_DATA)
    raw = env.to_bytes()
    doc = json.loads(raw)
    assert doc["event_id"] == str(env.event_id)
    assert doc["data"] == RECEIVED_DATA
    again = Envelope.from_bytes(raw)
    assert again == env
    assert again.recorded_at == env.recorded_at and again.recorded_at.tzinfo is not None
    assert parse_message(raw) == env
    assert isinstance(registry.decode(parse_message(raw)), RequestReceived)
