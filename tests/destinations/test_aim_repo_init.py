"""A new local Aim repo: created crash-safely and under a lock, a half-made one repaired.

Every sync is a real ``python -m tracelet.cli sync --to aim`` (or ``run_sync``) into a real Aim
repo; what landed is read back with Aim's own SDK (``harness_aim``) and compared with the source
truth (``sources.py``): every point exactly once.
"""
from __future__ import annotations

import os
import random
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.destinations.harness_aim import AimLocalHarness
from tracelet.testing.conformance import assert_exactly_once, project_fn, sync_once
from tracelet.testing.sources import SourceTruth, build_kill_logdir, write_simple_run

AIM_CLI = str(Path(sys.executable).with_name("aim"))
KILL_TRIALS = 20


def _harness(root: Path) -> AimLocalHarness:
    h = AimLocalHarness()
    h.root = str(root)
    h.config = {"aim_repo": h.root}
    return h


def _cmd(logdir: Path, root: Path, project: str) -> list[str]:
    return [sys.executable, "-m", "tracelet.cli", "sync", str(logdir), "--to", "aim",
            "--project", project, "--aim-repo", str(root)]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, TRACELET_BATCH_POINTS="100", **extra)  # several sends per run
    env.pop("AIM_REPO", None)
    env.pop("TRACELET_CRASH_AT", None)
    env.update(extra)
    return env


def _resync_problems(logdir: Path, root: Path, project: str, truth) -> list[str]:
    """What is wrong after the next sync(s) of a repo a killed sync left behind."""
    h = _harness(root)
    for attempt in ("next sync", "sync after it"):
        report = sync_once(logdir, h, project)
        if report.exit_code != 0:
            errors = [d.error for r in report.runs for d in r.destinations.values() if d.error]
            return [f"{attempt} exit {report.exit_code}: "
                    f"{(errors or list(report.failed_destinations.values()))[:1]}"]
    try:
        assert_exactly_once(h, truth, project_fn(project))
    except AssertionError as e:
        return [f"points: {e}"]
    return []


def _repo_listing(root: Path) -> str:
    aim = root / ".aim"
    if not aim.exists():
        return "no .aim"
    return " ".join(sorted(p.name + (f"({p.stat().st_size}B)" if p.is_file() else "/")
                           for p in aim.iterdir()))


def _wait_for(proc: subprocess.Popen, path: Path) -> float:
    while proc.poll() is None and not path.exists():
        time.sleep(0.002)
    return time.monotonic()


@pytest.mark.slow
def test_kill9_at_random_instants_of_the_first_sync_into_a_new_repo(tmp_path, project):
    """SIGKILL the first sync into a brand-new repo at a random instant, then sync again: the
    next syncs work and every point is there once. Even trials kill while the repo is being
    made (from the repo's root folder appearing to ``.aim`` appearing), odd ones after (run
    creation, index, sends, checkpoints, close): the build takes most of a small first sync,
    so a kill spread over the whole of it would rarely land in the rest."""
    template = tmp_path / "template"
    truth = build_kill_logdir(template, runs=2, steps=120)
    # How long each phase runs: the kills are spread over it (no assertion on time).
    cal_root, cal_logs = tmp_path / "calibrate" / "repo", tmp_path / "calibrate" / "logs"
    shutil.copytree(template, cal_logs)
    proc = subprocess.Popen(_cmd(cal_logs, cal_root, project), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t_root = _wait_for(proc, cal_root)
    t_aim = _wait_for(proc, cal_root / ".aim")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-2000:]
    phases = [max(t_aim - t_root, 0.05), max(time.monotonic() - t_aim, 0.05)]
    rng = random.Random(20240901)
    failures, killed = [], [0, 0]
    for trial in range(KILL_TRIALS):
        phase = trial % 2
        logdir, root = tmp_path / f"t{trial}" / "logs", tmp_path / f"t{trial}" / "repo"
        shutil.copytree(template, logdir)
        proc = subprocess.Popen(_cmd(logdir, root, project), env=_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for(proc, root / ".aim" if phase else root)
        time.sleep(rng.uniform(0.0, phases[phase]))
        if proc.poll() is None:
            proc.kill()
            killed[phase] += 1
        proc.wait()
        left = _repo_listing(root)
        for p in _resync_problems(logdir, root, project, truth):
            failures.append(f"trial {trial} (left: {left}): {p}")
    assert not failures, f"{len(failures)} of {KILL_TRIALS} trials broke the repo:\n" + "\n".join(failures)
    assert min(killed) >= KILL_TRIALS // 4, f"kills that landed mid-sync (build, after): {killed}"


# Exact steps: each pass of the repo build (folder, index, sqlite, VERSION, renamed into place),
# of a run's first open (props, run created, identity set, indexed), the first send's commit and
# the first checkpoint writes.
CRASH_POINTS = [f"aim_repo_init:{i}" for i in range(1, 6)] + [
    f"aim_run_open:{i}" for i in range(1, 5)] + ["after_send:1", "before_rename:1", "before_rename:2"]


@pytest.mark.slow
@pytest.mark.parametrize("crash_at", CRASH_POINTS)
def test_kill9_at_exact_steps_of_the_first_sync_into_a_new_repo(tmp_path, project, crash_at):
    logdir, root = tmp_path / "logs", tmp_path / "repo"
    truth = build_kill_logdir(logdir, runs=2, steps=120)
    proc = subprocess.run(_cmd(logdir, root, project), env=_env(TRACELET_CRASH_AT=crash_at),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert _resync_problems(logdir, root, project, truth) == []


def _concurrent(cmds: list[list[str]]) -> list[tuple[int, str]]:
    procs = [subprocess.Popen(c, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for c in cmds]
    out = []
    for p in procs:
        _, err = p.communicate(timeout=300)
        out.append((p.returncode, err.decode(errors="replace")[-1500:]))
    return out


@pytest.mark.slow
def test_concurrent_first_syncs_of_different_runs_into_one_new_repo(tmp_path, project):
    root = tmp_path / "repo"
    truths = {}
    for k in range(3):  # one logdir per job, each run its own, all into one new repo at once
        truths[k] = SourceTruth()
        write_simple_run(tmp_path / f"logs{k}" / f"job{k}", f"job{k}", truths[k], ["loss", "acc"],
                         list(range(100)), seed=k)
    results = _concurrent([_cmd(tmp_path / f"logs{k}", root, project) for k in range(3)])
    assert [rc for rc, _ in results] == [0, 0, 0], results
    h = _harness(root)
    for k in range(3):
        assert sync_once(tmp_path / f"logs{k}", h, project).exit_code == 0
        assert_exactly_once(h, truths[k], project_fn(project))


@pytest.mark.slow
def test_concurrent_first_syncs_of_one_logdir_into_one_new_repo(tmp_path, project):
    logdir, root = tmp_path / "logs", tmp_path / "repo"
    truth = build_kill_logdir(logdir, runs=3, steps=100)
    results = _concurrent([_cmd(logdir, root, project)] * 3)
    # 75: some run was locked by another of these syncs (each may meet one): none failed
    assert all(rc in (0, 75) for rc, _ in results), results
    # (each pass's summary line counts "0 failed": a run's failure is its "-> aim (…): failed")
    assert not any("): failed" in err or ": error:" in err for _, err in results), results
    h = _harness(root)
    assert sync_once(logdir, h, project).exit_code == 0
    assert_exactly_once(h, truth, project_fn(project))


# -- a half-made repo ----------------------------------------------------------------------------
def _aim_init(root: Path) -> Path:
    """A repo made by Aim's own ``aim init``."""
    root.mkdir(parents=True, exist_ok=True)
    out = subprocess.run([AIM_CLI, "init", "--repo", str(root), "-y"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    return root / ".aim"


def _partial_schema(aim: Path) -> None:
    """The initial migration cut short: some of its tables, no alembic version."""
    db = sqlite3.connect(aim / "run_metadata.sqlite")
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    for t in tables:
        if t not in ("experiment", "tag"):
            db.execute(f'DROP TABLE "{t}"')
    db.commit()
    db.close()


def _no_alembic_version_row(aim: Path) -> None:
    """Every table of the schema, the version row not yet written."""
    db = sqlite3.connect(aim / "run_metadata.sqlite")
    db.execute("DELETE FROM alembic_version")
    db.commit()
    db.close()


def _half_built_index(aim: Path) -> None:
    """RocksDB killed while creating the index: files, no CURRENT."""
    shutil.rmtree(aim / "meta" / "index")
    (aim / "meta" / "index").mkdir()
    (aim / "meta" / "index" / "LOG").write_text("half\n")


DAMAGE = {
    "sqlite_0_bytes": lambda a: (a / "run_metadata.sqlite").write_bytes(b""),
    "sqlite_missing": lambda a: (a / "run_metadata.sqlite").unlink(),
    "sqlite_not_a_database": lambda a: (a / "run_metadata.sqlite").write_bytes(b"\x00junk" * 50),
    "sqlite_partial_schema": _partial_schema,
    "sqlite_no_alembic_version": _no_alembic_version_row,
    "version_missing": lambda a: (a / "VERSION").unlink(),
    "version_0_bytes": lambda a: (a / "VERSION").write_bytes(b""),
    "locks_missing": lambda a: shutil.rmtree(a / "locks"),
    "index_missing": lambda a: shutil.rmtree(a / "meta"),
    "index_half_built": _half_built_index,
    "only_the_folder": lambda a: [shutil.rmtree(p) if p.is_dir() else p.unlink() for p in a.iterdir()],
    # what the harness found: a sync killed after the folder, before Aim's migrations ran
    "killed_before_migrations": lambda a: [(a / "run_metadata.sqlite").write_bytes(b""),
                                           (a / "VERSION").unlink()],
}


@pytest.fixture(scope="module")
def aim_init_repo(tmp_path_factory) -> Path:
    """One repo made by ``aim init``; each test damages its own copy."""
    root = tmp_path_factory.mktemp("aim-init") / "repo"
    _aim_init(root)
    return root


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_half_made_repo_is_repaired_at_the_next_sync(tmp_path, project, damage, aim_init_repo, caplog):
    from aim import Repo

    root = tmp_path / "repo"
    shutil.copytree(aim_init_repo, root)
    aim = root / ".aim"
    DAMAGE[damage](aim)
    logdir = tmp_path / "logs"
    truth = build_kill_logdir(logdir, runs=1, steps=50)
    out = subprocess.run(_cmd(logdir, root, project), env=_env(), capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"aim: repo {aim} was half made" in out.stderr and "repaired" in out.stderr, out.stderr
    assert_exactly_once(_harness(root), truth, project_fn(project))
    assert Repo.check_repo_status(str(root)).name == "UPDATED"  # Aim sees a current repo
    # the next sync with new points opens the repo again: nothing left to repair
    write_simple_run(logdir / "run0", "run0", truth, ["loss", "acc"], [50, 51], seed=4, append=True)
    assert sync_once(logdir, _harness(root), project).exit_code == 0
    assert "half made" not in caplog.text
    assert_exactly_once(_harness(root), truth, project_fn(project))


def test_half_made_repo_holding_runs_keeps_them(tmp_path, project):
    """Missing pieces of a repo that already holds runs are added around them: the runs and
    their points stay, the next sync only adds what is new."""
    root, logdir = tmp_path / "repo", tmp_path / "logs"
    truth = build_kill_logdir(logdir, runs=1, steps=50)
    assert sync_once(logdir, _harness(root), project).exit_code == 0
    aim = root / ".aim"
    (aim / "VERSION").unlink()
    shutil.rmtree(aim / "locks")
    write_simple_run(logdir / "run0", "run0", truth, ["loss", "acc"], list(range(50, 60)), seed=9,
                     append=True)
    out = subprocess.run(_cmd(logdir, root, project), env=_env(), capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and "half made" in out.stderr, out.stderr[-2000:]
    assert_exactly_once(_harness(root), truth, project_fn(project))


def test_run_records_in_a_broken_sqlite_are_not_thrown_away(tmp_path, project):
    """A run-metadata DB that holds run records but lost its schema version is not rebuilt
    (that would drop Aim's names, experiments and tags of every run): the sync says what is
    wrong and what to do, and leaves the file as it is."""
    root, logdir = tmp_path / "repo", tmp_path / "logs"
    build_kill_logdir(logdir, runs=1, steps=20)
    assert sync_once(logdir, _harness(root), project).exit_code == 0
    db_path = root / ".aim" / "run_metadata.sqlite"
    db = sqlite3.connect(db_path)
    db.execute("DROP TABLE alembic_version")
    db.commit()
    db.close()
    before = db_path.read_bytes()
    write_simple_run(logdir / "run0", "run0", SourceTruth(), ["loss"], [20, 21], append=True)
    out = subprocess.run(_cmd(logdir, root, project), env=_env(), capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 1, out.stderr[-2000:]
    assert str(db_path) in out.stderr and "holds run records" in out.stderr, out.stderr[-2000:]
    assert db_path.read_bytes() == before


def test_aim_folder_that_is_a_file_is_named(tmp_path, project):
    root, logdir = tmp_path / "repo", tmp_path / "logs"
    root.mkdir()
    (root / ".aim").write_text("not a folder")
    build_kill_logdir(logdir, runs=1, steps=5)
    out = subprocess.run(_cmd(logdir, root, project), env=_env(), capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 1 and f"{root / '.aim'} is not a folder" in out.stderr, out.stderr[-2000:]
    assert (root / ".aim").read_text() == "not a folder"


def test_a_complete_repo_is_opened_without_the_init_lock(tmp_path, project, aim_init_repo):
    """The usual case costs no lock file and no Aim migration: only a complete repo's checks."""
    root = tmp_path / "repo"
    shutil.copytree(aim_init_repo, root)
    aim = root / ".aim"
    before = sorted(p.name for p in root.iterdir())
    logdir = tmp_path / "logs"
    truth = build_kill_logdir(logdir, runs=1, steps=10)
    assert sync_once(logdir, _harness(root), project).exit_code == 0
    assert sorted(p.name for p in root.iterdir()) == before == [".aim"]
    assert_exactly_once(_harness(root), truth, project_fn(project))
    assert aim.is_dir()


def test_init_lock_never_follows_a_symlink(tmp_path, project):
    """The init lock beside ``.aim`` gets the holder's pid written into it: a symlink planted
    at its name must not redirect that write into another file."""
    root, logdir = tmp_path / "repo", tmp_path / "logs"
    root.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    (root / ".aim.tracelet-init.lock").symlink_to(victim)
    build_kill_logdir(logdir, runs=1, steps=5)
    out = subprocess.run(_cmd(logdir, root, project), env=_env(), capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 1 and ".aim.tracelet-init.lock" in out.stderr, out.stderr[-2000:]
    assert victim.read_text() == "keep me\n"
    assert not (root / ".aim").exists()


def test_a_journal_left_by_a_killed_sqlite_writer_is_no_damage(tmp_path, project, aim_init_repo):
    """A writer of the run metadata DB (Aim, ``aim up``, a sync) killed mid-transaction leaves a
    hot journal: the check must roll it back like any sqlite connection, not call the repo
    broken."""
    root = tmp_path / "repo"
    shutil.copytree(aim_init_repo, root)
    db = root / ".aim" / "run_metadata.sqlite"
    code = ("import os, sqlite3, sys\n"
            "db = sqlite3.connect(sys.argv[1]); db.execute('PRAGMA cache_size=1'); db.execute('BEGIN')\n"
            "for i in range(20000): db.execute('INSERT INTO experiment (name) VALUES (?)', ('e%d' % i,))\n"
            "os._exit(9)\n")
    subprocess.run([sys.executable, "-c", code, str(db)], check=False)
    assert (root / ".aim" / "run_metadata.sqlite-journal").stat().st_size > 0
    logdir = tmp_path / "logs"
    truth = build_kill_logdir(logdir, runs=1, steps=10)
    out = subprocess.run(_cmd(logdir, root, project), env=_env(), capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and "half made" not in out.stderr, out.stderr[-2000:]
    assert_exactly_once(_harness(root), truth, project_fn(project))
    with sqlite3.connect(db) as check:
        # the killed transaction rolled back; the sync's experiment added
        names = {r[0] for r in check.execute("SELECT name FROM experiment")}
        assert project in names and not names & {"e0", "e19999"}, sorted(names)[:5]
