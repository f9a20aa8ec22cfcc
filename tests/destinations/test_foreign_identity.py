"""A checkpoint whose destination identity names another run's destination run (copied from
that run's checkpoint, as a crafted or mixed-up state dir would), on every destination: that
run receives nothing, this run's points land once in its own run, and the sync says which
checkpoint it set aside. Each destination's ``open_run`` checks that the run an identity names
belongs to this tracelet run (MLflow's tag, W&B's derived id, Aim's hash, ClearML's sessions)."""
from __future__ import annotations

import json

from tracelet.testing.conformance import assert_exactly_once, project_fn, sync_once
from tracelet.testing.sources import build_kill_logdir, write_simple_run


def test_identity_of_another_run_is_never_used(harness, tmp_path, project):
    logdir = tmp_path / "logs"
    truth = build_kill_logdir(logdir, runs=2, steps=30)
    assert sync_once(logdir, harness, project).exit_code == 0
    folder = logdir / ".tracelet" / "checkpoints"
    (a,) = folder.glob(f"{harness.name}-*/run0.json")
    (b,) = folder.glob(f"{harness.name}-*/run1.json")
    ck_a, ck_b = json.loads(a.read_text()), json.loads(b.read_text())
    ck_a["identity"] = ck_b["identity"]  # run1's destination run, counters and all
    a.write_text(json.dumps(ck_a))
    write_simple_run(logdir / "run0", "run0", truth, ["loss", "acc"], list(range(30, 40)), seed=4,
                     append=True)

    report = sync_once(logdir, harness, project)
    assert_exactly_once(harness, truth, project_fn(project))  # run1: nothing more; run0: all, once
    assert report.exit_code == 0, report.to_dict()
    problems = [p for r in report.runs if r.run == "run0" for p in r.problems]
    assert any(str(a) in p and "moved aside" in p for p in problems), problems
    report = sync_once(logdir, harness, project)
    assert report.exit_code == 0 and all(not r.problems for r in report.runs), report.to_dict()
