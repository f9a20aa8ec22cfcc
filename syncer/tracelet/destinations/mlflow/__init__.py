"""The mlflow destination: ``client.py`` (the Destination), ``mapping.py`` (pure, SDK-free
functions), ``factory.py`` (options and target; what the registry imports).

Importing this package imports only the factory; other names (``tracelet.destinations.mlflow.X``)
resolve lazily from the modules below, so the registry never pulls in the client or its SDK.
"""
from __future__ import annotations

import importlib

from .factory import FACTORY

_MODULES = ("mapping", "client", "stamps", "txlog", "offline", "importer", "storage", "repo")


def __getattr__(name: str):
    for mod in _MODULES:
        try:
            module = importlib.import_module(f"{__name__}.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{mod}":
                raise
            continue
        if hasattr(module, name):
            value = getattr(module, name)
            globals()[name] = value
            return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
