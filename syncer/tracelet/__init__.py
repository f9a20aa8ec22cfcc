"""Tracelet: offline-first experiment tracking.

Training writes plain files (TensorBoard event files, a parquet sidecar of system metrics, a JSON
manifest); ``tracelet sync`` replays them into MLflow, W&B, ClearML and Aim, exactly once.

``import tracelet`` stays cheap: no backend SDK, no torch, no pandas is imported here. The
public names below are resolved lazily on first use.
"""
from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "read_scalars": ("tracelet.export", "read_scalars"),
    "start_logging": ("tracelet.recorder", "start_logging"),
    "get_active_experiment": ("tracelet.recorder", "get_active_experiment"),
    "stop_logging": ("tracelet.recorder", "stop_logging"),
    "Experiment": ("tracelet.recorder", "Experiment"),
    "sync": ("tracelet.api", "sync"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'tracelet' has no attribute {name!r}") from None
    import importlib

    value = getattr(importlib.import_module(module_name), attr)
    globals()[name] = value
    return value
