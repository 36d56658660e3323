"""`python -m services.requests`: the requests service (gRPC + relay + its projections)."""

from services.kernel.service import Service
from services.requests import api
from services.requests.projections import RequestRegister, RequestsPerYear


def build() -> Service:
    per_year, register = RequestsPerYear(), RequestRegister()
    return Service(
        name="requests",
        grpc_services=[api.SERVICE_NAME],
        access=api.ACCESS,
        registrars=lambda svc: [api.registrar(svc.store, per_year, register)],
        projections=[per_year, register],
    )


if __name__ == "__main__":
    build().main()
