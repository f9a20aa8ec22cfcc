"""``tracelet.destinations.aim.mapping``: the pure half of the Aim destination, tested without
Aim (nor pyarrow) being imported."""
from __future__ import annotations

import math
import os
import random
import subprocess
import sys

import pytest

from tracelet.destinations.aim import mapping
from tracelet.destinations.aim.mapping import (MAX_HISTOGRAM_BINS, aim_end_time, aim_key,
                                               aim_run_hash, aim_system_metric, creation_time,
                                               distribution_bins, landed_source_key,
                                               media_groups, nest_params, repeat_context,
                                               system_part_key, system_samples, tracelet_record)
from tracelet.destinations.base import SystemRows
from tracelet.destinations.keys import tag_hash
from tracelet.reader.points import AudioPoint, HistogramPoint, ImagePoint

T0 = 1_700_000_000.0


def test_mapping_imports_neither_aim_nor_pyarrow():
    code = ("import sys, tracelet.destinations.aim.mapping as m\n"
            "m.distribution_bins; m.aim_system_metric('gpu/0/power_watts')\n"
            "print(sorted(k for k in sys.modules if k.split('.')[0] in "
            "('aim', 'aimrocks', 'pyarrow', 'filelock', 'websockets')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def test_run_hash_is_stable_and_shaped_like_aims():
    # values of the code before the split: a changed hash would create second runs in Aim
    assert aim_run_hash("vision", "rid-1") == "025bd322c9be97c54f539ac8"
    assert aim_run_hash("", "") == "c8348858fcaecd8d9be80ae8"
    h = aim_run_hash("p", "x")
    assert len(h) == 24 and int(h, 16) >= 0
    assert len({aim_run_hash(p, r) for p in ("a", "b") for r in ("1", "2")}) == 4


@pytest.mark.parametrize("tag", ["loss", "Loss/Train/x", " ", "ü/∆", "_", "a" * 2000])
def test_tags_are_kept_unchanged(tag):
    assert aim_key(tag) == tag


def test_empty_tag_gets_a_hashed_name_distinct_from_underscore():
    assert aim_key("") == "_-" + tag_hash("") and aim_key("") != aim_key("_")


@pytest.mark.parametrize("name, want", [
    ("process/cpu_percent", ("__system__cpu", {})),
    ("memory/utilization_percent", ("__system__memory_percent", {})),
    ("gpu/0/utilization_percent", ("__system__gpu", {"gpu": 0})),
    ("gpu/7/temperature_c", ("__system__gpu_temp", {"gpu": 7})),
    ("gpu/12/power_watts", ("__system__gpu_power_watts", {"gpu": 12})),
    ("gpu/0/memory_used_bytes", ("system/gpu/0/memory_used_bytes", {})),  # no Aim equivalent
    ("gpu/x/power_watts", ("system/gpu/x/power_watts", {})),  # not an index
    ("gpu//power_watts", ("system/gpu//power_watts", {})),
    ("gpu/0/power_watts/extra", ("system/gpu/0/power_watts/extra", {})),
    ("process/cpu_percent/", ("system/process/cpu_percent/", {})),
    ("", ("system/", {})),
])
def test_system_metric_names(name, want):
    assert aim_system_metric(name) == want


def test_repeat_context():
    assert repeat_context(0) == {}
    assert repeat_context(1) == {"tracelet_repeat": 1} and repeat_context(5) == {"tracelet_repeat": 5}


def test_nest_params_nests_on_slash_and_keeps_clashes_flat():
    assert nest_params({"model/depth": 50, "model/act": "relu", "lr": 0.1}) == \
        {"lr": 0.1, "model": {"act": "relu", "depth": 50}}
    # a leaf and a subtree of one name: the later key stays flat, nothing is lost
    assert nest_params({"a": 1, "a/b": 2}) == {"a": 1, "a/b": 2}
    assert nest_params({"a/b": 2, "a/b/c": 3}) == {"a": {"b": 2}, "a/b/c": 3}
    # empty path parts are not nested
    assert nest_params({"a//b": 1, "/x": 2, "y/": 3}) == {"a//b": 1, "/x": 2, "y/": 3}
    flat = {f"k{i}/v{j}": i * j for i in range(5) for j in range(5)}
    nested = nest_params(flat)
    assert sum(len(v) for v in nested.values()) == len(flat)


def test_param_values_become_what_aims_tree_stores():
    class Odd:
        def __str__(self):
            return "odd"

    got = nest_params({"t": (1, 2), "d": {1: Odd()}, "o": Odd(), "n": None, "b": True})
    assert got == {"t": [1, 2], "d": {"1": "odd"}, "o": "odd", "n": None, "b": True}


def test_tracelet_record_keeps_what_is_there_and_sets_the_identity():
    assert tracelet_record(None, "rid", "r", {}) == {"run_id": "rid", "run_path": "r"}
    assert tracelet_record({"status": "failed", "run_id": "old"}, "rid", "r", {"team": "v"}) == \
        {"status": "failed", "run_id": "rid", "run_path": "r", "tags": {"team": "v"}}
    assert tracelet_record(["not", "a", "dict"], "rid", "r", {}) == {"run_id": "rid", "run_path": "r"}


def test_status_and_times():
    assert aim_end_time("running", T0 + 5, T0 + 9) is None
    for status in ("finished", "failed", "killed"):
        assert aim_end_time(status, T0 + 5, T0 + 9) == T0 + 5
        assert aim_end_time(status, None, T0 + 9) == T0 + 9  # no ended_at: the sync's time
    created = creation_time(T0)
    assert created is not None and created.tzinfo is None
    assert created.isoformat() == "2023-11-14T22:13:20"  # naive UTC, as Aim stores it
    for bad in (None, 0.0, 1e20, -1e20, math.inf, math.nan):
        assert creation_time(bad) is None


def _hist(lefts, rights, counts, **kw):
    return HistogramPoint("h", 0, T0, tuple(lefts), tuple(rights), tuple(counts), **kw)


def test_equal_width_buckets_are_kept_exactly():
    weights, rng = distribution_bins(_hist([0, 1, 2], [1, 2, 3], [4, 5, 6]))
    assert weights == [4.0, 5.0, 6.0] and rng == (0, 3)
    weights, rng = distribution_bins(_hist([-1.0, -0.6, -0.2, 0.2, 0.6], [-0.6, -0.2, 0.2, 0.6, 1.0],
                                           [0, 1, 2, 3, 4]))
    assert weights == [0.0, 1.0, 2.0, 3.0, 4.0] and rng == (-1.0, 1.0)


def test_degenerate_histograms():
    assert distribution_bins(_hist([], [], [])) == ([0.0], (0.0, 1.0))
    assert distribution_bins(_hist([], [], [], min=3.0, num=4.0)) == ([4.0], (3.0, 4.0))
    assert distribution_bins(_hist([2.0], [2.0], [7.0])) == ([7.0], (1.5, 2.5))  # one point
    # only infinite edges: nothing to place the mass on
    assert distribution_bins(_hist([-math.inf], [math.inf], [3.0], num=3.0)) == ([3.0], (0.0, 1.0))


@pytest.mark.parametrize("seed", range(25))
def test_rebinning_keeps_mass_and_range(seed):
    """Any bucketing (exponential TF1/PyTorch buckets, gaps, zero-width and infinite-edged
    buckets, thousands of buckets): the mass is kept, no weight is negative, the range is the
    finite edges' and the bins are within Aim's limit."""
    r = random.Random(seed)
    n = r.choice([2, 3, 7, 30, 600, 3000])
    edges = sorted(r.uniform(-1e3, 1e3) * (10 ** r.randint(-3, 3)) for _ in range(n + 1))
    lefts, rights = edges[:-1], edges[1:]
    if r.random() < 0.3:  # gaps between buckets
        rights = [l + (rr - l) * r.random() for l, rr in zip(lefts, rights)]
    if r.random() < 0.3:  # a zero-width bucket
        i = r.randrange(n)
        rights[i] = lefts[i]
    if r.random() < 0.3:  # TF's -DBL_MAX / inf outer edges
        lefts[0], rights[-1] = -math.inf, math.inf
    counts = [float(r.choice([0, 0, 1, r.randint(1, 10**6)])) for _ in range(n)]
    weights, (lo, hi) = distribution_bins(_hist(lefts, rights, counts))
    finite = [x for x in lefts + rights if math.isfinite(x)]
    assert 1 <= len(weights) <= MAX_HISTOGRAM_BINS
    assert all(w >= 0 for w in weights)
    assert math.isclose(sum(weights), sum(counts), rel_tol=1e-9, abs_tol=1e-9)
    if max(finite) > min(finite):
        assert (lo, hi) == (min(finite), max(finite))


def test_media_groups_one_point_per_event_in_tensor_order():
    def im(tag, step, wall, index):
        return ImagePoint(tag, step, wall, b"png", 1, 1, index=index)

    points = [im("a", 0, T0, 1), im("a", 0, T0, 0), im("b", 0, T0, 0), im("a", 1, T0, 0),
              im("a", 0, T0 + 1, 0), im("a", 0, T0, 2)]
    got = media_groups(points, skip={5})
    assert [k for k, _ in got] == [("a", 0, T0), ("b", 0, T0), ("a", 1, T0), ("a", 0, T0 + 1)]
    assert [p.index for p in got[0][1]] == [0, 1]  # the refused #2 left out, tensor order
    clips = [AudioPoint("s", 3, T0, b"RIFF", 16000.0, "audio/wav")]
    assert media_groups(clips) == [(("s", 3, T0), clips)]
    assert media_groups([]) == []


def _rows(ts, names, values):
    return SystemRows("part-000001.parquet", list(ts), list(names), list(values))


def test_system_part_key_is_the_content_digest():
    rows = _rows([T0 + 0.5, T0], ["gpu/0/power_watts", "process/cpu_percent"], [120.5, None])
    assert system_part_key(rows) == "sysmetrics:f2943850196260d3"  # as before the split
    renamed = SystemRows("part-000009.parquet", rows.timestamps, rows.names, rows.values)
    assert system_part_key(renamed) == system_part_key(rows)
    assert system_part_key(_rows([T0 + 0.5, T0], rows.names, [120.5, 1.0])) != system_part_key(rows)


def test_system_samples_in_time_order_mapped_and_empty_values_left_out():
    rows = _rows([T0 + 2, T0, T0 + 1, T0 + 1], ["gpu/1/temperature_c", "process/cpu_percent",
                                                  "disk/read_bytes", "process/cpu_percent"],
                 [70, 12.5, None, 13])
    assert list(system_samples(rows)) == [
        ("__system__cpu", {}, T0, 12.5), ("__system__cpu", {}, T0 + 1, 13.0),
        ("__system__gpu_temp", {"gpu": 1}, T0 + 2, 70.0)]
    assert list(system_samples(_rows([], [], []))) == []


def test_landed_source_key(tmp_path):
    run_dir = tmp_path / "logs" / "run"
    assert landed_source_key(str(run_dir / "events.out.1"), str(run_dir)) == "events.out.1"
    assert landed_source_key(str(run_dir / "eval" / "events.2"), str(run_dir)) == "eval/events.2"
    # a file outside the run dir (a linked logdir): its name, which carries time, host, pid
    assert landed_source_key(str(tmp_path / "elsewhere" / "events.3"), str(run_dir)) == "linked:events.3"


def test_public_names_resolve_from_the_package():
    import tracelet.destinations.aim as aim_pkg

    for name in mapping.__all__:
        assert getattr(aim_pkg, name) is getattr(mapping, name)


GIT = {"commit": "a" * 40, "branch": "main", "dirty": True, "remote": "https://h/o/r.git",
       "root": "/src"}
ENV = {"python": "3.11.7", "platform": "Linux-x", "executable": "/venv/bin/python",
       "packages": {"torch": "2.3.0", "numpy": "1.26.4"}}


def test_system_params_in_aims_own_shape():
    sp = mapping.system_params(GIT, ENV, {"hostname": "gpu-7", "cpus": 8},
                               ("/venv/bin/python", "train.py", "--lr", "0.1"), "alice")
    assert sp == {
        "packages": {"torch": "2.3.0", "numpy": "1.26.4"},
        "git_info": {"branch": "main", "remote_origin_url": "https://h/o/r.git",
                     "commit": {"hash": "a" * 40, "timestamp": None, "author": None},
                     "dirty": True},
        "executable": "/venv/bin/python",
        "arguments": ["train.py", "--lr", "0.1"],  # Aim's sys.argv: without the interpreter
        "hostname": "gpu-7", "user": "alice", "python": "3.11.7", "platform": "Linux-x"}
    assert "env_variables" not in sp
    # a `tracelet record` command (not this interpreter first) is kept whole
    assert mapping.system_params({}, ENV, {}, ("./run.sh", "-x"))["arguments"] == ["./run.sh", "-x"]


@pytest.mark.parametrize("git,env,system,command", [
    ({}, {}, {}, ()),  # a plain run: no manifest
    ({"is_repo": False}, {"packages_error": "boom"}, {"hostname": ""}, ()),
    ({"commit": None, "branch": None, "remote": None, "dirty": "yes"}, {"packages": []},
     {"hostname": None}, ()),
])
def test_system_params_leave_out_what_the_manifest_lacks(git, env, system, command):
    assert mapping.system_params(git, env, system, command) == {}


def test_system_params_of_odd_values_are_text_or_none():
    """The manifest is untrusted: a number, list or mapping where text belongs is shown as its
    text; a dirty flag that is not a bool is unknown (None); versions are text."""
    sp = mapping.system_params({"commit": 12345, "branch": ["x"], "dirty": "true"},
                               {"executable": 7, "packages": {"a": None, "b": 2, "": "1"}},
                               {"hostname": {"n": 1}}, (1, 2.5))
    assert sp["git_info"] == {"branch": "['x']", "remote_origin_url": None,
                              "commit": {"hash": "12345", "timestamp": None, "author": None},
                              "dirty": None}
    assert sp["packages"] == {"a": "", "b": "2"} and sp["executable"] == "7"
    assert sp["arguments"] == ["1", "2.5"] and sp["hostname"] == "{'n': 1}"


def test_manifest_record_leaves_the_packages_to_system_params():
    doc = {"run_id": "r", "env": {"python": "3.11", "packages": {"torch": "2"}}, "git": GIT}
    rec = mapping.manifest_record(doc)
    assert rec == {"run_id": "r", "env": {"python": "3.11"}, "git": GIT}
    assert doc["env"]["packages"] == {"torch": "2"}  # the caller's document is not changed
    assert mapping.manifest_record(["not", "an", "object"]) is None
    assert mapping.tracelet_record({"status": "finished"}, "r", "p/run", {}, rec) == {
        "status": "finished", "run_id": "r", "run_path": "p/run", "manifest": rec}
