"""The names of a run directory's parts: the one place they are defined.

::

    <logdir>/<project>/<run-name>/
      events.out.tfevents.*          plain TensorBoard event files (any writer)
      tracelet.json                  MANIFEST_NAME: the manifest, rewritten atomically
      sysmetrics/part-000001.parquet SIDECAR_DIR: immutable system-metric parts
      artifacts/...                  ARTIFACTS_DIR: copies of files given to log_artifact
    <logdir>/.tracelet/              STATE_DIR_NAME: checkpoints and locks (default state dir)

A leaf module (imports nothing of Tracelet's), so every layer may use it.
"""
MANIFEST_NAME = "tracelet.json"
SIDECAR_DIR = "sysmetrics"
ARTIFACTS_DIR = "artifacts"
STATE_DIR_NAME = ".tracelet"
