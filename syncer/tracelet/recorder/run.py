"""Creating a run directory and keeping its manifest current (used by the API and ``record``)."""
from __future__ import annotations

import os
import sys
import re
import threading
import time
from pathlib import Path
from typing import Any

from ..manifest import new_manifest, utc_now_iso, write_manifest
from .capture import capture_env, capture_git, capture_system
from ..redact import Redactor
from .config import RecorderConfig

from ..rundir import ARTIFACTS_DIR
GIT_DIFF_ARTIFACT = "git_diff.patch"
_UNSAFE = re.compile(r"[/\\\x00-\x1f\x7f]")


def safe_name(name: str, default: str) -> str:
    """A single path component: separators and control characters become ``_``, and a leading
    ``.`` too, because ``tracelet sync`` skips hidden folders (the run would never sync)."""
    name = _UNSAFE.sub("_", str(name).strip())
    if name.startswith("."):
        name = "_" + name[1:]
    return name or default


def default_run_name(prefix: str = "run") -> str:
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"


def allocate_run_dir(logdir: Path, project: str, name: str) -> Path:
    """Create ``<logdir>/<project>/<name>`` and return it; ``<name>-1``, ``-2`` ... when taken.

    ``mkdir`` is the claim: two processes starting the same name at once get different folders.
    """
    parent = Path(logdir) / project
    parent.mkdir(parents=True, exist_ok=True)
    for i in range(10_000):
        candidate = parent / (name if i == 0 else f"{name}-{i}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"{parent}: no free run name like {name!r} after 10000 tries")


class ManifestFile:
    """The run's manifest in memory, rewritten atomically on every change.

    The lock is re-entrant because a signal handler (main thread) may update the status while
    the main thread is inside :meth:`update`.
    """

    def __init__(self, run_dir: Path, manifest: dict[str, Any]):
        self.run_dir = run_dir
        self.data = manifest
        self._lock = threading.RLock()

    def update(self, **fields: Any) -> None:
        """Apply ``fields`` and rewrite the file; ``ValueError`` (nothing changed) when the
        manifest would exceed what ``tracelet sync`` reads (:func:`write_manifest`)."""
        with self._lock:
            before = dict(self.data)
            self.data.update(fields)
            try:
                write_manifest(self.run_dir, self.data)
            except ValueError:
                self.data.clear()
                self.data.update(before)
                raise

    def add_linked_logdir(self, path: str) -> None:
        with self._lock:
            if path not in self.data["linked_logdirs"]:
                self.update(linked_logdirs=[*self.data["linked_logdirs"], path])

    def finish(self, status: str) -> None:
        self.update(status=status, ended_at=utc_now_iso())


def create_run(cfg: RecorderConfig, project: str | None, name: str | None, backends: list[str],
               **fields: Any) -> ManifestFile:
    """Claim a run directory and write its first manifest (git, env, system captured).

    Tags and ``command`` (an argv) are redacted here, under the config's ``redact_secrets``:
    the run directory itself holds no secret that the recorder writes."""
    project = safe_name(project or "", "default")
    name = safe_name(name or "", "") or default_run_name()
    run_dir = allocate_run_dir(cfg.resolve_logdir(), project, name)
    redactor = Redactor(cfg.redact_secrets, cfg.secret_patterns)
    # what started the training: `tracelet record`'s command, else this interpreter's argv
    fields.setdefault("command", [sys.executable, *sys.argv] if sys.argv and sys.argv[0] else
                      [sys.executable])
    fields["command"] = redactor.argv([str(a) for a in fields["command"]])
    fields.setdefault("user", _user())
    manifest = new_manifest(run_dir.name, project, backends, tags=redactor.params(cfg.tags),
                            **fields)
    manifest["system"] = capture_system()
    if cfg.track_env:
        manifest["env"] = capture_env()
    if cfg.track_git:
        git_info, diff = capture_git(os.getcwd(), cfg.git_diff_max_bytes)
        manifest["git"] = git_info
        if diff is not None:
            from .._fs import atomic_write_bytes

            atomic_write_bytes(run_dir / ARTIFACTS_DIR / GIT_DIFF_ARTIFACT, diff)
    mf = ManifestFile(run_dir, manifest)
    mf.update()
    return mf


def _user() -> str:
    """Who runs the training (login name), "" when it cannot be told (no passwd entry)."""
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # KeyError/OSError in containers without a passwd entry for the uid
        return ""
