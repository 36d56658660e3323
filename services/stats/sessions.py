"""Who may open the annual report page over HTTP, and the signed tickets and sessions of the browser.

A person presents a bearer token (`finance`, `ops` or `admin`: the gRPC kit's token registry, principals.py), or the
session cookie a ticket set. A ticket comes from the RPC OpenReportSession (`mieux report YEAR --open`), for the
caller's principal: a link valid for TICKET_S seconds; opening it sets an HttpOnly, SameSite=Strict cookie valid
for SESSION_S seconds. Both are signed (HMAC-SHA256) with a key derived from this service's own token, which every
replica has and no caller does, so any replica accepts what another issued. Each request checks again that the
principal is still one of the tokens' with a role that may read the page: dropping a token ends its sessions.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from functools import cached_property

from services.kernel.settings import Principal, Role, Settings

READERS: frozenset[Role] = frozenset({"finance", "ops", "admin"})  # people; not the services' `service` role
TICKET_S = 60
SESSION_S = 8 * 3600
COOKIE = "mieux_report_session"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Grant:
    principal: str
    year: int
    expires: int


class Sessions:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @cached_property
    def _key(self) -> bytes:
        """Derived from this service's token (read when first needed: a service without one serves no sessions)."""
        token = self.settings.client_token("stats")
        return hmac.new(token.encode(), b"mieux stats report sessions v1", hashlib.sha256).digest()

    def principals(self) -> dict[str, Principal]:
        """The principals that may read the page, by name."""
        return {p.name: p for p in self.settings.tokens().principals() if p.roles & READERS}

    def bearer(self, token: str) -> Principal | None:
        """The principal of a bearer token if it may read the page (None: unknown, or not a reader)."""
        p = self.settings.tokens().authenticate(token)
        return p if p is not None and p.roles & READERS else None

    def _sign(self, kind: str, principal: str, year: int, ttl: int, now: float | None = None) -> tuple[str, int]:
        expires = int((now or time.time()) + ttl)
        body = _b64(json.dumps({"k": kind, "p": principal, "y": year, "exp": expires}, separators=(",", ":")).encode())
        mac = _b64(hmac.new(self._key, f"{kind}.{body}".encode(), hashlib.sha256).digest())
        return f"{body}.{mac}", expires

    def ticket(self, principal: str, year: int, now: float | None = None) -> tuple[str, int]:
        """A ticket for `principal` to open the page of `year`, and when it expires (unix seconds)."""
        return self._sign("ticket", principal, year, TICKET_S, now)

    def session(self, principal: str, now: float | None = None) -> tuple[str, int]:
        return self._sign("session", principal, 0, SESSION_S, now)

    def check(self, kind: str, token: str, now: float | None = None) -> Grant | None:
        """What a ticket or session grants, if it is one of `kind`, signed here, unexpired, and its principal may
        still read the page; else None."""
        body, _, mac = token.partition(".")
        if not body or not mac or len(token) > 1024:
            return None
        good = _b64(hmac.new(self._key, f"{kind}.{body}".encode(), hashlib.sha256).digest())
        if not hmac.compare_digest(good, mac):
            return None
        try:
            data = json.loads(_unb64(body))
            grant = Grant(str(data["p"]), int(data["y"]), int(data["exp"]))
        except (ValueError, KeyError, TypeError):
            return None
        if data.get("k") != kind or grant.expires <= (now or time.time()):
            return None
        return grant if grant.principal in self.principals() else None
