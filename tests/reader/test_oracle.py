"""The reader against TensorBoard's own reader, on every fixture event file.

For each intact file: every scalar (value, step, wall time, NaN-aware and bit-exact), every
histogram, image, text and hparams point must equal what ``EventFileLoader`` yields, decoded in
helpers.py with ``make_ndarray``. Damaged files cannot be read by the oracle as they are; for
those the oracle reads a repaired copy (the bad record cut out, or the file cut at the bad
length) and the reader must yield exactly that, plus the documented status.
"""
from __future__ import annotations

import functools
import math

import pytest

from tests.reader.helpers import (CORRUPTIONS, FIXTURES, KINDS, all_event_files,
                                  assert_same_as_oracle, damaged_fixtures, fixture_id,
                                  intact_event_files, is_nan_hex, oracle_points, read_points)

INTACT = intact_event_files()


@functools.lru_cache(maxsize=None)
def _oracle(path):
    return oracle_points(path)


@pytest.mark.parametrize("path", INTACT, ids=fixture_id)
def test_reader_equals_tensorboard(path, read_path):
    got, reader, batches = read_points(path)
    assert_same_as_oracle(got, _oracle(path), fixture_id(path))
    st = reader.status
    assert st.offset == path.stat().st_size, "an intact file must be read to its last byte"
    assert (st.bad_data_crc, st.corrupt_offset, st.pending_bytes) == (0, None, 0)
    assert sum(b.skipped_records for b in batches) == 0


@pytest.mark.parametrize("path", INTACT, ids=fixture_id)
def test_small_batches_change_nothing(path, read_path):
    """Batch boundaries are an implementation detail: max_points=1 gives the same points, and the
    batches tile the file: each starts where the previous ended."""
    whole, _, _ = read_points(path)
    small, _, batches = read_points(path, max_points=1)
    assert small == whole
    pos = 0
    for b in batches:
        assert b.start_offset == pos and b.end_offset >= b.start_offset
        pos = b.end_offset
    assert pos == path.stat().st_size


LEGACY_HISTO_FILES = [p for p in INTACT if _oracle(p)["_legacy_histos"]]


@pytest.mark.parametrize("path", LEGACY_HISTO_FILES, ids=fixture_id)
def test_legacy_histo_buckets_equal_tensorboard(path, read_path):
    got, _, _ = read_points(path)
    assert_same_as_oracle(got, _oracle(path), fixture_id(path), legacy_buckets=True)


@pytest.mark.parametrize("path", LEGACY_HISTO_FILES, ids=fixture_id)
def test_legacy_histo_fields_exact(path, read_path):
    """min/max/num/sum/sum_squares of a legacy ``histo`` come through unchanged (float64)."""
    from tracelet.reader import EventFileReader

    reader = EventFileReader(path)
    got = [(h.tag, h.step, h.min, h.max, h.num, h.sum, h.sum_squares)
           for b in reader.batches() for h in b.histograms]
    assert got == _oracle(path)["_legacy_histos"]


@pytest.mark.parametrize("path", INTACT, ids=fixture_id)
def test_no_bucket_is_backwards(path, read_path):
    """A histogram bucket spans [left, right): never left > right (legacy ``histo`` included:
    empty edge buckets are dropped as TensorBoard's data_compat does)."""
    got, _, _ = read_points(path)
    for tag, step, _, lefts, rights, _ in got["histogram"]:
        for l, r in zip(lefts, rights):
            l, r = float.fromhex(l), float.fromhex(r)
            assert l <= r, f"{fixture_id(path)}: {tag}@{step}: bucket [{l}, {r})"


def test_fixtures_exercise_every_kind():
    """The oracle comparison is not vacuous: the fixtures hold every kind, many of each."""
    totals = {k: 0 for k in KINDS}
    for p in INTACT:
        for k in KINDS:
            totals[k] += len(_oracle(p)[k])
    assert all(n >= 5 for n in totals.values()), totals
    assert len(INTACT) >= 30


# -- what specific fixtures are for: the oracle agrees, and the values are the intended ones --
def _scalars(rel):
    path = next((FIXTURES / rel).glob("*tfevents*"))
    got, _, _ = read_points(path)
    return got["scalar"]


def test_nan_inf_values(read_path):
    by_tag = {}
    for tag, step, wall, v in _scalars("nan_inf/torch"):
        by_tag.setdefault(tag, []).append(float.fromhex(v))
    for tag in ("special/f32", "special/f64"):
        vals = by_tag[tag]
        assert math.isnan(vals[0]) and vals[1] == math.inf and vals[2] == -math.inf
        assert math.copysign(1.0, vals[4]) == -1.0  # -0.0 keeps its sign
    walls = [w for tag, _, w, _ in _scalars("nan_inf/torch") if tag == "special/nan_walltime"]
    assert len(walls) == 1 and is_nan_hex(walls[0])


def test_negative_and_huge_steps(read_path):
    steps = [s for _, s, _, _ in _scalars("negative_and_huge_steps/torch")]
    assert steps == [-(2**63), -5, -1, 0, 1, 2**31, 2**40, 2**53 + 1, 2**62, 2**63 - 1]


def test_unicode_tags_unchanged(read_path):
    import sys

    sys.path.insert(0, str(FIXTURES.parent / "scripts"))
    try:
        from build_fixtures import UNICODE_TAGS
    finally:
        sys.path.pop(0)
    for run in ("unicode_tags/torch", "unicode_tags/tb_writer"):
        tags = {t for t, _, _, _ in _scalars(run)}
        assert tags == set(UNICODE_TAGS), run


def test_typed_and_content_tensor_scalars_agree(read_path):
    """TF2 tensor scalars: every dtype, in tensor_content and in typed fields, same numbers."""
    path = next((FIXTURES / "tf2_tensor_scalars/tf1_file_writer").glob("*tfevents*"))
    got, _, _ = read_points(path)
    series = {}
    for tag, step, _, v in got["scalar"]:
        series.setdefault(tag, []).append((step, float.fromhex(v)))
    for dt in ("float32", "float64", "float16", "int32", "int64", "bool"):
        assert len(series[f"content/{dt}"]) == 12
        assert series[f"content/{dt}"] == series[f"typed/{dt}"], dt
    assert [v for _, v in series["content/bool"]][:2] == [0.0, 1.0]
    assert series["content/int64"][0] == (0, -3000.0)


# -- damaged files: the oracle reads a repaired copy ---------------------------------------
@pytest.mark.parametrize("path,info", damaged_fixtures("bad_data_crc"))
def test_bad_data_crc_equals_tensorboard_without_that_record(path, info, read_path, tmp_path):
    """The reader skips exactly the damaged record and reads every later one."""
    data = path.read_bytes()
    repaired = tmp_path / path.name
    repaired.write_bytes(data[: info["record_start"]] + data[info["record_end"]:])
    got, reader, _ = read_points(path)
    assert_same_as_oracle(got, oracle_points(repaired), fixture_id(path))
    assert reader.status.bad_data_crc == 1
    assert reader.status.offset == len(data)


@pytest.mark.parametrize("path,info", damaged_fixtures("bad_length_crc"))
def test_bad_length_crc_equals_tensorboard_up_to_there(path, info, read_path, tmp_path):
    cut = tmp_path / path.name
    cut.write_bytes(path.read_bytes()[: info["record_start"]])
    got, reader, _ = read_points(path)
    assert_same_as_oracle(got, oracle_points(cut), fixture_id(path))
    assert reader.status.corrupt_offset == info["record_start"]
    assert reader.status.offset == info["record_start"]


@pytest.mark.parametrize("path,info", damaged_fixtures("truncated_tail"))
def test_truncated_tail_equals_tensorboard(path, info, read_path):
    """TensorBoard also stops before a half-written record; both read the same records."""
    got, reader, _ = read_points(path)
    assert_same_as_oracle(got, oracle_points(path), fixture_id(path))
    assert reader.status.offset == info["record_start"]
    assert reader.status.pending_bytes == info["cut_at"] - info["record_start"] > 0


def test_every_fixture_file_is_covered():
    """No event file escapes both the intact and the damaged tests."""
    damaged = {FIXTURES / rel for rel in CORRUPTIONS}
    assert set(all_event_files()) == set(INTACT) | damaged
