"""`python -m services.actions`: the actions service (gRPC + relay + its projection + its policy)."""

from services.actions import api
from services.actions.policies import OpenActionOnApproval
from services.actions.projections import ActionsView
from services.actions.queries import ActionsQueries
from services.kernel.grpckit import Registrar
from services.kernel.service import Service


def build() -> Service:
    def registrars(svc: Service) -> list[Registrar]:
        assert svc.store is not None
        return [api.registrar(svc.store, ActionsQueries(svc.store.pool))]

    return Service(
        name="actions",
        grpc_services=[api.SERVICE_NAME],
        access=api.ACCESS,
        registrars=registrars,
        projections=[ActionsView()],
        policies=[OpenActionOnApproval()],
    )


if __name__ == "__main__":
    build().main()
