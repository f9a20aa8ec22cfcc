"""The registry of destinations: the only place their names are listed.

Built-in destinations are packages ``tracelet.destinations.<name>``, each with a
``factory.py`` exposing ``FACTORY`` (a :class:`~.base.DestinationFactory`: name, pip extra,
options, target; imports no SDK). Other packages add destinations through the entry point
group ``tracelet.destinations`` (the entry point names a factory object or class)::

    [project.entry-points."tracelet.destinations"]
    mytracker = "mypkg.tracelet_dest:FACTORY"

Entry points are read only when a name is not built in, or when every name is needed: the
command line builds the options of ``sync``/``status``/``reset`` from every factory (one scan,
~20-30 ms, per command), the library API (``run_sync``, ``tracelet.sync``) with built-in names
never scans.
"""
from __future__ import annotations

import importlib
import logging
import threading
from typing import Any, Mapping

from ..errors import UsageError
from .base import Destination, DestinationFactory

log = logging.getLogger("tracelet.destinations")

BUILTIN = ("mlflow", "wandb", "clearml", "aim", "memory")
ENTRY_POINT_GROUP = "tracelet.destinations"

_LOCK = threading.Lock()
_FACTORIES: dict[str, DestinationFactory] = {}
_PLUGINS_LOADED = False
PLUGIN_PROBLEMS: list[str] = []  # entry points that could not be loaded (reported by the CLI)


def _builtin(name: str) -> DestinationFactory:
    return importlib.import_module(f"tracelet.destinations.{name}.factory").FACTORY


def _load_plugins() -> None:
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in BUILTIN or ep.name in _FACTORIES:
            continue
        try:
            obj = ep.load()
            factory = obj() if isinstance(obj, type) else obj
            if not isinstance(factory, DestinationFactory):
                raise TypeError(f"{ep.value} is not a tracelet DestinationFactory")
            if factory.name != ep.name:
                raise ValueError(f"its factory is named {factory.name!r}")
        except Exception as e:  # a broken plugin must not break the built-in destinations
            PLUGIN_PROBLEMS.append(f"destination plugin '{ep.name}' ({ep.value}) not loaded: "
                                   f"{type(e).__name__}: {e}")
            log.warning("%s", PLUGIN_PROBLEMS[-1])
            continue
        _FACTORIES[ep.name] = factory
    _PLUGINS_LOADED = True


def register(factory: DestinationFactory) -> None:
    """Add a destination at run time (tests; programs embedding Tracelet)."""
    with _LOCK:
        _FACTORIES[factory.name] = factory


def unregister(name: str) -> None:
    with _LOCK:
        if name not in BUILTIN:
            _FACTORIES.pop(name, None)


def get_factory(name: str) -> DestinationFactory:
    """The factory of ``name``; :class:`UsageError` (with the closest name) if none."""
    with _LOCK:
        factory = _FACTORIES.get(name)
        if factory is None and name in BUILTIN:
            factory = _FACTORIES[name] = _builtin(name)
        if factory is None:
            _load_plugins()
            factory = _FACTORIES.get(name)
    if factory is None:
        raise UsageError(unknown_message(name))
    return factory


def is_known(name: str) -> bool:
    try:
        get_factory(name)
    except UsageError:
        return False
    return True


def known_destinations() -> list[str]:
    """Every destination name: built-in first, then plugins and registered ones."""
    with _LOCK:
        _load_plugins()
        extra = [n for n in _FACTORIES if n not in BUILTIN]
    return [*BUILTIN, *sorted(extra)]


def all_factories() -> list[DestinationFactory]:
    return [get_factory(n) for n in known_destinations()]


def unknown_message(name: str, what: str = "destination") -> str:
    names = known_destinations()
    import difflib  # only for a name that is wrong: ~13 ms at start

    close = difflib.get_close_matches(name, names, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    return f"unknown {what} '{name}'; {hint}choose from {', '.join(names)}"


def create_destination(name: str, config: Mapping[str, Any] | None = None) -> Destination:
    """Instantiate a destination; raise MissingExtraError if its SDK is absent."""
    return get_factory(name).create(config or {})


def target_key(name: str, config: Mapping[str, Any] | None = None) -> str:
    """A short, stable key for (destination, target), computed WITHOUT importing the SDK.

    Checkpoints are kept per target: syncing one logdir to two MLflow servers keeps two
    independent checkpoints. Cheap on purpose: a no-op resync must not import vendor SDKs."""
    return get_factory(name).target_key(dict(config or {}))
