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
import shlex
from typing import Sequence

from ...reader.points import MAX_ABS_WALL_TIME
from ...redact import strip_url_credentials
from ..base import RunRef
from ..keys import suffixed

MAX_METRICS_PER_CALL = 1000  # MLflow's MAX_METRICS_PER_BATCH
MAX_PARAMS_PER_CALL = 100  # MLflow's MAX_PARAMS_TAGS_PER_BATCH
MAX_PARAM_VALUE_CHARS = 6000  # MLflow's MAX_PARAM_VAL_LENGTH
MAX_KEY_CHARS = 250  # MLflow's MAX_ENTITY_KEY_LENGTH
MAX_TAG_VALUE_CHARS = 8000  # MLflow's MAX_TAG_VAL_LENGTH
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


# -- run tags ----------------------------------------------------------------------------------
_PYTHON = re.compile(r"(python|pypy)[0-9.]*w?(\.exe)?|py(\.exe)?", re.IGNORECASE)


def entry_point(command: Sequence[str]) -> str | None:
    """The script a recorded command ran, as written (``python train.py --lr 0.1`` →
    ``train.py``; ``python -u -m pkg.train`` → ``pkg.train``; ``torchrun --nproc_per_node 2
    train.py`` → ``train.py``; a console script → its path); None for ``python -c ...``, an
    interactive interpreter or no command."""
    argv = [str(a) for a in command]
    if not argv:
        return None
    if not _PYTHON.fullmatch(os.path.basename(argv[0])):
        # a launcher (torchrun, accelerate launch, deepspeed) runs the first .py it is given;
        # anything else is itself the entry point (a console script, ./train.sh)
        return next((a for a in argv[1:] if a.endswith(".py") and not a.startswith("-")), argv[0])
    i = 1
    while i < len(argv):
        a = argv[i]
        if a == "--":
            return argv[i + 1] if i + 1 < len(argv) else None
        if not a.startswith("-") or a == "-":
            return None if a == "-" else a  # the script (``-``: read from stdin)
        for j, ch in enumerate(a[1:], 1):  # combined flags: ``-um pkg``, ``-Wignore``
            if ch in "mcWX":
                arg = a[j + 1:] or (argv[i + 1] if i + 1 < len(argv) else "")
                if not a[j + 1:]:
                    i += 1
                if ch == "m":
                    return arg or None
                if ch == "c":
                    return None
                break
        i += 1
    return None


def run_tags(run: RunRef, source_type: str) -> dict[str, str]:
    """The run's tags: the manifest's (keys through :func:`mlflow_key`), then MLflow's own system
    tags from what reproduces the run, then tracelet's identity, each value cut to MLflow's
    limit. ``source_type`` is MLflow's name for a local script (``SourceType.LOCAL``)."""
    tags = {mlflow_key(k): v for k, v in run.tags.items()}
    script = entry_point(run.command)
    tags["mlflow.source.name"] = script or str(run.source_dir)
    if script:
        tags["mlflow.source.type"] = source_type
    tags["mlflow.runName"] = run.name
    git = run.git or {}
    for field, tag in (("commit", "mlflow.source.git.commit"), ("branch", "mlflow.source.git.branch"),
                       ("remote", "mlflow.source.git.repoURL")):
        value = git.get(field)
        if isinstance(value, str) and value:
            # the engine strips the remote's credentials; a RunRef built elsewhere may not
            tags[tag] = strip_url_credentials(value) if field == "remote" else value
    if isinstance(git.get("dirty"), bool):
        tags["tracelet.git.dirty"] = "true" if git["dirty"] else "false"
    if run.user:
        tags["mlflow.user"] = run.user
    host = (run.system or {}).get("hostname")
    if isinstance(host, str) and host:
        tags["tracelet.host"] = host
    python = (run.env or {}).get("python")
    if isinstance(python, str) and python:
        tags["tracelet.python"] = python
    if run.command:
        tags["tracelet.command"] = shlex.join(str(a) for a in run.command)
    tags["tracelet.run_id"] = run.run_id  # identity last: a manifest tag never replaces it
    tags["tracelet.run_path"] = run.run_path
    return {k: str(v)[:MAX_TAG_VALUE_CHARS] for k, v in tags.items()}
