"""Generated bad input for every RPC of every service, driven by the proto descriptors (DESIGN.md section 11,
"Bad input gets a clear error and changes nothing"); the test is tests/integration/test_bad_input.py.

What is here:
- `rpcs()`: every RPC of every service, read from the generated descriptors (gen/mieux/<ctx>/v*/*_pb2.py),
  plus `mieux.common.v1.EventLog`, which every service serves. A new RPC or a new field is covered as is.
- `encode()`: a request in the protobuf wire format, by hand, so that a text field may carry bytes the
  protobuf Python API refuses to serialise (invalid UTF-8, a lone surrogate).
- `Generator`: hypothesis strategies, field by field from a message descriptor, and a deterministic sweep
  (one odd value in one field of an otherwise valid-looking request, for every field), both giving `Case`s.
- `echoed()`, `Problem`, `Report`: what the test checks a reply with and how it reports.

A value is a `Gen` (the value and a label saying what it is, for the reports); a message a `Msg`; a
repeated field a `Rep`. A field absent from a `Msg` is not sent (missing).
"""

from __future__ import annotations

import base64
import importlib
import re
import struct
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from hypothesis import strategies as st

import services  # puts gen/ on sys.path

GEN = Path(services.__file__).resolve().parent.parent / "gen"
EVENTLOG_MODULE = "mieux.common.v1.eventlog_pb2"  # served by every service (services/kernel/service.py)
DATE = "mieux.common.v1.Date"
MONEY = "mieux.common.v1.Money"
ECHO = 64  # characters of a generated value a refusal may quote (DESIGN.md section 11)
MAX_REQUEST = 3_500_000  # bytes: under gRPC's 4 MiB default receive limit, which is not what is tested here

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


# --- the RPCs -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rpc:
    context: str  # the service process (services.<context>) and its PostgreSQL schema
    method: MethodDescriptor

    def __repr__(self) -> str:
        return f"Rpc({self.id})"

    @property
    def path(self) -> str:
        return f"/{self.method.containing_service.full_name}/{self.method.name}"

    @property
    def id(self) -> str:
        return f"{self.context}.{self.method.containing_service.name}.{self.method.name}"

    @property
    def input(self) -> Descriptor:
        return self.method.input_type

    @property
    def is_command(self) -> bool:
        return "command_id" in self.input.fields_by_name

    @property
    def streaming(self) -> bool:
        """The replies are a stream."""
        return self.method.server_streaming

    @property
    def client_streaming(self) -> bool:
        """The request is a stream (the test sends one message on it)."""
        return self.method.client_streaming

    def request_class(self) -> type:
        return message_factory.GetMessageClass(self.method.input_type)

    def reply_class(self) -> type:
        return message_factory.GetMessageClass(self.method.output_type)

    def callable_on(self, channel: Any, response_deserializer: Callable[[bytes], Any] | None = None) -> Any:
        """This method on a (synchronous) channel, of the kind its streaming asks for; requests go as raw bytes."""
        kind = {
            (False, False): channel.unary_unary,
            (False, True): channel.unary_stream,
            (True, False): channel.stream_unary,
            (True, True): channel.stream_stream,
        }[(self.client_streaming, self.streaming)]
        return kind(self.path, request_serializer=None, response_deserializer=response_deserializer)


def contexts() -> list[str]:
    """The services: every gen/mieux/<ctx>/<version> with a gRPC service of its own (services.<ctx>)."""
    return sorted({r.context for r in rpcs() if r.method.containing_service.full_name != "mieux.common.v1.EventLog"})


def _modules() -> Iterator[tuple[str, Any]]:
    for path in sorted(GEN.glob("mieux/*/*/*_pb2.py")):
        ctx, version = path.parts[-3], path.parts[-2]
        if ctx != "common":
            yield ctx, importlib.import_module(f"mieux.{ctx}.{version}.{path.stem}")


def rpcs() -> list[Rpc]:
    out: list[Rpc] = []
    eventlog = importlib.import_module(EVENTLOG_MODULE).DESCRIPTOR
    ctxs: list[str] = []
    for ctx, module in _modules():
        for service in module.DESCRIPTOR.services_by_name.values():
            out.extend(Rpc(ctx, m) for m in service.methods)
            if ctx not in ctxs:
                ctxs.append(ctx)
    for ctx in ctxs:
        for service in eventlog.services_by_name.values():
            out.extend(Rpc(ctx, m) for m in service.methods)
    return out


# --- values ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fresh:
    """A value made unique when the request is sent (a command id, a new member id)."""

    prefix: str


@dataclass(frozen=True)
class Gen:
    value: Any  # str, bytes (sent as they are), int, bool, or Fresh
    label: str = "valid"

    def text(self) -> str | None:
        """The value as text, as a refusal could echo it (bytes decoded as a lenient server would)."""
        if isinstance(self.value, str):
            return self.value
        if isinstance(self.value, bytes):
            return self.value.decode("utf-8", "replace")
        return None


@dataclass(frozen=True)
class Rep:
    items: tuple[Any, ...]  # Gen or Msg
    label: str = ""


@dataclass(frozen=True)
class Msg:
    fields: Mapping[str, Any] = field(default_factory=dict)  # Gen, Msg or Rep; absent = not sent


Value = Union[Gen, Msg, Rep]  # noqa: UP007  (a runtime alias)


@dataclass(frozen=True)
class Case:
    token_label: str
    token: str | None  # the whole `authorization` value, or None for none
    msg: Msg
    note: str = ""  # what the sweep changed; generated cases are described from their values

    def __repr__(self) -> str:  # short: hypothesis prints it, and a list may hold 10,000 items
        return f"Case(token={self.token_label!r}, note={self.note!r})"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))


# --- the wire format ------------------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative numbers as 10-byte two's complement, like every protobuf encoder
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _tag(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _zigzag(n: int, bits: int) -> int:
    return (n << 1) ^ (n >> (bits - 1))


_VARINTS = {
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_BOOL,
    FieldDescriptor.TYPE_ENUM,
}
_FIXED = {
    FieldDescriptor.TYPE_FIXED32: (5, "<I"),
    FieldDescriptor.TYPE_SFIXED32: (5, "<i"),
    FieldDescriptor.TYPE_FLOAT: (5, "<f"),
    FieldDescriptor.TYPE_FIXED64: (1, "<Q"),
    FieldDescriptor.TYPE_SFIXED64: (1, "<q"),
    FieldDescriptor.TYPE_DOUBLE: (1, "<d"),
}


_TEXTS = (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES)


@dataclass(frozen=True)
class _Field:
    """What encoding needs of a field, read once per descriptor (descriptor attributes are slow to read)."""

    name: str
    fd: FieldDescriptor
    message: Descriptor | None
    length_tag: bytes  # the tag with wire type 2 (text, bytes, messages)
    varint_tag: bytes  # the tag with wire type 0


_TABLES: dict[str, tuple[_Field, ...]] = {}


def _table(desc: Descriptor) -> tuple[_Field, ...]:
    if (t := _TABLES.get(desc.full_name)) is None:
        t = _TABLES[desc.full_name] = tuple(
            _Field(fd.name, fd, fd.message_type, _tag(fd.number, 2), _tag(fd.number, 0)) for fd in desc.fields
        )
    return t


def _scalar(f: _Field, v: Any) -> bytes:
    t = f.fd.type
    if t in _TEXTS:
        raw = v if isinstance(v, bytes) else str(v).encode("utf-8", "surrogatepass")
        return f.length_tag + _varint(len(raw)) + raw
    if t in _VARINTS:
        return f.varint_tag + _varint(int(v))
    if t == FieldDescriptor.TYPE_SINT32:
        return f.varint_tag + _varint(_zigzag(int(v), 32))
    if t == FieldDescriptor.TYPE_SINT64:
        return f.varint_tag + _varint(_zigzag(int(v), 64))
    wire, fmt = _FIXED[t]
    return _tag(f.fd.number, wire) + struct.pack(fmt, v)


def encode(desc: Descriptor, msg: Msg, fresh: Callable[[str], str]) -> tuple[bytes, dict[str, str]]:
    """The message in the protobuf wire format, and the values `Fresh` placeholders became (by path)."""
    made: dict[str, str] = {}

    def one(f: _Field, item: Any, path: Callable[[], str]) -> bytes:
        if f.message is not None:
            body = enc(f.message, item, lambda: path() + ".")
            return f.length_tag + _varint(len(body)) + body
        v = item.value
        if isinstance(v, Fresh):
            p = path()
            v = made[p] = made.get(p) or fresh(v.prefix)
        return _scalar(f, v)

    def enc(d: Descriptor, m: Msg, prefix: Callable[[], str]) -> bytes:
        out = bytearray()
        fields = m.fields
        for f in _table(d):  # in field-number order, as encoders write them
            v = fields.get(f.name)
            if v is None:
                continue
            if not isinstance(v, Rep):
                out += one(f, v, lambda f=f: f"{prefix()}{f.name}")
                continue
            done: dict[int, bytes] = {}  # a list of 10,000 times one item encodes it once
            for i, item in enumerate(v.items):
                b = done.get(id(item))
                if b is None:
                    b = done[id(item)] = one(f, item, lambda f=f, i=i: f"{prefix()}{f.name}[{i}]")
                out += b
        return bytes(out)

    return enc(desc, msg, lambda: ""), made


# --- reading a generated request back -------------------------------------------------------------------


def leaves(desc: Descriptor, msg: Msg, prefix: str = "") -> Iterator[tuple[str, FieldDescriptor, Value | None]]:
    """(path, field, value or None when missing) for every field of the request, depth first."""
    for fd in desc.fields:
        path = f"{prefix}{fd.name}"
        v = msg.fields.get(fd.name)
        yield path, fd, v
        if v is None or fd.message_type is None:
            continue
        if isinstance(v, Rep):
            if len(v.items) <= 4:  # the items of a 10,000-item list are described by its label
                for i, item in enumerate(v.items):
                    yield from leaves(fd.message_type, item, f"{path}[{i}].")
        else:
            yield from leaves(fd.message_type, v, path + ".")


def texts(desc: Descriptor, msg: Msg) -> list[str]:
    """Every text value of the request longer than ECHO (the ones a refusal must not quote in full)."""
    out: set[str] = set()

    def walk(d: Descriptor, m: Msg) -> None:
        for fd in d.fields:
            v = m.fields.get(fd.name)
            if v is None:
                continue
            # the items of a 10,000-item list are short (see Generator.field): its first few say it all
            for item in v.items[:4] if isinstance(v, Rep) else (v,):
                if isinstance(item, Msg) and fd.message_type is not None:
                    walk(fd.message_type, item)
                elif isinstance(item, Gen) and (t := item.text()) is not None and len(t) > ECHO:
                    out.add(t)

    walk(desc, msg)
    return sorted(out)


def describe(desc: Descriptor, case: Case) -> str:
    """What is odd about a case, shortly: the token, then each field that is not a plain valid value."""
    parts = [f"token={case.token_label}"]
    if case.note:
        parts.append(case.note)
    else:
        for path, _fd, v in leaves(desc, case.msg):
            if v is None:
                if "[" not in path and "." not in path:
                    parts.append(f"{path}=missing")
            elif isinstance(v, Rep):
                parts.append(f"{path}={v.label or f'{len(v.items)} item(s)'}")
            elif isinstance(v, Gen) and v.label != "valid":
                parts.append(f"{path}={v.label}")
    text = ", ".join(parts)
    return text if len(text) <= 400 else text[:399] + "…"


# --- echo -----------------------------------------------------------------------------------------------


def echoed(reply_text: str, values: Sequence[str], limit: int = ECHO) -> str | None:
    """The first value of which more than `limit` consecutive characters appear in `reply_text`, if any."""
    n = limit + 1
    if len(reply_text) < n:
        return None
    for v in values:
        if len(v) < n:
            continue
        if len(reply_text) <= 4000:
            windows = {reply_text[i : i + n] for i in range(len(reply_text) - n + 1)}
            if any(w in v for w in windows):
                return v
        else:
            windows = {v[i : i + n] for i in range(len(v) - n + 1)}
            if any(reply_text[i : i + n] in windows for i in range(len(reply_text) - n + 1)):
                return v
    return None


# --- what is generated ----------------------------------------------------------------------------------


def G(value: Any, label: str) -> Gen:
    return Gen(value, label)


CONTROL = [
    G("a\x00b", "NUL inside"),
    G("\x00", "NUL alone"),
    G("MG\x00", "NUL after a valid value"),
    G("\x01\x02\x03", "control U+0001-0003"),
    G("x\x1b[31mred", "control ESC"),
    G("\x7f", "DEL"),
    G("\x85", "C1 control U+0085"),
    G("line\nbreak", "newline"),
    G("tab\there", "tab"),
    G("cr\rlf", "carriage return"),
    G("\u2028", "line separator U+2028"),
    G("\u202eevil", "bidi override U+202E"),
    G("\ufeffbom", "BOM U+FEFF"),
    G("zero\u200bwidth", "zero width space"),
]
ODD_UNICODE = [
    G("🛫✈️", "emoji"),
    G("e\u0301", "combining accent"),
    G("İ", "dotted capital I"),
    G("\uff2d\uff27", "fullwidth letters"),
    G("\uff12\uff10\uff11\uff17-\uff10\uff13-\uff10\uff18", "fullwidth digits"),
    G("٢٠١٧-٠٣-٠٨", "Arabic-Indic digits"),
    G("\U0010ffff", "U+10FFFF"),
    G("\ufffd", "replacement character"),
]
INJECTION = [
    G("'; DROP TABLE events;--", "SQL quote"),
    G("%", "LIKE %"),
    G("_", "LIKE _"),
    G("\\", "backslash"),
    G("%_%\\%", "LIKE metacharacters"),
    G("$1", "placeholder $1"),
    G("{}", "JSON {}"),
    G("null", "null"),
    G("../../etc/passwd", "path traversal"),
    G("${jndi:ldap://x/a}", "JNDI"),
    G("<script>alert(1)</script>", "HTML"),
]
WHITESPACE = [G("", "empty"), G(" ", "space"), G("\t", "tab alone"), G("   x   ", "padded")]
INVALID_UTF8 = [
    G(b"\xff", "invalid UTF-8 FF"),
    G(b"ab\xfe", "invalid UTF-8 FE"),
    G(b"\xc3\x28", "invalid UTF-8 sequence C3 28"),
    G(b"\xc0\xaf", "overlong UTF-8"),
    G(b"\xf4\x90\x80\x80", "UTF-8 above U+10FFFF"),
    G(b"\xe2\x82", "truncated UTF-8"),
    G(b"MG\xff", "invalid UTF-8 after a valid value"),
    G(b"\x80", "UTF-8 continuation byte alone"),
]
SURROGATES = [G("\ud800", "lone surrogate D800"), G("a\udfffb", "lone surrogate DFFF"), G("\udc00" * 3, "surrogates")]
DECIMALS = [
    G("1e999999", "decimal 1e999999"),
    G("-1e999999", "decimal -1e999999"),
    G("1e-999999", "decimal 1e-999999"),
    G("NaN", "decimal NaN"),
    G("sNaN", "decimal sNaN"),
    G("Infinity", "decimal Infinity"),
    G("-Infinity", "decimal -Infinity"),
    G("-0", "decimal -0"),
    G("0", "decimal 0"),
    G("-1", "decimal -1"),
    G("0.0001", "decimal 0.0001"),
    G("9" * 40, "decimal 40 nines"),
    G("1" + "0" * 400, "decimal 1e400 written out"),
    G("0." + "0" * 400 + "1", "decimal 1e-401 written out"),
    G("1_000", "decimal with underscore"),
    G(" 1", "decimal with a space"),
    G("1,5", "decimal with a comma"),
    G("0x10", "hex"),
    G("١٢٣", "Arabic-Indic decimal"),
    G("1E+2", "decimal 1E+2"),
]
DATES = [
    G("0001-01-01", "date 0001-01-01"),
    G("9999-12-31", "date 9999-12-31"),
    G("2017-02-30", "date 2017-02-30"),
    G("", "date empty"),
    G("1999-12-31", "date 1999-12-31"),
    G("2000-01-01", "date 2000-01-01"),
    G("2100-12-31", "date 2100-12-31"),
    G("2101-01-01", "date 2101-01-01"),
    G("2017-13-01", "date month 13"),
    G("2017-00-10", "date month 0"),
    G("2017-01-00", "date day 0"),
    G("2017-1-1", "date without zeros"),
    G("17-03-08", "date two-digit year"),
    G("2017-03-08T10:00:00", "date with a time"),
    G("2017-03-08 ", "date with a space"),
    G("+2017-03-08", "date with a sign"),
    G("-2017-03-08", "date negative year"),
    G("2017-W10-3", "ISO week date"),
    G("20170308", "basic ISO date"),
    G("2017/03/08", "date with slashes"),
    G("0000-00-00", "date 0000-00-00"),
    G("99999-01-01", "date five-digit year"),
    G("2017-02-29", "date 2017-02-29"),
]


def _token(key: list[Any]) -> str:
    import json

    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")


PAGE_TOKENS = [
    G("garbage!", "token garbage"),
    G("=====", "token padding"),
    G(base64.urlsafe_b64encode(b"\xff\xfe").decode(), "token of invalid UTF-8"),
    G(base64.urlsafe_b64encode(b"o:3").decode(), "token offset o:3"),
    G(_token([]), "token []"),
    G(_token([None, None]), "token [null, null]"),
    G(_token([True, "x"]), "token [true, x]"),
    G(_token([2**63, "x"]), "token [2^63, x]"),
    G(_token([1e308, "x"]), "token [1e308, x]"),
    G(_token(["2017-02-30", "x"]), "token [2017-02-30, x]"),
    G(_token(["\x00", "x"]), "token with NUL"),
    G(_token(["a" * 100_000, "x"]), "token 100 KB"),
    G(base64.urlsafe_b64encode(b"[" * 100_000).decode(), "token 100,000 nested ["),
    G(base64.urlsafe_b64encode(b'{"a": 1}').decode(), "token {a: 1}"),
]
INTS = [
    G(-1, "-1"),
    G(INT32_MIN, "int32 min"),
    G(INT32_MAX, "int32 max"),
    G(2**31, "2^31"),
    G(2**32, "2^32"),
    G(INT64_MAX, "int64 max"),
    G(INT64_MIN, "int64 min"),
    G(10**9, "1e9"),
    G(1999, "1999"),
    G(2101, "2101"),
    G(20000, "20000"),
]
LONG_CHARS = ("a", "é", "\x00", "%")
LONG_SIZES = (65, 201, 301, 1001, 4001, 100_000)


# Text from any code points, surrogates included (hypothesis's own text strategy leaves them out, and builds
# its character tables at a cost of seconds), mixed with characters parsers and databases trip on.
TRICKY_CHARS = "\x00\x01\x1b\x7f\x85\xa0\u2028\u202e\ufeff\ufffd\ud800\udfff\U0010ffff%_'\"\\"
any_text = st.lists(
    st.one_of(st.integers(min_value=0, max_value=0x10FFFF).map(chr), st.sampled_from(TRICKY_CHARS)), max_size=12
).map("".join)


def long_text(char: str, n: int) -> Gen:
    size = f"{n // 1000} KB" if n >= 100_000 else f"{n:,} chars"
    return G(char * n, f"{size} of {char!r}")


# The sweep: the odd values each field gets once, alone, in an otherwise valid-looking request (the
# generated cases draw from all the lists above).
SWEEP_TEXT = [
    G("a\x00b", "NUL inside"),
    G("x\x1b[31mred", "control ESC"),
    long_text("a", 100_000),
    G(b"MG\xff", "invalid UTF-8 after a valid value"),
    G("a\udfffb", "lone surrogate DFFF"),
]
SWEEP_DECIMAL = [G(v, f"decimal {v}") for v in ("1e999999", "NaN", "-0", "-1", "Infinity")] + [
    G("9" * 40, "decimal 40 nines")
]
SWEEP_DATE = [*(DATES[i] for i in (0, 1, 2, 7)), SWEEP_TEXT[0], SWEEP_TEXT[3]]  # 0001 9999 02-30 2101 NUL UTF-8
SWEEP_INT32 = [G(-1, "-1"), G(INT32_MIN, "int32 min"), G(INT32_MAX, "int32 max")]
SWEEP_INT64 = [G(-1, "-1"), G(INT64_MIN, "int64 min"), G(INT64_MAX, "int64 max")]
SWEEP_PAGE_TOKEN = [PAGE_TOKENS[i] for i in (0, 2, 7, 10, 12)] + [SWEEP_TEXT[i] for i in (0, 2, 3)]
SWEEP_TOKENS = ("admin", "finance", "service", "none", "wrong")  # the others are drawn in generated cases


@dataclass
class World:
    """Things that exist in the stack (seeded by the test), so generated ids may name real ones."""

    ids: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # field name -> (id, what it names)
    command_ids: list[str] = field(default_factory=list)  # command ids already used (retries)
    page_tokens: dict[str, list[str]] = field(default_factory=dict)  # RPC path -> tokens the service gave


# Valid-looking values by field name ("<message full name>.<field>" first, then the field name). The first is
# the one a sweep's base request uses. A field not named here gets generic text.
VALID_TEXT: dict[str, list[str]] = {
    f"{MONEY}.amount": ["912.50", "3.5", "1"],
    f"{MONEY}.currency": ["EUR", "usd", "XXX"],
    f"{DATE}.iso": ["2017-05-15", "2017-03-08", "2017-06-01", "2018-01-15", "2016-02-29"],
    "mieux.experts.v1.Themes.values": ["diaspora_engagement", "thb_and_som"],
    "partner": ["MG", "CR", "ECOWAS", "mg", "FR"],
    "institution": ["Ministry of the Interior"],
    "institution_type": ["ministry", "agency"],
    "title": ["Diaspora engagement", "Costa Rica III"],
    "themes": ["diaspora_engagement", "thb_and_som"],
    "theme": ["diaspora_engagement", "thb_and_som"],
    "region": ["africa_ces", "lac"],
    "mieux.requests.v1.ListRequestsQuery.status": ["", "received", "approved", "withdrawn"],
    "mieux.actions.v1.ListActionsQuery.status": ["", "open", "fiche_agreed", "closed"],
    "mieux.actions.v1.ListActivitiesQuery.status": ["", "planned", "held", "cancelled"],
    "mieux.experts.v1.ListDeploymentsQuery.status": ["", "deployed", "cancelled"],
    "mieux.logistics.v1.ListBookingsQuery.status": ["", "booked", "cancelled"],
    "mieux.logistics.v1.ListTeamQuery.status": ["", "on_team", "left"],
    "mieux.carbon.v1.ListFlightEmissionsQuery.status": ["", "recorded", "reversed"],
    "mieux.carbon.v1.ListOffsetLotsQuery.status": ["", "open", "retired"],
    "status": ["", "received", "planned", "booked", "cancelled"],
    "activity_type": ["workshop", "remote_support"],
    "country": ["MG", "CR"],
    "nationality": ["ES", "be"],
    "city": ["Antananarivo"],
    "airport": ["TNR", "NBO"],
    "origin": ["BRU", "LHR"],
    "destination": ["TNR", "NBO"],
    "name": ["Ana Expert"],
    "gender": ["female", "male", "other"],
    "background": ["academia", "ngo"],
    "role": ["Project Officer"],
    "reason": ["postponed by the partner"],
    "summary": ["agreed with the partner"],
    "question": ["peer_to_peer_beneficial", "overall_experience"],
    "cabin_class": ["economy", "business"],
    "traveller_kind": ["team_member", "expert"],
    "registry": ["Gold Standard"],
    "project": ["African Biomass Energy Conservation PoA"],
}
VALID_INT: dict[str, list[int]] = {
    "year": [2017, 2018, 0],
    "vintage_year": [2017],
    "against_year": [2017],
    "page_size": [10, 1, 0, 500],
    "quantity": [10, 1],
    "score": [4, 1, 5],
    "after_position": [0, 3],
    "limit": [10, 0],
}


def _key(desc: Descriptor, fd: FieldDescriptor) -> str:
    return f"{desc.full_name}.{fd.name}"


class Generator:
    """Strategies and sweep cases for the requests of one stack: its tokens and what exists in it."""

    def __init__(self, tokens: Mapping[str, str], world: World) -> None:
        self.tokens = dict(tokens)
        self.world = world

    # --- tokens ---------------------------------------------------------------------------------

    def token_cases(self) -> list[tuple[str, str | None]]:
        out: list[tuple[str, str | None]] = [(role, f"Bearer {tok}") for role, tok in sorted(self.tokens.items())]
        return [
            *out,
            ("none", None),
            ("wrong", "Bearer not-a-token"),
            ("empty bearer", "Bearer "),
            ("basic scheme", f"Basic {self.tokens['ops']}"),
            ("ops token lower-cased scheme", f"bearer {self.tokens['ops']}"),
        ]

    def token_strategy(self) -> st.SearchStrategy[tuple[str, str | None]]:
        ops = ("ops", f"Bearer {self.tokens['ops']}")
        return st.one_of(st.just(ops), st.just(ops), st.just(ops), st.sampled_from(self.token_cases()))

    # --- valid-looking values -------------------------------------------------------------------

    def valid(self, desc: Descriptor, fd: FieldDescriptor, path: str) -> list[Gen]:
        name = fd.name
        if fd.type == FieldDescriptor.TYPE_BOOL:
            return [G(True, "valid"), G(False, "valid")]
        if fd.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
            if name == "command_id":
                return [G(Fresh("bad-input-cmd-"), "valid")] * 3 + [
                    G(c, "a used command id") for c in self.world.command_ids[:3]
                ]
            if name == "page_token":
                return [G("", "valid")] + [G(t, "a token it gave") for t in self.world.page_tokens.get(path, [])]
            if name == "member_id":
                return [G(Fresh("tm-"), "valid"), *(G(v, what) for v, what in self.world.ids.get(name, []))]
            values = VALID_TEXT.get(_key(desc, fd)) or VALID_TEXT.get(name)
            if values is None and name in self.world.ids:
                return [G(v, what) for v, what in self.world.ids[name]]
            return [G(v, "valid") for v in (values or ["valid-looking text", "x"])]
        if name.startswith("participants_"):
            return [G(12, "valid"), G(0, "valid")]
        return [G(v, "valid") for v in VALID_INT.get(name, [1, 0])]

    # --- odd values ------------------------------------------------------------------------------

    @staticmethod
    def kind(desc: Descriptor, fd: FieldDescriptor) -> str:
        if fd.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
            if desc.full_name == DATE:
                return "date"
            if fd.name == "page_token":
                return "page_token"
            if fd.name == "amount" or fd.name.endswith("_amount"):
                return "decimal"
            return "text"
        if fd.type == FieldDescriptor.TYPE_BOOL:
            return "bool"
        return "int"

    def odd(self, kind: str) -> list[Gen]:
        if kind == "bool":
            return [G(2, "bool as 2"), G(2**64 - 1, "bool as 2^64-1")]
        if kind == "int":
            return INTS
        text = CONTROL + ODD_UNICODE + INJECTION + WHITESPACE + INVALID_UTF8 + SURROGATES
        if kind == "date":
            return DATES + DATES + text
        if kind == "decimal":
            return DECIMALS + DECIMALS + text
        if kind == "page_token":
            return PAGE_TOKENS + PAGE_TOKENS + text
        return text + DECIMALS[:4] + DATES[:3]

    def leaf(self, desc: Descriptor, fd: FieldDescriptor, path: str, short: bool = False) -> st.SearchStrategy[Gen]:
        """A scalar: valid-looking (half the time), a known odd value, or hypothesis's own text and bytes; and
        unless `short` (the items of a 10,000-item list) a long text."""
        valid = st.sampled_from(self.valid(desc, fd, path))
        kind = self.kind(desc, fd)
        odd = st.sampled_from(self.odd(kind))
        branches = [valid, valid, valid, odd, odd]
        if kind not in ("int", "bool"):
            branches.append(any_text.map(lambda s: G(s, f"text {s!r}")))
            branches.append(st.binary(max_size=8).map(lambda b: G(b, f"bytes {b!r}")))
            if not short:
                branches.append(
                    st.builds(long_text, st.sampled_from(LONG_CHARS), st.sampled_from(LONG_SIZES)),
                )
        else:
            branches.append(st.integers(min_value=INT64_MIN, max_value=INT64_MAX).map(lambda n: G(n, f"{n}")))
        return st.one_of(*branches)

    def message(self, desc: Descriptor, path: str, depth: int = 0, short: bool = False) -> st.SearchStrategy[Msg]:
        """Each field present or missing; a present one valid-looking or odd."""
        if depth > 4:
            return st.just(Msg())
        optional = {fd.name: self.field(desc, fd, path, depth, short) for fd in desc.fields}
        return st.fixed_dictionaries({}, optional=optional).map(Msg)

    def field(self, desc: Descriptor, fd: FieldDescriptor, path: str, depth: int, short: bool) -> st.SearchStrategy:
        def one(s: bool) -> st.SearchStrategy:
            if fd.message_type is not None:
                return self.message(fd.message_type, path, depth + 1, s)
            return self.leaf(desc, fd, path, s)

        if not fd.is_repeated:
            return one(short)
        few = st.lists(one(short), max_size=4).map(lambda xs: Rep(tuple(xs)))
        if short:
            return few
        item = one(True)
        many = st.tuples(item, st.sampled_from([1_001, 10_000])).map(
            lambda t: Rep((t[0],) * t[1], f"{t[1]:,} x the same item")
        )
        distinct = item.map(lambda x: Rep(tuple(_variant(x, i) for i in range(10_000)), "10,000 different items"))
        return st.one_of(few, few, many, distinct)

    def cases(self, rpc: Rpc) -> st.SearchStrategy[Case]:
        return st.builds(lambda t, m: Case(t[0], t[1], m), self.token_strategy(), self.message(rpc.input, rpc.path))

    # --- the sweep -------------------------------------------------------------------------------

    def base(self, desc: Descriptor, path: str, depth: int = 0) -> Msg:
        """A valid-looking request: every field at its first valid-looking value, one item per list."""
        out: dict[str, Any] = {}
        for fd in desc.fields:
            if fd.message_type is not None:
                v: Any = self.base(fd.message_type, path, depth + 1) if depth < 4 else Msg()
            else:
                v = self.valid(desc, fd, path)[0]
            out[fd.name] = Rep((v,)) if fd.is_repeated else v
        return Msg(out)

    def sweep(self, rpc: Rpc) -> list[Case]:
        """One odd thing at a time: each token but ops with the base request, then for every field (nested
        ones too) missing, and each of its sweep values; for a list, also empty and 10,000 items."""
        base = self.base(rpc.input, rpc.path)
        ops = f"Bearer {self.tokens['ops']}"
        cases = [Case(label, tok, base, "valid-looking request") for label, tok in self.token_cases()]
        cases = [c for c in cases if c.token_label in SWEEP_TOKENS] + [Case("ops", ops, base, "valid-looking request")]
        for path, changed in self._mutations(rpc.input, base, rpc.path, ""):
            cases.append(Case("ops", ops, changed, path))
        return cases

    def _mutations(self, desc: Descriptor, msg: Msg, rpc_path: str, prefix: str) -> Iterator[tuple[str, Msg]]:
        def put(name: str, v: Any) -> Msg:
            fields = dict(msg.fields)
            if v is None:
                fields.pop(name, None)
            else:
                fields[name] = v
            return Msg(fields)

        for fd in desc.fields:
            path = f"{prefix}{fd.name}"
            current = msg.fields.get(fd.name)
            if fd.name != "command_id" or prefix:
                yield f"{path}=missing", put(fd.name, None)
            if fd.message_type is not None:
                inner = current.items[0] if isinstance(current, Rep) else current
                for sub, changed in self._mutations(fd.message_type, inner, rpc_path, f"{path}."):
                    yield sub, put(fd.name, Rep((changed,)) if fd.is_repeated else changed)
            else:
                kind = self.kind(desc, fd)
                int32 = fd.type in (
                    FieldDescriptor.TYPE_INT32,
                    FieldDescriptor.TYPE_SINT32,
                    FieldDescriptor.TYPE_UINT32,
                )
                values = {
                    "int": SWEEP_INT32 if int32 else SWEEP_INT64,
                    "bool": [G(2, "bool as 2")],
                    "date": SWEEP_DATE,
                    "decimal": SWEEP_DECIMAL + SWEEP_TEXT,
                    "page_token": SWEEP_PAGE_TOKEN,
                    "text": SWEEP_TEXT,
                }[kind]
                for g in values:
                    yield f"{path}={g.label}", put(fd.name, Rep((g,)) if fd.is_repeated else g)
            if fd.is_repeated and isinstance(current, Rep):
                item = current.items[0]
                yield f"{path}=empty list", put(fd.name, Rep(()))
                yield f"{path}=10,000 x the same item", put(fd.name, Rep((item,) * 10_000, "10,000 x the same"))
                yield (
                    f"{path}=10,000 different items",
                    put(fd.name, Rep(tuple(_variant(item, i) for i in range(10_000)), "10,000 different")),
                )


def _variant(item: Any, i: int) -> Any:
    """The i-th of 10,000 different items like `item` (texts numbered, numbers counted, messages with their
    first text or number field varied)."""
    if isinstance(item, Gen):
        if isinstance(item.value, str | Fresh):
            base = item.value if isinstance(item.value, str) else item.value.prefix
            return Gen(f"{base}{i}", item.label)
        if isinstance(item.value, bytes):
            return Gen(item.value + str(i).encode(), item.label)
        if isinstance(item.value, bool):
            return item
        return Gen(item.value + i, item.label)
    if isinstance(item, Msg) and item.fields:
        name = next(iter(item.fields))
        first = item.fields[name]
        return Msg({**item.fields, name: _variant(first, i)}) if isinstance(first, Gen | Msg) else item
    return item


# --- what the test reports ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    rpc: str
    kind: str  # status, auth, stored, echo, health, call
    status: str
    message: str
    example: str


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def normalise(message: str) -> str:
    m = _UUID.sub("<uuid>", message)
    m = re.sub(r"bad-input-cmd-\S+", "<command id>", m)
    return m if len(m) <= 200 else m[:199] + "…"


@dataclass
class Report:
    """Replies by status per service, and every problem found, for the summary the module prints."""

    counts: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    problems: list[Problem] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    slowest: list[tuple[float, str, str, str]] = field(default_factory=list)  # (seconds, rpc, status, example)
    notes: list[str] = field(default_factory=list)

    def timed(self, seconds: float, rpc: str, status: str, example: Callable[[], str]) -> None:
        if len(self.slowest) < 8 or seconds > self.slowest[-1][0]:
            self.slowest = sorted([*self.slowest, (seconds, rpc, status, example())], reverse=True)[:8]

    def count(self, context: str, status: str) -> None:
        self.counts[context][status] += 1

    @staticmethod
    def grouped(problems: Sequence[Problem]) -> list[tuple[tuple[str, str, str, str], list[Problem]]]:
        groups: dict[tuple[str, str, str, str], list[Problem]] = defaultdict(list)
        for p in problems:
            groups[(p.rpc, p.kind, p.status, normalise(p.message))].append(p)
        return sorted(groups.items(), key=lambda kv: kv[0])

    @staticmethod
    def format_problems(problems: Sequence[Problem], examples: int = 3) -> str:
        lines = []
        for (rpc, kind, status, message), ps in Report.grouped(problems):
            lines.append(f"{rpc} [{kind}] {status} x{len(ps)}: {message!r}")
            lines.extend(f"    e.g. {p.example}" for p in ps[:examples])
        return "\n".join(lines)

    def summary(self) -> str:
        statuses = sorted({s for c in self.counts.values() for s in c})
        lines = ["generated-input replies by status per service:"]
        width = max([len(s) for s in statuses] + [10])
        lines.append("  " + "service".ljust(10) + "".join(s.rjust(width + 2) for s in statuses) + "total".rjust(9))
        for ctx in sorted(self.counts):
            c = self.counts[ctx]
            row = "".join(str(c.get(s, 0)).rjust(width + 2) for s in statuses)
            lines.append(f"  {ctx.ljust(10)}{row}{str(sum(c.values())).rjust(9)}")
        total = Counter()
        for c in self.counts.values():
            total.update(c)
        lines.append(
            "  "
            + "all".ljust(10)
            + "".join(str(total.get(s, 0)).rjust(width + 2) for s in statuses)
            + str(sum(total.values())).rjust(9)
        )
        if self.seconds:
            lines.append("seconds per service: " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(self.seconds.items())))
        lines.extend(self.notes)
        if self.slowest:
            lines.append("slowest calls:")
            lines.extend(f"  {t:.2f}s {rpc} {status}: {ex}" for t, rpc, status, ex in self.slowest)
        if self.problems:
            lines.append(f"{len(self.problems)} problems, grouped (RPC [check] status xcount: message):")
            lines.append(self.format_problems(self.problems, examples=2))
        else:
            lines.append("no problems")
        return "\n".join(lines)


def fresh_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4()}"
