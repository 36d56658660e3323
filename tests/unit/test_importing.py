"""The export line format (importing.EventRow.to_line / from_line): what goes out comes back, whatever its data."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest

from services.kernel.importing import EventRow

AT = datetime(2013, 2, 3, 4, 5, 6, 789, tzinfo=UTC)


def event(data: object, command: str | None = "cmd-1") -> EventRow:
    count = None if command is None else 2
    return EventRow(uuid.uuid4(), "s", 3, "T", 2, json.dumps(data), AT, AT, "corr", "cause", "me", command, "h", count)


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"a": 1, "name": "enc:v1:subject:key:abc"},
        {"data": {"data": 1}},  # a key of the same name, nested
        {"text": ', "data": {"x": 1}}'},  # the separator inside a string
        {"é": "ü", "list": [1, {"data": None}]},
    ],
)
def test_a_line_comes_back_as_the_event_it_was(data: object) -> None:
    e = event(data)
    source, back = EventRow.from_line(e.to_line("requests", 42))
    assert (source, back) == ("requests", e)
    line = json.loads(e.to_line("requests", 42))
    assert line["position"] == 42 and line["data"] == data and line["command_id"] == "cmd-1"


def test_a_line_of_another_key_order_is_parsed_whole() -> None:
    e = event({"a": [1, 2]}, command=None)
    o = json.loads(e.to_line("requests", 1))
    moved = json.dumps({"data": o.pop("data"), **o})
    assert EventRow.from_line(moved) == ("requests", e)


@pytest.mark.parametrize("line", ["{}", '{"source": "x"}', "[1]", '{"source": "x", "data": [1]}'])
def test_what_is_not_an_exported_event_is_refused(line: str) -> None:
    with pytest.raises((KeyError, ValueError)):
        EventRow.from_line(line)
