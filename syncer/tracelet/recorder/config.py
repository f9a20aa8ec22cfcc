"""The ``config`` dict of :func:`tracelet.start_logging`, parsed once into :class:`RecorderConfig`.

Unknown keys are reported with a warning (a typo such as ``metric_interval`` would otherwise be
silently ignored); bad values raise :class:`~tracelet.errors.UsageError` before anything is
written.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from ..errors import UsageError

log = logging.getLogger("tracelet.recorder")

DEFAULT_LOGDIR = "tracelet_runs"
DEFAULT_PROJECT = "default"
LOGDIR_ENV = "TRACELET_LOGDIR"

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size_bytes(value: int | float | str | None, key: str) -> int | None:
    """``"512KB"``, ``"2MB"``, ``"1.5 MiB"``, ``1048576`` -> bytes (K/M/G are powers of 1024)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise UsageError(f"config[{key!r}]={value!r}: expected a size such as '512KB' or bytes.")
    if isinstance(value, (int, float)):
        size = int(value)
    else:
        m = _SIZE_RE.match(str(value))
        if not m:
            raise UsageError(
                f"config[{key!r}]={value!r}: expected a size such as '512KB', '2MB' or an int of bytes."
            )
        size = int(float(m.group(1)) * _SIZE_UNITS[m.group(2).upper()[:1]])
    if size <= 0:
        raise UsageError(f"config[{key!r}]={value!r}: must be positive.")
    return size


@dataclass(frozen=True)
class RecorderConfig:
    """Every option of :func:`tracelet.start_logging`'s ``config``, with its default."""

    logdir: str | None = None  # else $TRACELET_LOGDIR, else ./tracelet_runs
    track_system: bool = True
    metrics_interval: float = 10.0  # s between system-metric samples
    metrics_flush_interval: float = 60.0  # s: a part is written once its oldest sample is this old
    metrics_part_samples: int = 60  # ... or once it holds this many samples
    track_git: bool = True
    git_diff_max_bytes: int = 1 << 20  # larger diffs are cut (and marked) in git_diff.patch
    track_env: bool = True
    track_tensorboard: bool = True
    track_lightning: bool = True
    flush_interval: float = 2.0  # s: event files reach the OS at least this often
    max_image_size: int | None = None  # bytes of one encoded image; None: no limit
    redact_secrets: bool | list[str] = True
    secret_patterns: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)
    sync: str | None = None  # "live": push to the backends from a background thread
    sync_interval: float = 30.0

    @classmethod
    def from_dict(cls, config: Mapping[str, Any] | None) -> "RecorderConfig":
        config = dict(config or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            log.warning("tracelet: ignoring unknown config keys %s (known: %s)", unknown, sorted(known))
        kw = {k: v for k, v in config.items() if k in known}
        for key in ("metrics_interval", "metrics_flush_interval", "flush_interval", "sync_interval"):
            if key in kw:
                try:
                    kw[key] = float(kw[key])
                except (TypeError, ValueError):
                    raise UsageError(f"config[{key!r}]={kw[key]!r}: expected seconds (a number).") from None
                if not kw[key] > 0:
                    raise UsageError(f"config[{key!r}]={kw[key]!r}: must be > 0 seconds.")
        if "metrics_part_samples" in kw:
            kw["metrics_part_samples"] = int(kw["metrics_part_samples"])
            if kw["metrics_part_samples"] < 1:
                raise UsageError("config['metrics_part_samples'] must be >= 1.")
        if "max_image_size" in kw:
            kw["max_image_size"] = parse_size_bytes(kw["max_image_size"], "max_image_size")
        if "git_diff_max_bytes" in kw:
            kw["git_diff_max_bytes"] = parse_size_bytes(kw["git_diff_max_bytes"], "git_diff_max_bytes")
        if "secret_patterns" in kw:
            pats = kw["secret_patterns"]
            kw["secret_patterns"] = (pats,) if isinstance(pats, str) else tuple(pats or ())
        if isinstance(kw.get("redact_secrets"), (list, tuple)):
            kw["redact_secrets"] = list(kw["redact_secrets"])
        elif "redact_secrets" in kw:
            kw["redact_secrets"] = bool(kw["redact_secrets"])
        if "tags" in kw:
            kw["tags"] = normalize_tags(kw["tags"])
        if kw.get("sync") not in (None, "live", "off", False):
            raise UsageError(f"config['sync']={kw['sync']!r}: expected 'live' or None.")
        if kw.get("sync") in ("off", False):
            kw["sync"] = None
        return cls(**kw)

    def resolve_logdir(self) -> Path:
        raw = self.logdir or os.environ.get(LOGDIR_ENV) or DEFAULT_LOGDIR
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", str(raw)):
            # Not written to object storage (README "Logdirs in object storage"): the recorder's
            # durability rests on fsync + rename, which object stores lack, and a SIGKILL or OOM
            # would lose everything buffered since the last upload. Refused rather than creating
            # a local folder literally named "s3:".
            raise UsageError(
                f"logdir {raw!r}: the recorder writes to a local or shared folder, not to object "
                "storage. Record locally (or on the node's scratch disk) and sync that folder, or "
                "copy it up (aws s3 sync / gcloud storage rsync / azcopy sync) and run "
                f"`tracelet sync {raw} --state-dir DIR` on the copy.")
        # absolute: the writer reopens files by name, and training code may chdir later
        return Path(raw).absolute()


def normalize_tags(tags: Any) -> dict[str, str]:
    """Tags are string -> string; a list of names becomes ``{name: ""}``."""
    if tags is None:
        return {}
    if isinstance(tags, Mapping):
        return {str(k): "" if v is None else str(v) for k, v in tags.items()}
    if isinstance(tags, str):
        return {tags: ""}
    return {str(t): "" for t in tags}


def normalize_backends(backend: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """``"mlflow"``, ``"mlflow,wandb"`` or ``["mlflow", "wandb"]`` -> ``["mlflow", "wandb"]``.

    Every name must be a registered destination (:func:`tracelet.destinations.known_destinations`):
    a typo refused here, at training time, would otherwise be recorded in the manifest and the
    run silently sent nowhere by a ``tracelet sync`` without ``--to`` months later.
    """
    if backend is None:
        return []
    if isinstance(backend, str):
        items = backend.split(",")
    elif isinstance(backend, (list, tuple)):
        items = list(backend)
    else:
        raise UsageError(f"backend={backend!r}: expected a destination name such as 'mlflow', a "
                         "comma-separated string or a list of names.")
    out: list[str] = []
    for b in items:
        name = str(b).strip().lower()
        if name and name not in out:
            out.append(name)
    _check_backend_names(out)
    return out


def _check_backend_names(names: list[str]) -> None:
    from ..destinations import known_destinations  # the one registry; no vendor SDK imported

    valid = known_destinations()
    problems = []
    for name in names:
        if name not in valid:
            import difflib  # only for a name that is wrong: ~13 ms at start

            close = difflib.get_close_matches(name, valid, n=1)
            problems.append(f"unknown backend {name!r}; " + (f"did you mean {close[0]}? " if close else ""))
    if problems:
        raise UsageError(f"start_logging(backend=...): {''.join(problems)}valid: {', '.join(valid)}")
