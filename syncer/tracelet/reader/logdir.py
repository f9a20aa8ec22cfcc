"""Runs in a logdir: every directory that directly holds event files (or a Tracelet manifest).

A run's name is its path relative to the logdir given by the user, with ``/`` separators, so
``torch/resnet/Loss_compare_train`` is the same run on every machine that mounts the logdir.
Special cases, each for a writer's habit:

* PyTorch/tensorboardX ``add_hparams`` writes a child folder named ``str(time.time())`` inside
  the run; such a child (numeric name, parent is a run) belongs to its parent: its files are
  read as part of the parent run.
* ``add_scalars`` writes sibling folders ``<main>_<tag>``; those are ordinary runs.
* ``.tracelet/`` (state) and hidden folders are never runs; symlink loops are cut, unreadable
  folders reported, neither is fatal.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

MANIFEST_NAME = "tracelet.json"
SIDECAR_DIR = "sysmetrics"
ARTIFACTS_DIR = "artifacts"
STATE_DIR_NAME = ".tracelet"
_HPARAMS_CHILD = re.compile(r"^\d{9,}(\.\d+)?$")  # str(time.time()) as PyTorch names it


def is_event_file(name: str) -> bool:
    return "tfevents" in name and not name.startswith(".")


@dataclass
class RunSource:
    """One run: its name (path relative to the logdir) and the event files, in read order."""

    name: str
    path: Path
    event_files: list[Path] = field(default_factory=list)
    has_manifest: bool = False

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST_NAME

    @property
    def sidecar_dir(self) -> Path:
        return self.path / SIDECAR_DIR

    @property
    def artifacts_dir(self) -> Path:
        return self.path / ARTIFACTS_DIR


@dataclass
class Discovery:
    logdir: Path
    runs: list[RunSource]
    problems: list[str]  # unreadable folders, symlink loops: reported, not fatal


def _event_file_order(p: Path):
    # TensorBoard's order: lexicographic by file name (the timestamp sits after the prefix).
    return p.name


def discover_runs(logdir: str | os.PathLike) -> Discovery:
    root = Path(logdir)
    problems: list[str] = []
    runs: dict[str, RunSource] = {}
    seen_dirs: set[tuple[int, int]] = set()

    def onerror(err: OSError) -> None:
        problems.append(f"{err.filename}: cannot read folder ({err.strerror}); skipped. "
                        "Fix its permissions to sync it.")

    for dirpath, dirnames, filenames in os.walk(root, onerror=onerror, followlinks=True):
        try:
            st = os.stat(dirpath)
            key = (st.st_dev, st.st_ino)
        except OSError as e:
            problems.append(f"{dirpath}: cannot stat ({e.strerror}); skipped.")
            dirnames[:] = []
            continue
        if key in seen_dirs:
            problems.append(f"{dirpath}: symlink loop (already visited); not followed.")
            dirnames[:] = []
            continue
        seen_dirs.add(key)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        events = sorted((Path(dirpath) / f for f in filenames if is_event_file(f)),
                        key=_event_file_order)
        has_manifest = MANIFEST_NAME in filenames
        if not events and not has_manifest:
            continue
        rel = Path(dirpath).relative_to(root).as_posix()
        name = "." if rel in ("", ".") else rel
        parent_name = str(Path(name).parent.as_posix()) if name != "." else None
        if parent_name is not None and parent_name in runs and _HPARAMS_CHILD.match(Path(dirpath).name) \
                and not has_manifest:
            runs[parent_name].event_files.extend(events)
            continue
        runs[name] = RunSource(name=name, path=Path(dirpath), event_files=events,
                               has_manifest=has_manifest)
    return Discovery(root, sorted(runs.values(), key=lambda r: r.name), problems)
