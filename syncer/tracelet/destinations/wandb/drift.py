"""Is the W&B run a checkpoint names still there (drift, ``RunHandle.drift``, ``check_run``)?

Offline, a run is its fragments (``offline-run-*`` folders) under ``WANDB_DIR``; the identity
names the fragment of the last sync that committed (``identity["fragment"]``, relative to
``WANDB_DIR``). That folder removed, or its ``.wandb`` file holding another run: the run is
missing, and the engine re-sends it in full with dedupe against the fragments still there.
Checkpoints from before this field: the run is missing when it had sent points and no
fragment of it is left. Online: one API lookup of ``entity/project/run id``; "not found" is
drift. Nothing here creates, moves or waits for anything (``check_run`` must be cheap).
"""
from __future__ import annotations

import os
from typing import Any, Mapping

from .txlog import read_run_record


def fragment_name(root: str, sync_file: str) -> str:
    """This sync's ``.wandb`` file as the identity keeps it: relative to ``WANDB_DIR`` (real
    paths: W&B may have resolved a link in ``WANDB_DIR`` that the root still has)."""
    return os.path.relpath(os.path.realpath(sync_file), os.path.realpath(root)).replace(os.sep, "/")


def offline_drift(root: str, ident: Mapping[str, Any], wid: str,
                  fragments: list[str] | None = None) -> str | None:
    """The drift line for an offline identity, or None if its run is still there.
    ``fragments``: the paths of the run's fragments found (``find_fragments``), if known."""
    name = ident.get("fragment")
    if isinstance(name, str) and name:
        real_root = os.path.realpath(root)
        path = os.path.normpath(os.path.join(real_root, name))
        if not path.startswith(os.path.join(real_root, "")):
            return f"run missing on wandb: the checkpoint names {name!r}, outside {root}"
        folder = os.path.dirname(path)
        if fragments is not None:
            if path in {os.path.realpath(p) for p in fragments}:
                return None
        else:
            rec = read_run_record(path)
            if rec is not None and rec.run_id == wid:
                return None
        if not os.path.exists(path):
            return f"run missing on wandb: offline folder removed: {folder}"
        return f"run missing on wandb: {path} no longer holds run {wid}"
    sent = bool(ident.get("ords")) or int(ident.get("next_step") or 0) > 0
    if not sent:
        return None
    if fragments is None:
        import glob

        pattern = os.path.join(glob.escape(os.path.join(root, "wandb")), "offline-run-*",
                               f"run-{wid}.wandb")
        fragments = glob.glob(pattern)
    if fragments:
        return None
    return (f"run missing on wandb: offline folders removed: "
            f"{os.path.join(root, 'wandb', 'offline-run-*-' + wid)}")


def online_drift(ident: Mapping[str, Any], wid: str, base_url: str, timeout_s: float) -> str | None:
    """One API lookup of the run the identity names: the drift line if the server says it
    does not exist, None if it does; any other failure is raised (typed by the caller)."""
    import wandb

    from .client import _not_on_server

    api = wandb.Api(timeout=timeout_s)
    entity = ident.get("entity") or api.default_entity
    path = f"{entity}/{ident.get('project')}/{wid}"
    try:
        api.run(path)
    except Exception as e:
        if _not_on_server(e):
            return f"run missing on wandb: {path} not found on {base_url} (deleted?)"
        raise
    return None
