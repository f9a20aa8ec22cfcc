"""``tracelet reset``: forget checkpoints, so the next sync re-sends with dedupe.

For each chosen run and destination target, under the run's exclusive lock (no sync of the run
is running meanwhile), the checkpoint and its ``.sig`` are removed. The next sync then does
what it does after a lost state dir: it finds the run on the destination by its tracelet run
id and sends everything with ``dedupe=True``, so points already there do not land twice and
points missing there (a run emptied or deleted underneath) are sent again.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UsageError
from .options import SyncOptions
from .plan import Planner
from .pool import TargetKeys


@dataclass
class ResetReport:
    forgotten: list[tuple[str, str, str]] = field(default_factory=list)  # (logdir, run, dest)
    locked: list[str] = field(default_factory=list)
    unknown_runs: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if self.unknown_runs:
            return 2
        return 75 if self.locked else 0


def reset_runs(logdirs: list[str], runs: list[str], options: SyncOptions) -> ResetReport:
    """Forget the checkpoints of ``runs`` (all runs if empty) for ``options.destinations``."""
    from ..errors import LockedError

    if not options.destinations:
        raise UsageError("reset: give --to DEST (the destinations whose checkpoints to forget)")
    planner = Planner(options, TargetKeys(options.dest_config))
    work, _ = planner.plan(logdirs)
    by_name = {run.name: (root, run) for root, run in work}
    report = ResetReport()
    wanted = runs or sorted(by_name)
    for name in wanted:
        if name not in by_name:
            report.unknown_runs.append(name)
            continue
        root, run = by_name[name]
        store = planner.store_for(root)
        try:
            with store.lock(run.name, f"run '{run.name}'"):  # exclusive: no sync of it meanwhile
                for dest in options.destinations:
                    if store.forget(planner._target_keys[dest], run.name):
                        report.forgotten.append((str(root), run.name, dest))
        except LockedError as e:
            report.locked.append(str(e))
    return report
