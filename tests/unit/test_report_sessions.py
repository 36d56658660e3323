"""Who may open the report page over HTTP (services/stats/sessions.py): a finance, ops or admin bearer token, or a
ticket's session; tickets and sessions signed with a key derived from the service's own token, expiring, of one
kind each, and ended when their principal's token is dropped."""

from __future__ import annotations

import json

from support import long_token, registry

from services.kernel.settings import Settings
from services.stats.sessions import SESSION_S, TICKET_S, Sessions

OPS, FIN, ADM, STATS = (long_token(n) for n in ("ops", "fin", "adm", "stats"))
PEOPLE = {OPS: ("ops", "ops"), FIN: ("finance", "finance"), ADM: ("admin", "admin")}


def settings(tokens: dict[str, tuple[str, str]], own: str = STATS) -> Settings:
    table = registry(
        {t: (name, [role], None) for t, (name, role) in tokens.items()} | {own: ("stats", ["service"], [])}
    )
    return Settings(MIEUX_AUTH_TOKENS=table, MIEUX_TOKEN=own)  # type: ignore[call-arg]


def test_people_with_a_reading_role_may_read_and_services_may_not() -> None:
    s = Sessions(settings(PEOPLE))
    assert {t: (p.name if (p := s.bearer(t)) else None) for t in PEOPLE} == {t: n for t, (n, _) in PEOPLE.items()}
    assert s.bearer(STATS) is None and s.bearer("nope") is None


def test_a_ticket_opens_its_year_for_its_principal_until_it_expires() -> None:
    s = Sessions(settings(PEOPLE))
    ticket, expires = s.ticket("ops", 2017, now=1000.0)
    assert expires == 1000 + TICKET_S
    grant = s.check("ticket", ticket, now=1000.0 + TICKET_S - 1)
    assert grant is not None and (grant.principal, grant.year) == ("ops", 2017)
    assert s.check("ticket", ticket, now=1000.0 + TICKET_S) is None  # expired
    assert s.check("session", ticket, now=1001.0) is None  # a ticket is no session
    body, _, mac = ticket.partition(".")
    assert s.check("ticket", body + "." + mac[:-2] + "AA", now=1001.0) is None  # tampered signature
    forged = json.dumps({"k": "ticket", "p": "admin", "y": 2017, "exp": 99999999999}).encode()
    import base64

    assert s.check("ticket", base64.urlsafe_b64encode(forged).decode() + "." + mac, now=1001.0) is None
    session, until = s.session("ops", now=1000.0)
    assert until == 1000 + SESSION_S and s.check("session", session, now=1000.0 + SESSION_S - 1) is not None


def test_another_key_or_a_dropped_token_ends_what_was_issued() -> None:
    ticket, _ = Sessions(settings(PEOPLE)).ticket("ops", 2017)
    assert Sessions(settings(PEOPLE, own=long_token("another-stats"))).check("ticket", ticket) is None
    without_ops = {t: v for t, v in PEOPLE.items() if v[0] != "ops"}
    assert Sessions(settings(without_ops)).check("ticket", ticket) is None
    assert Sessions(settings(PEOPLE)).check("ticket", ticket) is not None
