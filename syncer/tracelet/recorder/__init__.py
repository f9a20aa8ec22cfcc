"""The training-side recorder: write a run directory that ``tracelet sync`` replays later.

::

    import tracelet
    exp = tracelet.start_logging("resnet50", project="vision", backend=["mlflow", "wandb"],
                                 config={"metrics_interval": 10})
    exp.log_params({"lr": 0.1, "optimizer": {"name": "sgd"}})
    exp.log_metric("loss", 0.25, step=0)
    exp.writer.add_scalar("acc", 0.9, 0)      # or torch's SummaryWriter(): lands in the run
    tracelet.stop_logging()

Layout (README "Training side"): ``<logdir>/<project>/<name>/`` with ``events.out.tfevents.*``,
``tracelet.json``, ``sysmetrics/part-NNNNNN.parquet`` and ``artifacts/``. Modules:

* :mod:`.experiment` lifecycle, exit statuses, signals · :mod:`.writer` event file + images
* :mod:`.sysmetrics` sampler + NVML · :mod:`.capture` git/env/system · :mod:`tracelet.redact` secrets
* :mod:`.tracking` SummaryWriter/Lightning redirection · :mod:`.live` live sync
* :mod:`.record` ``tracelet record -- CMD`` · :mod:`.config` every config key
"""
from .experiment import Experiment, get_active_experiment, start_logging, stop_logging

__all__ = ["Experiment", "get_active_experiment", "start_logging", "stop_logging"]
