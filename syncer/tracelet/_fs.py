"""The one atomic-write helper and the one lock helper, and safe opens inside the state dir.

Checkpoints live on shared filesystems (NFS, Lustre) where SQLite locking is unreliable, so state
is plain files replaced with the durable recipe: temp file in the same folder -> fsync -> rename
-> fsync the folder. A reader therefore sees the old file or the new one, never half of either.

The state dir may sit in a logdir many users write to, so nothing in it is trusted: folders are
opened one component at a time with O_NOFOLLOW and every file operation is relative to the
folder's fd (:func:`open_state_dir`), files are opened with O_NOFOLLOW and must be plain files
with one link (:func:`open_state_file`). A link can never make Tracelet write elsewhere.
"""
from __future__ import annotations

import errno
import json
import os
import secrets
import socket
import stat
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .faults import crash_point as _crash_point
from .errors import LockedError, UnsafeStatePathError


# Tracelet's own state (checkpoints, .sig files, locks, the signature key): not group-writable,
# the group may read (``tracelet status``), whatever the umask. The key is the owner's only.
STATE_DIR_MODE = 0o750
STATE_FILE_MODE = 0o640
KEY_FILE_MODE = 0o600

_LOCK_HINT = ("This run is retried at the next sync (exit 75). If syncs keep overlapping, run "
              "them less often or give each its own share of the runs with --shard K/N.")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_NOFOLLOW = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # NONBLOCK: a FIFO never hangs an open


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Replace ``path`` with ``data`` so a crash leaves either the old or the new content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dir_fd = os.open(path.parent, _DIR_FLAGS)
    try:
        replace_in_dir(dir_fd, path.name, data, display=str(path))
    finally:
        os.close(dir_fd)


def replace_in_dir(dir_fd: int, name: str, data: bytes, *, display: str,
                   mode: int | None = None) -> None:
    """The atomic-write recipe inside an open folder: temp (O_EXCL|O_NOFOLLOW, so it is always
    a new file, never a link's target) -> fsync -> rename over ``name`` -> fsync the folder.
    A rename replaces a symlink at ``name`` itself, never what it points to. ``mode``: forced
    permission bits (state files), else 0644 under the umask."""
    fd, tmp = _new_temp(dir_fd, name, display, 0o644 if mode is None else mode)
    try:
        try:
            if mode is not None:
                os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        _crash_point("before_rename")
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        _unlink_quietly(tmp, dir_fd)
        raise
    try:  # without this the rename itself may be lost on power failure (ext4, XFS)
        os.fsync(dir_fd)
    except OSError:
        pass


@contextmanager
def atomic_file(path: str | os.PathLike, *, fsync: bool = True) -> Iterator[Any]:
    """Write ``path`` as a stream, atomically: ``with atomic_file(p) as f: f.write(...)``.

    The same recipe as :func:`replace_in_dir`, for content too big to hold in memory (an
    export, a zip, a copied artifact): a temp file in the same folder (O_EXCL|O_NOFOLLOW) ->
    fsync -> rename over ``path`` -> fsync the folder. On any error (or Ctrl-C) the temp file
    is removed and ``path`` keeps its old content. ``fsync=False`` skips both fsyncs (a file
    that is only a copy of something durable elsewhere).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dir_fd = os.open(path.parent, _DIR_FLAGS)
    try:
        fd, tmp = _new_temp(dir_fd, path.name, str(path), 0o644)
        try:
            with os.fdopen(fd, "wb") as f:
                yield f
                f.flush()
                if fsync:
                    os.fsync(f.fileno())
            _crash_point("before_rename")
            os.replace(tmp, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            _unlink_quietly(tmp, dir_fd)
            raise
        if fsync:
            try:
                os.fsync(dir_fd)
            except OSError:
                pass
    finally:
        os.close(dir_fd)


def _new_temp(dir_fd: int, name: str, display: str, mode: int) -> tuple[int, str]:
    for _ in range(8):  # a name taken (by anything: file, link, FIFO) is never opened: next
        tmp = f".{name}.tmp-{os.getpid()}-{secrets.token_hex(6)}"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, mode,
                           dir_fd=dir_fd), tmp
        except FileExistsError:
            continue
    raise UnsafeStatePathError(f"{display}: cannot create a temporary file next to it (8 names "
                               "taken); clear the folder's '.*.tmp-*' entries.")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=1, sort_keys=True, default=str).encode())


def read_json(path: str | os.PathLike) -> Any:
    with open(path, "rb") as f:
        return json.loads(f.read())


def _fsync_dir(folder: Path) -> None:
    # Without this the rename itself may be lost on power failure (ext4 data=ordered, XFS).
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _unlink_quietly(path: str | os.PathLike, dir_fd: int | None = None) -> None:
    try:
        os.unlink(path, dir_fd=dir_fd)
    except OSError:
        pass


@contextmanager
def exclusive_lock(path: str | os.PathLike, what: str, *, wait_s: float = 0.0,
                   hint: str = _LOCK_HINT) -> Iterator[None]:
    """:func:`exclusive_lock_at` for a path whose folder is trusted (created if missing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dir_fd = os.open(path.parent, _DIR_FLAGS)
    try:
        with exclusive_lock_at(dir_fd, path.name, what, display=str(path), wait_s=wait_s,
                               hint=hint):
            yield
    finally:
        os.close(dir_fd)


@contextmanager
def exclusive_lock_at(dir_fd: int, name: str, what: str, *, display: str, wait_s: float = 0.0,
                      hint: str = _LOCK_HINT, shared: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on ``name`` in an open folder or raise :class:`LockedError`: at
    once (``wait_s=0``) or once ``wait_s`` seconds of retries did not get it (a short job
    another sync is doing).

    ``fcntl.lockf`` (POSIX record locks) is used because, unlike ``flock``, it is forwarded to
    the server on NFSv4 and Lustre, so two cron hosts sharing a state dir exclude each other.
    The lock dies with the process, so a kill -9 never leaves a stale lock behind.

    The lock file is written (who holds it), so it is opened with O_NOFOLLOW and must be a
    plain file with one link: a symlink, FIFO, folder or hard link in its place raises
    :class:`UnsafeStatePathError` and what it points to is never opened for writing.
    """
    import fcntl

    fd = open_state_file(dir_fd, name, os.O_RDWR | os.O_CREAT, display=display, what="lock file")
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.lockf(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EACCES, errno.EAGAIN):
                    raise
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                holder = ""
                try:
                    holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
                except OSError:
                    pass
                raise LockedError(
                    f"{what} is locked by another sync ({holder or 'unknown holder'}; lock file {display}). "
                    + hint
                ) from e
        # Who holds it, for the "locked" message. Fixed width, no ftruncate: truncating costs a
        # metadata write per run, which dominated a no-op pass over 1000 runs. Shared holders
        # (``shared``: a read lock, any number of them) do not write.
        if not shared:
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}"[:120].ljust(120).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lockf lock


def open_state_file(dir_fd: int, name: str, flags: int, *, display: str, what: str,
                    mode: int = STATE_FILE_MODE) -> int:
    """Open a state file in an open folder without following a symlink; it must be a plain
    file with a single link (else :class:`UnsafeStatePathError`, the fd closed). A file this
    process may write gets ``mode`` (0640) whatever the umask it was created under."""
    try:
        fd = os.open(name, flags | _NOFOLLOW, mode, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO, errno.ENOTDIR):
            raise UnsafeStatePathError(_unsafe_message(dir_fd, name, display, what)) from e
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            raise UnsafeStatePathError(_unsafe_message(dir_fd, name, display, what, st))
        if flags & (os.O_RDWR | os.O_WRONLY) and stat.S_IMODE(st.st_mode) != mode \
                and st.st_uid == os.geteuid():
            os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def describe_entry(dir_fd: int | None, name: str, st: os.stat_result | None = None) -> str:
    """What sits at ``name`` ("a symlink (to /etc/passwd)", "a FIFO", ...), for messages."""
    if st is None or (stat.S_ISREG(st.st_mode) and st.st_nlink == 1):
        try:
            st = os.lstat(name, dir_fd=dir_fd)
        except OSError as e:
            return f"unreadable ({e.strerror})"
    m = st.st_mode
    if stat.S_ISLNK(m):
        try:
            return f"a symlink (to {os.readlink(name, dir_fd=dir_fd)})"
        except OSError:
            return "a symlink"
    if stat.S_ISREG(m):
        return f"a file with {st.st_nlink} hard links" if st.st_nlink != 1 else "a file"
    for test, text in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(m):
            return text
    return "not a plain file"


def _unsafe_message(dir_fd: int, name: str, display: str, what: str,
                    st: os.stat_result | None = None) -> str:
    return (f"{display}: the {what} is {describe_entry(dir_fd, name, st)}, not a plain file; "
            "Tracelet never follows links or writes through anything but its own plain files in "
            "its state dir. Remove it (rm, not rm -r on a link's target) and sync again.")


def open_state_dir(base: str, parts: list[str], *, create: bool, display: str) -> int:
    """An fd of ``base/parts...``: ``base`` as given (the user's path, links followed), each
    of ``parts`` opened with O_NOFOLLOW, so a symlinked folder inside the state dir can never
    make Tracelet read or write elsewhere. ``create``: make what is missing (0750, whatever the
    umask; ``base`` too). FileNotFoundError when missing and not ``create``."""
    if create:
        _makedirs(base)
    fd = os.open(base, _DIR_FLAGS)
    try:
        where = base
        for part in parts:
            where = os.path.join(where, part)
            try:
                nfd = os.open(part, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(part, STATE_DIR_MODE, dir_fd=fd)
                    made = True
                except FileExistsError:  # made meanwhile by a concurrent sync
                    made = False
                nfd = _open_subdir(fd, part, where, display)
                if made:
                    os.fchmod(nfd, STATE_DIR_MODE)
            except OSError as e:
                if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                raise UnsafeStatePathError(_unsafe_dir_message(fd, part, where, display)) from e
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_subdir(fd: int, part: str, where: str, display: str) -> int:
    try:
        return os.open(part, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
    except OSError as e:
        if e.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        raise UnsafeStatePathError(_unsafe_dir_message(fd, part, where, display)) from e


def _unsafe_dir_message(fd: int, part: str, where: str, display: str) -> str:
    return (f"{where}: is {describe_entry(fd, part)}, where Tracelet keeps a folder of its state "
            f"dir ({display}); links there are never followed. Remove it (the state in it is "
            "rebuilt by asking the destination) and sync again.")


def _makedirs(path: str) -> None:
    """``os.makedirs`` whose new folders get STATE_DIR_MODE whatever the umask."""
    if os.path.isdir(path):
        return
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    if parent != path:
        _makedirs(parent)
    try:
        os.mkdir(path, STATE_DIR_MODE)
    except FileExistsError:
        return
    fd = os.open(path, _DIR_FLAGS | os.O_NOFOLLOW)  # chmod what we made, not a link put there
    try:
        os.fchmod(fd, STATE_DIR_MODE)
    finally:
        os.close(fd)
