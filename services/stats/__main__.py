"""`python -m services.stats`: the stats read side (gRPC queries + a projection per service topic), and the annual
report pages (GetReportPage; over HTTP on MIEUX_STATS_HTTP_PORT when it is not 0)."""

from services.kernel.grpckit import Registrar
from services.kernel.service import ExtraServer, Service
from services.stats import api
from services.stats.collaborators import CALLS
from services.stats.projections import all_projections
from services.stats.queries import StatsQueries
from services.stats.reports import Reports
from services.stats.sessions import Sessions
from services.stats.web import ReportServer


def build() -> Service:
    def reports(svc: Service) -> Reports:
        assert svc.pool is not None
        pool = svc.pool
        return Reports(svc.settings, lambda: StatsQueries(pool))

    def registrars(svc: Service) -> list[Registrar]:
        assert svc.pool is not None
        pool = svc.pool
        return [api.registrar(lambda: StatsQueries(pool), reports(svc).page, Sessions(svc.settings))]

    def http(svc: Service) -> list[ExtraServer]:
        if not svc.settings.stats_http_port:
            return []
        return [ReportServer(svc.settings, Sessions(svc.settings), reports(svc).page)]

    return Service(
        name="stats",
        calls=CALLS,
        grpc_services=[api.SERVICE_NAME],
        access=api.ACCESS,
        registrars=registrars,
        projections=all_projections(),
        extra_servers=http,
    )


if __name__ == "__main__":
    build().main()
