"""`python -m services.carbon`: the carbon service (gRPC + relay + its projections + its policy)."""

from services.carbon import api
from services.carbon.policies import FlightEmissionsPolicy
from services.carbon.projections import ActionRegions, FlightEmissionsView, FootprintView, OffsetLotsView
from services.carbon.queries import CarbonQueries
from services.kernel.grpckit import Registrar
from services.kernel.service import Service


def build() -> Service:
    def registrars(svc: Service) -> list[Registrar]:
        assert svc.store is not None
        return [api.registrar(svc.store, CarbonQueries(svc.store.pool))]

    service = Service(
        name="carbon",
        grpc_services=[api.SERVICE_NAME],
        access=api.ACCESS,
        registrars=registrars,
        projections=[FlightEmissionsView(), OffsetLotsView(), FootprintView(), ActionRegions()],
    )
    # the policy writes through the service's event store, which exists once the service has started
    service.policies = [FlightEmissionsPolicy(lambda: service.store)]
    return service


if __name__ == "__main__":
    build().main()
