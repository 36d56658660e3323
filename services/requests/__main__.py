"""`python -m services.requests`: the requests service (gRPC + relay + its projections)."""

from services.kernel.grpckit import Registrar
from services.kernel.service import Service
from services.requests import api
from services.requests.projections import RequestRegister, RequestsPerYear
from services.requests.queries import RequestsQueries


def build() -> Service:
    def registrars(svc: Service) -> list[Registrar]:
        assert svc.store is not None
        return [api.registrar(svc.store, RequestsQueries(svc.store.pool))]

    return Service(
        name="requests",
        grpc_services=[api.SERVICE_NAME],
        access=api.ACCESS,
        registrars=registrars,
        projections=[RequestsPerYear(), RequestRegister()],
    )


if __name__ == "__main__":
    build().main()
