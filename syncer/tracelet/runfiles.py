"""A run's own files (manifest, sidecar parts, artifacts) read without leaving the run folder.

A logdir is written by many users and programs, so a run folder may hold links that lead
anywhere: ``artifacts/passwd -> /etc/passwd``, ``artifacts/home -> /home/alice``, chains of links,
``../..`` tricks. A file of the run is read only if its **real path** lies inside the run's real
folder (links that stay inside are fine), unless the user opts in with
``tracelet sync --follow-artifact-links``. The check is made twice:

* when listing (:meth:`RunFiles.artifacts`, :meth:`RunFiles.sidecar_parts`), to report each
  skipped link with where it points, and to keep the no-op signature free of them;
* when opening (:meth:`RunFiles.open`): the last component is opened with ``O_NOFOLLOW`` and the
  real path of the *opened descriptor* (``/proc/self/fd``) is checked, so a link swapped in
  between listing and upload is refused as well. ``O_NONBLOCK`` keeps a FIFO from hanging the
  sync; anything but a regular file is refused.

Destinations take file paths, so :meth:`RunFiles.pinned` hands them a private folder of links to
the opened descriptors (``/proc/<pid>/fd/N``): whatever they open is the file that was checked,
whatever happens to the run folder meanwhile (a copy where there is no ``/proc``).
"""
from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import OutsideRunError, SourceError

from .rundir import ARTIFACTS_DIR, SIDECAR_DIR
_FLAGS = (os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
          | getattr(os, "O_CLOEXEC", 0))
_LINK_ERRNOS = {errno.ELOOP, getattr(errno, "EMLINK", errno.ELOOP)}  # O_NOFOLLOW on a link
_PROC_FD = os.path.isdir("/proc/self/fd")
MAX_FOLDERS = 10_000  # folders walked under artifacts/: links to folders can multiply paths


def within(path: str, root: str) -> bool:
    """``path`` is ``root`` or below it (both real, absolute paths)."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


class RunFiles:
    """The files of one run folder, confined to it (``follow_links``: links may leave it)."""

    def __init__(self, run_dir: str | os.PathLike, follow_links: bool = False):
        self.dir = os.fspath(run_dir)
        self.follow = follow_links
        self._real: str | None = None

    @property
    def real(self) -> str:
        """The run folder's real path (computed once, only when a check needs it)."""
        if self._real is None:
            self._real = os.path.realpath(self.dir)
        return self._real

    def escape(self, path: str | os.PathLike) -> str | None:
        """Where ``path`` really leads, if that is outside the run (``None``: inside, or links
        may be followed)."""
        if self.follow:
            return None
        target = os.path.realpath(path)
        return None if within(target, self.real) else target

    # -- opening ------------------------------------------------------------------------------
    def open(self, path: str | os.PathLike) -> int:
        """A read-only descriptor of the regular file ``path``, checked to lie inside the run.

        Raises :class:`OutsideRunError` for a link out of the run, :class:`SourceError` for a
        file that cannot be opened or is not a regular file, ``FileNotFoundError`` when absent.
        """
        path = os.fspath(path)
        # A file directly in the run folder, opened without following a link, cannot be
        # elsewhere: no real path needed (the no-op fast path reads the manifest this way).
        direct = os.path.dirname(path) == os.path.normpath(self.dir)
        try:
            fd = os.open(path, _FLAGS)
        except FileNotFoundError:
            raise
        except OSError as e:
            if e.errno not in _LINK_ERRNOS:
                raise SourceError(f"{path}: cannot open ({e.strerror}); skipped this sync, "
                                  "retried at the next. Fix its permissions.") from None
            # The last component is a link: open where it really leads, if that is allowed.
            direct = False
            target = os.path.realpath(path)
            if not self.follow and not within(target, self.real):
                raise OutsideRunError(path, target) from None
            try:
                fd = os.open(target, _FLAGS)
            except FileNotFoundError:
                raise
            except OSError as e2:
                raise SourceError(f"{path}: cannot open {target} ({e2.strerror}); skipped this "
                                  "sync, retried at the next.") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise SourceError(f"{path}: is {_kind(st.st_mode)}, not a regular file; skipped "
                                  "this sync, retried at the next. Replace it with a file.")
            if not self.follow and not direct:
                actual = _fd_path(fd)
                if actual is not None and not within(actual, self.real):
                    raise OutsideRunError(path, actual)  # a folder on the way was swapped
            return fd
        except BaseException:
            os.close(fd)
            raise

    def read_bounded(self, path: str | os.PathLike, limit: int, what: str) -> bytes:
        """The whole file, if it is at most ``limit`` bytes (larger: :class:`SourceError`,
        without reading it). ``FileNotFoundError`` when absent."""
        fd = self.open(path)
        try:
            size = os.fstat(fd).st_size
            if size > limit:
                raise SourceError(f"{path}: {what} is {size:,} bytes, over the {limit:,}-byte "
                                  "limit; ignored (not read). The run's events still sync.")
            chunks, total = [], 0
            while True:  # the size may grow while reading: never read past the limit
                chunk = os.read(fd, min(1 << 20, limit + 1 - total))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
                if total > limit:
                    raise SourceError(f"{path}: {what} grew over the {limit:,}-byte limit while "
                                      "being read; ignored.")
            return b"".join(chunks)
        except OSError as e:
            raise SourceError(f"{path}: cannot read {what} ({e.strerror}).") from None
        finally:
            os.close(fd)

    @contextmanager
    def pinned(self, items: list[tuple[Path, str]]
               ) -> Iterator[tuple[dict[str, tuple[Path, tuple[int, int]]], dict[str, str]]]:
        """Open each ``(path, rel)``; yield ``(views, errors)``: ``views[rel] = (path for the
        destination, (size, mtime_ns) of what was opened)``, ``errors[rel] = why not``.

        A view is a link, in a private temporary folder, to the opened descriptor (or a copy
        without ``/proc``), named like ``rel`` so a destination that names an upload after the
        file's base name names it right. Descriptors stay open until the block ends."""
        tmp = tempfile.mkdtemp(prefix="tracelet-pinned-")
        fds: list[int] = []
        views: dict[str, tuple[Path, tuple[int, int]]] = {}
        errors: dict[str, str] = {}
        try:
            for path, rel in items:
                try:
                    fd = self.open(path)
                except FileNotFoundError:
                    errors[rel] = f"{path}: vanished before upload; retried at the next sync."
                    continue
                except SourceError as e:
                    errors[rel] = str(e)
                    continue
                fds.append(fd)
                st = os.fstat(fd)
                view = Path(tmp, *rel.split("/"))
                view.parent.mkdir(parents=True, exist_ok=True)
                if _PROC_FD:
                    os.symlink(f"/proc/{os.getpid()}/fd/{fd}", view)
                else:
                    with open(view, "wb") as out, os.fdopen(os.dup(fd), "rb") as src:
                        shutil.copyfileobj(src, out)
                views[rel] = (view, (st.st_size, st.st_mtime_ns))
            yield views, errors
        finally:
            for fd in fds:
                os.close(fd)
            shutil.rmtree(tmp, ignore_errors=True)

    # -- listing ------------------------------------------------------------------------------
    def artifacts(self, problems: list[str] | None = None) -> dict[str, tuple[int, int]]:
        """``rel -> (size, mtime_ns)`` of every file under ``artifacts/`` that may be read.

        Links leaving the run are skipped (and reported in ``problems``); links to folders
        inside it are walked (their files listed under the link's name too); a link back to a
        folder it is in (a loop) is not followed, and at most :data:`MAX_FOLDERS` folders are
        walked. Costs what ``os.walk`` costs, plus a ``realpath`` per link met."""
        out: dict[str, tuple[int, int]] = {}
        top = os.path.join(self.dir, ARTIFACTS_DIR)
        if self._folder_escapes(top, "uploaded", problems):
            return out
        stack: list[tuple[str, str, frozenset]] = [(top, "", frozenset())]
        walked = 0
        while stack:
            folder, prefix, above = stack.pop()
            try:
                st = os.stat(folder)
                with os.scandir(folder) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except FileNotFoundError:
                continue
            except OSError as e:
                if problems is not None:
                    problems.append(f"{folder}: cannot list artifacts ({e.strerror}); skipped. "
                                    "Fix its permissions.")
                continue
            key = (st.st_dev, st.st_ino)
            if key in above:
                continue  # a link loop: this folder is already on the way here
            walked += 1
            if walked > MAX_FOLDERS:
                if problems is not None:
                    problems.append(f"{top}: more than {MAX_FOLDERS} folders (links to folders "
                                    f"inside it?); the rest, from {folder}, is not uploaded.")
                break
            above = above | {key}
            subfolders = []
            for entry in entries:
                name = entry.name
                if name.startswith(".") and ".tmp" in name:
                    continue  # an atomic write in progress
                if entry.is_symlink():
                    target = self.escape(entry.path)
                    if target is not None:
                        if problems is not None:
                            problems.append(
                                f"{entry.path}: a link to {target}, outside the run folder; not "
                                "uploaded. Give --follow-artifact-links to upload what it points to.")
                        continue
                try:
                    is_dir = entry.is_dir()
                except OSError:
                    is_dir = False
                if is_dir:
                    if not name.startswith(".tmp"):
                        subfolders.append((entry.path, f"{prefix}{name}/", above))
                    continue
                try:
                    st_f = entry.stat()
                except OSError:
                    if problems is not None and entry.is_symlink():
                        problems.append(f"{entry.path}: a link to {os.readlink(entry.path)!r}, "
                                        "which does not exist; not uploaded.")
                    continue
                out[prefix + name] = (st_f.st_size, st_f.st_mtime_ns)
            stack.extend(reversed(subfolders))
        return out

    def sidecar_parts(self, problems: list[str] | None = None) -> list[Path]:
        """The run's sidecar parts (:func:`tracelet.sidecar.list_parts`) minus links leaving it."""
        from .sidecar import list_parts

        out: list[Path] = []
        if self._folder_escapes(os.path.join(self.dir, SIDECAR_DIR), "read", problems):
            return out
        for part in list_parts(self.dir):
            if os.path.islink(part):
                target = self.escape(part)
                if target is not None:
                    if problems is not None:
                        problems.append(f"{part}: a link to {target}, outside the run folder; not "
                                        "read. Give --follow-artifact-links to read it.")
                    continue
            out.append(part)
        return out


    def _folder_escapes(self, folder: str, verb: str, problems: list[str] | None) -> bool:
        """``artifacts/`` or ``sysmetrics/`` itself is a link out of the run (reported)."""
        if not os.path.islink(folder):
            return False
        target = self.escape(folder)
        if target is None:
            return False
        if problems is not None:
            problems.append(f"{folder}: a link to {target}, outside the run folder; nothing in it "
                            f"is {verb}. Give --follow-artifact-links to allow it.")
        return True


def _fd_path(fd: int) -> str | None:
    """The real path of an open descriptor (``None`` where the OS does not tell)."""
    if not _PROC_FD:
        return None
    try:
        path = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
    if path.endswith(" (deleted)"):
        path = path[: -len(" (deleted)")]
    return path if path.startswith("/") else None
