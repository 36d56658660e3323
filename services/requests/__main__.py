"""`python -m services.requests`: the requests service (gRPC + relay + its projections)."""

from services.kernel.service import Service
from services.requests import api
from services.requests.projections import RequestsPerYear


def build() -> Service:
    per_year = RequestsPerYear()
    return Service(
        name="requests",
        grpc_services=[api.SERVICE_NAME],
        access=api.ACCESS,
        registrars=lambda svc: [api.registrar(svc.store, per_year)],
        projections=[per_year],
    )


if __name__ == "__main__":
    build().main()
