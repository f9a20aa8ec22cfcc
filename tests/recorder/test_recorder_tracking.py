"""Other TensorBoard writers are redirected into the run while it is active, and only then.

Patching a framework imported *after* start_logging (the post-import hook) is exercised in a
fresh interpreter by test_recorder_faults.py's SIGKILL test.
"""
from __future__ import annotations

import pytest
import tensorboardX
from torch.utils.tensorboard import SummaryWriter

import tracelet
from tests.recorder.recorder_helpers import FAST, read_run

ORIGINAL_TORCH_INIT = SummaryWriter.__init__
ORIGINAL_TBX_INIT = tensorboardX.SummaryWriter.__init__


def test_torch_summary_writer_without_log_dir_lands_in_run(logdir, tmp_path):
    exp = tracelet.start_logging("tb", config=FAST)
    assert SummaryWriter.__init__ is not ORIGINAL_TORCH_INIT
    w = SummaryWriter()
    assert w.log_dir == str(exp.run_dir)
    w.add_scalar("Loss/Train", 0.5, 0)
    w.add_scalar("Loss/Train", 0.25, 1)
    w.close()
    own = SummaryWriter(log_dir=str(tmp_path / "elsewhere"))  # its own dir: left alone, linked
    own.add_scalar("x", 1.0, 0)
    own.close()
    SummaryWriter(str(exp.run_dir)).close()  # the run dir itself is not a linked logdir
    tracelet.stop_logging()
    assert SummaryWriter.__init__ is ORIGINAL_TORCH_INIT  # un-patched on stop
    run = read_run(exp.run_dir)
    assert run.scalars["Loss/Train"] == [(0, 0.5), (1, 0.25)]
    assert run.manifest["linked_logdirs"] == [str(tmp_path / "elsewhere")]
    after = SummaryWriter()  # after stop: PyTorch's own default again (./runs/...)
    after.close()
    assert after.log_dir.startswith("runs")


def test_tensorboardx_writer_lands_in_run(logdir, tmp_path):
    with tracelet.start_logging("tbx", config=FAST) as exp:
        w = tensorboardX.SummaryWriter()
        assert w.logdir == str(exp.run_dir)
        w.add_scalar("acc", 0.75, 3)
        w.close()
        tensorboardX.SummaryWriter(logdir=str(tmp_path / "tbx_own")).close()
    assert tensorboardX.SummaryWriter.__init__ is ORIGINAL_TBX_INIT
    run = read_run(exp.run_dir)
    assert run.scalars["acc"] == [(3, 0.75)]
    assert run.manifest["linked_logdirs"] == [str(tmp_path / "tbx_own")]


def test_tracking_off_leaves_writers_alone(logdir):
    with tracelet.start_logging("off", config={**FAST, "track_tensorboard": False, "track_lightning": False}):
        assert SummaryWriter.__init__ is ORIGINAL_TORCH_INIT


def test_writer_delegates_unknown_methods_to_torch(logdir):
    import numpy as np

    with tracelet.start_logging("pr", config=FAST) as exp:
        exp.writer.add_pr_curve("pr", np.array([0, 1, 1]), np.array([0.1, 0.8, 0.6]), 0)  # torch's own
    files = sorted(exp.run_dir.glob("events.out.tfevents.*"))
    assert len(files) == 2  # the run's file + the delegate's, both in the run


def test_lightning_tensorboard_logger_lands_in_run(logdir, tmp_path):
    loggers = pytest.importorskip("lightning.pytorch.loggers", reason="lightning not installed")
    with tracelet.start_logging("pl", config=FAST) as exp:
        logger = loggers.TensorBoardLogger(save_dir=str(tmp_path / "pl_logs"), name="lightning_logs")
        assert logger.log_dir.rstrip("/") == str(exp.run_dir)
        logger.log_metrics({"train_loss": 0.3}, step=5)
        logger.log_hyperparams({"lr": 0.01})
        logger.finalize("success")
    assert not (tmp_path / "pl_logs").exists()
    run = read_run(exp.run_dir)
    assert run.scalars["train_loss"] == [(5, pytest.approx(0.3))]
    after = loggers.TensorBoardLogger(save_dir=str(tmp_path / "pl_logs"))
    assert after.log_dir.startswith(str(tmp_path / "pl_logs"))  # un-patched
