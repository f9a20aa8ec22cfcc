"""MLflow's factory side: options and target, without importing MLflow."""
from __future__ import annotations

import os
from typing import Any, Mapping

from ..base import DestinationFactory, Option


class MlflowFactory(DestinationFactory):
    name = "mlflow"
    extra = "mlflow"
    vendor_module = "mlflow"
    client = "tracelet.destinations.mlflow.client:MlflowDestination"
    summary = "MLflow tracking server or local store (default: MLflow's own, ./mlflow.db)"
    options = (
        Option("mlflow_uri", "--mlflow-uri", env="MLFLOW_TRACKING_URI",
               help="MLflow tracking URI (default MLFLOW_TRACKING_URI, else MLflow's local store)."),
        # not part of target(): the experiment does not change which store a checkpoint is for
        Option("mlflow_experiment", "--mlflow-experiment", env="MLFLOW_EXPERIMENT_NAME",
               aliases=("--experiment",),
               help="MLflow experiment for new runs (default MLFLOW_EXPERIMENT_NAME, else the "
                    "run's project)."),
    )

    def target(self, config: Mapping[str, Any]) -> str:
        return config.get("mlflow_uri") or os.environ.get("MLFLOW_TRACKING_URI") \
            or f"default:{os.getcwd()}"


FACTORY = MlflowFactory()
