"""No run fails forever on one bad point (README: "Points a destination refuses").

Against the real destinations (MLflow's sqlite store, a real ``mlflow server`` and the file
store; W&B offline; a local Aim repo; ClearML offline), read back with each vendor's own client
or files (``tests/destinations/harness_*.py``). For every class of point found to fail a run on
every sync — path-like MLflow tags, negative wall times, params and tags that map to one key,
an unusable manifest start time, images a vendor cannot decode — and for the safety net
(a point the vendor refuses by its own rules, found by bisecting the batch): the valid points
land exactly once, the bad item is counted and named with its file and byte range, the next
sync exits 0 and sends nothing again, and nothing raises.
"""
from __future__ import annotations

import json
import math
import os
import re
import struct
import subprocess
import sys
import uuid
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tensorboard.compat.proto import event_pb2, summary_pb2

from tests.destinations.harness_aim import AimLocalHarness
from tests.destinations.harness_clearml import ClearmlOfflineHarness
from tests.destinations.harness_mlflow import (MlflowFileStoreHarness, MlflowLocalHarness,
                                               MlflowServer, _MlflowHarness)
from tests.destinations.harness_wandb import WandbOfflineHarness
from tracelet.destinations.keys import KeyLedger, tag_hash
from tracelet.destinations.mlflow import mlflow_accepts, mlflow_key
from tracelet.engine import SyncOptions, run_sync
from tracelet.reader import frame_record
from tracelet.testing.events import image_bytes
from tracelet.testing.harness import canon

T0 = 1_700_000_000.0
REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------
# sources: real event records, with the byte range of each
# ---------------------------------------------------------------------------------------------
class EventFile:
    """An event file built from real protos; remembers each record's byte range and the
    valid points it holds (the truth a destination must show)."""

    def __init__(self, path: Path):
        self.path = path
        self.chunks: list[bytes] = []
        self.size = 0
        self.scalars: list[tuple[str, int, float]] = []  # valid (tag, step, value)
        self.images = 0  # valid images
        self._add(event_pb2.Event(wall_time=T0, file_version="brain.Event:2"))

    def _add(self, ev) -> tuple[int, int]:
        rec = frame_record(ev.SerializeToString())
        start = self.size
        self.chunks.append(rec)
        self.size += len(rec)
        return start, self.size

    def scalar(self, tag: str, step: int, value: float, wall: float | None = None,
               valid: bool = True) -> tuple[int, int]:
        v = float(np.float32(value))
        if valid:
            self.scalars.append((tag, step, v))
        return self._add(event_pb2.Event(step=step, wall_time=T0 + step if wall is None else wall,
                                         summary=summary_pb2.Summary(value=[
                                             summary_pb2.Summary.Value(tag=tag, simple_value=v)])))

    def image(self, tag: str, step: int, encoded: bytes, width: int = 8, height: int = 6,
              valid: bool = True) -> tuple[int, int]:
        self.images += valid
        im = summary_pb2.Summary.Image(width=width, height=height, colorspace=3,
                                       encoded_image_string=encoded)
        return self._add(event_pb2.Event(step=step, wall_time=T0 + step, summary=summary_pb2.Summary(
            value=[summary_pb2.Summary.Value(tag=tag, image=im)])))

    def write(self, append: bool = False) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab" if append else "wb") as f:
            f.write(b"".join(self.chunks))
        self.chunks = []
        return self.path


def png(seed: int = 0) -> bytes:
    return image_bytes(16, 12, seed, "PNG")


def truncated_png() -> bytes:
    data = png(1)
    return data[: len(data) // 2]


def png_bad_crc() -> bytes:
    data = bytearray(png(2))
    idat = data.index(b"IDAT")
    data[idat + 6] ^= 0xFF  # a byte of the compressed pixels: the chunk's CRC no longer matches
    return bytes(data)


def jpeg_cut_short() -> bytes:
    data = image_bytes(16, 12, 3, "JPEG")
    return data[: len(data) * 2 // 3]


def png_claiming(width: int, height: int) -> bytes:
    """A well-formed PNG whose IHDR (CRC fixed up) declares ``width`` x ``height`` pixels."""
    data = bytearray(png(4))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


BIG = 1 << 30
# a real `mlflow server` (started once for this module: ~20 s)
SERVER = pytest.param("mlflow-server", marks=[pytest.mark.server, pytest.mark.slow])


# ---------------------------------------------------------------------------------------------
# destinations
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    yield server
    server.stop()


class _ServerHarness(_MlflowHarness):
    label = "mlflow-server"

    def __init__(self, uri: str):
        self.uri = uri

    def setup(self, tmp_path, monkeypatch):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", self.uri)
        return {"mlflow_uri": self.uri}


def _make(kind: str, tmp_path, monkeypatch, request):
    if kind == "mlflow-server":
        h = _ServerHarness(request.getfixturevalue("mlflow_server").uri)
    else:
        h = {"mlflow-local": MlflowLocalHarness, "mlflow-filestore": MlflowFileStoreHarness,
             "wandb-offline": WandbOfflineHarness, "aim-local": AimLocalHarness,
             "clearml-offline": ClearmlOfflineHarness}[kind]()
    h.config = h.setup(tmp_path, monkeypatch)
    return h


@pytest.fixture
def dest(request, tmp_path, monkeypatch):
    h = _make(request.param, tmp_path, monkeypatch, request)
    yield h
    h.teardown()


def sync(logdir: Path, h, project: str, capsys=None):
    opts = SyncOptions(destinations=[h.name], project=project, dest_config=dict(h.config),
                       progress=False)
    report = run_sync([str(logdir)], opts)
    if capsys is not None:
        # a vendor's log handler bound to an earlier test's (closed) captured stream prints a
        # "--- Logging error ---" block: pytest's doing, not a traceback of the sync
        err = re.sub(r"--- Logging error ---.*?\nArguments: [^\n]*\n", "",
                     capsys.readouterr().err, flags=re.S)
        assert "Traceback" not in err, err
    return report


def dest_report(report, run: str, name: str):
    (rr,) = [r for r in report.runs if r.run == run]
    return rr.destinations[name]


def assert_lands_exactly(h, project: str, run: str, scalars, images: int | None = None):
    rb = h.read_back(project, run)
    assert rb.runs_found == 1, (run, rb.runs_found)
    want: dict[str, Counter] = {}
    for tag, step, v in scalars:
        want.setdefault(h.metric_key(tag), Counter())[(step, canon(v))] += 1
    got = {k: Counter((s, canon(v)) for s, v in pts) for k, pts in rb.scalars.items()}
    assert got == want, {"missing": {k: w - got.get(k, Counter()) for k, w in want.items()
                                     if w - got.get(k, Counter())},
                         "extra": {k: g - want.get(k, Counter()) for k, g in got.items()
                                   if g - want.get(k, Counter())}}
    if images is not None:
        assert rb.images == images, (rb.images, images)
    return rb


def assert_second_sync_sends_nothing(logdir, h, project, run, capsys=None):
    again = sync(logdir, h, project, capsys)
    assert again.exit_code == 0, again.to_dict()
    d = dest_report(again, run, h.name)
    assert d.state == "unchanged" and not d.points_sent and not d.quarantined, d


def project_name() -> str:
    return f"q{uuid.uuid4().hex[:10]}"


# ---------------------------------------------------------------------------------------------
# MLflow: path-like tags, keys that would collide, negative wall times, params
# ---------------------------------------------------------------------------------------------
PATH_LIKE = ["...", "..hidden", "..\\..\\x", "..", ".", "", "/", "../up", "./..", "a/../../b",
             "..../x", "x/..", "//..//", ".. /x"]


def _mlflow_validates(name: str) -> bool:
    from mlflow.exceptions import MlflowException
    from mlflow.utils.validation import _validate_metric, _validate_param

    try:
        _validate_metric(name, 1.0, 0, 0)
        _validate_param(name, "v")
    except MlflowException:
        return False
    return True


def test_mlflow_key_accepts_exactly_what_mlflow_accepts():
    corpus = PATH_LIKE + ["loss", "Loss/Train", "a b:c-d.e_f", "ünïcode/损失", "a//b", "/a", "a/",
                          "a/./b", "x" * 250, "x" * 251, "loss#1", "loss$1", "loss_1", "w (a)",
                          "w [a]", "tab\there", "trail\n", "\n", "a/.b", ".a", "..a/b", "a..b",
                          "./a", "é" * 250, "end/.", "系统/" + "损" * 247]
    keys = {}
    for tag in corpus:
        assert mlflow_accepts(tag) == _mlflow_validates(tag), tag
        key = mlflow_key(tag)
        assert _mlflow_validates(key), (tag, key)
        assert (key == tag) == mlflow_accepts(tag), (tag, key)  # valid tags stay unchanged
        if key != tag:
            assert key.endswith("-" + tag_hash(tag)), (tag, key)
        assert key not in keys, (tag, keys.get(key), key)  # no two tags on one key
        keys[key] = tag


@pytest.mark.parametrize("dest", ["mlflow-local", SERVER], indirect=True)
def test_mlflow_path_like_tags_land_under_keys_mlflow_accepts(dest, tmp_path, capsys):
    h, project = dest, project_name()
    ev = EventFile(tmp_path / "logs" / "run" / "events.out.tfevents.1.host")
    for step in range(3):
        ev.scalar("loss", step, 0.5 + step)
        for k, tag in enumerate(PATH_LIKE):
            ev.scalar(tag, step, k + step / 10)
    ev.write()
    report = sync(tmp_path / "logs", h, project, capsys)
    assert report.exit_code == 0, report.to_dict()
    d = dest_report(report, "run", "mlflow")
    assert d.points_sent == {"scalar": 3 * (len(PATH_LIKE) + 1)} and not d.quarantined
    assert_lands_exactly(h, project, "run", ev.scalars)
    for tag in PATH_LIKE:
        assert any(line.startswith(f"tag {tag!r} is mlflow key {mlflow_key(tag)!r}")
                   for line in d.keys), (tag, d.keys)
    assert_second_sync_sends_nothing(tmp_path / "logs", h, project, "run", capsys)


COLLIDING = [("loss#1", "loss$1", "loss_1"), ("acc (top)", "acc [top]", "acc _top_"),
             ("x/./y", "x//y", "x/y"), ("/lead", "lead/", "lead")]


@pytest.mark.parametrize("dest", ["mlflow-local"], indirect=True)
def test_mlflow_tags_that_clean_alike_stay_apart_stably(dest, tmp_path, capsys):
    h, project = dest, project_name()
    logdir = tmp_path / "logs"
    # two runs meeting the tags in opposite orders get the same keys
    files = {}
    for run, order in (("fwd", 1), ("rev", -1)):
        ev = files[run] = EventFile(logdir / run / "events.out.tfevents.1.host")
        for triple in COLLIDING:
            for k, tag in enumerate(triple[::order]):
                ev.scalar(tag, 0, 10 * k + 1)
        ev.write()
    report = sync(logdir, h, project, capsys)
    assert report.exit_code == 0, report.to_dict()
    for run, ev in files.items():
        assert_lands_exactly(h, project, run, ev.scalars)
        lines = dest_report(report, run, "mlflow").keys
        for triple in COLLIDING:
            valid = [t for t in triple if mlflow_accepts(t)]
            assert len({mlflow_key(t) for t in triple}) == 3
            # every tag that would have met another is named together with it
            for t in triple:
                if t in valid:
                    continue
                assert any(t in line and "would both be" in line for line in lines), (t, lines)
    # a later sync of more points of the same tags: the same keys, nothing moves
    ev = files["fwd"]
    for triple in COLLIDING:
        for k, tag in enumerate(triple):
            ev.scalar(tag, 1, 100 + k)
    ev.write(append=True)
    later = sync(logdir, h, project, capsys)
    assert later.exit_code == 0 and not dest_report(later, "fwd", "mlflow").keys
    assert_lands_exactly(h, project, "fwd", ev.scalars)


@pytest.mark.parametrize("dest", ["mlflow-local", SERVER], indirect=True)
def test_mlflow_negative_wall_times_and_colliding_params(dest, tmp_path, capsys):
    h, project = dest, project_name()
    run = tmp_path / "logs" / "run"
    ev = EventFile(run / "events.out.tfevents.1.host")
    for step, wall in enumerate([-1.0, -0.001, -1e9, T0, float("nan"), 1e300, -math.inf]):
        ev.scalar("loss", step, step, wall=wall)
    ev.write()
    manifest = {"run_id": "rid-neg", "project": project, "status": "finished",
                "started_at": T0, "ended_at": T0 + 60,
                "params": {"w (a)": 1, "w [a]": 2, "w _a_": 3, "lr": 0.1, "x#1": "a", "x$1": "b"}}
    (run / "tracelet.json").write_text(json.dumps(manifest))
    side = run / "sysmetrics"
    side.mkdir()
    # negative sample times pass the sidecar reader (it drops NaN/Inf/beyond 1e12 s itself)
    pq.write_table(pa.table({"timestamp": [-5.0, T0 + 1, -1e9], "name": ["cpu/x"] * 3,
                             "value": [1.0, 2.0, 3.0]}), side / "part-000001.parquet")
    report = sync(tmp_path / "logs", h, project, capsys)
    assert report.exit_code == 0, report.to_dict()
    d = dest_report(report, "run", "mlflow")
    assert d.points_sent == {"scalar": 7, "system": 3} and not d.quarantined, d
    rb = assert_lands_exactly(h, project, "run", ev.scalars)
    assert rb.system_points == 3
    from mlflow import MlflowClient

    c = MlflowClient(tracking_uri=h.uri)
    r = c.search_runs([c.get_experiment_by_name(project).experiment_id])[0]
    stamps = sorted(m.timestamp for m in c.get_metric_history(r.info.run_id, "loss"))
    assert stamps == [0] * 6 + [int(T0 * 1000)]
    want = {mlflow_key(k): str(v) for k, v in manifest["params"].items()}
    assert len(want) == 6 and {k: rb.params[k] for k in want} == want
    assert any("'w (a)' and 'w [a]' would both be" in line for line in d.keys), d.keys
    assert_second_sync_sends_nothing(tmp_path / "logs", h, project, "run", capsys)


def test_key_ledger_reports_a_real_merge_and_is_order_independent():
    for order in (1, -1):
        known: dict[str, str] = {}
        led = KeyLedger(known, "mlflow")
        tags = ["loss#1", "loss_1", "loss_1-" + tag_hash("loss#1")][::order]  # the last IS a key
        lines = led.note("m", tags, mlflow_key)
        assert any("both map to mlflow key" in line and "stored together" in line
                   for line in lines), lines
        assert sorted(known) == sorted({f"m:{mlflow_key(t)}" for t in tags})


# ---------------------------------------------------------------------------------------------
# images a destination cannot take
# ---------------------------------------------------------------------------------------------
BAD_IMAGES = [  # (name, bytes, proto width, height, refused by W&B/Aim, refused by ClearML)
    ("truncated PNG", truncated_png(), 16, 12, True, True),
    ("PNG with a bad CRC", png_bad_crc(), 16, 12, True, True),
    ("JPEG cut short", jpeg_cut_short(), 16, 12, True, True),
    ("PNG claiming 2^30 x 2^30", png_claiming(BIG, BIG), BIG, BIG, True, True),
    ("garbage under a 2^30 x 2^30 legacy header", b"not an image at all", BIG, BIG, True, False),
]
REASONS = {"truncated PNG": "truncated PNG", "PNG with a bad CRC": "bad CRC",
           "JPEG cut short": "truncated JPEG", "PNG claiming 2^30 x 2^30": "1073741824x1073741824",
           "garbage under a 2^30 x 2^30 legacy header": "not an image format"}


def _image_run(path: Path) -> tuple[EventFile, dict[str, tuple[int, int, int]]]:
    ev = EventFile(path)
    where = {}
    step = 0
    for k in range(2):
        ev.scalar("loss", step, k)
        ev.image("samples", step, png(10 + k))
        step += 1
    for name, data, w, h_, *_ in BAD_IMAGES:
        ev.scalar("loss", step, step)
        where[name] = (step, *ev.image("samples", step, data, w, h_, valid=False))
        step += 1
    ev.scalar("loss", step, step)
    ev.image("samples", step, image_bytes(16, 12, 20, "JPEG"))
    ev.image("samples", step + 1, image_bytes(16, 12, 21, "GIF"))
    ev.scalar("loss", step + 1, step + 1)
    ev.write()
    return ev, where


@pytest.mark.parametrize("dest", ["wandb-offline", "aim-local", "clearml-offline", "mlflow-local"],
                         indirect=True)
def test_bad_images_are_quarantined_and_the_rest_lands(dest, tmp_path, capsys):
    h, project = dest, project_name()
    logdir = tmp_path / "logs"
    ev, where = _image_run(logdir / "run" / "events.out.tfevents.1.host")
    report = sync(logdir, h, project, capsys)
    assert report.exit_code == 0, report.to_dict()
    d = dest_report(report, "run", h.name)
    if h.name == "mlflow":  # stored as artifact files, the writer's bytes: nothing refused
        refused = []
    else:
        col = 5 if h.name == "clearml" else 4
        refused = [b[0] for b in BAD_IMAGES if b[col]]
    assert d.quarantined == ({"image": len(refused)} if refused else {}), d
    valid_images = ev.images + (len(BAD_IMAGES) - len(refused) if h.name == "mlflow" else 0)
    if h.name == "clearml":
        valid_images = ev.images  # a format ClearML does not know is a .bin sample, not an image
    assert d.points_sent == {"scalar": len(ev.scalars), "image": ev.images + len(BAD_IMAGES)
                             - len(refused)}, d
    assert_lands_exactly(h, project, "run", ev.scalars, images=valid_images)
    for name in refused:
        step, a, b = where[name]
        line = [x for x in d.quarantine if f"step {step} " in x]
        assert len(line) == 1, d.quarantine
        assert line[0].startswith(f"1 image 'samples' step {step} rejected by {h.name}: "), line
        assert REASONS[name] in line[0], line
        assert f"events.out.tfevents.1.host: bytes {a}\u2013{b}" in line[0], (line, a, b)
    assert_second_sync_sends_nothing(logdir, h, project, "run", capsys)
    # more points later: they land; the quarantined images are not tried again
    ev.scalar("loss", 99, 9.5)
    ev.image("samples", 99, png(30))
    ev.write(append=True)
    later = sync(logdir, h, project, capsys)
    assert later.exit_code == 0
    d2 = dest_report(later, "run", h.name)
    assert d2.points_sent == {"scalar": 1, "image": 1} and not d2.quarantined, d2
    assert_lands_exactly(h, project, "run", ev.scalars, images=valid_images + 1)


def test_image_checks_cover_the_class(tmp_path):
    from tracelet.media import image_problem

    for fmt in ("PNG", "JPEG", "GIF"):
        good = image_bytes(40, 30, 5, fmt)
        assert image_problem(good) is None and image_problem(good, decode=True) is None
        for cut in (len(good) // 3, len(good) - 1):
            assert image_problem(good[:cut]), (fmt, cut)
            assert image_problem(good[:cut], decode=True), (fmt, cut)
    assert "CRC" in image_problem(png_bad_crc())
    for w, h in ((BIG, BIG), (0, 5), (20000, 20000)):
        assert image_problem(png_claiming(w, h)), (w, h)
    assert image_problem(png_claiming(64, 48)) is None  # header fine (pixels then disagree)
    assert image_problem(png_claiming(64, 48), decode=True)  # ... which a decode finds
    assert image_problem(b"abc") is None and image_problem(b"abc", decode=True)


# ---------------------------------------------------------------------------------------------
# a manifest start time no destination can use
# ---------------------------------------------------------------------------------------------
BAD_STARTS = [float("nan"), 1e300, -5.0, "not a date", float("inf")]


@pytest.mark.parametrize("dest", ["mlflow-local", "wandb-offline", "aim-local", "clearml-offline"],
                         indirect=True)
def test_unusable_start_time_never_fails_a_destination(dest, tmp_path, capsys):
    h, project = dest, project_name()
    logdir = tmp_path / "logs"
    truth = {}
    for k, started in enumerate(BAD_STARTS):
        run = logdir / f"run{k}"
        ev = EventFile(run / "events.out.tfevents.1.host")
        for step in range(4):
            ev.scalar("loss", step, step + k)
        ev.write()
        truth[f"run{k}"] = ev.scalars
        (run / "tracelet.json").write_text(json.dumps({
            "run_id": f"rid-start-{k}", "project": project, "status": "finished",
            "started_at": started, "ended_at": started, "params": {"lr": 0.1}}))
        (run / "sysmetrics").mkdir()
        pq.write_table(pa.table({"timestamp": [T0 + 1, T0 + 2], "name": ["cpu/utilization_percent"] * 2,
                                 "value": [1.0, 2.0]}), run / "sysmetrics" / "part-000001.parquet")
    report = sync(logdir, h, project, capsys)
    assert report.exit_code == 0, report.to_dict()
    for run, scalars in truth.items():
        d = dest_report(report, run, h.name)
        assert d.state == "synced" and d.points_sent.get("system") == 2, d
        rb = assert_lands_exactly(h, project, run, scalars)
        assert rb.system_points == 2
        rr = [r for r in report.runs if r.run == run][0]
        assert any("started_at" in p for p in rr.problems), rr.problems
    again = sync(logdir, h, project, capsys)
    assert again.exit_code == 0 and all(
        d.state == "unchanged" for r in again.runs for d in r.destinations.values())


# ---------------------------------------------------------------------------------------------
# the safety net: a destination's own rule refuses a point the mapping lets through
# ---------------------------------------------------------------------------------------------
# Valid for MLflow's key rules (200 characters) and any W&B/ClearML tag, but 600 bytes in UTF-8:
# MLflow's file store (metrics/<key>), W&B (media/images/<key>_...) and ClearML (the debug
# sample's file) name a file after it, and a file name is at most 255 bytes.
LONG = "损" * 200


@pytest.mark.parametrize("dest", ["mlflow-filestore", "wandb-offline", "clearml-offline"],
                         indirect=True)
def test_safety_net_isolates_what_the_vendor_refuses(dest, tmp_path, capsys):
    h, project = dest, project_name()
    logdir = tmp_path / "logs"
    ev = EventFile(logdir / "run" / "events.out.tfevents.1.host")
    bad = []
    for step in range(30):
        ev.scalar("loss", step, step / 7)
        ev.scalar("acc", step, 1 - step / 70)
        if step in (3, 17):
            if h.name == "mlflow":  # the metric's own file
                bad.append((step, *ev.scalar("x/" + LONG, step, 1.0, valid=False)))
            else:  # the image's file
                bad.append((step, *ev.image("x/" + LONG, step, png(step), valid=False)))
        if step % 5 == 0:
            ev.image("samples", step, png(100 + step))
    ev.write()
    report = sync(logdir, h, project, capsys)
    assert report.exit_code == 0, report.to_dict()
    d = dest_report(report, "run", h.name)
    kind = "scalar" if h.name == "mlflow" else "image"
    assert d.quarantined == {kind: 2}, d
    # the file store appends a resent metric again and the batch half-landed before it was
    # refused: exact counts prove each half was resent with dedupe
    assert_lands_exactly(h, project, "run", ev.scalars, images=ev.images)
    for step, a, b in bad:
        (line,) = [x for x in d.quarantine if f"step {step} " in x]
        assert f"rejected by {h.name}: " in line and "File name too long" in line, line
        assert f"events.out.tfevents.1.host: bytes {a}\u2013{b}" in line, (line, a, b)
    assert_second_sync_sends_nothing(logdir, h, project, "run", capsys)


@pytest.mark.parametrize("dest", ["mlflow-filestore"], indirect=True)
def test_every_record_refused_alone_fails_the_destination_not_the_points(dest, tmp_path, capsys):
    h, project = dest, project_name()
    logdir = tmp_path / "logs"
    ev = EventFile(logdir / "run" / "events.out.tfevents.1.host")
    ev.scalar("a/" + LONG, 0, 1.0, valid=False)
    ev.scalar("b/" + LONG, 0, 2.0, valid=False)
    ev.write()
    # nothing else was written to the destination in this sync: two records that each fail
    # alone may as well be a destination refusing everything, so nothing is quarantined
    first = sync(logdir, h, project, capsys)
    d = dest_report(first, "run", "mlflow")
    assert first.exit_code == 1 and d.state == "failed" and not d.quarantined, d
    assert "failure of the destination" in d.error, d.error
    # once anything lands, the two are told apart from the destination: quarantined
    ev.scalar("loss", 1, 0.5)
    ev.write(append=True)
    second = sync(logdir, h, project, capsys)
    d = dest_report(second, "run", "mlflow")
    assert second.exit_code == 0 and d.quarantined == {"scalar": 2}, d
    assert_lands_exactly(h, project, "run", ev.scalars)
    assert_second_sync_sends_nothing(logdir, h, project, "run", capsys)


def test_destination_wide_errors_are_not_quarantined():
    """The vendor boundary types each error from its type, errno or MLflow error code: what
    names the destination as a whole fails it; what names the content is quarantined."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import (INVALID_PARAMETER_VALUE, PERMISSION_DENIED,
                                              RESOURCE_DOES_NOT_EXIST)

    from tracelet.destinations.base import typed_error
    from tracelet.destinations.mlflow.client import MlflowDestination
    from tracelet.errors import DestinationError
    from tracelet.quarantine import destination_wide

    def wide(e):
        return destination_wide(typed_error(MlflowDestination.classify(None, e), e))

    assert wide(PermissionError(13, "Permission denied"))
    assert wide(MlflowException("no", error_code=PERMISSION_DENIED))
    assert wide(MlflowException("gone", error_code=RESOURCE_DOES_NOT_EXIST))
    assert wide(OSError(28, "No space left on device"))
    assert wide(TypeError("f() missing 1 required argument"))  # a bug
    assert destination_wide(DestinationError("mlflow: experiment 'p' is deleted"))
    assert not wide(OSError(36, "File name too long"))
    assert not wide(MemoryError())
    assert not wide(ValueError("Invalid value -1000 for parameter"))
    assert not wide(MlflowException("Invalid value -1000 for parameter 'x'",
                                    error_code=INVALID_PARAMETER_VALUE))


@pytest.mark.parametrize("dest", ["mlflow-local"], indirect=True)
def test_deleted_experiment_fails_the_destination_without_quarantine(dest, tmp_path, capsys):
    h, project = dest, project_name()
    logdir = tmp_path / "logs"
    ev = EventFile(logdir / "run" / "events.out.tfevents.1.host")
    ev.scalar("loss", 0, 1.0)
    ev.write()
    assert sync(logdir, h, project, capsys).exit_code == 0
    from mlflow import MlflowClient

    c = MlflowClient(tracking_uri=h.uri)
    exp = c.get_experiment_by_name(project)
    c.delete_experiment(exp.experiment_id)
    ev.scalar("loss", 1, 2.0)
    ev.write(append=True)
    failed = sync(logdir, h, project, capsys)
    d = dest_report(failed, "run", "mlflow")
    assert failed.exit_code == 1 and d.state == "failed" and not d.quarantined, d
    c.restore_experiment(exp.experiment_id)
    assert sync(logdir, h, project, capsys).exit_code == 0
    assert_lands_exactly(h, project, "run", ev.scalars)


# ---------------------------------------------------------------------------------------------
# the other destinations' key mappings never merge two tags
# ---------------------------------------------------------------------------------------------
TAG_SETS = {
    "wandb": ["_step", "tb/_step", "", "tb/untagged", "system/cpu", "tb/system/cpu", "loss",
              "global_step", "tb/global_step"],
    "clearml": ["loss", "loss/loss", "loss #2", "loss (nan)", "img [1]", "a/b", "a/b #3"],
    "aim": ["", "_", "loss"],
}


@pytest.mark.parametrize("dest", ["wandb-offline", "clearml-offline", "aim-local"], indirect=True)
def test_reserved_and_colliding_tags_stay_apart(dest, tmp_path, capsys):
    h, project = dest, project_name()
    tags = TAG_SETS[h.name]
    assert len({h.metric_key(t) for t in tags}) == len(tags)
    ev = EventFile(tmp_path / "logs" / "run" / "events.out.tfevents.1.host")
    for step in range(3):
        for k, tag in enumerate(tags):
            ev.scalar(tag, step, k + step / 4)
    ev.scalar("loss", 2, 7.0)  # a repeated step: ClearML's own "loss #2" series
    ev.write()
    report = sync(tmp_path / "logs", h, project, capsys)
    assert report.exit_code == 0, report.to_dict()
    assert_lands_exactly(h, project, "run", ev.scalars)
    assert_second_sync_sends_nothing(tmp_path / "logs", h, project, "run", capsys)


# ---------------------------------------------------------------------------------------------
# the command line: what cron sees
# ---------------------------------------------------------------------------------------------
def test_cli_reports_quarantine_and_exits_0_twice(tmp_path):
    logdir = tmp_path / "logs"
    ev = EventFile(logdir / "run" / "events.out.tfevents.1.host")
    ev.scalar("loss", 0, 1.0)
    a, b = ev.scalar("x/" + LONG, 0, 1.0, valid=False)
    ev.scalar("loss", 1, 2.0)
    ev.write()
    env = dict(os.environ, PYTHONPATH=str(REPO / "syncer"), MLFLOW_ALLOW_FILE_STORE="true")
    cmd = [sys.executable, "-m", "tracelet.cli", "sync", str(logdir), "--to", "mlflow",
           "--mlflow-uri", f"file:{tmp_path / 'mlruns'}", "--project", "q", "--json"]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "Traceback" not in first.stderr
    d = json.loads(first.stdout)["runs"][0]["destinations"]["mlflow"]
    assert d["quarantined"] == {"scalar": 1} and d["points_sent"] == {"scalar": 2}
    assert f"events.out.tfevents.1.host: bytes {a}\u2013{b}" in d["quarantine"][0]
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0 and "Traceback" not in second.stderr
    d = json.loads(second.stdout)["runs"][0]["destinations"]["mlflow"]
    assert d["state"] == "unchanged" and not d["points_sent"]
