"""Proto <-> Python at a servicer's edge, the same for every service."""

from __future__ import annotations

from datetime import date
from typing import Any

from google.protobuf.message import Message
from mieux.common.v1 import common_pb2

from services.kernel.store import AppendResult

DATE = "mieux.common.v1.Date"


def ack(r: AppendResult) -> common_pb2.CommandAck:
    """What a command answers: a retried command id gets its first result, marked duplicate."""
    return common_pb2.CommandAck(
        stream_id=r.stream_id,
        first_version=r.first_version,
        last_version=r.last_version,
        position=r.last_position or 0,
        duplicate=r.duplicate,
    )


def fields(msg: Message, *, with_defaults: bool = False) -> dict[str, Any]:
    """A message as a plain dict for the pydantic command models: dates become "YYYY-MM-DD", nested
    messages nested dicts. Unset fields are left out (so `required` names them), unless `with_defaults`
    (then an unset number is 0 and is refused as such)."""
    out: dict[str, Any] = {}
    if with_defaults:
        present = [(fd, getattr(msg, fd.name)) for fd in msg.DESCRIPTOR.fields]
        present = [(fd, v) for fd, v in present if fd.message_type is None or fd.is_repeated or msg.HasField(fd.name)]
    else:
        present = list(msg.ListFields())
    for fd, value in present:
        if fd.message_type is None:
            out[fd.name] = list(value) if fd.is_repeated else value
            continue
        conv = (
            (lambda m: m.iso)
            if fd.message_type.full_name == DATE
            else (lambda m: fields(m, with_defaults=with_defaults))
        )
        out[fd.name] = [conv(v) for v in value] if fd.is_repeated else conv(value)
    return out


def date_pb(d: date | str | None) -> common_pb2.Date | None:
    """A date (or its ISO string, as a client takes it, sent as given) as a `mieux.common.v1.Date`; None is
    unset."""
    if d is None:
        return None
    return common_pb2.Date(iso=d if isinstance(d, str) else d.isoformat())


def date_of(msg: Any) -> date | None:
    """The date a `mieux.common.v1.Date` holds, or None when it is unset, empty or not a date."""
    iso = getattr(msg, "iso", "")
    try:
        return date.fromisoformat(iso) if iso else None
    except ValueError:
        return None
