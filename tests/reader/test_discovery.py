"""``discover_runs``: which folders are runs, what they are named, which files each reads."""
from __future__ import annotations

import os
import shutil


from tests.reader.helpers import FIXTURES
from tracelet.reader import discover_runs


def _runs(logdir) -> dict[str, list[str]]:
    """run name -> its event files, relative to the run folder, in read order."""
    return {r.name: [p.relative_to(r.path).as_posix() for p in r.event_files]
            for r in discover_runs(logdir).runs}


def _event_file(folder, name="events.out.tfevents.1700000000.h.1.0"):
    folder.mkdir(parents=True, exist_ok=True)
    src = next((FIXTURES / "nested_logdir/projA/run1").glob("*tfevents*"))
    shutil.copy(src, folder / name)


def test_nested_logdir():
    disc = discover_runs(FIXTURES / "nested_logdir")
    assert disc.problems == []
    runs = {r.name: r for r in disc.runs}
    assert list(runs) == ["projA/run1", "projA/run1/eval", "projA/run2", "projB/baseline/seed0",
                          "projB/manifest_only"]
    # .tracelet/, .hidden_run/ and projA/.ipynb_checkpoints/ hold event files, yet are not runs
    assert not [n for n in runs if "." in n.split("/")[0] or "/." in n]
    only = runs["projB/manifest_only"]
    assert only.has_manifest and only.event_files == []
    assert only.manifest_path.is_file()
    assert not runs["projA/run1"].has_manifest
    # projA/run2's add_hparams child is part of projA/run2, read after its own file
    assert [p.parent.name for p in runs["projA/run2"].event_files] == ["run2", "1700000060.0"]


def test_add_hparams_child_belongs_to_parent():
    assert _runs(FIXTURES / "torch_add_hparams") == {"sweep": [
        "events.out.tfevents.1700000000.fixturehost.4242.0",
        "1700000010.0/events.out.tfevents.1700000010.fixturehost.4242.1",
        "1700000020.0/events.out.tfevents.1700000020.fixturehost.4242.2",
    ]}


def test_add_scalars_children_are_runs():
    runs = _runs(FIXTURES / "torch_scalars")
    assert sorted(runs) == ["resnet", "resnet/Loss_compare_train", "resnet/Loss_compare_val"]
    assert runs["resnet"][1] == "1700000100.0/events.out.tfevents.1700000100.fixturehost.4242.3"
    assert sorted(_runs(FIXTURES / "torch_add_scalars")) == [
        "mnist", "mnist/Loss_compare_train", "mnist/Loss_compare_val", "mnist/acc_top1",
        "mnist/acc_top5"]
    # tensorboardX nests one level deeper: <run>/<main_tag>/<key>
    assert sorted(_runs(FIXTURES / "tensorboardx_scalars")) == ["run", "run/pair/a", "run/pair/b"]


def test_restart_files_in_name_order():
    assert _runs(FIXTURES / "restart_overlapping_steps") == {"torch": [
        "events.out.tfevents.1700000000.fixturehost.4242.0",
        "events.out.tfevents.1700003600.fixturehost.4242.0"]}


def test_keras_train_and_validation():
    assert sorted(_runs(FIXTURES / "keras_fit")) == ["train", "validation"]


def test_event_files_directly_in_logdir_are_a_run_named_after_the_folder(tmp_path):
    """`tracelet sync runs/exp1` where exp1 holds event files: the run is `exp1`, not `.`."""
    root = tmp_path / "exp1"
    _event_file(root)
    _event_file(root / "1700000001.5")  # add_hparams child of the root run
    _event_file(root / "child")
    assert _runs(root) == {"exp1": ["events.out.tfevents.1700000000.h.1.0",
                                    "1700000001.5/events.out.tfevents.1700000000.h.1.0"],
                           "child": ["events.out.tfevents.1700000000.h.1.0"]}
    # the name a child already has wins: the root run keeps `.` rather than collide
    _event_file(root / "exp1")
    assert set(_runs(root)) == {".", "child", "exp1"}


def test_numeric_folder_without_parent_run_is_a_run(tmp_path):
    _event_file(tmp_path / "sweeps/1700000001.5")  # sweeps/ holds no event files
    _event_file(tmp_path / "run/1700000002.5")
    (tmp_path / "run/1700000002.5/tracelet.json").write_text("{}")  # a manifest: its own run
    _event_file(tmp_path / "run")
    assert sorted(_runs(tmp_path)) == ["run", "run/1700000002.5", "sweeps/1700000001.5"]


def test_state_and_hidden_folders_skipped(tmp_path):
    _event_file(tmp_path / "run")
    _event_file(tmp_path / ".tracelet/run")
    _event_file(tmp_path / "run/.hidden")
    (tmp_path / "run/.events.out.tfevents.1.h").write_bytes(b"")  # hidden file: not an event file
    assert _runs(tmp_path) == {"run": ["events.out.tfevents.1700000000.h.1.0"]}


def test_artifacts_and_sysmetrics_of_a_tracelet_run_are_not_runs(tmp_path):
    run = tmp_path / "proj/run"
    _event_file(run)
    (run / "tracelet.json").write_text("{}")
    _event_file(run / "artifacts/copied_logs")  # the user logged an event file as an artifact
    _event_file(run / "sysmetrics")
    _event_file(tmp_path / "plain/artifacts")  # no manifest: a plain TensorBoard folder name
    assert sorted(_runs(tmp_path)) == ["plain/artifacts", "proj/run"]


def test_symlink_loop_is_cut_and_reported(tmp_path):
    _event_file(tmp_path / "a/run")
    os.symlink("..", tmp_path / "a/run/up")  # a/run/up -> a
    os.symlink(tmp_path, tmp_path / "a/root")  # a/root -> logdir
    disc = discover_runs(tmp_path)
    assert [r.name for r in disc.runs] == ["a/run"]
    assert len(disc.problems) == 2
    assert all("symlink loop" in p for p in disc.problems)
    assert any(str(tmp_path / "a/run/up") in p for p in disc.problems)


def test_symlinked_run_is_named_by_its_real_path(tmp_path):
    """A `latest -> run_3` link sorts before run_3, yet run_3 keeps its own name; the link is
    reported, not read a second time."""
    _event_file(tmp_path / "run_3")
    os.symlink("run_3", tmp_path / "latest")
    disc = discover_runs(tmp_path)
    assert [r.name for r in disc.runs] == ["run_3"]
    assert len(disc.problems) == 1 and str(tmp_path / "latest") in disc.problems[0]


def test_symlink_to_a_folder_outside_is_followed(tmp_path):
    outside = tmp_path / "scratch/big_run"
    _event_file(outside)
    logdir = tmp_path / "logdir"
    logdir.mkdir()
    os.symlink(outside, logdir / "big_run")
    disc = discover_runs(logdir)
    assert [r.name for r in disc.runs] == ["big_run"] and disc.problems == []
    assert disc.runs[0].event_files[0].is_file()


def test_unreadable_folder_reported_not_fatal(tmp_path, monkeypatch):
    """A folder we may not list is reported by path, the rest is found. Tests run as root, where
    chmod 000 does not stop reads, so the refusal is simulated at os.scandir (what os.walk
    calls); the real chmod case is the next test."""
    _event_file(tmp_path / "ok")
    _event_file(tmp_path / "locked/run")
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path) == str(tmp_path / "locked"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    disc = discover_runs(tmp_path)
    assert [r.name for r in disc.runs] == ["ok"]
    assert len(disc.problems) == 1
    assert str(tmp_path / "locked") in disc.problems[0] and "Permission denied" in disc.problems[0]


def _discover_as_nobody(root) -> tuple[list[str], list[str]]:
    """discover_runs in a forked child that dropped root (root reads through chmod 000)."""
    import json

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: already has tracelet imported; only needs to read `root`
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            disc = discover_runs(root)
            os.write(w, json.dumps([[x.name for x in disc.runs], disc.problems]).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        out = f.read()
    os.waitpid(pid, 0)
    runs, problems = json.loads(out)
    return runs, problems


def test_unreadable_folder_real_chmod(tmp_path):
    import tempfile

    as_root = os.geteuid() == 0
    # as root, a world-traversable folder that an unprivileged child can walk
    base = tmp_path if not as_root else __import__("pathlib").Path(tempfile.mkdtemp(prefix="tl-chmod-"))
    try:
        base.chmod(0o755)
        _event_file(base / "ok")
        _event_file(base / "locked/run")
        for p in (base / "ok", *(base / "ok").iterdir()):
            p.chmod(0o755)
        os.chmod(base / "locked", 0)
        try:
            if as_root:
                runs, problems = _discover_as_nobody(base)
            else:
                disc = discover_runs(base)
                runs, problems = [x.name for x in disc.runs], disc.problems
        finally:
            os.chmod(base / "locked", 0o755)
        assert runs == ["ok"]
        assert len(problems) == 1 and str(base / "locked") in problems[0], problems
        assert "Permission denied" in problems[0]
    finally:
        if as_root:
            shutil.rmtree(base, ignore_errors=True)


def test_missing_logdir_is_a_problem_not_a_crash(tmp_path):
    disc = discover_runs(tmp_path / "nope")
    assert disc.runs == [] and len(disc.problems) == 1
    assert str(tmp_path / "nope") in disc.problems[0]


def test_run_names_use_forward_slashes_and_sort(tmp_path):
    for rel in ("b/x", "a/y/z", "a/y"):
        _event_file(tmp_path / rel)
    assert [r.name for r in discover_runs(tmp_path).runs] == ["a/y", "a/y/z", "b/x"]


def test_fifo_socket_and_links_to_them_named_like_event_files_are_skipped(tmp_path, monkeypatch):
    """Opening a FIFO to read it waits forever for a writer: discovery never lists one (nor a
    socket, nor a symlink to either) as an event file, and names each in its problems."""
    import socket

    _event_file(tmp_path / "mixed")  # a real event file beside the odd ones
    fifo = tmp_path / "mixed/events.out.tfevents.1700000001.h.2.0"
    os.mkfifo(fifo)
    os.mkfifo(tmp_path / "mixed/not_an_event_file.fifo")  # not named like one: not our business
    (tmp_path / "only_fifo").mkdir()
    os.mkfifo(tmp_path / "only_fifo/events.out.tfevents.1.x")
    (tmp_path / "linked").mkdir()
    link = tmp_path / "linked/events.out.tfevents.2.x"
    link.symlink_to(fifo)
    sock_path = tmp_path / "mixed/events.out.tfevents.3.sock"
    sock = socket.socket(socket.AF_UNIX)
    monkeypatch.chdir(sock_path.parent)  # bind by a short relative name: AF_UNIX paths are short
    try:
        sock.bind(sock_path.name)
        disc = discover_runs(tmp_path)
    finally:
        sock.close()
    assert _runs(tmp_path) == {"mixed": ["events.out.tfevents.1700000000.h.1.0"]}
    assert sorted(disc.problems) == sorted([
        f"{fifo}: named like an event file but is a FIFO (named pipe); skipped (never opened). "
        "Remove it or give it another name.",
        f"{tmp_path / 'only_fifo/events.out.tfevents.1.x'}: named like an event file but is a "
        "FIFO (named pipe); skipped (never opened). Remove it or give it another name.",
        f"{link}: named like an event file but is a FIFO (named pipe) (through a symlink); "
        "skipped (never opened). Remove it or give it another name.",
        f"{sock_path}: named like an event file but is a socket; skipped (never opened). "
        "Remove it or give it another name.",
    ])


def test_dangling_link_named_like_an_event_file_stays_listed(tmp_path):
    """Whether it is a file cannot be told: reading it reports the error (as before)."""
    (tmp_path / "r").mkdir()
    (tmp_path / "r/events.out.tfevents.1.x").symlink_to(tmp_path / "gone")
    disc = discover_runs(tmp_path)
    assert _runs(tmp_path) == {"r": ["events.out.tfevents.1.x"]} and disc.problems == []


def test_many_folders_reached_twice_are_named_up_to_a_bound_then_counted(tmp_path):
    """A link into a tree full of aliases (a folder linked to /usr: hundreds) names the first
    few and counts the rest in one line, instead of a screen of warnings at every sync."""
    from tracelet.reader.logdir import REPEATS_NAMED

    _event_file(tmp_path / "run")
    tree = tmp_path / "tree"
    for k in range(REPEATS_NAMED + 7):
        (tree / f"d{k:02d}").mkdir(parents=True)
        os.symlink(tree / f"d{k:02d}", tree / f"d{k:02d}-alias")
    disc = discover_runs(tmp_path)
    assert [r.name for r in disc.runs] == ["run"]
    named = [p for p in disc.problems if "same folder as" in p]
    assert len(named) == REPEATS_NAMED
    assert [p for p in disc.problems if p.startswith("7 more folders reached a second time")]
    assert len(disc.problems) == REPEATS_NAMED + 1


def test_a_big_symlinked_tree_holding_no_run_is_reported(tmp_path):
    from tracelet.reader.logdir import BIG_EMPTY_TREE

    outside = tmp_path / "outside"
    for k in range(BIG_EMPTY_TREE):
        (outside / f"{k // 40}" / f"{k % 40}").mkdir(parents=True, exist_ok=True)
    logdir = tmp_path / "logs"
    _event_file(logdir / "run")
    os.symlink(outside, logdir / "system")
    (tmp_path / "few" / "a" / "b").mkdir(parents=True)
    os.symlink(tmp_path / "few", logdir / "few")  # 3 folders and no run: not worth a line
    disc = discover_runs(logdir)
    assert [r.name for r in disc.runs] == ["run"]
    [line] = [p for p in disc.problems if "holding no run" in p]
    assert line.startswith(f"{logdir / 'system'}: a symlinked folder (to {outside})")
    assert "Remove the link" in line
    _event_file(outside / "7" / "3")  # the same tree holding a run: followed, no warning
    disc = discover_runs(logdir)
    assert [r.name for r in disc.runs] == ["run", "system/7/3"]
    assert not [p for p in disc.problems if "holding no run" in p]
