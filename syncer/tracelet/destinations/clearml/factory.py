"""ClearML's factory side: offline or online, options and target, without importing clearml."""
from __future__ import annotations

import os
from typing import Any, Mapping

from ..base import DestinationFactory, Option


def clearml_offline(config: Mapping[str, Any] | None = None) -> bool:
    """Offline unless asked otherwise or a server is configured (embedded defaults need no
    server). ``--clearml-offline/--no-clearml-offline`` > ``CLEARML_OFFLINE_MODE`` > a
    configured server (``CLEARML_API_HOST``, ``CLEARML_CONFIG_FILE``, ``~/clearml.conf``)."""
    off = (config or {}).get("clearml_offline")
    if off is not None:
        return bool(off)
    env = os.environ.get("CLEARML_OFFLINE_MODE")
    if env is not None and env.strip() != "":
        return env.strip().lower() not in ("0", "false", "no", "off")
    configured = os.environ.get("CLEARML_API_HOST") or os.environ.get("CLEARML_CONFIG_FILE") \
        or os.path.exists(os.path.expanduser("~/clearml.conf"))
    return not configured


class ClearmlFactory(DestinationFactory):
    name = "clearml"
    extra = "clearml"
    vendor_module = "clearml"
    client = "tracelet.destinations.clearml.client:ClearmlDestination"
    summary = "ClearML server, or offline sessions in ClearML's own format (default)"
    options = (
        Option("clearml_offline", "--clearml-offline/--no-clearml-offline",
               env="CLEARML_OFFLINE_MODE", is_flag=True,
               help="ClearML offline mode (default CLEARML_OFFLINE_MODE, else offline unless a "
                    "server is configured)."),
    )

    def target(self, config: Mapping[str, Any]) -> str:
        if clearml_offline(config):
            # the offline folder is part of the target: sessions written to another cache
            # folder are another target with its own checkpoints
            return "offline:" + os.path.abspath(os.environ.get("CLEARML_CACHE_DIR",
                                                               "<clearml default>"))
        return "online:" + os.environ.get("CLEARML_API_HOST", "config")


FACTORY = ClearmlFactory()
