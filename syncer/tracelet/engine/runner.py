"""The sync engine: passes over logdirs, runs in parallel, and the library entry point."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..errors import UsageError
from ..reader import RunSource
from ..redact import Redactor, scrub
from .delivery import Delivery
from .options import Progress, SyncOptions, parse_run_name
from .plan import Planner
from .pool import DestinationPool, TargetKeys
from .protocol import RunSync
from .report import RunReport, SyncReport, merge_runs
from .signals import install_signal_handlers


class SyncEngine:
    """One sync (one or more passes with ``follow``): its destinations, planner and delivery."""

    def __init__(self, options: SyncOptions):
        self.o = options
        self.stop = options.stop or threading.Event()
        self.progress: Progress = options.observer or Progress()
        self.pool = DestinationPool(options.dest_config)
        self.target_keys = TargetKeys(options.dest_config)  # computed per name on first use
        self.redactor = Redactor(options.redact_secrets, options.secret_patterns)
        self.planner = Planner(options, self.target_keys)
        self.delivery = Delivery(self.stop, options.dry_run, self.progress, options.sleep)

    def store_for(self, logdir: Path):
        return self.planner.store_for(logdir)

    def plan(self, logdirs: list[str], errors: list[str] | None = None):
        return self.planner.plan(logdirs, errors)

    def storage_stats(self) -> dict[str, dict[str, int]]:
        return self.planner.storage_stats()

    def run_pass(self, logdirs: list[str], report: SyncReport) -> None:
        for store in self.planner._stores.values():
            store.new_pass()
        self.delivery.breakers.new_pass()  # a target found down last pass: one run probes it
        errors: list[str] = []
        work, problems = self.plan(logdirs, errors)
        for p in dict.fromkeys(problems):
            if p not in report.problems:  # new this pass (--follow says each once)
                report.problems.append(p)
                self.progress.problem(p)
        for e in dict.fromkeys(errors):
            if e not in report.errors:
                report.errors.append(e)
                self.progress.error(e)
        self.progress.begin(len(work), lambda: self.planner.bytes_behind(work))
        if self.o.workers > 1 and len(work) > 1:
            with ThreadPoolExecutor(self.o.workers, thread_name_prefix="tracelet-sync") as ex:
                results = list(ex.map(lambda w: self.sync_run(*w), work))
        else:
            results = [self.sync_run(root, run) for root, run in work]
        report.runs = merge_runs(report.runs, results)
        for store in list(self.planner._stores.values()):
            if store.problem and store.problem not in report.problems:
                report.problems.append(store.problem)
                self.progress.problem(store.problem)
        report.failed_destinations.update(self.pool.failed)
        report.destinations_down = self.down_report(results)
        for d in report.destinations_down:
            self.progress.error(d["line"])
        report.storage = self.storage_stats()
        self.progress.end(interrupted=self.stop.is_set())

    def down_report(self, results: list[RunReport]) -> list[dict]:
        """One entry (and one line) per destination target whose breaker is open after this
        pass, with the number of runs that skipped it."""
        out = []
        for b in self.delivery.breakers.open():
            skipped = sum(1 for r in results for d in r.destinations.values()
                          if d.destination == b.name and d.state == "skipped")
            out.append(scrub({"destination": b.name, "target_key": b.target_key,
                              "cause": b.cause, "error_detail": b.detail,
                              "opened_by": b.opened_by, "runs_skipped": skipped,
                              "line": b.line(skipped)}))
        return out

    def sync_run(self, logdir: Path, run: RunSource) -> RunReport:
        """Sync one run inside its own error boundary (:class:`~.protocol.RunSync`)."""
        rr = RunSync(self, logdir, run).run()
        self.progress.run_done(rr)
        return rr

    def close(self) -> None:
        self.pool.close()


def run_sync(logdirs: list[str], options: SyncOptions) -> SyncReport:
    """Sync ``logdirs`` once, or until stopped with ``options.follow``. Library entry point:
    nothing is printed unless ``options.observer`` prints (``tracelet.output.Output``)."""
    if not logdirs:
        raise UsageError("give at least one LOGDIR")
    parse_run_name(options.run_name)  # the Python API too: a bad template is a usage error
    if options.finish_idle_s is not None and not options.finish_idle_s > 0:
        raise UsageError(f"finish_idle_s={options.finish_idle_s!r}: give seconds above zero")
    report = SyncReport()
    engine = SyncEngine(options)
    restore = install_signal_handlers(engine.stop)
    t0 = options.clock()
    try:
        while True:
            engine.run_pass(logdirs, report)
            report.passes += 1
            if not options.follow or engine.stop.is_set():
                break
            if engine.stop.wait(options.interval_s):
                break
    finally:
        restore()
        engine.close()
        report.elapsed_s = options.clock() - t0
    if engine.stop.is_set():
        report.interrupted = True
        if not options.follow:
            report.problems.append("interrupted: what was sent is committed; run sync again to "
                                   "continue")
            for r in report.runs:
                for d in r.destinations.values():
                    if d.state == "interrupted":
                        d.state = "failed"
                        d.error = d.error or "interrupted"
    return report
