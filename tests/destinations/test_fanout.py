"""One sync fanning out to every destination: each source batch read once, each destination with
its own checkpoint, a failing or missing destination failing only itself."""
from __future__ import annotations

import importlib.util


from tests.destinations.harnesses import HARNESS_CLASSES
from tracelet.engine import SyncOptions, run_sync
from tracelet.testing.conformance import assert_exactly_once, project_fn
from tracelet.testing.harness import canon
from tracelet.testing.sources import build_conformance_logdir

# one embedded-default harness per destination name (MLflow: the local store)
FANOUT = {}
for _cls in HARNESS_CLASSES:
    if _cls.name not in FANOUT and "server" not in _cls.label:
        FANOUT[_cls.name] = _cls


def _setup_all(tmp_path, monkeypatch, sub: str):
    harnesses, config = [], {}
    for name, cls in sorted(FANOUT.items()):
        h = cls()
        folder = tmp_path / sub / name
        folder.mkdir(parents=True)
        h.config = h.setup(folder, monkeypatch)
        config.update(h.config)
        harnesses.append(h)
    return harnesses, config


def test_all_destinations_at_once_equal_each_alone(tmp_path, monkeypatch, project):
    assert set(FANOUT) >= {"mlflow", "wandb", "aim", "clearml"}, sorted(FANOUT)
    # together
    together, config = _setup_all(tmp_path, monkeypatch, "together")
    logdir = tmp_path / "logs"
    truth = build_conformance_logdir(logdir, project)
    report = run_sync([str(logdir)], SyncOptions(destinations=sorted(FANOUT), project=project,
                                                 dest_config=config, progress=False))
    assert report.exit_code == 0, report.to_dict()
    got_together = {h.name: {r: h.read_back(project, r) for r in truth.runs()} for h in together}
    for h in together:
        assert_exactly_once(h, truth, project_fn(project))
    # each alone, into fresh targets, from a fresh state dir
    for name in sorted(FANOUT):
        alone, _ = _setup_all(tmp_path, monkeypatch, f"alone-{name}")
        h = next(x for x in alone if x.name == name)
        r = run_sync([str(logdir)], SyncOptions(destinations=[name], project=project,
                                                dest_config=h.config, progress=False,
                                                state_dir=str(tmp_path / f"state-{name}")))
        assert r.exit_code == 0, r.to_dict()
        for run in truth.runs():
            a, b = got_together[name][run], h.read_back(project, run)
            assert a.scalars.keys() == b.scalars.keys(), (name, run)
            for key in a.scalars:
                def norm(points):
                    return sorted(((s, canon(v)) for s, v in points), key=repr)

                assert norm(a.scalars[key]) == norm(b.scalars[key]), (name, run, key)
            assert (a.params, a.histograms, a.images, a.texts, a.system_points) == \
                (b.params, b.histograms, b.images, b.texts, b.system_points), (name, run)
            assert sorted(a.artifacts) == sorted(b.artifacts), (name, run)


def test_each_batch_is_read_once_whatever_the_number_of_destinations(tmp_path, monkeypatch, project):
    import tracelet.engine as engine

    reads = []
    real = engine.EventFileReader

    class CountingReader(real):
        def batches(self, *a, **kw):
            for b in super().batches(*a, **kw):
                reads.append((b.path, b.start_offset, b.end_offset))
                yield b

    monkeypatch.setattr(engine, "EventFileReader", CountingReader)
    counts = {}
    for n in (1, len(FANOUT)):
        harnesses, config = _setup_all(tmp_path, monkeypatch, f"n{n}")
        logdir = tmp_path / f"logs{n}"
        build_conformance_logdir(logdir, project + str(n))
        reads.clear()
        names = sorted(FANOUT)[:n]
        r = run_sync([str(logdir)], SyncOptions(destinations=names, project=project + str(n),
                                                dest_config=config, progress=False, batch_points=50))
        assert r.exit_code == 0, r.to_dict()
        assert len(reads) == len(set(reads)), "a byte range was read twice"
        counts[n] = len(reads)
    assert counts[1] == counts[len(FANOUT)], counts


def test_missing_sdk_fails_only_that_destination(tmp_path, monkeypatch, project):
    harnesses, config = _setup_all(tmp_path, monkeypatch, "missing")
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *a, **kw):
        if name == "wandb":
            return None  # as if `pip install tracelet[wandb]` had not been run
        return real_find_spec(name, *a, **kw)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    logdir = tmp_path / "logs"
    truth = build_conformance_logdir(logdir, project)
    report = run_sync([str(logdir)], SyncOptions(destinations=sorted(FANOUT), project=project,
                                                 dest_config=config, progress=False))
    assert report.exit_code == 1
    assert "tracelet[wandb]" in report.failed_destinations["wandb"]
    for r in report.runs:
        assert r.destinations["wandb"].state == "failed"
        for name in FANOUT:
            if name != "wandb":
                assert r.destinations[name].state == "synced", (r.run, name)
    for h in harnesses:
        if h.name != "wandb":
            assert_exactly_once(h, truth, project_fn(project))
