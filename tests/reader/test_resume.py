"""Resuming: a read stopped anywhere and resumed from what a checkpoint holds (the last batch's
``end_offset`` and ``tag_plugins``) yields exactly the rest; both parts together equal one full
read. The TF1-FileWriter fixtures, where plugin metadata comes only with each tag's first value,
show why the tag map belongs in the checkpoint.

Two ways to stop a read: an ``end`` bound (the file size a sync saw when it started) at a record
boundary, and abandoning the batch generator after some batches (a sync that stops early).
"""
from __future__ import annotations

import random
from collections import Counter

import pytest

from tests.reader.helpers import (FIXTURES, KINDS, fixture_id, intact_event_files,
                                  points_of_batches, read_points, record_ends)
from tracelet.reader import EventFileReader

INTACT = intact_event_files()
METADATA_FIRST_ONLY = sorted(FIXTURES.glob("tf2_*/tf1_file_writer/*tfevents*"))


def _union(*parts: dict) -> dict:
    out = {k: [p for part in parts for p in part[k]] for k in KINDS}
    out["other"] = sum((Counter(part["other"]) for part in parts), Counter())
    return out


def _read_until(path, end: int, max_points: int = 3):
    """A sync that saw the file ``end`` bytes long: its points and checkpoint."""
    reader = EventFileReader(path)
    batches = list(reader.batches(end=end, max_points=max_points))
    assert reader.status.offset == end, "a bound at a record boundary is reached exactly"
    assert reader.status.pending_bytes == 0
    if batches:  # the checkpoint a sync commits is the last batch's
        assert (batches[-1].end_offset, batches[-1].tag_plugins) == (end, reader.tag_plugins)
    return points_of_batches(batches), (end, dict(reader.tag_plugins))


def _checkpoints(path, n: int) -> list[int]:
    ends = record_ends(path)
    rng = random.Random(fixture_id(path))
    return sorted({ends[len(ends) // 2]} | {rng.choice(ends) for _ in range(n)})


@pytest.mark.parametrize("path", [p for p in INTACT if p.stat().st_size], ids=fixture_id)
def test_resume_at_record_boundaries_is_exact(path, read_path):
    full, _, _ = read_points(path)
    for cut in _checkpoints(path, 3):
        head, (offset, tag_map) = _read_until(path, cut)
        rest, reader, _ = read_points(path, offset, tag_map, max_points=3)
        assert _union(head, rest) == full, f"checkpoint at byte {cut}"
        assert reader.status.offset == path.stat().st_size


@pytest.mark.parametrize("path", INTACT, ids=fixture_id)
def test_resume_after_abandoned_batches_is_exact(path, read_path):
    full, _, batches = read_points(path, max_points=3)
    if len(batches) < 2:
        return  # one batch: nothing to abandon (the record-boundary test covers the file)
    for k in sorted({len(batches) // 2, 1, len(batches) - 1}):
        reader = EventFileReader(path)
        first = []
        for b in reader.batches(max_points=3):
            first.append(b)
            if len(first) == k:
                break
        cp = first[-1]
        assert reader.status.offset == cp.end_offset, "status agrees with the last batch"
        assert cp.tag_plugins == reader.tag_plugins
        rest, _, rest_batches = read_points(path, cp.end_offset, cp.tag_plugins, max_points=3)
        assert rest == points_of_batches(batches[k:]), f"resume after batch {k}"
        assert _union(points_of_batches(first), rest) == full
        assert rest_batches[0].start_offset == cp.end_offset


@pytest.mark.parametrize("path", METADATA_FIRST_ONLY, ids=fixture_id)
def test_resume_at_every_record_boundary(path, read_path):
    """Every record boundary of the metadata-first-only files as a checkpoint."""
    full, _, _ = read_points(path)
    ends = record_ends(path)
    assert len(ends) > 12
    for cut in ends:
        head, (offset, tag_map) = _read_until(path, cut, max_points=7)
        rest, _, _ = read_points(path, offset, tag_map, max_points=7)
        assert _union(head, rest) == full, f"checkpoint at byte {cut}"


def _after_step0(path) -> int:
    """Byte offset of the first record whose step is >= 1: every tag's first value is behind."""
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

    prev = 0
    for end, ev in zip(record_ends(path), LegacyEventFileLoader(str(path)).Load()):
        if ev.step >= 1:
            return prev
        prev = end
    raise AssertionError("no step 1")


def test_tf1_metadata_first_only_needs_the_saved_tag_map(read_path):
    """tf2_histograms_images_text/tf1_file_writer: after step 0, text/image/custom values carry
    no metadata. With the saved map the resumed read is exact; with an empty map the texts and
    images after the checkpoint are lost (counted only as undecoded ``tensor``) and the
    custom-plugin rank-0 tensor is misclassified as a scalar."""
    path = next(FIXTURES.glob("tf2_histograms_images_text/tf1_file_writer/*tfevents*"))
    full, _, _ = read_points(path)
    head, (offset, tag_map) = _read_until(path, _after_step0(path))
    assert {"notes", "table", "samples", "custom/thing", "weights"} <= set(tag_map)

    right, _, _ = read_points(path, offset, tag_map)
    assert _union(head, right) == full

    wrong, _, _ = read_points(path, offset, {})
    assert _union(head, wrong) != full
    assert len(right["text"]) == 22 and len(right["image"]) == 22
    assert wrong["text"] == [] and wrong["image"] == [], "lost"
    assert wrong["other"]["tensor"] == 11 * 3  # notes, table, samples: 11 steps each
    misread = [s for s in wrong["scalar"] if s[0] == "custom/thing"]
    assert len(misread) == 11, "misclassified as scalars"
    assert [s for s in right["scalar"] if s[0] == "custom/thing"] == []
    assert right["other"]["custom_plugin"] == 11
    # [k,3] tensors are taken as histograms by shape, so histograms survive either way
    assert wrong["histogram"] == right["histogram"]


def test_tf1_tensor_scalars_resume_with_saved_map_is_exact(read_path):
    """tf2_tensor_scalars/tf1_file_writer: every dtype, metadata first only. Resumed with the
    saved map it is exact. (With an empty map, rank-0 numeric tensors still read as scalars:
    the reader's documented fallback; asserted so that a change to it is noticed.)"""
    path = next(FIXTURES.glob("tf2_tensor_scalars/tf1_file_writer/*tfevents*"))
    full, _, _ = read_points(path)
    head, (offset, tag_map) = _read_until(path, _after_step0(path))
    assert len(tag_map) == 13 and set(tag_map.values()) == {"scalars"}
    right, _, _ = read_points(path, offset, tag_map)
    assert _union(head, right) == full
    fallback, _, _ = read_points(path, offset, {})
    assert fallback == right


def test_end_bound_inside_a_record_is_not_yet(read_path):
    """``end`` is a hard upper bound: a bound inside a record stops before it ('not yet')."""
    path = next(FIXTURES.glob("tf2_tensor_scalars/tf2_summary_writer/*tfevents*"))
    full, _, _ = read_points(path)
    ends = record_ends(path)
    mid = ends[len(ends) // 2]
    reader = EventFileReader(path)
    got = list(reader.batches(end=mid + 5))
    assert got[-1].end_offset == mid == reader.status.offset
    assert reader.status.pending_bytes == 5
    rest, _, _ = read_points(path, reader.status.offset, reader.tag_plugins)
    assert _union(points_of_batches(got), rest) == full


# -- batch size: max_points bounds what one batch holds ------------------------------------
@pytest.mark.parametrize("path", [
    pytest.param(p, id=fixture_id(p)) for p in INTACT if p.stat().st_size
])
def test_max_points_caps_every_batch(path, read_path):
    """With max_points=1 a batch is sealed after each record that holds a point, so no batch
    holds points of two records: a batch's points all share one step and wall time."""
    _, _, batches = read_points(path, max_points=1)
    for b in batches:
        keys = {(s, w) for s, w in zip(b.scalars.steps, b.scalars.wall_times)}
        for kind in (b.histograms, b.images, b.texts, b.hparams):
            keys |= {(p.step, p.wall_time) for p in kind}
        assert len(keys) <= 1 or _nan_walls(keys), (
            f"{fixture_id(path)}: batch [{b.start_offset}, {b.end_offset}) holds {b.points} "
            f"points of {b.records} records")


def _nan_walls(keys) -> bool:
    return len({s for s, _ in keys}) == 1 and all(w != w for _, w in keys)
