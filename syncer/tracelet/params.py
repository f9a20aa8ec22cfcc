"""Params: the one flattening rule shared by the recorder (manifest, hparams) and the sync engine."""
from __future__ import annotations

from typing import Any, Mapping

SEPARATOR = "/"  # nested keys: {"opt": {"lr": 0.1}} -> "opt/lr" (MLflow, W&B, ClearML accept "/")


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"opt": {"lr": 0.1}}`` -> ``{"opt/lr": 0.1}`` (keys stringified, order kept)."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        path = f"{prefix}{SEPARATOR}{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, path))
        else:
            flat[path] = value
    return flat


def param_text(v: Any) -> str:
    """A param as the text destinations store (lists/dicts as sorted JSON)."""
    if isinstance(v, str):
        return v
    if isinstance(v, (list, dict)):
        import json

        return json.dumps(v, default=str, sort_keys=True)
    return str(v)
