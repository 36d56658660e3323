"""`python -m services.stats`: the stats read side. Its projections and queries come with the read-models
issue; until then it serves health, reflection and its (empty) event log."""

from services.kernel.service import Service


def build() -> Service:
    return Service(name="stats", grpc_services=[], access={}, registrars=lambda svc: [])


if __name__ == "__main__":
    build().main()
