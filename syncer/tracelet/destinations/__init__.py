"""Destinations: one module per vendor, created through a cheap factory.

The registry maps a name to ``module:Class`` strings so nothing vendor-specific is imported until
a destination is actually used (``import tracelet`` never imports ``mlflow`` or ``wandb``).
"""
from __future__ import annotations

import hashlib
import importlib
import os
from typing import Any, Mapping

from ..errors import MissingExtraError, UsageError
from .base import Capabilities, Destination, RunHandle, RunRef

# name -> (module, class, vendor module that must be importable)
REGISTRY: dict[str, tuple[str, str, str]] = {
    "mlflow": ("tracelet.destinations.mlflow", "MlflowDestination", "mlflow"),
    "wandb": ("tracelet.destinations.wandb", "WandbDestination", "wandb"),
    "clearml": ("tracelet.destinations.clearml", "ClearmlDestination", "clearml"),
    "aim": ("tracelet.destinations.aim", "AimDestination", "aim"),
    # the reference destination of the engine tests (no vendor: stores in memory or a journal)
    "memory": ("tracelet.destinations.memory", "MemoryDestination", "tracelet"),
}


def known_destinations() -> list[str]:
    return list(REGISTRY)


def create_destination(name: str, config: Mapping[str, Any] | None = None) -> Destination:
    """Instantiate a destination; raise MissingExtraError if its SDK is absent."""
    try:
        module_name, class_name, vendor = REGISTRY[name]
    except KeyError:
        raise UsageError(
            f"unknown destination '{name}'; choose from {', '.join(REGISTRY)}"
        ) from None
    if importlib.util.find_spec(vendor) is None:
        raise MissingExtraError(name, vendor)
    module = importlib.import_module(module_name)
    return getattr(module, class_name)(config or {})


def target_key(name: str, config: Mapping[str, Any] | None = None) -> str:
    """A short, stable key for (destination, target), computed WITHOUT importing the SDK.

    Checkpoints are kept per target: syncing one logdir to two MLflow servers keeps two
    independent checkpoints. Cheap on purpose: a no-op resync must not import vendor SDKs.
    """
    config = dict(config or {})
    if name == "mlflow":
        target = config.get("mlflow_uri") or os.environ.get("MLFLOW_TRACKING_URI") \
            or f"default:{os.getcwd()}"
    elif name == "wandb":
        mode = config.get("wandb_mode") or os.environ.get("WANDB_MODE") or ""
        offline = mode in ("offline", "dryrun") or (not mode and not _wandb_has_credentials())
        target = ("offline:" + os.path.abspath(os.environ.get("WANDB_DIR", "."))) if offline \
            else ("online:" + os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
                  + ":" + os.environ.get("WANDB_ENTITY", ""))
    elif name == "aim":
        repo = config.get("aim_repo") or os.environ.get("AIM_REPO") or os.path.abspath(".")
        target = repo if "://" in repo else os.path.abspath(repo)
    elif name == "clearml":
        if clearml_offline(config):
            # the offline folder is part of the target: sessions written to another cache
            # folder are another target with its own checkpoints
            target = "offline:" + os.path.abspath(os.environ.get("CLEARML_CACHE_DIR", "<clearml default>"))
        else:
            target = "online:" + os.environ.get("CLEARML_API_HOST", "config")
    elif name == "memory":
        from .memory.factory import target_key as memory_target_key

        return memory_target_key(config)
    else:
        target = name
    # Credentials are not part of the target (a rotated password is the same server), and not
    # even their hash goes into the state dir's folder names.
    from ..redact import strip_url_credentials

    digest = hashlib.sha1(strip_url_credentials(target).encode()).hexdigest()[:10]
    return f"{name}-{digest}"


def clearml_offline(config: Mapping[str, Any] | None = None) -> bool:
    """Offline unless asked otherwise or a server is configured (DESIGN §7: embedded defaults
    need no server). ``--clearml-offline/--no-clearml-offline`` > ``CLEARML_OFFLINE_MODE`` >
    a configured server (``CLEARML_API_HOST``, ``CLEARML_CONFIG_FILE``, ``~/clearml.conf``)."""
    off = (config or {}).get("clearml_offline")
    if off is not None:
        return bool(off)
    env = os.environ.get("CLEARML_OFFLINE_MODE")
    if env is not None and env.strip() != "":
        return env.strip().lower() not in ("0", "false", "no", "off")
    configured = os.environ.get("CLEARML_API_HOST") or os.environ.get("CLEARML_CONFIG_FILE") \
        or os.path.exists(os.path.expanduser("~/clearml.conf"))
    return not configured


def _wandb_has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = os.path.expanduser("~/.netrc")
    try:
        with open(netrc) as f:
            return "api.wandb.ai" in f.read() or bool(os.environ.get("WANDB_BASE_URL"))
    except OSError:
        return False


__all__ = [
    "clearml_offline", "Capabilities", "Destination", "REGISTRY", "RunHandle", "RunRef", "create_destination",
    "known_destinations", "target_key",
]
