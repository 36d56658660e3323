"""`python -m services.logistics`: the logistics service (gRPC + relay + its projections)."""

from services.kernel.service import Service
from services.logistics import api
from services.logistics.experts import GrpcExpertDirectory
from services.logistics.projections import BookingsView, TeamView


def build() -> Service:
    svc = Service(
        name="logistics",
        grpc_services=[api.SERVICE_NAME],
        access=api.ACCESS,
        registrars=lambda s: [api.registrar(s.store, GrpcExpertDirectory(s.settings))],
        projections=[BookingsView(), TeamView()],
    )
    return svc


if __name__ == "__main__":
    build().main()
