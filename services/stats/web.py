"""The stats service's HTTP server: GET /reports/YEAR, the annual report page, for a person's bearer token or the
session a ticket set (sessions.py). On MIEUX_STATS_HTTP_PORT of MIEUX_GRPC_HOST, HTTPS with the service's gRPC
certificate when it has one; off when the port is 0.

GET /reports/2017                 Authorization: Bearer <finance, ops or admin token>, or the session cookie
GET /reports/2017?ticket=T        a ticket of OpenReportSession: sets the session cookie, then 303 to the page

The page has no script and loads nothing: the Content-Security-Policy forbids every fetch but inline styles and
data: images. Nothing a request carries (a token, a ticket) is logged.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable

from aiohttp import web

from services.kernel.settings import Settings
from services.stats.sessions import COOKIE, SESSION_S, Sessions

log = logging.getLogger(__name__)

HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
MIN_YEAR, MAX_YEAR = 1900, 9999


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(settings.tls_cert_file), str(settings.tls_key_file))
    return ctx


def base_url(settings: Settings) -> str:
    """Where a person on this host opens the pages: the bound host (loopback when bound to every interface)."""
    host = settings.grpc_host if settings.grpc_host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    scheme = "https" if tls_context(settings) else "http"
    return f"{scheme}://{host}:{settings.stats_http_port}"


def text(status: int, message: str, **headers: str) -> web.Response:
    return web.Response(status=status, text=message + "\n", headers={**HEADERS, **headers})


class ReportServer:
    """An ExtraServer of the stats Service (services/kernel/service.py)."""

    def __init__(self, settings: Settings, sessions: Sessions, page: Callable[[int], Awaitable[str]]) -> None:
        self.settings, self.sessions, self.page = settings, sessions, page
        self.runner: web.AppRunner | None = None
        self.tls = tls_context(settings)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(r"/reports/{year:\d{4}}", self.report)
        return app

    async def start(self) -> None:
        self.runner = web.AppRunner(self.app(), access_log=None)
        await self.runner.setup()
        site = web.TCPSite(
            self.runner, self.settings.grpc_host, self.settings.stats_http_port, ssl_context=self.tls, backlog=64
        )
        await site.start()
        log.info("stats serving the report pages on %s/reports/", base_url(self.settings))

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def who(self, request: web.Request) -> str | None:
        """The principal the request is for: a bearer token's, else the session cookie's."""
        auth = request.headers.get("Authorization", "")
        if auth:
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return None
            p = self.sessions.bearer(token.strip())
            return p.name if p else None
        grant = self.sessions.check("session", request.cookies.get(COOKIE, ""))
        return grant.principal if grant else None

    async def report(self, request: web.Request) -> web.Response:
        year = int(request.match_info["year"])
        if not MIN_YEAR <= year <= MAX_YEAR:
            return text(404, "no such year")
        ticket = request.query.get("ticket")
        if ticket is not None:
            grant = self.sessions.check("ticket", ticket)
            if grant is None or grant.year != year:
                return text(401, "this link has expired or is not valid: ask for another (mieux report YEAR --open)")
            session, _ = self.sessions.session(grant.principal)
            response = web.HTTPSeeOther(f"/reports/{year}", headers=HEADERS)
            response.set_cookie(
                COOKIE,
                session,
                max_age=SESSION_S,
                path="/reports",
                httponly=True,
                samesite="Strict",
                secure=self.tls is not None,
            )
            return response
        principal = self.who(request)
        if principal is None:
            return text(
                401,
                "a finance, ops or admin bearer token, or a session, is needed",
                **{"WWW-Authenticate": 'Bearer realm="mieux reports"'},
            )
        try:
            html = await self.page(year)
        except Exception:
            log.exception("the report page of %s could not be built", year)
            return text(503, "the report could not be built now (a service did not answer): try again")
        log.info("report page %s served to %s", year, principal)
        return web.Response(text=html, content_type="text/html", charset="utf-8", headers=HEADERS)
