"""Points MLflow would merge (issue #11 item 8): MLflow's SQL stores keep one metric row per
(run, key, timestamp ms, step, value), so two points of a tag at one step with one value less
than 1 ms apart (the Hugging Face Trainer's ``epoch``) would become one while Tracelet counts
two. The MLflow destination gives the later one the next free ms (``stamps.py``), the same at
every re-send however the file is cut into batches; shown here against the real stores (local
sqlite and an ``mlflow server``), through dedupe after a lost state dir, and on the pure
function for every cut of a sequence."""
from __future__ import annotations

import json
import math
import shutil

import pytest
from tensorboard.compat.proto import summary_pb2

from tests.destinations.test_mlflow_drift import Store
from tracelet.destinations.mlflow.stamps import stamp
from tracelet.engine import SyncOptions, run_sync
from tracelet.testing.events import T0, event_record, header_record

MS = int(T0 * 1000)


@pytest.fixture(params=["sqlite", pytest.param("server", marks=[pytest.mark.server,
                                                                 pytest.mark.slow])])
def store(request, tmp_path):
    s = Store(request.param, tmp_path)
    yield s
    s.close()


def _write(path, points, header=False):
    chunks = [header_record()] if header else []
    chunks += [event_record(step, wall, [summary_pb2.Summary.Value(tag=tag, simple_value=v)])
               for tag, step, wall, v in points]
    with open(path, "ab") as f:
        f.write(b"".join(chunks))


def _sync(store, logdir, batch_points):
    report = run_sync([str(logdir)], SyncOptions(destinations=["mlflow"], project="stamps",
                                                 dest_config={"mlflow_uri": store.uri},
                                                 batch_points=batch_points, progress=False))
    assert report.exit_code == 0, report.to_dict()
    return report.runs[0].destinations["mlflow"]


def _history(store, key):
    c = store.client()
    (r,) = c.search_runs([c.get_experiment_by_name("stamps").experiment_id])
    return sorted((m.step, m.value, m.timestamp) for m in c.get_metric_history(r.info.run_id, key))


def test_the_store_itself_merges_identical_rows(store):
    """What the stamps are for: the same (key, ms, step, value) logged twice is one row."""
    from mlflow.entities import Metric

    c = store.client()
    rid = c.create_run(c.create_experiment("merge")).info.run_id
    for _ in range(2):
        c.log_batch(rid, metrics=[Metric("epoch", 1.0, MS, 3)], synchronous=True)
    c.log_batch(rid, metrics=[Metric("epoch", 1.0, MS, 3), Metric("epoch", 1.0, MS, 3)],
                synchronous=True)
    assert len(c.get_metric_history(rid, "epoch")) == 1


def test_points_under_one_ms_apart_all_land_once_across_batches_syncs_and_dedupe(store, tmp_path):
    run = tmp_path / "logs" / "trainer"
    run.mkdir(parents=True)
    f = run / "events.out.tfevents.1700000000.host.1.0"
    # the Trainer's last log and its end-of-training log: same step, same value, 0.3 ms apart
    _write(f, [("epoch", 3, T0 + 0.0001, 1.0), ("loss", 3, T0 + 0.0002, 0.5)], header=True)
    d = _sync(store, run.parent, batch_points=1)
    _write(f, [("epoch", 3, T0 + 0.0004, 1.0),  # the pair's second point: a batch, a sync later
               ("epoch", 3, T0 + 0.0011, 1.0),  # a real point in the next ms (taken by then)
               ("epoch", 3, T0 + 0.0012, 2.0)])  # same step and ms, another value: no clash
    d = _sync(store, run.parent, batch_points=1)
    assert d.points_sent == {"scalar": 3}
    want = [(3, 1.0, MS), (3, 1.0, MS + 1), (3, 1.0, MS + 2), (3, 2.0, MS + 1)]
    assert _history(store, "epoch") == sorted(want)
    assert _history(store, "loss") == [(3, 0.5, MS)]

    # a lost state dir: everything re-sent with dedupe, cut differently: still each once
    for batch_points in (2, 20_000):
        shutil.rmtree(run.parent / ".tracelet")
        _sync(store, run.parent, batch_points=batch_points)
        assert _history(store, "epoch") == sorted(want)
        assert _history(store, "loss") == [(3, 0.5, MS)]


# -- the pure function ----------------------------------------------------------------------------
POINTS = [  # key, step, ms, value
    ("epoch", 3, 1000, 1.0), ("loss", 3, 1000, 0.5), ("epoch", 3, 1000, 1.0),
    ("epoch", 3, 1000, 1.0), ("epoch", 3, 1001, 1.0), ("epoch", 3, 1001, 7.0),
    ("nan", 1, 1001, math.nan), ("nan", 1, 1001, math.nan), ("epoch", 3, 1005, 1.0),
    ("zero", 0, 0, 1.0), ("zero", 0, 0, 1.0), ("epoch", 4, 1006, 1.0), ("epoch", 4, 1006, 1.0),
]


def _cols(points):
    keys, steps, ms, values = (list(c) for c in zip(*points)) if points else ([], [], [], [])
    return keys, steps, ms, values


def test_stamps_keep_every_point_apart():
    times, _ = stamp(None, 0, 100, *_cols(POINTS))
    sigs = [(k, s, "nan" if v != v else v, t) for (k, s, _, v), t in zip(POINTS, times)]
    assert len(set(sigs)) == len(sigs)  # no two rows MLflow would merge
    assert times[:5] == [1000, 1000, 1001, 1002, 1003]  # the group, then the real 1001 point
    assert times[9:11] == [0, 1]  # a broken clock's points (ms 0) too
    # a point nothing clashes with keeps its wall time
    assert [t for (_, _, m, _), t in zip(POINTS, times) if t != m] == [1001, 1002, 1003, 1002, 1, 1007]


@pytest.mark.parametrize("through_json", [False, True])
def test_stamps_are_the_same_for_every_cut_of_the_file(through_json):
    whole, _ = stamp(None, 0, 100, *_cols(POINTS))
    for cut in range(len(POINTS) + 1):
        for cut2 in range(cut, len(POINTS) + 1):
            a, st = stamp(None, 0, 10 + cut, *_cols(POINTS[:cut]))
            if through_json:  # the state lives in the checkpoint
                st = json.loads(json.dumps(st, allow_nan=False))
            b, st = stamp(st, 10 + cut, 10 + cut2, *_cols(POINTS[cut:cut2]))
            c, _ = stamp(st, 10 + cut2, 100, *_cols(POINTS[cut2:]))
            assert a + b + c == whole, (cut, cut2)


def test_a_quarantined_gap_keeps_the_state_and_a_foreign_state_never_shifts_more():
    pts = [("e", 1, 1000, 1.0), ("e", 1, 1000, 1.0)]
    _, st = stamp(None, 0, 10, *_cols(pts[:1]))
    # records between 10 and 40 were refused (quarantined): they never landed, the state holds
    assert stamp(st, 40, 50, *_cols(pts[1:]))[0] == [1001]
    # a state for another place of the file, a first batch, or a damaged state: plain wall ms
    # (at worst MLflow merges the pair, as before; never a shifted point that a re-send misses)
    for bad, start in ((st, 5), (st, 0), ([10, 1000, [["e", 1, 1.0, "x"]]], 10), ("junk", 10),
                       ([True, 1000, []], 10), ([10, 1000, [["e", 1, math.inf, 1000]]], 10)):
        assert stamp(bad, start, 50, *_cols(pts[1:]))[0] == [1000], bad


def test_the_state_is_the_newest_ms_only():
    pts = [(f"t{i % 3}", i // 3, 1000 + i // 3, float(i)) for i in range(30_000)]
    _, st = stamp(None, 0, 10, *_cols(pts))
    assert st[1] == 1000 + 9_999 and len(st[2]) == 3
