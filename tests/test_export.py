"""`tracelet export` and `read_scalars`: tidy tables equal to what the reader reads."""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from tensorboard.compat.proto import event_pb2

import tracelet.export as export_mod
from tracelet.cli import main
from tracelet.export import export_logdir, read_scalars
from tracelet.reader import EventFileReader, discover_runs
from tracelet.testing.events import T0, scalar_event, version_event, write_frames

EXPORT_SCHEMA = pa.schema([
    ("run", pa.string()), ("tag", pa.string()), ("kind", pa.string()), ("step", pa.int64()),
    ("wall_time", pa.float64()), ("value", pa.float64()), ("summary", pa.string()),
])


# -- logdir builders ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def torch_logdir(tmp_path_factory) -> Path:
    """Two PyTorch runs (one nested) with every kind, and an hparams child folder each."""
    pytest.importorskip("torch")
    from torch.utils.tensorboard import SummaryWriter

    root = tmp_path_factory.mktemp("torch_logdir")
    rng = np.random.default_rng(0)
    for run in ("a", "b/c"):
        w = SummaryWriter(str(root / run))
        for i in range(6):
            w.add_scalar("loss", 1.0 / (i + 1), i)
            w.add_scalar("train/acc", i * 0.1, i)
        w.add_scalar("loss", 7.5, 3)  # a repeated step: both points are kept, in order
        w.add_histogram("weights", rng.normal(size=200), 2)
        w.add_image("sample", np.zeros((3, 8, 6), dtype=np.uint8), 1)
        w.add_text("note", "x" * 500, 1)
        w.add_hparams({"lr": 0.1, "opt": "adam"}, {"hp/metric": 0.5})
        w.close()
    return root


@pytest.fixture(scope="module")
def tbx_logdir(tmp_path_factory) -> Path:
    tbx = pytest.importorskip("tensorboardX")
    root = tmp_path_factory.mktemp("tbx_logdir")
    for run in ("r1", "r2"):
        w = tbx.SummaryWriter(str(root / run))
        for i in range(10):
            w.add_scalar("loss", 2.0 - i * 0.125, i)
            w.add_scalar("lr", 0.01, i)
        w.close()
    return root


def reader_points(logdir: Path) -> list[tuple]:
    """Every point as the reader sees it: (run, tag, kind, step, wall_time, value-or-None)."""
    out = []
    for run in discover_runs(logdir).runs:
        for f in run.event_files:
            for b in EventFileReader(f).batches():
                s = b.scalars
                out += [(run.name, t, "scalar", st, w, v)
                        for t, st, w, v in zip(s.tags, s.steps, s.wall_times, s.values)]
                out += [(run.name, h.tag, "histogram", h.step, h.wall_time, None)
                        for h in b.histograms]
                out += [(run.name, i.tag, "image", i.step, i.wall_time, None) for i in b.images]
                out += [(run.name, t.tag, "text", t.step, t.wall_time, None) for t in b.texts]
                out += [(run.name, "_hparams_/session_start_info", "hparams", h.step, h.wall_time,
                         None) for h in b.hparams]
    return out


def table_points(table: pa.Table) -> list[tuple]:
    names = ("run", "tag", "kind", "step", "wall_time", "value")
    cols = [table.column(c).to_pylist() for c in names]
    return list(zip(*cols))


# -- export -------------------------------------------------------------------------------------

def test_parquet_export_equals_reader_points(torch_logdir, tmp_path):
    out = tmp_path / "points.parquet"
    summary = export_logdir(torch_logdir, out)
    table = pq.read_table(out)
    assert table.schema.equals(EXPORT_SCHEMA)
    expected = reader_points(torch_logdir)
    assert len(expected) == table.num_rows
    assert sorted(table_points(table), key=repr) == sorted(expected, key=repr)
    assert summary.points["scalar"] == 2 * 14  # 13 written + the hp/metric of the child folder
    assert summary.points["histogram"] == summary.points["image"] == summary.points["text"] == 2
    assert summary.runs == 2 and summary.files == 4 and summary.problems == []
    assert str(out) in summary.render() and "28 scalar" in summary.render()
    assert [p.name for p in tmp_path.iterdir()] == ["points.parquet"]  # no temp file left


def test_summary_column_describes_non_scalars(torch_logdir, tmp_path):
    out = tmp_path / "points.parquet"
    export_logdir(torch_logdir, out)
    df = pq.read_table(out).to_pandas()
    scalars = df[df.kind == "scalar"]
    assert scalars.value.notna().all() and scalars.summary.isna().all()
    rest = df[df.kind != "scalar"]
    assert rest.value.isna().all() and rest.summary.notna().all()
    hist = rest[rest.kind == "histogram"].summary.iloc[0]
    assert hist.startswith("count=200 min=") and " mean=" in hist and " buckets=" in hist
    assert rest[rest.kind == "image"].summary.iloc[0].startswith("png 6x8, ")
    text = rest[rest.kind == "text"].summary.iloc[0]
    assert text == "x" * export_mod.TEXT_SUMMARY_CHARS + "…"
    # The repeated step keeps both points, in file order.
    loss3 = df[(df.run == "a") & (df.tag == "loss") & (df.step == 3)].value.tolist()
    assert loss3 == [0.25, 7.5]


def test_csv_export_equals_parquet(torch_logdir, tmp_path):
    export_logdir(torch_logdir, tmp_path / "p.parquet")
    summary = export_logdir(torch_logdir, tmp_path / "p.csv")
    assert summary.format == "csv"
    header = (tmp_path / "p.csv").read_text().splitlines()[0]
    assert header == '"run","tag","kind","step","wall_time","value","summary"'
    csv_table = pacsv.read_csv(
        tmp_path / "p.csv",
        convert_options=pacsv.ConvertOptions(column_types=EXPORT_SCHEMA,
                                             strings_can_be_null=True))
    parquet_table = pq.read_table(tmp_path / "p.parquet")
    assert csv_table.schema.equals(EXPORT_SCHEMA)
    assert csv_table.to_pylist() == parquet_table.to_pylist()  # floats round-trip exactly


def test_parquet_is_written_in_row_groups(tbx_logdir, tmp_path, monkeypatch):
    """Streaming: rows go out in bounded row groups instead of one table at the end."""
    monkeypatch.setattr(export_mod, "ROW_GROUP_ROWS", 8)
    out = tmp_path / "p.parquet"
    export_logdir(tbx_logdir, out)
    f = pq.ParquetFile(out)
    assert f.metadata.num_rows == 40
    assert f.metadata.num_row_groups >= 2


def test_export_overwrites_existing_output(tbx_logdir, tmp_path):
    out = tmp_path / "p.csv"
    out.write_text("old")
    export_logdir(tbx_logdir, out)
    assert out.read_text().startswith('"run"')


# -- damaged input --------------------------------------------------------------------------------

@pytest.fixture
def damaged_logdir(tmp_path) -> tuple[Path, dict]:
    root = tmp_path / "logs"
    good = [version_event()] + [scalar_event("loss", i, float(i)) for i in range(5)]
    write_frames(root / "good" / "events.out.tfevents.1.host", good)

    trunc_path = root / "trunc" / "events.out.tfevents.1.host"
    offs = write_frames(trunc_path, good)
    data = trunc_path.read_bytes()
    trunc_path.write_bytes(data[:-5])  # the last record loses its tail

    corrupt_path = root / "corrupt" / "events.out.tfevents.1.host"
    offs_c = write_frames(corrupt_path, good)
    raw = bytearray(corrupt_path.read_bytes())
    raw[offs_c[3] + 8] ^= 0xFF  # length CRC of the 4th record
    corrupt_path.write_bytes(bytes(raw))

    badcrc_path = root / "badcrc" / "events.out.tfevents.1.host"
    offs_b = write_frames(badcrc_path, good)
    raw = bytearray(badcrc_path.read_bytes())
    raw[offs_b[2] + 14] ^= 0xFF  # a payload byte of the 3rd record: data CRC mismatch
    badcrc_path.write_bytes(bytes(raw))
    return root, {"trunc": (trunc_path, offs[-1]), "corrupt": (corrupt_path, offs_c[3]),
                  "badcrc": (badcrc_path, offs_b[2])}


def test_problems_name_file_and_offset_and_valid_data_is_exported(damaged_logdir, tmp_path):
    root, where = damaged_logdir
    out = tmp_path / "p.parquet"
    summary = export_logdir(root, out)
    df = pq.read_table(out).to_pandas()
    steps = {run: sorted(g.step.tolist()) for run, g in df.groupby("run")}
    assert steps == {"good": [0, 1, 2, 3, 4], "trunc": [0, 1, 2, 3], "corrupt": [0, 1],
                     "badcrc": [0, 2, 3, 4]}
    problems = "\n".join(summary.problems)
    assert len(summary.problems) == 3, problems
    trunc_path, trunc_off = where["trunc"]
    assert f"{trunc_path}: incomplete record at byte {trunc_off}" in problems
    corrupt_path, corrupt_off = where["corrupt"]
    assert f"{corrupt_path}: corrupt at byte {corrupt_off}" in problems
    badcrc_path, _ = where["badcrc"]
    assert f"{badcrc_path}: 1 record skipped between bytes 0 and" in problems
    assert "3 problems" in summary.render()


def test_cli_export_warns_about_problems_and_exits_0(damaged_logdir, tmp_path):
    root, where = damaged_logdir
    result = CliRunner().invoke(main, ["export", str(root), "-o", str(tmp_path / "p.csv")])
    assert result.exit_code == 0, result.output
    corrupt_path, off = where["corrupt"]
    assert f"warning: {corrupt_path}: corrupt at byte {off}" in result.stderr
    assert "exported 15 points" in result.stdout


# -- usage errors -> exit 2 -----------------------------------------------------------------------

def _usage_cases(tmp_path: Path, good: Path) -> dict[str, tuple[list[str], str]]:
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "notes.txt").write_text("no events here")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    event_file = next(good.rglob("events.out.tfevents.*"))
    return {
        "missing path": (["export", str(tmp_path / "nope"), "-o", str(tmp_path / "o.csv")],
                         "no such file or folder"),
        "file instead of folder": (["export", str(event_file), "-o", str(tmp_path / "o.csv")],
                                   "is a file; expected a logdir folder"),
        "folder without event files": (["export", str(empty), "-o", str(tmp_path / "o.csv")],
                                       "expected files named events.out.tfevents.*"),
        "unknown extension": (["export", str(good), "-o", str(tmp_path / "o.json")],
                              "unknown output format '.json'"),
        "no extension": (["export", str(good), "-o", str(tmp_path / "out")],
                         "unknown output format"),
        "unwritable output": (["export", str(good), "-o", str(a_file / "o.parquet")],
                              "cannot create its folder"),
        "output is a folder": (["export", str(good), "-o", str(tmp_path / "dir.csv")],
                               "is a folder"),
    }


@pytest.mark.parametrize("case", ["missing path", "file instead of folder",
                                  "folder without event files", "unknown extension",
                                  "no extension", "unwritable output", "output is a folder"])
def test_usage_errors_exit_2(case, tbx_logdir, tmp_path):
    (tmp_path / "dir.csv").mkdir()
    args, message = _usage_cases(tmp_path, tbx_logdir)[case]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, (result.output, result.exception)
    assert message in result.stderr
    assert not list(tmp_path.glob(".o.*tmp*"))  # nothing half-written left behind


# -- read_scalars: tbparse drop-in ----------------------------------------------------------------

def _tbparse_scalars(logdir: Path) -> pd.DataFrame:
    tbparse = pytest.importorskip("tbparse")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tbparse.SummaryReader(str(logdir)).scalars


@pytest.mark.parametrize("which", ["torch_logdir", "tbx_logdir"])
def test_read_scalars_matches_tbparse(which, request):
    logdir = request.getfixturevalue(which)
    ours = read_scalars(logdir)
    theirs = _tbparse_scalars(logdir)
    assert list(ours.columns) == ["step", "tag", "value", "wall_time", "run"]
    pd.testing.assert_frame_equal(ours[list(theirs.columns)], theirs)  # rows, order, dtypes
    assert ours.wall_time.dtype == np.float64 and (ours.wall_time > 1e9).all()
    assert set(ours.run) == ({"a", "b/c"} if which == "torch_logdir" else {"r1", "r2"})


def test_read_scalars_wall_time_and_run_match_reader(torch_logdir):
    ours = read_scalars(torch_logdir)
    expected = sorted((p[0], p[1], p[3], p[4], p[5]) for p in reader_points(torch_logdir)
                      if p[2] == "scalar")
    got = sorted(zip(ours.run, ours.tag, ours.step, ours.wall_time, ours.value))
    assert got == expected


def test_read_scalars_single_file_and_damage_warns(damaged_logdir):
    root, where = damaged_logdir
    corrupt_path, off = where["corrupt"]
    with pytest.warns(RuntimeWarning, match=f"corrupt at byte {off}"):
        df = read_scalars(corrupt_path)
    assert df.step.tolist() == [0, 1] and set(df.run) == {corrupt_path.parent.name}


def test_read_scalars_empty_has_columns(tmp_path):
    write_frames(tmp_path / "run" / "events.out.tfevents.1.host", [version_event()])
    df = read_scalars(tmp_path)
    assert list(df.columns) == ["step", "tag", "value", "wall_time", "run"] and len(df) == 0
    assert df.step.dtype == np.int64 and df.value.dtype == np.float64


def test_histogram_summary_for_tf2_buckets():
    from tracelet.reader import HistogramPoint

    h = HistogramPoint("h", 0, 0.0, (0.0, 1.0, 2.0), (1.0, 2.0, 3.0), (0.0, 2.0, 2.0))
    s = export_mod.histogram_summary(h)
    assert s == "count=4 min=1 max=3 mean~=2 buckets=3"
    assert not math.isnan(float(s.split("mean~=")[1].split()[0]))


def test_tf2_hparams_export_as_json(tmp_path):
    from tensorboard.plugins.hparams import summary_v2

    summ = summary_v2.hparams_pb({"lr": 0.1, "opt": "adam", "layers": 3})
    ev = event_pb2.Event(wall_time=T0, step=0, summary=summ)
    write_frames(tmp_path / "logs" / "run" / "events.out.tfevents.1.host",
                 [version_event(), ev, scalar_event("loss", 0, 1.0)])
    summary = export_logdir(tmp_path / "logs", tmp_path / "p.parquet")
    df = pq.read_table(tmp_path / "p.parquet").to_pandas()
    row = df[df.kind == "hparams"].iloc[0]
    assert row.tag == "_hparams_/session_start_info" and pd.isna(row.value)
    assert row.summary == '{"layers": 3, "lr": 0.1, "opt": "adam"}'
    assert summary.points["hparams"] == 1


def test_pytorch_hparams_are_exported(torch_logdir, tmp_path):
    """PyTorch's add_hparams (metadata-only values in a child folder) lands in the parent run."""
    summary = export_logdir(torch_logdir, tmp_path / "p.parquet")
    assert summary.points["hparams"] == 2
    df = pq.read_table(tmp_path / "p.parquet").to_pandas()
    hp = df[df.kind == "hparams"]
    assert sorted(hp.run) == ["a", "b/c"]
    assert set(hp.summary) == {'{"lr": 0.1, "opt": "adam"}'}
