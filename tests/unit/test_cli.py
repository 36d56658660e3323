"""The CLI's pure parts: the event catalogue it prints and the times it reads."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from services.ops.cli import main, parse_since


def test_events_schema_prints_the_envelope_and_every_event_with_its_topic_and_schema(capsys) -> None:
    assert main(["events", "schema"]) == 0
    out = json.loads(capsys.readouterr().out)
    envelope = out["envelope"]["properties"]
    for field in ("event_id", "event_type", "schema_version", "stream_id", "position", "actor", "data"):
        assert field in envelope
    events = out["events"]
    for name, source in [
        ("RequestReceived", "requests"),
        ("ActionFicheAgreed", "actions"),
        ("ActivityHeld", "actions"),
        ("ExpertDeployed", "experts"),
        ("FlightBooked", "logistics"),
        ("OffsetsRetired", "carbon"),
    ]:
        assert events[name]["source"] == source
        assert events[name]["topic"] == f"mieux.{source}.events"
        assert events[name]["schema_version"] >= 1
        assert events[name]["schema"]["type"] == "object"
    assert "partner" in events["RequestReceived"]["schema"]["properties"]


def test_since_takes_a_duration_back_from_now_or_an_iso_time() -> None:
    before = datetime.now(UTC)
    fifteen = parse_since("15m")
    assert before - timedelta(minutes=15, seconds=5) <= fifteen <= datetime.now(UTC) - timedelta(minutes=15)
    assert parse_since("2026-03-01T10:00:00") == datetime(2026, 3, 1, 10, tzinfo=UTC)  # no zone: UTC
    assert parse_since("2026-03-01T10:00:00+02:00") == datetime(2026, 3, 1, 8, tzinfo=UTC)
    with pytest.raises(ValueError):
        parse_since("yesterday")
