"""W&B's pure mapping (``tracelet.destinations.wandb.mapping`` and ``.landed``), without the SDK.

What these functions decide is what lands on W&B (keys, rows, the ``_tracelet`` source texts
the exactly-once dedupe reads back), so they are checked here on real reader batches (event
files built from TensorBoard protos, read by ``EventFileReader``), and the import is checked
to pull in no vendor SDK.
"""
from __future__ import annotations

import math
import random
import subprocess
import sys

import numpy as np
import pytest
from tensorboard.compat.proto import summary_pb2

from tracelet.destinations.base import SystemRows
from tracelet.destinations.keys import tag_hash
from tracelet.destinations.wandb.landed import Landed
from tracelet.destinations.wandb.mapping import (
    EXIT_CODES, MAX_HISTOGRAM_BINS, RESERVED_KEYS, SOURCE_KEY, STEP_METRIC, SYSTEM_CODE,
    SYSTEM_STEP_METRIC, exit_code, finite_edges, histogram_buckets, json_value, landed_points,
    media_rows, param_key, parse_source, scalar_rows, source_file, source_text, system_part_hash,
    system_rows, wandb_key, wandb_project, wandb_run_id)
from tracelet.reader import EventFileReader
from tracelet.reader.points import (HISTOGRAM, IMAGE, TEXT, AUDIO, Batch, HistogramPoint,
                                    ImagePoint, TextPoint)
from tracelet.testing.events import T0, event_record, header_record


def test_mapping_imports_no_sdk():
    code = ("import sys\n"
            "import tracelet.destinations.wandb.mapping, tracelet.destinations.wandb.landed\n"
            "import tracelet.destinations.wandb.txlog\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('wandb', 'pyarrow')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


# -- names ------------------------------------------------------------------------------------
@pytest.mark.parametrize("tag", sorted(RESERVED_KEYS) + ["", "system/cpu", "system/", "_wandb",
                                                         "_wandbx", "_tracelet"])
def test_reserved_tags_are_renamed_apart(tag):
    key = wandb_key(tag)
    assert key != tag and key.startswith("tb/") and key.endswith("-" + tag_hash(tag))
    assert key not in RESERVED_KEYS and not key.startswith(("system/", "_"))
    assert wandb_key(key) == key  # the renamed key is an ordinary tag: kept as written


@pytest.mark.parametrize("tag", ["loss", "tb/_step", "a/b/c", "损失", "x y", "_private", "Step",
                                 "global_step/x", "sys/tem", "a" * 1000])
def test_ordinary_tags_are_kept(tag):
    assert wandb_key(tag) == tag


def test_renamed_keys_never_collide():
    tags = sorted(RESERVED_KEYS) + ["", "system/a", "system/b", "tb/_step", "tb/untagged"]
    keys = [wandb_key(t) for t in tags]
    assert len(set(keys)) == len(tags)


def test_param_keys():
    assert param_key("lr") == "lr" and param_key("wandbish") == "wandbish"
    for name in ("tracelet", "_wandb", "_wandb_x"):
        key = param_key(name)
        assert key.startswith("params/" + name + "-") and key != param_key("tracelet2")
    assert json_value({"a": [1, 2.5, None]}) == {"a": [1, 2.5, None]}
    assert json_value(float("nan")) != json_value(float("nan"))  # NaN kept as a number
    assert json_value({1, 2}) == "{1, 2}" and json_value(b"x") == "b'x'"


@pytest.mark.parametrize("run_id,ok", [("abc123", True), ("A" * 64, True), ("A" * 65, False),
                                       ("run-1", False), ("", False), ("r_1", False),
                                       ("ab\n", False), ("ａｂ", False)])
def test_run_ids(run_id, ok):
    wid = wandb_run_id(run_id)
    if ok:
        assert wid == run_id
    else:
        assert len(wid) == 32 and wid.startswith("tl") and wid.isalnum() and wid.isascii()
        assert wid == wandb_run_id(run_id)  # deterministic: every sync finds the same run


def test_projects():
    assert wandb_project("team/exp:1#a?b%c\\d") == "team_exp_1_a_b_c_d"
    assert wandb_project("  ") == "tracelet" and wandb_project("ok") == "ok"
    long_a, long_b = wandb_project("p" * 300), wandb_project("p" * 301)
    assert len(long_a) == len(long_b) == 128 and long_a != long_b


def test_exit_codes():
    assert {s: exit_code(s) for s in EXIT_CODES} == {"finished": (0, False), "failed": (1, False),
                                                      "killed": (137, False)}
    assert exit_code("running") == exit_code(None) == exit_code("weird") == (0, True)


def test_source_file(tmp_path):
    run = tmp_path / "run"
    assert source_file(str(run), str(run / "sub" / "ev")) == "sub/ev"
    outside = tmp_path / "other" / "ev"
    assert source_file(str(run), str(outside)) == "linked:" + str(outside)


# -- source texts -----------------------------------------------------------------------------
def test_source_text_round_trip():
    segs = [[0, 1], [5, 3], [9, 1]]
    text = source_text("abc", "s", segs)
    assert text == "abc:s0,s5+3,s9"
    assert list(parse_source(text)) == [("abc", "s", 0, 1), ("abc", "s", 5, 3), ("abc", "s", 9, 1)]


@pytest.mark.parametrize("text", ["", ":", "abc", "abc:", "abc:,,,", "abc:s", "abc:sx+1",
                                  "abc:s1+y", "abc:s" + "9" * 5000, "abc:s1+" + "9" * 5000,
                                  "a:b:c", "abc:\x00", "abc:s1.5", "abc:s½"])
def test_unparsable_source_texts_are_skipped(text):
    """A ``_tracelet`` value is read back from files (or an API) anyone may have written: a
    segment that does not parse names no point and raises nothing."""
    landed = Landed()
    landed.add_source(text)
    assert landed.finish().ranges == {}


def test_landed_merges_and_covers():
    landed = Landed()
    for text in ("f:s0+3", "f:s3", "f:s10+5,h2", "g:s1"):
        landed.add_source(text)
    landed.finish()
    assert landed.ranges[("f", "s")] == [[0, 4], [10, 15]]
    assert landed.covered("f", "s", 2, 10) == {0, 1, 8, 9}
    assert landed.covered("f", "h", 0, 5) == {2} and landed.covered("g", "h", 0, 5) == set()
    assert landed.covered("f", "s", 100, 5) == set() and landed.covered("f", "s", 0, 0) == set()


# -- rows -------------------------------------------------------------------------------------
def _scalar_batches(tmp_path, points, max_points):
    path = tmp_path / "events.out.tfevents.1700000000.host.1.0"
    path.write_bytes(header_record() + b"".join(
        event_record(step, T0 + k, [summary_pb2.Summary.Value(tag=tag, simple_value=value)])
        for k, (tag, step, value) in enumerate(points)))
    return list(EventFileReader(str(path)).batches(max_points=max_points))


def _ordinals(rows, fk="f", code="s"):
    out = []
    for _, text in rows:
        for f, c, a, n in parse_source(text):
            assert (f, c) == (fk, code)
            out.extend(range(a, a + n))
    return out


def test_scalar_rows_group_per_step(tmp_path):
    points = [(t, s, float(s)) for s in range(3) for t in "abc"]
    points += [("a", 3, 1.0), ("a", 3, 2.0), ("b", 3, 3.0), ("_step", 3, 4.0)]
    (batch,) = _scalar_batches(tmp_path, points, 1000)
    rows = scalar_rows(batch, "f", 0, None)
    keys = [sorted(k for k in row if k not in (STEP_METRIC, "_timestamp")) for row, _ in rows]
    assert keys == [["a", "b", "c"]] * 3 + [["a"], ["a", "b", wandb_key("_step")]]
    assert [row[STEP_METRIC] for row, _ in rows] == [0, 1, 2, 3, 3]
    assert [text for _, text in rows] == ["f:s0+3", "f:s3+3", "f:s6+3", "f:s9", "f:s10+3"]
    assert SOURCE_KEY not in rows[0][0]  # added when logged


def test_scalar_rows_name_each_point_once_whatever_the_batches(tmp_path):
    """The dedupe rests on this: every source point is named by exactly one row, with its
    ordinal in the file, however the file is cut into batches and whatever landed already."""
    rng = random.Random(7)
    points = [(rng.choice("xyz"), s // 3, rng.random()) for s in range(300)]
    for max_points in (1, 7, 50, 1000):
        batches = _scalar_batches(tmp_path, points, max_points)
        base, named = 0, []
        landed = Landed()
        for k in range(0, 300, 11):
            landed.add_source(f"f:s{k}+{rng.randint(1, 4)}")
        landed.finish()
        for batch in batches:
            n = len(batch.scalars)
            rows = scalar_rows(batch, "f", base, landed)
            named += _ordinals(rows)
            for row, _ in rows:  # one step per row, each key once
                assert isinstance(row[STEP_METRIC], int)
            base += n
        want = [i for i in range(300) if not landed.covered("f", "s", i, 1)]
        assert sorted(named) == named == want, max_points
        assert base == 300


def _media_batch():
    hist = HistogramPoint("h", 1, T0, (0.0, 1.0), (1.0, 2.0), (3.0, 4.0))
    images = [ImagePoint("im", 1, T0, b"a", 1, 1), ImagePoint("im", 1, T0, b"b", 1, 1),
              ImagePoint("im", 2, T0, b"c", 1, 1), ImagePoint("other", 1, T0, b"d", 1, 1)]
    texts = [TextPoint("t", 1, T0, "one"), TextPoint("t", 1, T0, "two")]
    return Batch(path="ev", start_offset=0, histograms=[hist], images=images, texts=texts)


def test_media_rows_group_and_name_ordinals():
    calls = []

    def make(kind):
        return lambda p, o: calls.append((kind, o)) or (kind, o)

    batch = _media_batch()
    base = [0, 10, 20, 30, 40]
    rows = media_rows(batch, "f", base, None, {k: make(k) for k in (HISTOGRAM, TEXT, AUDIO, IMAGE)},
                      refused={3})
    assert calls == [(HISTOGRAM, 10), (TEXT, 30), (TEXT, 31), (IMAGE, 20), (IMAGE, 21), (IMAGE, 22)]
    by_text = {text: row for row, text in rows}
    # step 1: the histogram and the first text; `t` again starts a new row of step 1, which
    # the later points of step 1 join (the two images of `im`, as one list)
    assert by_text["f:h10,t30"] == {STEP_METRIC: 1, "_timestamp": T0, "h": (HISTOGRAM, 10),
                                   "t": (TEXT, 30)}
    assert by_text["f:t31,i20,i21"] == {STEP_METRIC: 1, "_timestamp": T0, "t": (TEXT, 31),
                                       "im": [(IMAGE, 20), (IMAGE, 21)]}
    assert by_text["f:i22"] == {STEP_METRIC: 2, "_timestamp": T0, "im": (IMAGE, 22)}
    assert len(rows) == 3  # the refused image (ordinal 23) is in no row


def test_media_rows_skip_what_landed():
    landed = Landed()
    landed.add_source("f:h10,i20,t31")
    landed.finish()
    batch = _media_batch()
    make = {k: (lambda p, o, k=k: (k, o)) for k in (HISTOGRAM, TEXT, AUDIO, IMAGE)}
    rows = media_rows(batch, "f", [0, 10, 20, 30, 40], landed, make)
    named = sorted(seg for _, text in rows for seg in text.split(":")[1].split(","))
    assert named == ["i21", "i22", "i23", "t30"]


def test_landed_points_counts_what_the_rows_leave_out():
    landed = Landed()
    landed.add_source("f:h10,i20,i23,t31")  # i23: an image the mapping refuses this time
    landed.add_source("g:i20")  # another file's
    landed.finish()
    batch = _media_batch()
    base = [0, 10, 20, 30, 40]
    make = {k: (lambda p, o, k=k: (k, o)) for k in (HISTOGRAM, TEXT, AUDIO, IMAGE)}
    for refused in (set(), {3}):
        rows = media_rows(batch, "f", base, landed, make, refused)
        sent = sum(len(text.split(":")[1].split(",")) for _, text in rows)
        present = landed_points(batch, "f", base, landed, refused)
        # every point is in a row, refused, or present: never two of them
        assert sent + len(refused) + present == batch.points, (refused, rows)
        assert present == (4 if not refused else 3)
    assert landed_points(batch, "f", base, None) == 0  # not a dedupe send
    assert landed_points(batch, "g", base, landed) == 1


def test_system_rows():
    part = SystemRows("part-000001.parquet", [T0, T0, T0, T0 + 1, T0 + 1, T0 + 2],
                      ["cpu", "mem", "cpu", "cpu", "mem", "cpu"], [1.0, 2.0, 3.0, None, 5.0, 6.0])
    rows = system_rows(part, "p", T0 - 10)
    assert [text for _, text in rows] == ["p:y0+2", "p:y2", "p:y4", "p:y5"]
    assert rows[0][0] == {SYSTEM_STEP_METRIC: 10.0, "_timestamp": T0, "system/cpu": 1.0,
                          "system/mem": 2.0}
    assert rows[2][0] == {SYSTEM_STEP_METRIC: 11.0, "_timestamp": T0 + 1, "system/mem": 5.0}
    assert [r[0][SYSTEM_STEP_METRIC] for r in system_rows(part, "p", None)][:1] == [T0]
    assert [text for _, text in system_rows(part, "p", T0, skip={0, 4})] == ["p:y1+2", "p:y5"]
    assert all(c == SYSTEM_CODE for _, c, _, _ in parse_source(rows[0][1]))
    same = SystemRows("part-000002.parquet", list(part.timestamps), list(part.names),
                      list(part.values))
    assert system_part_hash(part.timestamps, part.names) == \
        system_part_hash(same.timestamps, same.names)  # named by content, not file name


# -- histograms -------------------------------------------------------------------------------
def test_histogram_over_512_buckets_is_merged_exactly():
    for n in (513, 1000, 4097):
        counts = tuple(float(i % 7) for i in range(n))
        edges = np.linspace(-1, 1, n + 1)
        h = HistogramPoint("h", 0, T0, tuple(edges[:-1]), tuple(edges[1:]), counts)
        c, e = histogram_buckets(h)
        assert len(c) == MAX_HISTOGRAM_BINS and len(e) == MAX_HISTOGRAM_BINS + 1
        assert c.sum() == sum(counts) and e[0] == -1.0 and e[-1] == 1.0
        assert set(e) <= set(edges)  # whole buckets: every edge is one of the source's
        assert np.all(np.diff(e) > 0)


def test_histogram_edges_made_finite():
    inf = float("inf")
    h = HistogramPoint("h", 0, T0, (-inf, 0.0, 1.0), (0.0, 1.0, 1.7976931348623157e308),
                       (1.0, 2.0, 3.0))
    c, e = histogram_buckets(h)
    assert list(c) == [1.0, 2.0, 3.0] and np.all(np.isfinite(e)) and list(e[1:3]) == [0.0, 1.0]
    assert list(finite_edges(np.array([inf, -inf]))) == [0.0, 0.0]
    empty = HistogramPoint("h", 0, T0, (), (), (), min=float("nan"))
    c, e = histogram_buckets(empty)
    assert list(c) == [0.0] and list(e) == [0.0, 0.0]
    assert list(histogram_buckets(HistogramPoint("h", 0, T0, (), (), (), min=2.5))[1]) == [2.5, 2.5]
    assert not math.isnan(histogram_buckets(h)[1].sum())
