"""`tracelet inspect`: tags by kind, counts, ranges, files and problems with byte offsets."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tracelet.cli import main
from tracelet.inspect import inspect_path, iso_utc
from tracelet.testing.events import T0, scalar_event, version_event, write_frames


@pytest.fixture
def damaged(tmp_path) -> tuple[Path, dict]:
    """Three runs: healthy, a truncated second file, a corrupt length CRC; with the offsets."""
    root = tmp_path / "logs"
    version = version_event()
    events = [version] + [scalar_event("loss", i, 10.0 - i) for i in range(10)] \
        + [scalar_event("acc", i, i / 10) for i in range(0, 10, 2)]
    write_frames(root / "exp" / "run1" / "events.out.tfevents.1.host", events)
    # run2: a second file, truncated, after a healthy one
    write_frames(root / "exp" / "run2" / "events.out.tfevents.1.host", events[:4])
    offs = write_frames(root / "exp" / "run2" / "events.out.tfevents.2.host", events)
    p = root / "exp" / "run2" / "events.out.tfevents.2.host"
    p.write_bytes(p.read_bytes()[:-3])
    # run3: corrupt length CRC at the 3rd record
    p3 = root / "run3" / "events.out.tfevents.1.host"
    offs3 = write_frames(p3, events)
    raw = bytearray(p3.read_bytes())
    raw[offs3[2] + 9] ^= 0x55
    p3.write_bytes(bytes(raw))
    return root, {"trunc": (p, offs[-1]), "corrupt": (p3, offs3[2])}


@pytest.fixture
def logdir(damaged) -> Path:
    return damaged[0]


def test_report_per_run(logdir):
    report = inspect_path(logdir)
    runs = {r.name: r for r in report.runs}
    assert list(runs) == ["exp/run1", "exp/run2", "run3"]
    d = report.to_dict()
    json.dumps(d)  # JSON-able as the CLI prints it
    r1 = {r["name"]: r for r in d["runs"]}["exp/run1"]
    assert r1["tags"] == {"scalar": ["acc", "loss"]}
    assert r1["points"]["scalar"] == 15
    assert (r1["step_min"], r1["step_max"]) == (0, 9)
    assert r1["wall_time_first"] == "2023-11-14T22:13:20Z"
    assert r1["wall_time_last"] == iso_utc(T0 + 9) == "2023-11-14T22:13:29Z"
    loss = next(t for t in r1["tag_stats"] if t["tag"] == "loss")
    assert loss == {"tag": "loss", "kind": "scalar", "points": 10, "step_min": 0, "step_max": 9,
                    "wall_time_first": "2023-11-14T22:13:20Z",
                    "wall_time_last": "2023-11-14T22:13:29Z", "last_value": 1.0}
    (f,) = r1["files"]
    assert f["records"] == 16 and f["points"] == 15 and f["state"] == "ok" and f["notes"] == []
    assert f["size_bytes"] == (logdir / "exp/run1/events.out.tfevents.1.host").stat().st_size
    r2 = runs["exp/run2"]
    assert [f.records for f in r2.files] == [4, 15]
    assert r2.points["scalar"] == 3 + 14


def test_problems_have_file_and_offset(damaged):
    logdir, where = damaged
    report = inspect_path(logdir)
    trunc, trunc_off = where["trunc"]
    corrupt, corrupt_off = where["corrupt"]
    problems = report.all_problems
    assert len(problems) == 2
    assert problems[0].startswith(f"{trunc}: incomplete record at byte {trunc_off}")
    assert problems[1].startswith(f"{corrupt}: corrupt at byte {corrupt_off}")
    states = {f.path: f.state for r in report.runs for f in r.files}
    assert states[trunc] == f"incomplete tail at byte {trunc_off}"
    assert states[corrupt] == f"corrupt at byte {corrupt_off}"
    text = report.render()
    assert f"corrupt at byte {corrupt_off}" in text and "problems (2):" in text


def test_render_is_a_readable_table(logdir):
    text = inspect_path(logdir).render()
    lines = text.splitlines()
    assert lines[0].startswith(f"{logdir}: 3 runs, 4 event files, ")
    assert ("run exp/run1  (15 scalar; steps 0..9; "
            "2023-11-14T22:13:20Z .. 2023-11-14T22:13:29Z)") in lines
    header = next(ln for ln in lines if ln.strip().startswith("kind"))
    assert header.split() == ["kind", "tag", "points", "steps", "first", "last", "last", "value"]
    loss_row = next(ln for ln in lines if " loss " in ln)
    assert loss_row.split()[:4] == ["scalar", "loss", "10", "0..9"]
    # columns line up: the 'points' column is right-aligned under its header
    assert loss_row.index("10") + 2 == header.index("points") + len("points")


def test_single_event_file(logdir):
    path = logdir / "exp/run1/events.out.tfevents.1.host"
    report = inspect_path(path)
    assert [r.name for r in report.runs] == ["run1"]
    assert report.runs[0].points["scalar"] == 15
    result = CliRunner().invoke(main, ["inspect", str(path), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["points"]["scalar"] == 15


def test_every_kind_from_pytorch(tmp_path):
    pytest.importorskip("torch")
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(tmp_path / "run"))
    w.add_scalar("loss", 1.0, 0)
    w.add_histogram("w", np.arange(10.0), 1)
    w.add_image("img", np.zeros((3, 4, 4), dtype=np.uint8), 2)
    w.add_text("note", "hi", 3)
    w.close()
    d = inspect_path(tmp_path).to_dict()
    assert d["runs"][0]["tags"] == {"scalar": ["loss"], "histogram": ["w"], "image": ["img"],
                                     "text": ["note/text_summary"]}
    assert (d["runs"][0]["step_min"], d["runs"][0]["step_max"]) == (0, 3)


@pytest.mark.parametrize("case", ["missing", "empty folder"])
def test_usage_errors_exit_2(case, tmp_path):
    (tmp_path / "empty").mkdir()
    path = tmp_path / ("nope" if case == "missing" else "empty")
    result = CliRunner().invoke(main, ["inspect", str(path)])
    assert result.exit_code == 2
    assert "error:" in result.stderr and str(path) in result.stderr
