"""Destinations: one package per vendor (``mlflow/``, ``wandb/``, ``clearml/``, ``aim/``,
``memory/``), each with the same files:

* ``factory.py`` — name, pip extra, options, target (imports no SDK: the registry and the
  command line use it, and a no-op cron pass never imports a vendor);
* ``client.py`` — the :class:`~.base.Destination` (imports its SDK lazily);
* ``mapping.py`` — pure, SDK-free functions: TensorBoard kinds and names to the vendor's forms.

``base.py`` is the contract, ``registry.py`` the one list of names (plus entry points).
Destinations never import the engine.
"""
from __future__ import annotations

from .base import (Capabilities, Destination, DestinationFactory, Option, ParamsResult,
                   Rejected, RunHandle, RunRef, SendResult, SystemRows)
from .registry import (all_factories, create_destination, get_factory, is_known,
                       known_destinations, register, target_key, unregister)


def clearml_offline(config=None) -> bool:
    """ClearML's offline rule (kept here for callers of the old module)."""
    from .clearml.factory import clearml_offline as rule

    return rule(config)


__all__ = [
    "Capabilities", "Destination", "DestinationFactory", "Option", "ParamsResult", "Rejected",
    "RunHandle",
    "RunRef", "SendResult", "SystemRows", "all_factories", "clearml_offline", "create_destination",
    "get_factory", "is_known", "known_destinations", "register", "target_key", "unregister",
]
