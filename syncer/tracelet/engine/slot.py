"""A slot: one destination's view of one run during a sync (checkpoint, report, handle)."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..checkpoint import Checkpoint
from ..destinations.base import Destination, RunHandle
from ..destinations.keys import KeyLedger
from ..errors import DestinationDownError
from ..redact import scrub
from .report import DestReport


@dataclass
class Slot:
    """One destination's view of the run during a sync."""

    name: str
    dest: Destination
    ck: Checkpoint
    report: DestReport
    handle: RunHandle | None = None
    dedupe_all: bool = False  # lost state dir, run found on destination: dedupe everything
    failed: bool = False
    recheck: bool = False  # look again next pass (a new incomplete tail): no "unchanged" yet
    run_dir: str = ""  # report lines name files relative to it
    legacy_keys: bool = False  # synced before KEY_SCHEME: renamed tags had other keys then
    # where the checkpoint is committed: the engine's own target key and run path, never
    # values read from a checkpoint
    target_key: str = ""
    run_path: str = ""
    # params this sync found the destination already held with the value sent (log_params'
    # ParamsResult.present; a later send of the name that wrote or was refused drops it): the
    # TensorBoard hparams of a batch count as present only when all their names are here
    params_present: set[str] = field(default_factory=set)
    _ledger: KeyLedger | None = None

    def ledger(self) -> KeyLedger:
        if self._ledger is None:
            self._ledger = KeyLedger(self.ck.keys, self.name)
        return self._ledger

    def source_failed(self, message: str) -> None:
        """A source file of the run could not be read: this destination's report fails (exit 1)
        but the slot goes on with the run's other files. ``last_error`` keeps the run off the
        no-op fast path, so every sync retries the file until it can be read."""
        if self.report.state != "failed":
            self.report.state, self.report.error = "failed", message
        self.ck.last_error = message

    def fail(self, err: BaseException) -> None:
        self.failed = True
        # skipped: the target's circuit breaker was open (engine/breaker.py), nothing was tried
        self.report.state = "skipped" if isinstance(err, DestinationDownError) else "failed"
        # vendor error text may carry the target URI with its credentials
        self.report.error = self.ck.last_error = scrub(str(err))
        detail = getattr(err, "detail", None)  # the whole exception chain (retry.error_chain)
        if detail and not isinstance(err, DestinationDownError):
            self.report.error_detail = scrub(detail)
