"""A plain run's identity does not depend on the LOGDIR level it is synced from (README
"Destinations and mapping"), W&B offline, read back from the ``.wandb`` files W&B wrote.

The same TensorBoard files synced as ``tracelet sync sub`` (run ``exp/r1``, project ``sub``),
then ``sub/exp`` (``r1``, project ``exp``), then ``sub/exp/r1`` (``r1``, project ``r1``) — each
with its own state dir, so no checkpoint links them — land in ONE W&B run (one run id, one
project, its first name and config ``tracelet`` in every fragment), each point exactly once as
``wandb sync`` would upload it; each level reached under another name says so in one warning
line. A sibling whose files start with the very same bytes stays its own run; a project given
is where the run is looked for.
"""
from __future__ import annotations

import os
import subprocess
import sys

from tests.destinations.harness_wandb import WandbOfflineHarness, upload
from tests.destinations.identity_scenarios import (TAGS, same_source_lines,
                                                 sync_project_given, sync_same_head_apart)
from tracelet.testing.conformance import assert_exactly_once, project_fn
from tracelet.testing.sources import SourceTruth, write_simple_run

LINE = ("tracelet: {run}: wandb: run '{run}' (project 'exp') is the same source as "
        "'exp/{run}' in project 'sub' (same first event file): continued in that run, nothing "
        "sent twice; a plain run's name is its path under the LOGDIR given, so sync the same "
        "LOGDIR to keep one name")


def _harness(tmp_path, monkeypatch) -> WandbOfflineHarness:
    h = WandbOfflineHarness()
    h.config = h.setup(tmp_path, monkeypatch)
    return h



def _runs(h) -> dict[tuple[str, str], list]:
    """(project, W&B run id) -> its fragments."""
    out: dict[tuple[str, str], list] = {}
    for f in h.fragments():
        out.setdefault((f.project, f.run_id), []).append(f)
    return out


def test_three_levels_of_one_run_are_one_wandb_run_with_each_point_once(tmp_path, monkeypatch):
    import tracelet

    h = _harness(tmp_path, monkeypatch)
    sub = tmp_path / "sub"
    r1, r2 = sub / "exp" / "r1", sub / "exp" / "r2"
    truth = SourceTruth()  # named as first synced: from `sub`
    write_simple_run(r1, "exp/r1", truth, TAGS, list(range(0, 30)), seed=1)
    write_simple_run(r2, "exp/r2", truth, TAGS, list(range(0, 20)), seed=2)

    first = tracelet.sync(sub, to="wandb", dest_config=h.config, state_dir=str(tmp_path / "s1"))
    assert first.exit_code == 0, first.to_dict()
    assert not any(same_source_lines(r.problems) for r in first.runs)
    assert_exactly_once(h, truth, project_fn("sub"))
    ids = {f.config["tracelet"]["run_path"]: f.run_id for f in h.fragments()}
    assert sorted(ids) == ["exp/r1", "exp/r2"]

    # the files grow (the identity is their first record: unchanged), then the sync is pointed
    # one level lower, through the command line as cron runs it
    write_simple_run(r1, "exp/r1", truth, TAGS, list(range(30, 45)), seed=1, append=True)
    env = {**os.environ, **h.env(), "PYTHONPATH": os.pathsep.join(sys.path)}
    p = subprocess.run([sys.executable, "-m", "tracelet.cli", "sync", str(sub / "exp"),
                        "--to", "wandb", "--wandb-mode", "offline",
                        "--state-dir", str(tmp_path / "s2")],
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    # (cron lines start with an ISO timestamp: compared from "tracelet: " on)
    warned = [ln[ln.index("tracelet: "):] for ln in p.stderr.splitlines()
              if "is the same source as" in ln]
    assert sorted(warned) == [LINE.format(run="r1"), LINE.format(run="r2")], p.stderr

    write_simple_run(r1, "exp/r1", truth, TAGS, list(range(45, 50)), seed=1, append=True)
    third = tracelet.sync(r1, to="wandb", dest_config=h.config, state_dir=str(tmp_path / "s3"))
    assert third.exit_code == 0, third.to_dict()
    [run] = third.runs
    assert run.run == "r1" and run.destinations["wandb"].state == "synced"
    [line] = same_source_lines(run.problems)
    assert "run 'r1' (project 'r1')" in line and "as 'exp/r1' in project 'sub'" in line

    # ONE W&B run per source, in the project of the first sync, which keeps the name and the
    # config `tracelet` it was created with in every fragment (what `wandb sync` uploads)
    runs = _runs(h)
    assert sorted(runs) == sorted(("sub", wid) for wid in ids.values()), sorted(runs)
    for (_, wid), frags in runs.items():
        [path] = [k for k, v in ids.items() if v == wid]
        assert {f.display_name for f in frags} == {path}
        assert all(f.config["tracelet"]["run_path"] == path for f in frags)
        assert len({f.config["tracelet"]["source_id"] for f in frags}) == 1
        steps = [s for f in sorted(frags, key=lambda f: f.start) for s, _ in f.rows]
        assert steps == sorted(set(steps))  # nothing written at or below an earlier _step
        assert upload(frags, "drop")["rows"] == upload(frags, "renumber")["rows"]
    assert len([f for f in runs[("sub", ids["exp/r1"])] if f.rows]) == 3  # + 3 of its summary
    assert_exactly_once(h, truth, project_fn("sub"))

    # the next sync from that level continues from its checkpoint (the adopted run is its
    # own): no warning, no rebuild, only the new points
    write_simple_run(r1, "exp/r1", truth, TAGS, list(range(50, 60)), seed=1, append=True)
    again = tracelet.sync(r1, to="wandb", dest_config=h.config, state_dir=str(tmp_path / "s3"))
    assert again.exit_code == 0 and not again.runs[0].problems, again.to_dict()
    assert again.runs[0].destinations["wandb"].points == 2 * 10
    assert sorted(_runs(h)) == sorted(runs)
    assert_exactly_once(h, truth, project_fn("sub"))

    # `status --check` of that level: the adopted run is the checkpoint's, not drift
    st = subprocess.run([sys.executable, "-m", "tracelet.cli", "status", str(r1), "--to", "wandb",
                         "--wandb-mode", "offline", "--state-dir", str(tmp_path / "s3"),
                         "--check"], env=env, capture_output=True, text=True, timeout=300)
    assert st.returncode == 0, st.stdout + st.stderr
    assert "missing" not in st.stdout + st.stderr, st.stdout + st.stderr


def test_runs_with_the_same_head_under_unrelated_names_stay_apart(tmp_path, monkeypatch):
    """Two folders whose first event file is byte-for-byte the same start (a copied template)
    but whose names are not two levels of one path are two runs, as before."""
    h = _harness(tmp_path, monkeypatch)
    truth = sync_same_head_apart(tmp_path, "wandb", h)
    runs = _runs(h)
    assert len(runs) == 2
    assert sorted(f[0].config["tracelet"]["run_path"] for f in runs.values()) == ["r1", "r1x"]
    assert_exactly_once(h, truth, project_fn("same"))


def test_a_project_given_is_where_the_run_is_looked_for(tmp_path, monkeypatch):
    """With --project the level changes the run path only: the run is found by source id in
    that project; in another project given it is a run of its own."""
    h = _harness(tmp_path, monkeypatch)
    sync_project_given(tmp_path, "wandb", h, projects=("P", "Q"), container="project",
                       own_state_dir=True)
    assert sorted((p, frags[0].config["tracelet"]["run_path"])
                  for (p, _), frags in _runs(h).items()) == [("P", "exp/r1"), ("Q", "r1")]


def _fragment(path, records: list[bytes]) -> None:
    """A ``.wandb`` file in W&B's framing (file header, one FULL chunk per record)."""
    import struct
    import zlib

    out = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
    for data in records:
        out += struct.pack("<IHB", zlib.crc32(bytes([1]) + data) & 0xFFFFFFFF, len(data), 1) + data
    path.parent.mkdir(parents=True)
    path.write_bytes(out)


def test_unreadable_or_foreign_fragments_under_wandb_dir_do_not_stop_the_lookup(
        tmp_path, monkeypatch, caplog):
    """Anyone's files under WANDB_DIR: a Run record that does not parse is named and left out;
    a run whose config claims this source id under an unrelated run path, or whose config
    ``tracelet`` is not an object, is not taken; the real run is still found."""
    import json
    import logging

    import tracelet
    from wandb.proto import wandb_internal_pb2 as pb

    h = _harness(tmp_path, monkeypatch)
    sub = tmp_path / "sub"
    truth = SourceTruth()
    write_simple_run(sub / "exp" / "r1", "exp/r1", truth, TAGS, [0, 1, 2], seed=1)
    tracelet.sync(sub, to="wandb", dest_config=h.config)
    [real] = [f for f in h.fragments() if f.rows]  # the other one holds the summary
    sid = real.config["tracelet"]["source_id"]
    wandb_dir = h.root / "wandb"
    bad = wandb_dir / "offline-run-20000101_000000-bad" / "run-bad.wandb"
    _fragment(bad, [b"\x8a\x01\x7fabc"])  # a Run record (field 17) cut short: DecodeError
    planted = []
    for i, cfg in enumerate([{"run_id": "x", "run_path": "other/r1x", "source_id": sid},
                             ["not", "an", "object"], "text"]):
        rec = pb.Record()
        rec.run.run_id, rec.run.project, rec.run.display_name = f"foreign{i}", "sub", "foreign"
        rec.run.start_time.seconds = 1  # older than the real run: looked at first
        rec.run.config.update.add(key="tracelet", value_json=json.dumps(cfg))
        path = wandb_dir / f"offline-run-20000101_00000{i}-foreign{i}" / f"run-foreign{i}.wandb"
        _fragment(path, [rec.SerializeToString()])
        planted.append(path)

    write_simple_run(sub / "exp" / "r1", "exp/r1", truth, TAGS, [3, 4], seed=1, append=True)
    with caplog.at_level(logging.WARNING, logger="tracelet.wandb"):
        report = tracelet.sync(sub / "exp", to="wandb", dest_config=h.config,
                               state_dir=str(tmp_path / "s2"))
    assert report.exit_code == 0, report.to_dict()
    [line] = same_source_lines(report.runs[0].problems)
    assert "as 'exp/r1' in project 'sub'" in line
    assert any(str(bad) in r.getMessage() and "cannot be read" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
    for path in [bad, *planted]:  # not W&B runs of ours: nothing was written to them
        path.unlink()
    assert {f.run_id for f in h.fragments()} == {real.run_id}
    assert_exactly_once(h, truth, project_fn("sub"))
