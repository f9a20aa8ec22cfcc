"""MLflow mapping: pure, SDK-free functions (keys, times, values, statuses).

Tag names (:func:`mlflow_key`): a tag MLflow accepts is the key; any other is cleaned
(characters MLflow rejects become ``_``, the path is normalised, a leading ``..`` is escaped)
and ends in ``-<8 hex of the tag's SHA-1>`` so that no two tags share a key; the same for
params and run tags. Artifact paths use the same key.
"""
from __future__ import annotations

import math
import os
import posixpath
import re

from ...reader.points import MAX_ABS_WALL_TIME
from ..keys import suffixed

MAX_METRICS_PER_CALL = 1000  # MLflow's MAX_METRICS_PER_BATCH
MAX_PARAMS_PER_CALL = 100  # MLflow's MAX_PARAMS_TAGS_PER_BATCH
MAX_PARAM_VALUE_CHARS = 6000  # MLflow's MAX_PARAM_VAL_LENGTH
MAX_KEY_CHARS = 250  # MLflow's MAX_ENTITY_KEY_LENGTH
# MLflow's character rule (``re.match`` with ``$``, as MLflow writes it; Windows drops ``:``)
_MLFLOW_KEY_CHARS = re.compile(r"^[/\w.\- ]*$" if os.name == "nt" else r"^[/\w.\- :]*$")
_BAD_KEY_CHARS = re.compile(r"[^/\w.\- ]" if os.name == "nt" else r"[^/\w.\- :]")
_MAX_DOUBLE = 1.7976931348623157e308
RUN_ID_OK = re.compile(r"[0-9A-Za-z][\w-]{0,255}")  # MLflow's own run id rule
STATUS = {"running": "RUNNING", "finished": "FINISHED", "failed": "FAILED", "killed": "KILLED"}


def mlflow_accepts(key: str) -> bool:
    """MLflow's own rule for metric, param and tag names (``mlflow.utils.validation``:
    ``validate_param_and_metric_name``, ``path_not_unique``, ``MAX_ENTITY_KEY_LENGTH``)."""
    if not _MLFLOW_KEY_CHARS.match(key) or len(key) > MAX_KEY_CHARS:
        return False
    norm = posixpath.normpath(key)
    return not (norm != key or norm == "." or norm.startswith("..") or norm.startswith("/"))


def mlflow_key(tag: str) -> str:
    """Map a TensorBoard tag (or param name) to a key MLflow accepts: the tag itself when MLflow
    takes it; else its characters outside ``letters digits _ - . / : space`` become ``_``, the
    path is normalised (no empty, ``.`` or ``..`` parts; a first part starting with ``..``
    gets a leading ``_``), the result is cut to fit and ends in ``-<8 hex of the tag's SHA-1>``
    (:mod:`.keys`), so distinct tags never share a key."""
    if mlflow_accepts(tag):
        return tag
    parts = [p for p in _BAD_KEY_CHARS.sub("_", tag).split("/") if p not in ("", ".", "..")]
    if parts and parts[0].startswith(".."):
        parts[0] = "_" + parts[0]  # MLflow refuses names that resolve to a parent folder
    return suffixed("/".join(parts) or "_", tag, MAX_KEY_CHARS)


def wall_ms(wall: float) -> int:
    """Wall time in ms; a NaN/Inf, negative or absurd (> 1e12 s) time (a broken clock: MLflow
    refuses a negative timestamp, SQL stores overflow on a huge one) becomes 0. The engine
    already sends event points with such times as 0; this covers sidecar samples too."""
    return int(wall * 1000) if 0 < wall < MAX_ABS_WALL_TIME else 0


def canon(value: float) -> float | str:
    """A value as MLflow stores it, for comparing what landed with what we would send."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return _MAX_DOUBLE if value > 0 else -_MAX_DOUBLE
    return value
