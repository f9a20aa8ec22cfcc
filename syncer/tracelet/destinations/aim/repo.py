"""Where the Aim repo is (:func:`aim_repo_root`); a local one made crash-safely, under a lock,
and a half-made one completed.

Aim's own ``Repo(path, init=True)`` (what ``aim init`` runs) makes ``.aim/`` in place, one piece
after the other: the folder and ``locks/``, the index DB (``meta/index``, RocksDB), the run
metadata DB (``run_metadata.sqlite``, filled by Aim's alembic migrations in a child process),
then ``VERSION``. A sync killed in between left a repo that every later sync failed on: the
folder exists, so Aim skips the init; ``VERSION`` is missing, so Aim (which reads that as a
pre-3.0 repo) skips its migrations too, and the first query creates a 0-byte sqlite file:
``no such table: run`` forever. Two first syncs at once raced the same way.

Here (local repos only; an ``aim://`` server owns its repo):

* a complete repo (the usual case) is recognised by a few stats, ``VERSION`` and two tiny
  queries on the sqlite file: no lock, no file written;
* otherwise one sync at a time, under ``fcntl.lockf`` on ``<root>/.aim.tracelet-init.lock``
  (beside ``.aim``; a sync waits up to :data:`INIT_WAIT_S` for another's init):
* a missing ``.aim`` is built aside, in ``<root>/.aim.tracelet-new-<pid>-<ns>`` with Aim's own
  pieces (``RocksContainer``, its migration command, ``DATA_VERSION``), and renamed into place:
  Aim, ``aim up`` and other syncs see no repo or a whole one. A kill before the rename leaves
  only the temporary folder, removed by the next build;
* an existing but half-made ``.aim`` (killed ``aim init``, older Tracelet, a 0-byte sqlite...)
  gets its missing pieces in the same order, each made so that a kill leaves it absent or whole
  (the sqlite built aside and renamed, ``VERSION`` written atomically and last), with a warning
  naming what was missing. Runs already in the repo are not touched; a sqlite that holds run
  records but has no usable schema is never rebuilt (that would drop names, experiments and
  tags of every run): the sync names the file and what to do instead.
"""
from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any, Mapping

from ..._fs import _crash_point, _fsync_dir, atomic_write_bytes, exclusive_lock
from ...errors import DestinationError
from ...redact import scrubbed_logger

log = scrubbed_logger("tracelet.aim")  # log lines never show a credential

DB_NAME = "run_metadata.sqlite"  # aim.storage.structured.db.DB._DB_NAME
INIT_WAIT_S = 300.0  # another sync's init takes seconds; Aim's own sqlite lock waits 5 minutes
NEW_MARK = ".tracelet-new-"  # <name>.tracelet-new-<pid>-<ns>: a repo being built aside
DB_NEW_MARK = f".{DB_NAME}.tracelet-new-"  # the sqlite file being built aside, inside .aim


def repo_name() -> str:
    """The repo folder's name (``aim.sdk.configs.get_aim_repo_name``)."""
    return os.environ.get("__AIM_REPO_NAME__") or ".aim"


def aim_repo_root(config: Mapping[str, Any]) -> str:
    """The repo as Aim's ``--repo`` takes it: the folder that holds ``.aim``, or ``aim://``
    (config ``aim_repo``, else ``AIM_REPO``, else the working folder; given the ``.aim`` folder
    itself, the folder above it)."""
    repo = str(config.get("aim_repo") or os.environ.get("AIM_REPO") or os.getcwd())
    if "://" in repo:
        return repo
    path = os.path.abspath(os.path.expanduser(repo))
    if os.path.basename(path) == repo_name() and os.path.isdir(os.path.join(path, "meta")):
        path = os.path.dirname(path)  # given the .aim folder itself
    return path


def ensure_local_repo(root: str) -> list[str]:
    """Make ``<root>/.aim`` a complete Aim repo; return the pieces a half-made one lacked
    (empty: it was complete, or it did not exist and was built whole)."""
    aim_dir = os.path.join(root, repo_name())
    if not missing_pieces(aim_dir):
        return []
    os.makedirs(root, exist_ok=True)
    with exclusive_lock(os.path.join(root, f"{repo_name()}.tracelet-init.lock"),
                        f"aim repo {aim_dir}", wait_s=INIT_WAIT_S,
                        hint="It is creating or repairing the repo; run this sync again once it is done."):
        missing = missing_pieces(aim_dir)  # another sync may have made it meanwhile
        if not missing:
            return []
        _remove_stale_builds(root)
        if not os.path.lexists(aim_dir):
            _build_aside(root, aim_dir)
            return []
        if not os.path.isdir(aim_dir):
            raise DestinationError(
                f"aim: {aim_dir} is not a folder (an Aim repo is a folder named {repo_name()}); "
                "move it away, or give another repo with --aim-repo")
        _complete(aim_dir)
        still = missing_pieces(aim_dir)
        if still:  # each step either makes its piece or raises: not expected
            raise DestinationError(f"aim: repo {aim_dir} still lacks {', '.join(still)} after "
                                   "a repair; check the folder's permissions and free space")
        log.warning("aim: repo %s was half made (missing: %s); repaired it as `aim init` would",
                    aim_dir, ", ".join(missing))
        return missing


def repo_token(aim_dir: str) -> str | None:
    """What tells this repo from another one made at the same path after it was removed: the
    unique id RocksDB wrote when the repo's index DB (``meta/index``) was created (its
    ``IDENTITY`` file). None if it cannot be read."""
    try:
        with open(os.path.join(aim_dir, "meta", "index", "IDENTITY"), "rb") as f:
            token = f.read(128).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return token or None


def open_local_repo(root: str) -> Any:
    """Aim's ``Repo.from_path(root)``, unless the repo Aim pooled for ``root`` in this process is
    not the repo there now (removed and made anew since: its :func:`repo_token` differs).
    Aim pools a ``Repo`` and its run metadata DB per path for as long as anything holds them
    (Aim objects sit in reference cycles: until the garbage collector runs), and a pooled one
    keeps the removed repo's files open: a sync in a long-lived process (the Python API, live
    mode, a test) would write Aim's run records (name, experiment, creation time) into the
    deleted sqlite file. Such a stale entry (one this function pooled, for another token) is
    dropped from both pools (its holders keep it)."""
    from aim import Repo
    from aim.sdk.utils import clean_repo_path
    from aim.storage.structured.db import DB

    token = repo_token(os.path.join(root, repo_name()))
    key = clean_repo_path(root)
    pooled = Repo._pool.get(key)
    # only one Tracelet pooled itself is known stale: a Repo other code pooled (the user's
    # aim.Run in this process) shares its open run DBs with us; a second Repo on the same run
    # would fail on RocksDB's lock ("lock hold by current process")
    if pooled is not None and getattr(pooled, "_tracelet_repo_token", token) != token:
        Repo._pool.pop(key, None)
        DB._pool.pop(pooled.path, None)
    repo = Repo.from_path(root)
    repo._tracelet_repo_token = token
    return repo


def missing_pieces(aim_dir: str) -> list[str]:
    """What a usable repo has and this one lacks (cheap: stats, one small read, one sqlite
    query). A complete repo -> []."""
    if not os.path.isdir(aim_dir):
        return ["the folder"]
    missing = []
    if _read_version(aim_dir) is None:
        missing.append("VERSION")
    if not os.path.isdir(os.path.join(aim_dir, "locks")):
        missing.append("locks/")
    if not os.path.isfile(os.path.join(aim_dir, "meta", "index", "CURRENT")):
        missing.append("meta/index")
    state = _sqlite_state(os.path.join(aim_dir, DB_NAME))
    if state != "ok":
        missing.append(f"{DB_NAME} ({state})")
    return missing


# -- the pieces --------------------------------------------------------------------------------
def _read_version(aim_dir: str) -> tuple[int, ...] | None:
    try:
        with open(os.path.join(aim_dir, "VERSION"), "rb") as f:
            text = f.read(64).decode("ascii").strip()
        version = tuple(int(p) for p in text.split("."))
    except (OSError, UnicodeDecodeError, ValueError):
        return None  # Aim itself fails on an empty or garbled VERSION (int(''))
    return version or None


def _connect(path: str) -> sqlite3.Connection:
    """The existing file only (``mode=rw`` creates nothing), read-write like Aim's own
    connections: a journal left by a killed writer is rolled back on open, where a read-only
    connection would fail with SQLITE_READONLY_ROLLBACK. Only reads are made."""
    return sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=30)


def _not_sqlite(e: sqlite3.Error) -> bool:
    """The file's bytes are not a (sound) sqlite database, as opposed to it being locked or
    not accessible (``sqlite_errorname`` is Python >= 3.11; the messages are sqlite's)."""
    return (getattr(e, "sqlite_errorname", "") in ("SQLITE_NOTADB", "SQLITE_CORRUPT")
            or str(e) in ("file is not a database", "database disk image is malformed"))


def _sqlite_state(path: str) -> str:
    """``ok`` (Aim's schema: a ``run`` table and an alembic version) or what is wrong:
    ``missing``, ``empty``, ``no schema``, ``schema incomplete``, ``no schema version``,
    ``not a database``, or ``unreadable: <why>`` (locked, no permission: never rebuilt)."""
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        return "missing"
    if size == 0:
        return "empty"
    try:
        db = _connect(path)
        try:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if "alembic_version" not in tables or "run" not in tables:
                return "no schema" if not tables else "schema incomplete"
            if db.execute("SELECT version_num FROM alembic_version").fetchone() is None:
                return "no schema version"
            return "ok"
        finally:
            db.close()
    except sqlite3.Error as e:
        if _not_sqlite(e):
            return "not a database"
        return f"unreadable: {e}"


def _sqlite_records(path: str) -> int | None:
    """Rows the file holds outside alembic's bookkeeping; None: its bytes are not sqlite."""
    try:
        db = _connect(path)
        try:
            tables = [r[0] for r in db.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")]
            return sum(db.execute(f'SELECT count(*) FROM "{t.replace(chr(34), chr(34) * 2)}"').fetchone()[0]
                       for t in tables if t != "alembic_version")
        finally:
            db.close()
    except sqlite3.Error as e:
        if _not_sqlite(e):
            return None
        raise _unreadable(path, str(e)) from e


def _unreadable(path: str, why: str) -> DestinationError:
    return DestinationError(f"aim: cannot read {path}: {why} (another program holding it "
                            "locked, or its permissions?); it is left as it is")


def _build_aside(root: str, aim_dir: str) -> None:
    tmp = os.path.join(root, f"{repo_name()}{NEW_MARK}{os.getpid()}-{time.monotonic_ns()}")
    os.mkdir(tmp)
    try:
        _complete(tmp)
        try:
            os.rename(tmp, aim_dir)  # replaces nothing but an empty folder made meanwhile
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            # something else (`aim init`, a user) made a repo meanwhile: use that one
            log.warning("aim: repo %s appeared while this sync built one; using it", aim_dir)
            _complete(aim_dir)
            return
        _crash_point("aim_repo_init")  # 5: renamed into place
        _fsync_dir(Path(root))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _complete(aim_dir: str) -> None:
    """Add what ``Repo(init=True)`` makes, in its order, each piece absent or whole after a
    kill; ``VERSION`` (what tells Aim the repo is current) last."""
    os.makedirs(os.path.join(aim_dir, "locks"), exist_ok=True)
    _crash_point("aim_repo_init")  # 1: folder and locks/
    if not os.path.isfile(os.path.join(aim_dir, "meta", "index", "CURRENT")):
        # RocksDB writes CURRENT last: a folder without it holds nothing and is created anew
        from aim.storage.rockscontainer import RocksContainer

        RocksContainer(os.path.join(aim_dir, "meta", "index"), read_only=False).close()
    _crash_point("aim_repo_init")  # 2: index
    _complete_sqlite(aim_dir)
    _crash_point("aim_repo_init")  # 3: run metadata DB
    if _read_version(aim_dir) is None:
        from aim.sdk.data_version import DATA_VERSION

        atomic_write_bytes(os.path.join(aim_dir, "VERSION"),
                           (".".join(map(str, DATA_VERSION)) + "\n").encode())
    _crash_point("aim_repo_init")  # 4: VERSION


def _complete_sqlite(aim_dir: str) -> None:
    path = os.path.join(aim_dir, DB_NAME)
    state = _sqlite_state(path)
    if state == "ok":
        if _read_version(aim_dir) is None and _alembic_revision(path) != _alembic_head():
            # killed during Aim's migrations of a repo with records: finish them, as Aim does
            _migrate(path, path)
        return
    if state.startswith("unreadable"):
        raise _unreadable(path, state[len("unreadable: "):])
    if os.path.exists(path):
        records = _sqlite_records(path)
        if records:
            raise DestinationError(
                f"aim: {path} holds run records ({records} rows) but not Aim's schema ({state}), "
                "so it is not rebuilt here: that would drop the names, experiments and tags of "
                "those runs. Restore it from a backup, or move it away to let the next sync make "
                "an empty one (Aim then lists those runs without them; synced runs get theirs "
                "back at their next sync)")
    tmp = os.path.join(aim_dir, f"{DB_NEW_MARK}{os.getpid()}-{time.monotonic_ns()}")
    try:
        _migrate(tmp, path)
        if state == "not a database":
            kept = f"{path}.tracelet-broken-{time.strftime('%Y%m%dT%H%M%S')}"
            os.replace(path, kept)  # not sqlite: keep the bytes, whatever they were
            log.warning("aim: %s was not an sqlite database; kept it as %s", path, kept)
        os.replace(tmp, path)
        _fsync_dir(Path(aim_dir))
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def _migrate(db_file: str, shown_as: str) -> None:
    """Aim's migrations (``aim.storage.migrations.utils.upgrade_database``: the same command
    and environment), with the child's output kept for the error message instead of printed."""
    from aim.storage.migrations.utils import create_migration_cmd

    env = dict(os.environ, AIM_RUN_META_DATA_DB_URL=f"sqlite:///{db_file}")
    done = subprocess.run(create_migration_cmd(), env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, errors="replace")
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        raise DestinationError(f"aim: Aim's migrations of {shown_as} failed: {last}")


def _alembic_revision(path: str) -> str | None:
    try:
        db = _connect(path)
        try:
            row = db.execute("SELECT version_num FROM alembic_version").fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return None
    return row[0] if row else None


def _alembic_head() -> str | None:
    """The newest revision of Aim's migrations (read from Aim's ``migrations/versions``)."""
    try:
        import aim.storage
        from alembic.script import ScriptDirectory

        return ScriptDirectory(os.path.join(os.path.dirname(aim.storage.__file__),
                                            "migrations")).get_current_head()
    except Exception as e:  # an Aim laid out otherwise: run the migrations, they are idempotent
        log.debug("aim: alembic head: %s", e)
        return None


def _remove_stale_builds(root: str) -> None:
    """Leftovers of builds killed before their rename (we hold the lock: nobody builds now)."""
    prefix = repo_name() + NEW_MARK
    try:
        names = os.listdir(root)
    except OSError:
        return
    for name in names:
        if name.startswith(prefix):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    aim_dir = os.path.join(root, repo_name())
    try:
        inner = os.listdir(aim_dir)
    except OSError:
        return
    for name in inner:
        if name.startswith(DB_NEW_MARK):
            try:
                os.unlink(os.path.join(aim_dir, name))
            except OSError:
                pass
