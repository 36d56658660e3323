"""`python -m services.experts`: the experts service (gRPC + relay + its roster projection)."""

from services.experts import api
from services.experts.actions import ActionsClient
from services.experts.projections import Roster
from services.kernel.service import Service


def build() -> Service:
    roster = Roster()
    return Service(
        name="experts",
        grpc_services=[api.SERVICE_NAME],
        access=api.ACCESS,
        registrars=lambda svc: [api.registrar(svc.store, roster, ActionsClient(svc.settings))],
        projections=[roster],
    )


if __name__ == "__main__":
    build().main()
