"""Reports of a sync and the only exit-code constants.

Exit codes: 0 everything synced (or unchanged); 1 some run or destination failed (the rest
synced); 2 bad usage or configuration; 75 a run was locked by another sync (EX_TEMPFAIL).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..checkpoint import add_counts
from ..redact import scrub

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, EXIT_LOCKED = 0, 1, 2, 75


@dataclass
class DestReport:
    destination: str
    target: str = ""
    # synced | unchanged | failed | skipped (its circuit breaker was open: not tried this pass)
    # | locked | dry-run | interrupted
    state: str = "synced"
    points_sent: dict[str, int] = field(default_factory=dict)
    # of the points sent with dedupe, those the destination said it already held (not stored
    # again: a resync that only confirmed what had landed); 0 where it cannot tell
    points_present: int = 0
    unsupported: dict[str, int] = field(default_factory=dict)
    other: dict[str, int] = field(default_factory=dict)  # non-point records seen (graph, ...)
    skipped_records: int = 0
    params_sent: int = 0
    params_present: int = 0  # of params_sent, those the destination already held (same value)
    param_conflicts: list[str] = field(default_factory=list)
    artifacts_sent: int = 0
    # refused for good by the destination, per kind (scalar ... params, artifact, system):
    # counted, named in `quarantine` (one line each), never retried (tracelet.quarantine)
    quarantined: dict[str, int] = field(default_factory=dict)
    quarantine: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)  # tags/params renamed or kept apart (keys.py)
    drift: str | None = None  # the destination had lost the run: re-sent in full (dedupe)
    error: str | None = None  # one line: what failed and its cause (retry.cause_line)
    error_detail: str | None = None  # the whole exception chain behind ``error`` (scrubbed)

    def add(self, field_name: str, counts: dict[str, int]) -> None:
        add_counts(getattr(self, field_name), counts)

    @property
    def points(self) -> int:
        return sum(self.points_sent.values())


@dataclass
class RunReport:
    run: str
    logdir: str
    run_id: str = ""
    project: str = ""
    problems: list[str] = field(default_factory=list)  # warnings: the run synced what it could
    destinations: dict[str, DestReport] = field(default_factory=dict)
    locked: bool = False
    # Errors of the run itself (an unreadable artifact, an unexpected error before any
    # destination was known): exit 1, and the run is retried at the next sync.
    errors: list[str] = field(default_factory=list)
    traceback: str | None = None  # of an unexpected error; only with verbose
    # Configuration that made nothing happen for this run (no destination, an unknown backend
    # in its manifest): exit 2, "fix the command", whatever else succeeded.
    usage: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return bool(self.errors) or any(d.state in ("failed", "skipped")
                                        for d in self.destinations.values())

    def note(self, problem: str) -> None:
        """Add a problem once (several destinations of a run meet the same file)."""
        if problem not in self.problems:
            self.problems.append(problem)

    def error(self, problem: str) -> None:
        """Add an error once: something of this run was not synced and is retried next time."""
        if problem not in self.errors:
            self.errors.append(problem)


@dataclass
class SyncReport:
    runs: list[RunReport] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # a logdir that could not be planned at all
    usage: list[str] = field(default_factory=list)  # configuration: exit 2 (see RunReport.usage)
    failed_destinations: dict[str, str] = field(default_factory=dict)
    # destination targets whose circuit breaker was open at the end of the last pass: one dict
    # each (destination, target_key, cause, error_detail, opened_by, runs_skipped, line)
    destinations_down: list[dict[str, Any]] = field(default_factory=list)
    interrupted: bool = False
    passes: int = 0
    elapsed_s: float = 0.0
    storage: dict[str, dict[str, int]] = field(default_factory=dict)  # object-store requests

    @property
    def exit_code(self) -> int:
        # 2 (fix the configuration) > 1 (something failed; retried next sync) > 75 (locked)
        if self.usage or any(r.usage for r in self.runs):
            return EXIT_USAGE
        if (self.errors or self.failed_destinations or self.destinations_down
                or any(r.failed for r in self.runs)):
            return EXIT_PARTIAL
        if any(r.locked for r in self.runs):
            return EXIT_LOCKED
        return EXIT_OK

    def totals(self) -> dict[str, Any]:
        per_dest: dict[str, dict[str, int]] = {}
        for r in self.runs:
            for name, d in r.destinations.items():
                t = per_dest.setdefault(name, {"points": 0, "runs_synced": 0, "runs_failed": 0,
                                               "runs_skipped": 0, "runs_unchanged": 0})
                t["points"] += d.points
                t["runs_synced"] += d.state == "synced"
                t["runs_failed"] += d.state == "failed"
                t["runs_skipped"] += d.state == "skipped"
                t["runs_unchanged"] += d.state == "unchanged"
        return per_dest

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return scrub({  # the last boundary before JSON: no credential in any string of it
            "exit_code": self.exit_code,
            "elapsed_s": round(self.elapsed_s, 3),
            "passes": self.passes,
            "interrupted": self.interrupted,
            "problems": self.problems,
            "errors": self.errors,
            "usage": self.usage,
            "failed_destinations": self.failed_destinations,
            "destinations_down": self.destinations_down,
            "totals": self.totals(),
            "storage": self.storage,
            "runs": [asdict(r) for r in self.runs],
        })


def merge_runs(old: list[RunReport], new: list[RunReport]) -> list[RunReport]:
    """Across --follow passes keep one report per run, accumulating counts."""
    by_key = {(r.logdir, r.run): r for r in old}
    for r in new:
        prev = by_key.get((r.logdir, r.run))
        if prev is None:
            by_key[(r.logdir, r.run)] = r
            continue
        prev.problems = r.problems
        prev.errors, prev.traceback = r.errors, r.traceback
        prev.locked = r.locked
        for name, d in r.destinations.items():
            p = prev.destinations.get(name)
            if p is None or d.state in ("synced", "failed", "skipped", "interrupted"):
                if p is not None:
                    d.add("points_sent", p.points_sent)
                    d.add("unsupported", p.unsupported)
                    d.add("quarantined", p.quarantined)
                    d.quarantine[:0] = p.quarantine
                    d.keys[:0] = p.keys
                    d.skipped_records += p.skipped_records
                    d.points_present += p.points_present
                prev.destinations[name] = d
    return list(by_key.values())
