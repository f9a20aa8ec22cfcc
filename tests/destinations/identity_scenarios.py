"""The plain-run source-identity scenarios every destination's ``test_*_identity.py`` runs
(README "Run names and identity"): the syncs and what the sync reports are the same for all
of them; each test file then reads its destination back with the vendor's own client.
"""
from __future__ import annotations

from pathlib import Path

from tracelet.testing.conformance import assert_exactly_once, project_fn
from tracelet.testing.sources import SourceTruth, write_simple_run

TAGS = ["loss", "acc"]
SAME = "is the same source as"


def same_source_lines(problems: list[str]) -> list[str]:
    return [p for p in problems if SAME in p]


def sync_same_head_apart(tmp_path: Path, dest: str, harness) -> SourceTruth:
    """Two folders whose first event file is byte-for-byte the same start (a copied template)
    but whose names (``a/r1``, ``b/r1x``) are not two levels of one path: two runs in project
    ``same``, no same-source line. The caller reads the two runs back."""
    import tracelet

    truth = SourceTruth()
    write_simple_run(tmp_path / "a" / "r1", "r1", truth, TAGS, [0, 1, 2], seed=1)
    tracelet.sync(tmp_path / "a", to=dest, dest_config=harness.config, project="same")
    write_simple_run(tmp_path / "b" / "r1x", "r1x", truth, TAGS, [0, 1], seed=2)
    report = tracelet.sync(tmp_path / "b", to=dest, dest_config=harness.config, project="same")
    assert report.exit_code == 0 and not same_source_lines(report.runs[0].problems)
    return truth


def sync_project_given(tmp_path: Path, dest: str, harness, *, projects: tuple[str, str],
                       container: str, own_state_dir: bool = False) -> None:
    """With ``--project`` the level changes the run path only: ``sub`` then ``sub/exp`` in
    project ``projects[0]`` is one run, found by source id (one line naming the ``container``
    — "experiment" or "project" — it is in), each point once; ``sub/exp`` in ``projects[1]`` is
    a run of its own. ``own_state_dir``: the second sync with a state dir of its own too. The
    caller reads back that the destination holds ``(P, exp/r1)`` and ``(Q, r1)``."""
    import tracelet

    p, q = projects
    sub = tmp_path / "sub"
    truth = SourceTruth()
    write_simple_run(sub / "exp" / "r1", "exp/r1", truth, TAGS, [0, 1, 2], seed=1)
    tracelet.sync(sub, to=dest, dest_config=harness.config, project=p)
    write_simple_run(sub / "exp" / "r1", "exp/r1", truth, TAGS, [3, 4], seed=1, append=True)
    state = {"state_dir": str(tmp_path / "state-p")} if own_state_dir else {}
    same = tracelet.sync(sub / "exp", to=dest, dest_config=harness.config, project=p, **state)
    [line] = same_source_lines(same.runs[0].problems)
    assert f"run 'r1' (project '{p}') is the same source as 'exp/r1' in {container} '{p}'" in line
    assert_exactly_once(harness, truth, project_fn(p))
    other = tracelet.sync(sub / "exp", to=dest, dest_config=harness.config, project=q,
                          state_dir=str(tmp_path / "state-q"))
    assert other.exit_code == 0 and not same_source_lines(other.runs[0].problems)
