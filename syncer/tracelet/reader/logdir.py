"""Runs in a logdir: every directory that directly holds event files (or a Tracelet manifest).

A run's name is its path relative to the logdir given by the user, with ``/`` separators, so
``torch/resnet/Loss_compare_train`` is the same run on every machine that mounts the logdir.
Special cases, each for a writer's habit:

* PyTorch/tensorboardX ``add_hparams`` writes a child folder named ``str(time.time())`` inside
  the run; such a child (numeric name, parent is a run) belongs to its parent: its files are
  read as part of the parent run.
* ``add_scalars`` writes child folders ``<run>/<main>_<tag>`` (tensorboardX:
  ``<run>/<main>/<tag>``); those are ordinary runs.
* ``.tracelet/`` (state) and hidden folders are never runs; neither are ``sysmetrics/`` and
  ``artifacts/`` inside a run that has a manifest (a copied event file is an artifact, not a run).
* Symlinked folders are followed, after the real tree, so a run is named by its real path when it
  has one; symlink loops are cut, unreadable folders reported; neither is fatal.
* A FIFO, socket or device named like an event file (or a symlink to one) is not an event file:
  reported and skipped (opening a FIFO to read it would wait forever for a writer).
"""
from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..rundir import ARTIFACTS_DIR, MANIFEST_NAME, SIDECAR_DIR, STATE_DIR_NAME  # noqa: F401
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
    # The ObjectLocation of a run in object storage (its paths are ObjectPaths); None for a
    # local run, which keeps the plain os.* code paths.
    location: Any = None

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


def _not_regular(entry: os.DirEntry, problems: list[str]) -> str | None:
    """For an entry named like an event file that is not a regular file (d_type, or a stat
    through its symlink, says so): note it in ``problems`` and return what it is. None when it
    cannot be told (a dangling link): it stays listed, and reading it reports the error."""
    from .events import file_kind

    try:
        mode = entry.stat().st_mode  # follows a symlink: a link to a FIFO is a FIFO
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return None
    kind = file_kind(mode)
    link = " (through a symlink)" if entry.is_symlink() else ""
    problems.append(f"{entry.path}: named like an event file but is {kind}{link}; skipped "
                    "(never opened). Remove it or give it another name.")
    return kind


REPEATS_NAMED = 5  # folders reached a second time named one by one; the rest are counted
BIG_EMPTY_TREE = 1000  # a symlinked tree this many folders big holding no run is reported


def _event_file_order(p: Path):
    # TensorBoard's order: lexicographic by file name (the timestamp sits after the prefix).
    return p.name


def discover_runs(logdir: str | os.PathLike) -> Discovery:
    """Every run under ``logdir``, sorted by name, and the folders that could not be read.

    Real folders are walked first; folders reached through a symlink only afterwards. So a run
    reachable both ways is always named by its real path (a ``latest -> run_3`` link does not
    rename ``run_3`` to ``latest``, which would make it a new run on every destination the day
    the link moves), and a link that leads back to a folder already read (a loop, or a second
    link to the same run) is reported once and not followed.

    ``logdir`` may also be an object-store location (:func:`tracelet.storage.open_location`):
    its runs come from one listing (:func:`discover_listing`).
    """
    if getattr(logdir, "is_local", True) is False:
        return discover_listing(logdir)
    root = Path(logdir)
    problems: list[str] = []
    runs: dict[str, RunSource] = {}
    seen: dict[tuple[int, int], str] = {}  # (st_dev, st_ino) -> the path it was read under
    links: list[str] = []  # symlinked folders met during a walk: walked after the real tree
    again = [0]  # folders reached a second time: the first REPEATS_NAMED named, then counted
    walked = [0]  # folders read so far

    def onerror(err: OSError) -> None:
        problems.append(f"{err.filename}: cannot read folder ({err.strerror}); skipped. "
                        "Fix its permissions to sync it.")

    def walk(top: str) -> None:
        # Top-down over os.scandir: d_type tells dirs, files and links apart without an lstat
        # per entry (a no-op cron pass over 1000 runs spends most of its time here).
        # Symlinked folders are queued in `links`, never descended into from here.
        stack = [top]
        while stack:
            dirpath = stack.pop()
            try:
                st = os.stat(dirpath)
                with os.scandir(dirpath) as it:
                    entries = list(it)
            except OSError as e:
                onerror(e)
                continue
            key = (st.st_dev, st.st_ino)
            if key in seen:
                again[0] += 1
                if again[0] <= REPEATS_NAMED:
                    problems.append(f"{dirpath}: same folder as {seen[key]} (a symlink loop or "
                                    "a second link to it); read once, under the first name.")
                continue
            seen[key] = dirpath
            walked[0] += 1
            filenames, dirnames = [], []
            for entry in entries:
                try:
                    if entry.is_dir():  # follows links: a link to a folder is a folder here
                        dirnames.append((entry.name, entry.is_symlink()))
                    elif (entry.is_file() or not is_event_file(entry.name)
                          or _not_regular(entry, problems) is None):
                        filenames.append(entry.name)
                except OSError:
                    filenames.append(entry.name)
            has_manifest, names, keep_dirs = folder_rules(filenames, dirnames)
            keep = []
            for d, is_link in keep_dirs:
                if is_link:
                    links.append(os.path.join(dirpath, d))
                    continue
                keep.append(os.path.join(dirpath, d))
            stack.extend(reversed(keep))  # visit in sorted order
            if not names and not has_manifest:
                continue
            folder = Path(dirpath)
            # string ops, not pathlib: every dirpath here is root_s + "/..." (links included)
            rel = dirpath[len(root_s):].strip(os.sep).replace(os.sep, "/")
            add_run(runs, rel or ".", folder, [folder / f for f in names], has_manifest)

    root_s = os.path.normpath(os.fspath(root))
    walk(root_s)
    while links:  # FIFO: shallow links first; links inside a linked tree queue up behind
        link = links.pop(0)
        before, found = walked[0], len(runs)
        walk(link)
        if len(runs) == found and walked[0] - before >= BIG_EMPTY_TREE:
            problems.append(
                f"{link}: a symlinked folder (to {os.path.realpath(link)}) holding no run; "
                f"{walked[0] - before} folders under it are read at every sync. Remove the "
                "link if it is not meant to hold runs.")
    if again[0] > REPEATS_NAMED:
        problems.append(f"{again[0] - REPEATS_NAMED} more folders reached a second time (symlink "
                        "loops or second links, as above); each read once, under the first name.")
    return _finish(root, runs, problems)


def _finish(root, runs: dict[str, RunSource], problems: list[str]) -> Discovery:
    if "." in runs:  # the logdir itself is a run (`tracelet sync runs/exp1`): named `exp1`, not `.`
        own = root_run_name(root)
        if own not in runs:
            run = runs.pop(".")
            run.name = own
            runs[own] = run
    return Discovery(root, sorted(runs.values(), key=lambda r: r.name), problems)


# -- the rules, shared by the local walk and the object-store listing --------------------------
def folder_rules(filenames: list[str], dirnames: Iterable[tuple[str, bool]]):
    """What one folder is: ``(has_manifest, event file names in read order, child folders to
    visit in order as (name, is_link))``. Hidden folders are never runs; a manifest run's own
    ``sysmetrics/`` and ``artifacts/`` are not either (a copied event file is an artifact)."""
    has_manifest = MANIFEST_NAME in filenames
    keep = []
    for d, is_link in sorted(dirnames):
        if d.startswith("."):
            continue  # .tracelet/ state, .ipynb_checkpoints/, .git/ ...: never runs
        if has_manifest and d in (SIDECAR_DIR, ARTIFACTS_DIR):
            continue  # a Tracelet run's own parts: artifacts may be copied event files
        keep.append((d, is_link))
    names = sorted(f for f in filenames if is_event_file(f))  # TensorBoard's order
    return has_manifest, names, keep


def add_run(runs: dict[str, RunSource], name: str, folder, events: list, has_manifest: bool,
            location: Any = None) -> None:
    """Record the run in ``folder`` (named ``name``, ``.`` for the logdir itself), or fold it
    into its parent when it is PyTorch's ``add_hparams`` child. Folders must come parents
    first (a pre-order walk)."""
    parent_name = (name.rpartition("/")[0] or ".") if name != "." else None
    if (parent_name is not None and parent_name in runs and not has_manifest
            and _HPARAMS_CHILD.match(folder.name)):
        runs[parent_name].event_files.extend(events)
        return
    runs[name] = RunSource(name=name, path=folder, event_files=events, has_manifest=has_manifest,
                           location=location)


def discover_listing(location) -> Discovery:
    """Every run under an object-store logdir, from ONE listing of it (no request per
    folder): the same rules as :func:`discover_runs`, applied to the folders the keys imply.
    Object stores have no links, so there is nothing to loop on."""
    listing = location.listing(refresh=True)
    files: dict[str, list[str]] = {}  # folder -> file names in it
    dirs: dict[str, set[str]] = {}  # folder -> child folder names
    for rel in listing:
        folder, _, fname = rel.rpartition("/")
        files.setdefault(folder, []).append(fname)
        while folder:  # register the folder under its parent, up to the first one known
            parent, _, base = folder.rpartition("/")
            children = dirs.setdefault(parent, set())
            if base in children:
                break
            children.add(base)
            folder = parent
    root = location.root
    runs: dict[str, RunSource] = {}
    stack = [""]
    while stack:
        rel = stack.pop()
        has_manifest, names, keep = folder_rules(files.get(rel, []),
                                                 [(d, False) for d in dirs.get(rel, ())])
        stack.extend(f"{rel}/{d}" if rel else d for d, _ in reversed(keep))
        if not names and not has_manifest:
            continue
        folder = root / rel if rel else root
        add_run(runs, rel or ".", folder, [folder / f for f in names], has_manifest, location)
    return _finish(root, runs, list(location.problems))


def root_run_name(folder: str | os.PathLike) -> str:
    """The name of a run that is the logdir itself: its folder's name (``.`` for ``/``)."""
    if getattr(folder, "url", None):  # an ObjectPath: the last segment of its URL
        return folder.name or "."
    return os.path.basename(os.path.abspath(os.fspath(folder))) or "."
