"""What the product is made of: its contexts, their events and their projections."""

from __future__ import annotations

import importlib

from services.kernel.projection import Projection

CONTEXTS = ("requests", "actions", "experts", "logistics", "carbon", "stats")


def load_events() -> None:
    """Import every context's events.py, filling the registry."""
    for ctx in CONTEXTS:
        try:
            importlib.import_module(f"services.{ctx}.events")
        except ModuleNotFoundError as e:
            if e.name not in (f"services.{ctx}", f"services.{ctx}.events"):
                raise


def projections() -> dict[str, tuple[str, Projection]]:
    """projection name -> (owning service, an instance)."""
    out: dict[str, tuple[str, Projection]] = {}
    for ctx in CONTEXTS:
        try:
            mod = importlib.import_module(f"services.{ctx}.projections")
        except ModuleNotFoundError as e:
            if e.name not in (f"services.{ctx}", f"services.{ctx}.projections"):
                raise
            continue
        for obj in vars(mod).values():
            if (
                isinstance(obj, type)
                and issubclass(obj, Projection)
                and obj is not Projection
                and obj.__module__ == mod.__name__
            ):
                out[obj.name] = (ctx, obj())
    return out
