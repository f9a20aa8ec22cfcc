"""A run's display name on destinations (``RunRef.display_name``; ``--run-name``).

Only the name shown changes: identity (run path, tracelet run id, checkpoints, identity tags)
never depends on it, so changing the template renames runs without creating new ones.
"""
from __future__ import annotations

import hashlib
import posixpath


def display_name(run_path: str, project: str, template: str | None = None,
                 recorded: bool = True) -> str:
    """The name shown for the run.

    ``template`` (already checked by :func:`~.options.parse_run_name`) is formatted with
    ``{run_path}``, ``{name}`` (the run folder's name: the last part of the run path) and
    ``{project}``. Without one, the default rule: a recorded run (``recorded``: it has a
    manifest) shows its run path less a leading ``<project>/`` — the recorder writes
    ``<logdir>/<project>/<name>`` and the project is already the experiment/project the run is
    shown in, so ``vision/resnet50`` of project ``vision`` shows as ``resnet50``, not as
    ``vision`` / ``vision/resnet50``. Every other run shows its run path, as before (a plain
    TensorBoard folder ``logs/logs/a`` is not renamed). A template that formats to nothing but
    spaces falls back to the run path.
    """
    name = posixpath.basename(run_path.rstrip("/")) or run_path
    if template is not None:
        text = template.format(run_path=run_path, name=name, project=project)
        return text if text.strip() else run_path
    prefix = f"{project}/"
    if recorded and project and run_path.startswith(prefix) and run_path[len(prefix):].strip("/"):
        return run_path[len(prefix):]
    return run_path


def fold_name(signature: str, run_path: str, name: str) -> str:
    """The source signature with the display name in it, so a changed ``--run-name`` (or the
    default rule, the first time) gives each run one pass, in which destinations are given the
    new name. A name equal to the run path adds nothing: such runs keep their fingerprints."""
    if name == run_path:
        return signature
    return hashlib.sha1(f"{signature}\nname {name}".encode()).hexdigest()
