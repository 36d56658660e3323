"""`python -m services.logistics`: the logistics service (gRPC + relay + its projections)."""

from services.kernel.grpckit import Registrar
from services.kernel.service import Service
from services.logistics import api
from services.logistics.experts import GrpcExpertDirectory
from services.logistics.projections import BookingsView, TeamView
from services.logistics.queries import LogisticsQueries


def build() -> Service:
    def registrars(svc: Service) -> list[Registrar]:
        assert svc.store is not None
        return [api.registrar(svc.store, LogisticsQueries(svc.store.pool), GrpcExpertDirectory(svc.settings))]

    return Service(
        name="logistics",
        grpc_services=[api.SERVICE_NAME],
        access=api.ACCESS,
        registrars=registrars,
        projections=[BookingsView(), TeamView()],
    )


if __name__ == "__main__":
    build().main()
