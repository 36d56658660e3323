"""`python -m services.actions`: the actions service (gRPC + relay + its projection + its policy)."""

from services.actions import api
from services.actions.policies import OpenActionOnApproval
from services.actions.projections import ActionsView
from services.kernel.service import Service


def build() -> Service:
    view = ActionsView()
    opener = OpenActionOnApproval()

    def registrars(svc: Service) -> list:
        assert svc.store is not None
        return [api.registrar(svc.store, view)]

    return Service(
        name="actions",
        grpc_services=[api.SERVICE_NAME],
        access=api.ACCESS,
        registrars=registrars,
        projections=[view],
        policies=[opener],
    )


if __name__ == "__main__":
    build().main()
