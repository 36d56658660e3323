"""`python -m services.logistics`: the logistics service (gRPC + relay + its projections)."""

from services.kernel.grpckit import Registrar
from services.kernel.personal import Keyring, MasterKeys
from services.kernel.service import Service
from services.logistics import api
from services.logistics.experts import CALLS, GrpcExpertDirectory
from services.logistics.projections import BookingsView, TeamView
from services.logistics.queries import LogisticsQueries


def build() -> Service:
    def registrars(svc: Service) -> list[Registrar]:
        assert svc.store is not None
        # the team members' names and roles are sealed with keys of their own: no start without the master key
        keys = Keyring(svc.store.pool, svc.store.schema, MasterKeys.from_settings(svc.settings, svc.name))
        queries = LogisticsQueries(svc.store.pool)
        return [api.registrar(svc.store, queries, GrpcExpertDirectory(svc.settings), keys)]

    return Service(
        name="logistics",
        calls=CALLS,
        grpc_services=[api.SERVICE_NAME],
        access=api.ACCESS,
        registrars=registrars,
        projections=[BookingsView(), TeamView()],
    )


if __name__ == "__main__":
    build().main()
