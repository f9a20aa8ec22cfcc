"""The destination contract as pytest tests, importable by any destination's own test suite.

Each test syncs a logdir whose every point is known (:mod:`tracelet.testing.sources`) and
reads the destination back with the vendor's own client: each source point must be there
exactly once. A destination package runs the same suite Tracelet runs on its built-ins::

    # tests/test_conformance.py of the package (and pytest.register_assert_rewrite(
    # "tracelet.testing") in its conftest.py, for pytest's detailed assertion messages)
    from tracelet.testing.conformance import *  # noqa: F401,F403  the tests and `project`
    from mypkg_tests import MyHarness           # a tracelet.testing.harness.Harness

    harness = harness_fixture(MyHarness)         # or any fixture named `harness`

``harness`` is the one fixture the suite needs from the importing module: a set-up
:class:`~tracelet.testing.harness.Harness` with ``config`` set (what :func:`harness_fixture`
builds). This module needs pytest (a test dependency, not one of Tracelet's); nothing in
Tracelet imports it.
"""
from __future__ import annotations

import shutil
import uuid
from collections import Counter

import pytest

from ..engine import SyncOptions, run_sync
from .harness import Harness, canon
from .sources import build_conformance_logdir, write_simple_run

__all__ = ["assert_exactly_once", "harness_fixture", "project", "project_fn", "sync_once",
           "test_roundtrip_every_kind", "test_resync_unchanged_sends_nothing",
           "test_incremental_append_lands_once", "test_lost_state_dir_sends_nothing_twice",
           "test_small_batches_and_state_dir_option"]


def harness_fixture(*classes: type[Harness]):
    """A ``harness`` fixture parametrized over ``classes``: each test runs once per harness,
    set up in the test's ``tmp_path`` and torn down after it."""

    @pytest.fixture(name="harness", params=classes, ids=[c.label or c.name for c in classes])
    def harness(request, tmp_path, monkeypatch):
        h = request.param()
        h.config = h.setup(tmp_path, monkeypatch)
        yield h
        h.teardown()

    return harness


@pytest.fixture
def project() -> str:
    """A fresh project name per test: runs of earlier tests on the same destination never
    count as this test's."""
    return f"p{uuid.uuid4().hex[:10]}"


def sync_once(logdir, harness, project, **kw):
    """One in-process sync of ``logdir`` to the harness's destination (``kw``: SyncOptions)."""
    opts = SyncOptions(destinations=[harness.name], project=project,
                       dest_config=dict(harness.config), progress=False, **kw)
    return run_sync([str(logdir)], opts)


def assert_exactly_once(harness, truth, project_of, runs=None):
    """Every scalar of ``truth`` (of ``runs``, default all) is on the destination exactly once,
    under the destination's key for its tag, in exactly one run; no other key is there."""
    for run in runs or truth.runs():
        rb = harness.read_back(project_of(run), run)
        assert rb.runs_found == 1, f"{run}: expected one run on {harness.label}, found {rb.runs_found}"
        expected: dict[str, Counter] = {}
        for (r, tag), pts in truth.scalars.items():
            if r != run:
                continue
            key = harness.metric_key(tag)
            expected.setdefault(key, Counter()).update((s, canon(v)) for s, v, _ in pts)
        got = {k: Counter((s, canon(v)) for s, v in pts) for k, pts in rb.scalars.items()}
        for key, want in expected.items():
            have = got.get(key, Counter())
            missing = want - have
            extra = have - want
            assert not missing and not extra, (
                f"{run} {key}: missing {list(missing.items())[:5]} extra {list(extra.items())[:5]}")
        unexpected = set(got) - set(expected)
        assert not unexpected, f"{run}: unexpected keys {unexpected}"


def project_fn(project):
    """``project_of`` for :func:`assert_exactly_once` when every run is in ``project``."""
    return lambda run: project


def test_roundtrip_every_kind(harness, tmp_path, project):
    logdir = tmp_path / "logs"
    truth = build_conformance_logdir(logdir, project)
    report = sync_once(logdir, harness, project)
    assert report.exit_code == 0, report.to_dict()
    assert_exactly_once(harness, truth, project_fn(project))
    for run in truth.runs():
        rb = harness.read_back(project, run)
        if "histogram" in harness.supports:
            assert rb.histograms == truth.histograms.get(run, 0), run
        if "image" in harness.supports:
            assert rb.images == truth.images.get(run, 0), run
        if "text" in harness.supports:
            assert rb.texts == truth.texts.get(run, 0), run
        if "audio" in harness.supports:
            assert rb.audio == truth.audio.get(run, 0), run
        if "params" in harness.supports:
            for k, v in truth.params.get(run, {}).items():
                assert rb.params.get(harness.metric_key(k), rb.params.get(k)) == v, (run, k, rb.params)
        if "system" in harness.supports:
            assert rb.system_points == truth.system.get(run, 0), run
        if "artifacts" in harness.supports:
            for a in truth.artifacts.get(run, []):
                assert any(p.endswith(a) for p in rb.artifacts), (run, a, rb.artifacts)
        if "status" in harness.supports and run in truth.status:
            assert (rb.status or "").lower() == truth.status[run], (run, rb.status)
    # what a destination lacks is reported as unsupported, never silently dropped
    for r in report.runs:
        d = r.destinations[harness.name]
        assert d.state == "synced", d
        kinds = {"histogram": truth.histograms, "image": truth.images, "text": truth.texts,
                 "audio": truth.audio}
        for kind, per_run in kinds.items():
            n = per_run.get(r.run, 0)
            if n and kind not in harness.supports:
                assert d.unsupported.get(kind) == n


def test_resync_unchanged_sends_nothing(harness, tmp_path, project):
    logdir = tmp_path / "logs"
    truth = build_conformance_logdir(logdir, project)
    sync_once(logdir, harness, project)
    report = sync_once(logdir, harness, project)
    assert report.exit_code == 0
    assert all(d.state == "unchanged" for r in report.runs for d in r.destinations.values())
    assert_exactly_once(harness, truth, project_fn(project))


def test_incremental_append_lands_once(harness, tmp_path, project):
    logdir = tmp_path / "logs"
    truth = build_conformance_logdir(logdir, project)
    sync_once(logdir, harness, project)
    # the training goes on: more events appended to the same file, and a new run appears
    write_simple_run(logdir / "torch" / "resnet", "torch/resnet", truth, ["Loss/train", "Accuracy/val"],
                     list(range(300, 330)), seed=1, append=True)
    write_simple_run(logdir / "late", "late", truth, ["x"], list(range(10)), seed=9)
    report = sync_once(logdir, harness, project)
    assert report.exit_code == 0, report.to_dict()
    assert_exactly_once(harness, truth, project_fn(project))


def test_lost_state_dir_sends_nothing_twice(harness, tmp_path, project):
    logdir = tmp_path / "logs"
    truth = build_conformance_logdir(logdir, project)
    sync_once(logdir, harness, project)
    shutil.rmtree(logdir / ".tracelet")
    report = sync_once(logdir, harness, project)
    assert report.exit_code == 0, report.to_dict()
    assert_exactly_once(harness, truth, project_fn(project))
    if "params" in harness.supports:
        rb = harness.read_back(project, f"{project}/recorded")
        assert rb.params.get("optimizer") == "AdamW"


def test_small_batches_and_state_dir_option(harness, tmp_path, project):
    logdir = tmp_path / "logs"
    truth = build_conformance_logdir(logdir, project)
    state = tmp_path / "state"
    logdir.chmod(0o755)
    report = sync_once(logdir, harness, project, batch_points=7, state_dir=str(state))
    assert report.exit_code == 0
    assert not (logdir / ".tracelet").exists()
    assert any(state.rglob("*.json"))
    assert_exactly_once(harness, truth, project_fn(project))
