"""`python -m services.stats`: the stats read side (gRPC queries + a projection per service topic)."""

from services.kernel.grpckit import Registrar
from services.kernel.service import Service
from services.stats import api
from services.stats.projections import all_projections
from services.stats.queries import StatsQueries


def build() -> Service:
    def registrars(svc: Service) -> list[Registrar]:
        assert svc.pool is not None
        pool = svc.pool
        return [api.registrar(lambda: StatsQueries(pool))]

    return Service(
        name="stats",
        grpc_services=[api.SERVICE_NAME],
        access=api.ACCESS,
        registrars=registrars,
        projections=all_projections(),
    )


if __name__ == "__main__":
    build().main()
