"""W&B's factory side: mode, options and target, without importing wandb."""
from __future__ import annotations

import os
from typing import Any, Mapping

from ...errors import UsageError
from ..base import DestinationFactory, Option


def wandb_has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = os.path.expanduser("~/.netrc")
    try:
        with open(netrc) as f:
            return "api.wandb.ai" in f.read() or bool(os.environ.get("WANDB_BASE_URL"))
    except OSError:
        return False


def wandb_mode(config: Mapping[str, Any]) -> str:
    """``offline`` or ``online``: ``--wandb-mode``, else ``WANDB_MODE``, else online with
    credentials and offline without. The target (and its checkpoints) follow the same rule."""
    mode = config.get("wandb_mode") or os.environ.get("WANDB_MODE") or ""
    if mode in ("offline", "dryrun"):
        return "offline"
    if mode in ("online", "run"):
        return "online"
    if not mode:
        return "online" if wandb_has_credentials() else "offline"
    if mode == "disabled":
        raise UsageError("wandb: WANDB_MODE=disabled would drop every point; use "
                         "--wandb-mode offline (upload later with `wandb sync`) or online")
    raise UsageError(f"wandb: unknown mode {mode!r}; use offline or online")


def wandb_root() -> str:
    """The folder W&B writes ``wandb/`` into (``WANDB_DIR``, else the current folder)."""
    return os.path.abspath(os.environ.get("WANDB_DIR") or ".")


class WandbFactory(DestinationFactory):
    name = "wandb"
    extra = "wandb"
    vendor_module = "wandb"
    client = "tracelet.destinations.wandb.client:WandbDestination"
    summary = "Weights & Biases (offline runs under WANDB_DIR without credentials)"
    options = (
        Option("wandb_mode", "--wandb-mode", env="WANDB_MODE", choices=("online", "offline"),
               help="W&B mode (default WANDB_MODE, else online with credentials, offline without)."),
        Option("wandb_entity", "--wandb-entity", env="WANDB_ENTITY", aliases=("--entity",),
               help="W&B entity (user or team) the runs go to (default WANDB_ENTITY, else the "
                    "account's default entity)."),
    )

    def target(self, config: Mapping[str, Any]) -> str:
        mode = config.get("wandb_mode") or os.environ.get("WANDB_MODE") or ""
        offline = mode in ("offline", "dryrun") or (not mode and not wandb_has_credentials())
        if offline:
            return "offline:" + os.path.abspath(os.environ.get("WANDB_DIR", "."))
        # --wandb-entity names the same target as WANDB_ENTITY set to it (existing
        # configs, without the option, keep their target and checkpoints)
        entity = config.get("wandb_entity") or os.environ.get("WANDB_ENTITY", "")
        return "online:" + os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai") + ":" + entity


FACTORY = WandbFactory()
