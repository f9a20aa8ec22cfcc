"""The in-process API: run directory, manifest, values in event files, params, artifacts."""
from __future__ import annotations

import json
import logging
import os
import sys
import types

import numpy as np
import pytest
import torch

import tracelet
from tests.recorder.recorder_helpers import FAST, read_run
from tracelet.errors import UsageError
from tracelet.redact import REDACTED


def test_run_dir_layout_and_manifest(logdir):
    exp = tracelet.start_logging("exp", "proj", ["MLflow", "wandb"], {**FAST, "tags": ["baseline"]})
    assert exp.run_dir == logdir / "proj" / "exp"
    assert tracelet.get_active_experiment() is exp
    m = exp.manifest
    assert m["status"] == "running" and m["ended_at"] is None
    assert m["backends"] == ["mlflow", "wandb"] and m["tags"] == {"baseline": ""}
    assert m["name"] == "exp" and m["project"] == "proj" and len(m["run_id"]) == 32
    assert m["system"]["hostname"] and m["system"]["cpus"] >= 1 and m["system"]["memory_bytes"] > 0
    tracelet.stop_logging()
    assert tracelet.get_active_experiment() is None
    run = read_run(exp.run_dir)
    assert run.manifest["status"] == "finished" and run.manifest["ended_at"] >= m["started_at"]
    assert run.manifest["run_id"] == m["run_id"]
    tracelet.stop_logging()  # no active run: a no-op


def test_names_defaults_and_unique_suffix(tmp_path, monkeypatch, logdir):
    a = tracelet.start_logging("same", config=FAST)
    b = tracelet.start_logging("same", config=FAST)  # stops `a` and takes a fresh folder
    assert a.status == "finished" and a.run_dir.name == "same" and b.run_dir.name == "same-1"
    assert b.run_dir.parent == logdir / "default"
    c = tracelet.start_logging(config=FAST)
    assert c.run_dir.name.startswith("run-")
    d = tracelet.start_logging("../.hidden/x", "p", config=FAST)  # never escapes, never hidden
    assert d.run_dir.parent == logdir / "p" and not d.run_dir.name.startswith(".")
    tracelet.stop_logging()
    monkeypatch.delenv("TRACELET_LOGDIR")
    e = tracelet.start_logging("e", config=FAST)
    assert e.run_dir == tmp_path / "tracelet_runs" / "default" / "e"
    f = tracelet.start_logging("f", config={**FAST, "logdir": str(tmp_path / "cfg")})
    assert f.run_dir == tmp_path / "cfg" / "default" / "f"
    tracelet.stop_logging()


def test_metrics_steps_and_scalar_types(logdir):
    with tracelet.start_logging("m", config=FAST) as exp:
        exp.log_metric("loss", 1.5)  # step None -> 0, 1, 2 per tag
        exp.log_metric("loss", np.float32(0.5))
        exp.log_metric("loss", torch.tensor(0.25, requires_grad=True) * 1)
        exp.log_metric("acc", np.array([0.9]), step=0)  # step 0 is a step
        exp.log_metric("acc", torch.tensor([0.95]), step=np.int64(10))
        exp.log_metric("acc", True)  # after 10 comes 11
        exp.log_metrics({"a": 1, "b": 2}, step=3)
        exp.writer.add_scalar("w", 3.0, 7)
        exp.writer.add_scalars("grp", {"x": 1.0, "y": 2.0}, 1)
        with pytest.raises(TypeError):
            exp.log_metric("bad", "not a number")
        with pytest.raises(TypeError):
            exp.log_metric("bad", torch.ones(3))
    run = read_run(exp.run_dir)
    assert run.scalars["loss"] == [(0, 1.5), (1, 0.5), (2, 0.25)]
    assert run.scalars["acc"] == [(0, pytest.approx(0.9)), (10, pytest.approx(0.95)), (11, 1.0)]
    assert run.scalars["a"] == [(3, 1.0)] and run.scalars["w"] == [(7, 3.0)]
    assert run.scalars["grp/x"] == [(1, 1.0)] and run.scalars["grp/y"] == [(1, 2.0)]
    assert "bad" not in run.scalars and not run.corrupt


def test_params_flattened_redacted_and_in_hparams(logdir):
    with tracelet.start_logging("p", config=FAST) as exp:
        stored = exp.log_params({
            "lr": np.float64(0.001), "layers": [64, 32], "seed": 42, "use_amp": True,
            "optimizer": {"name": "adamw", "betas": (0.9, 0.99)},
            "db": {"Password": "hunter2", "host": "db"},
            "HF_TOKEN": "hf_abc", "wandb_api_key": "k", "apiKey": "k", "my_secret_sauce": "s",
            "credentials": {"user": "u", "key": "k"}, "ssh": {"private_key": "-----BEGIN"},
            "data_url": "postgres://alice:pw@db.example/x", "device": torch.device("cpu"),
            "servers": [{"host": "a", "auth": "hunter3"}], "cfg": '{"passwd": "hunter4"}',
        })
        exp.log_params({"seed": 43})  # a later call overrides, merged in the same flush window
    assert stored["db/Password"] == REDACTED and stored["db/host"] == "db"
    run = read_run(exp.run_dir)
    params = run.manifest["params"]
    for key in ("db/Password", "HF_TOKEN", "wandb_api_key", "apiKey", "my_secret_sauce",
                "credentials/user", "credentials/key", "ssh/private_key"):
        assert params[key] == REDACTED, key
    assert params["lr"] == 0.001 and params["layers"] == [64, 32] and params["seed"] == 43
    assert params["optimizer/name"] == "adamw" and params["optimizer/betas"] == [0.9, 0.99]
    assert params["data_url"] == "postgres://alice@db.example/x" and params["device"] == "cpu"
    assert params["servers"] == [{"host": "a", "auth": REDACTED}]  # names at any depth
    assert json.loads(params["cfg"]) == {"passwd": REDACTED}  # JSON text is parsed
    raw = (exp.run_dir / "tracelet.json").read_text()
    for secret in ("hunter2", "hunter3", "hunter4", "hf_abc", ":pw@"):
        assert secret not in raw, secret
    # the same params, as TensorBoard's HParams plugin data (session_start_info)
    assert run.hparams[-1]["seed"] == 43 and run.hparams[-1]["db/Password"] == REDACTED
    assert run.hparams[-1]["use_amp"] is True and run.hparams[-1]["optimizer/name"] == "adamw"
    assert len(run.hparams) == 1  # both calls merged into one record
    for f in exp.run_dir.glob("events.out.tfevents.*"):
        assert b"hunter2" not in f.read_bytes() and b"hunter3" not in f.read_bytes()


def test_redaction_config(logdir):
    params = {"password": "p", "ssn": "123", "tokenizer": "bpe"}
    with tracelet.start_logging("a", config={**FAST, "secret_patterns": ["ssn"]}) as exp:
        assert exp.log_params(params) == {"password": REDACTED, "ssn": REDACTED, "tokenizer": REDACTED}
    with tracelet.start_logging("b", config={**FAST, "redact_secrets": ["^password$"]}) as exp:
        assert exp.log_params(params) == {"password": REDACTED, "ssn": "123", "tokenizer": "bpe"}
    with tracelet.start_logging("c", config={**FAST, "redact_secrets": False}) as exp:
        assert exp.log_params(params) == params


def test_log_params_accepts_namespace_and_dataclass(logdir):
    import argparse
    import dataclasses

    @dataclasses.dataclass
    class Cfg:
        lr: float = 0.1
        opt: dict = dataclasses.field(default_factory=lambda: {"name": "sgd"})

    with tracelet.start_logging("ns", config=FAST) as exp:
        assert exp.log_params(argparse.Namespace(batch=32)) == {"batch": 32}
        assert exp.log_params(Cfg()) == {"lr": 0.1, "opt/name": "sgd"}
        with pytest.raises(TypeError):
            exp.log_params(3)


def test_artifacts_copied_at_call_time(logdir, tmp_path):
    (tmp_path / "config.yaml").write_text("lr: 0.1\n")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "sub").mkdir()
    (tmp_path / "ckpt" / "sub" / "w.bin").write_bytes(b"\x00" * 100_000)
    with tracelet.start_logging("art", config=FAST) as exp:
        p = exp.log_artifact("config.yaml")
        (tmp_path / "config.yaml").write_text("lr: 0.2\n")  # changed after the call: not seen
        exp.log_artifact(tmp_path / "empty.txt", name="notes/empty.txt")
        exp.log_artifact(tmp_path / "ckpt")
        with pytest.raises(FileNotFoundError):
            exp.log_artifact("missing.txt")
        with pytest.raises(ValueError):
            exp.log_artifact("config.yaml", name="../escape")
    art = exp.run_dir / "artifacts"
    assert p == art / "config.yaml" and p.read_text() == "lr: 0.1\n"
    assert (art / "notes" / "empty.txt").read_bytes() == b""
    assert (art / "ckpt" / "sub" / "w.bin").stat().st_size == 100_000
    assert not [f for f in art.rglob("*") if f.name.startswith(".")]  # no temp files left


def test_images_histograms_text(logdir, caplog):
    from PIL import Image

    rng = np.random.default_rng(0)
    noise = rng.random((3, 1024, 1024))  # ~3 MB as PNG: incompressible
    with tracelet.start_logging("img", config={**FAST, "max_image_size": "512KB"}) as exp:
        assert exp.log_image("small", torch.rand(3, 32, 48), step=0)
        assert exp.log_image("hwc", rng.integers(0, 255, (20, 30, 3), dtype=np.uint8), step=0)
        assert exp.log_image("big", noise, step=0)  # downscaled until it fits
        assert exp.writer.add_image("batch1", torch.rand(1, 3, 16, 16), 0)  # (1,C,H,W) as CHW
        assert exp.writer.add_images("grid", torch.rand(4, 1, 8, 8), 0)
        pil = Image.new("RGB", (40, 20), "red")
        assert exp.log_image("pil", pil, step=0)
        exp.log_histogram("weights", torch.randn(1000), step=0)
        exp.log_histogram("empty", np.array([np.nan]), step=0)  # no finite values: skipped
        exp.log_text("notes", "hello **world**", step=0)
    with tracelet.start_logging("tiny", config={**FAST, "max_image_size": 120}) as exp2:
        with caplog.at_level(logging.WARNING, logger="tracelet.recorder"):
            assert not exp2.log_image("noise", noise, step=0)  # cannot fit even at 8 px
    assert any("skipped" in r.getMessage() for r in caplog.records)
    run = read_run(exp.run_dir)
    by_tag = {im.tag: im for im in run.images}
    assert (by_tag["small"].width, by_tag["small"].height) == (48, 32)
    assert (by_tag["hwc"].width, by_tag["hwc"].height) == (30, 20)
    assert (by_tag["batch1"].width, by_tag["grid"].width) == (16, 16)
    big = by_tag["big"]
    assert len(big.encoded) <= 512 * 1024 and 8 <= big.width < 1024 and big.format == "png"
    assert (by_tag["pil"].width, by_tag["pil"].height) == (40, 20)
    (h,) = run.histograms
    assert h.tag == "weights" and h.total == 1000
    assert [t.text for t in run.texts] == ["hello **world**"]
    assert read_run(exp2.run_dir).images == []


def test_encoded_jpeg_kept_or_reencoded(logdir, tmp_path):
    from PIL import Image

    path = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (400, 400, 3), dtype=np.uint8)).save(path)
    raw = path.read_bytes()
    with tracelet.start_logging("jpg", config={**FAST, "max_image_size": len(raw) // 3}) as exp:
        exp.log_image("as_file", path, step=0)
    with tracelet.start_logging("jpg2", config=FAST) as exp2:
        exp2.log_image("as_bytes", raw, step=0)
    (im,) = read_run(exp.run_dir).images
    assert im.format == "jpeg" and len(im.encoded) <= len(raw) // 3 and im.width < 400
    (im2,) = read_run(exp2.run_dir).images
    assert im2.encoded == raw  # fits: byte for byte


def test_context_manager_statuses(logdir):
    with pytest.raises(ZeroDivisionError):
        with tracelet.start_logging("boom", config=FAST) as a:
            1 / 0
    with pytest.raises(KeyboardInterrupt):
        with tracelet.start_logging("ctrl_c", config=FAST) as b:
            raise KeyboardInterrupt
    with pytest.raises(SystemExit):
        with tracelet.start_logging("exit2", config=FAST) as c:
            sys.exit(2)
    with pytest.raises(SystemExit):
        with tracelet.start_logging("exit0", config=FAST) as d:
            sys.exit(0)
    assert [x.status for x in (a, b, c, d)] == ["failed", "killed", "failed", "finished"]
    e = tracelet.start_logging("explicit", config=FAST)
    tracelet.stop_logging("failed")
    assert e.status == "failed"
    with pytest.raises(RuntimeError):
        e.log_metric("late", 1.0)  # after stop: loud, not silently lost


def test_config_validation(logdir, caplog):
    with pytest.raises(UsageError):
        tracelet.start_logging("x", config={"max_image_size": "lots"})
    with pytest.raises(UsageError):
        tracelet.start_logging("x", config={"metrics_interval": 0})
    with pytest.raises(UsageError):
        tracelet.start_logging("x", config={"sync": "sometimes"})
    with caplog.at_level(logging.WARNING, logger="tracelet.recorder"):
        tracelet.start_logging("x", config={**FAST, "metric_interval": 5})
    assert any("metric_interval" in r.getMessage() for r in caplog.records)
    from tracelet.recorder.config import parse_size_bytes

    assert parse_size_bytes("512KB", "k") == 512 * 1024 and parse_size_bytes("2MB", "k") == 2 << 20
    assert parse_size_bytes("1.5 MiB", "k") == 3 << 19 and parse_size_bytes(1000, "k") == 1000


@pytest.mark.parametrize("backend, bad, suggestion", [
    ("mlfow", "mlfow", "mlflow"),                     # a typo: the closest name is suggested
    (["mlflow", "wandbb"], "wandbb", "wandb"),         # one bad name in a list
    ("mlflow,ClearMl,aimm", "aimm", "aim"),           # comma-separated, case-insensitive
    (["tensorboard"], "tensorboard", None),           # nothing close: no suggestion
])
def test_unknown_backend_refused_with_suggestion(logdir, backend, bad, suggestion):
    from tracelet.destinations import known_destinations

    with pytest.raises(UsageError) as info:
        tracelet.start_logging("typo", backend=backend, config=FAST)
    msg = str(info.value)
    assert f"unknown backend '{bad}'" in msg
    assert f"valid: {', '.join(known_destinations())}" in msg  # the one registry, not a copy
    assert (f"did you mean {suggestion}?" in msg) if suggestion else ("did you mean" not in msg)
    assert not logdir.exists() or not any(logdir.rglob("tracelet.json"))  # refused before writing
    assert tracelet.get_active_experiment() is None


def test_every_registered_backend_is_accepted(logdir):
    from tracelet.destinations import known_destinations

    names = known_destinations()
    assert {"mlflow", "wandb", "clearml", "aim", "memory"} <= set(names)
    with tracelet.start_logging("all", backend=names, config=FAST) as exp:
        pass
    assert exp.manifest["backends"] == names
    with pytest.raises(UsageError, match="expected a destination name"):
        tracelet.start_logging("odd", backend=3, config=FAST)


def test_env_capture_has_no_environment_values(logdir, monkeypatch):
    monkeypatch.setenv("MY_SERVICE_PASSWORD", "s3cr3t-value")
    exp = tracelet.start_logging("env", config={"track_git": False, "track_system": False})
    tracelet.stop_logging()
    env = exp.manifest["env"]
    assert env["python"].count(".") == 2 and env["platform"]
    assert env["packages"]["numpy"] == np.__version__ and "torch" in env["packages"]
    assert env["torch"] == torch.__version__  # torch was imported: its versions are recorded
    raw = (exp.run_dir / "tracelet.json").read_text()
    assert "s3cr3t-value" not in raw and "MY_SERVICE_PASSWORD" not in raw


def test_live_sync_calls_engine_and_survives_failures(logdir, monkeypatch, caplog):
    calls = []

    def sync_run_dir(run_dir, backends, **redaction):
        assert redaction == {"redact_secrets": True, "secret_patterns": []}
        calls.append((run_dir, backends, json.loads((run_dir / "tracelet.json").read_text())["status"]))
        if len(calls) == 1:
            raise ConnectionError("backend down")

    fake = types.ModuleType("tracelet.engine")
    fake.sync_run_dir = sync_run_dir
    monkeypatch.setitem(sys.modules, "tracelet.engine", fake)
    monkeypatch.setattr(tracelet, "engine", fake, raising=False)
    cfg = {**FAST, "track_system": False, "sync": "live", "sync_interval": 0.05}
    with caplog.at_level(logging.WARNING, logger="tracelet.recorder"):
        with tracelet.start_logging("live", backend="mlflow", config=cfg):
            import time

            deadline = time.monotonic() + 5
            while len(calls) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
    assert len(calls) >= 3 and calls[0][1] == ["mlflow"]
    assert calls[-1][2] == "finished"  # the final pass sees the final manifest
    assert any("live sync" in r.getMessage() for r in caplog.records)


def test_live_sync_without_engine_function_is_harmless(logdir, monkeypatch, caplog):
    fake = types.ModuleType("tracelet.engine")  # no sync_run_dir (yet)
    monkeypatch.setitem(sys.modules, "tracelet.engine", fake)
    monkeypatch.setattr(tracelet, "engine", fake, raising=False)
    with caplog.at_level(logging.WARNING, logger="tracelet.recorder"):
        with tracelet.start_logging("live", "p", "wandb", {**FAST, "sync": "live", "sync_interval": 0.05}) as exp:
            exp.log_metric("x", 1.0)
    assert exp.status == "finished"
    assert sum("live sync unavailable" in r.getMessage() for r in caplog.records) == 1


def test_forked_child_does_not_own_the_run(logdir):
    """A DataLoader-style fork: no active run in the child, its exit hooks leave the run alone."""
    from tracelet.recorder import experiment as lifecycle

    exp = tracelet.start_logging("forked", config={**FAST, "track_system": False})
    pid = os.fork()
    if pid == 0:  # the child: report through the exit code only
        ok = tracelet.get_active_experiment() is None
        try:
            exp.log_metric("from_child", 1.0)
            ok = False
        except RuntimeError:
            pass
        lifecycle._at_exit()  # what interpreter exit would run
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert exp.is_active and exp.manifest["status"] == "running"
    tracelet.stop_logging()
    assert exp.status == "finished"
