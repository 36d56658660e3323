"""`python -m services.experts`: the experts service (gRPC + relay + its roster projection)."""

from services.experts import api
from services.experts.actions import CALLS, ActionsClient
from services.experts.projections import Roster
from services.experts.queries import ExpertsQueries
from services.kernel.grpckit import Registrar
from services.kernel.personal import Keyring, MasterKeys
from services.kernel.service import Service


def build() -> Service:
    def registrars(svc: Service) -> list[Registrar]:
        assert svc.store is not None
        # the experts' names are sealed with keys of their own: no start without the master key
        keys = Keyring(svc.store.pool, svc.store.schema, MasterKeys.from_settings(svc.settings, svc.name))
        return [api.registrar(svc.store, ExpertsQueries(svc.store.pool), ActionsClient(svc.settings), keys)]

    return Service(
        name="experts",
        calls=CALLS,
        grpc_services=[api.SERVICE_NAME],
        access=api.ACCESS,
        registrars=registrars,
        projections=[Roster()],
    )


if __name__ == "__main__":
    build().main()
