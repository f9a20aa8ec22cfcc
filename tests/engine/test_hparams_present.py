"""TensorBoard hparams on a resync (#10 item 4): they travel as params, so they count as
``points_present`` exactly when the destination already held every one of their params with
the value sent (``log_params`` -> ``ParamsResult.present``), hparams.yaml's names included
(present when the file params send found them). Against the memory destination, read back."""
from __future__ import annotations

from pathlib import Path

from tracelet.destinations.memory import store_named
from tracelet.engine import SyncOptions, reset_runs, run_sync
from tracelet.output import dest_text
from tracelet.testing.events import T0, hparams_event, scalar_event, version_event, write_frames

HPARAMS = {"lr": 0.1, "optimizer": "adam", "units": 64, "api_key": "s3cr3t-value"}


def sync(logdir: Path, **kw):
    return run_sync([str(logdir)], SyncOptions(destinations=["memory"], project="p",
                                               progress=False, **kw))


def dest(report, run: str = "a"):
    (rr,) = [r for r in report.runs if r.run == run]
    return rr.destinations["memory"]


def stored(run: str = "a"):
    (r,) = [r for r in store_named("mem:default").runs.values() if r.run_path == run]
    return r


def hparams_run(folder: Path, hparams: dict, steps: int = 5) -> None:
    """Scalars then the hparams session_start_info (Keras' and Lightning's order); rewriting it
    with other values keeps every record's place, so only the values differ."""
    write_frames(folder / "events.out.tfevents.1700000000.h.1.0",
                 [version_event(T0)] + [scalar_event("loss", s, 1.0 / (s + 1))
                                        for s in range(steps)] + [hparams_event(hparams, 0)])


def test_resync_and_reset_confirm_the_hparams_already_present(tmp_path):
    logdir = tmp_path / "logs"
    hparams_run(logdir / "a", HPARAMS)
    first = dest(sync(logdir))
    assert first.points_sent == {"scalar": 5, "hparams": 1} and first.points_present == 0
    assert first.params_present == 0
    assert stored().params["api_key"] == "***REDACTED***"  # compared as sent: redacted

    d = dest(sync(logdir, resync=True))
    assert d.points_present == d.points == 6, d
    assert dest_text(d) == "confirmed 6 already present"
    assert d.params_present == d.params_sent == 4

    done = reset_runs([str(logdir)], ["a"], SyncOptions(destinations=["memory"]))
    assert done.exit_code == 0
    d = dest(sync(logdir))
    assert dest_text(d) == "confirmed 6 already present", d
    assert stored().count("scalar") == 5  # nothing stored twice


def test_a_changed_hparam_is_not_confirmed(tmp_path):
    logdir = tmp_path / "logs"
    hparams_run(logdir / "a", HPARAMS)
    sync(logdir)
    # the source's value changed: the new value is written, so the hparams are not "present"
    hparams_run(logdir / "a", {**HPARAMS, "lr": 0.2})
    d = dest(sync(logdir, resync=True))
    assert dest_text(d) == "synced hparams 1, scalar 5 (5 of them already present)", d
    assert stored().params["lr"] == "0.2" and d.params_present == 3
    # the destination's value changed (another writer): written again, not confirmed
    stored().params["units"] = "32"
    d = dest(sync(logdir, resync=True))
    assert dest_text(d) == "synced hparams 1, scalar 5 (5 of them already present)", d
    assert stored().params["units"] == "64"
    # all back as the source has them: confirmed
    assert dest_text(dest(sync(logdir, resync=True))) == "confirmed 6 already present"


def test_names_hparams_yaml_gives_count_when_the_file_params_were_present(tmp_path):
    """Lightning: the same names in hparams.yaml (typed) and the event file (floats); the
    file's value is the one sent, by the params facet before the events."""
    logdir = tmp_path / "logs"
    run = logdir / "lit" / "version_0"
    hparams_run(run, {"lr": 0.1, "layers": 3, "note": "x"})
    (run / "hparams.yaml").write_text("lr: 0.1\nlayers: 3\nnote: x\n")
    assert dest(sync(logdir), "lit/version_0").points_sent == {"scalar": 5, "hparams": 1}
    assert stored("lit/version_0").params["layers"] == "3"  # the file's value
    d = dest(sync(logdir, resync=True), "lit/version_0")
    assert dest_text(d) == "confirmed 6 already present", d
    # the file changed: its send writes a new value, so the hparams that name it are not there
    (run / "hparams.yaml").write_text("lr: 0.5\nlayers: 3\nnote: x\n")
    d = dest(sync(logdir, resync=True), "lit/version_0")
    assert dest_text(d) == "synced hparams 1, scalar 5 (5 of them already present)", d
    assert stored("lit/version_0").params["lr"] == "0.5"


def test_a_normal_sync_never_counts_hparams_present(tmp_path):
    """A first sync and an incremental one (new points, the params already committed) say
    synced: nothing was confirmed by a destination."""
    logdir = tmp_path / "logs"
    hparams_run(logdir / "a", HPARAMS)
    d = dest(sync(logdir))
    assert d.points_present == 0 and dest_text(d) == "synced hparams 1, scalar 5"
    # the same hparams again in a second file (a resumed training): ck.params has them, no
    # send, so nothing confirms them
    write_frames(logdir / "a" / "events.out.tfevents.1700000100.h.1.0",
                 [version_event(T0 + 100), scalar_event("loss", 9, 0.5),
                  hparams_event(HPARAMS, 9)])
    d = dest(sync(logdir))
    assert d.points_present == 0 and dest_text(d) == "synced hparams 1, scalar 1", d


def test_torch_add_hparams_run_is_confirmed_on_resync(tmp_path):
    """PyTorch's own ``SummaryWriter.add_hparams``: a child folder (folded into the run) with
    the hparams and their ``hparam/*`` metrics."""
    from torch.utils.tensorboard import SummaryWriter

    logdir = tmp_path / "logs"
    w = SummaryWriter(str(logdir / "torch"))
    for s in range(4):
        w.add_scalar("loss", 1.0 / (s + 1), s)
    w.add_hparams({"lr": 0.01, "bsize": 16, "opt": "sgd", "flag": True},
                  {"hparam/accuracy": 0.9})  # a child folder named by time: folded
    w.close()
    first = dest(sync(logdir), "torch")
    assert first.points_sent.get("hparams") == 1 and first.points_present == 0, first
    d = dest(sync(logdir, resync=True), "torch")
    assert dest_text(d) == f"confirmed {first.points} already present", d
