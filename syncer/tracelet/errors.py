"""Every error Tracelet raises on purpose, grouped by what the caller does about it.

::

    TraceletError                      root: catch this to catch everything of ours
    ├── UsageError                     bad path/option/config: fix the command (exit 2)
    ├── SourceError                    something wrong with the input files
    │   ├── CorruptFileError           length CRC bad / unparsable: file reading stops there
    │   ├── FileReplacedError          a file shrank or changed identity since last sync
    │   ├── NotRegularFileError        a FIFO/socket/device named like an event file: skipped
    │   └── OutsideRunError            a link leading out of the run folder: not read
    ├── DestinationError               a destination failed (exit 1, other destinations go on)
    │   ├── TransientDestinationError  connection refused / 5xx / 429: retried with backoff
    │   ├── RetriesExhaustedError      still transient after the whole retry policy: the
    │   │                              destination is unreachable (its circuit breaker opens)
    │   ├── DestinationDownError       its circuit breaker is open this pass: not even tried
    │   ├── PermanentDestinationError  the vendor refused a call (not transient): the engine
    │   │                              isolates the points, params or files that cause it
    │   └── MissingExtraError          the vendor SDK is not installed: install the extra
    ├── StateError                     the state dir holds something Tracelet cannot use
    │   ├── InvalidCheckpointError     a checkpoint is damaged or not this run's: set aside, rebuilt
    │   └── UnsafeStatePathError       a link, FIFO, folder ... where a state file/folder belongs
    └── LockedError                    another sync holds the lock (exit 75)

Messages say what was wrong, where (file, byte offset, run) and what to do.
"""
from __future__ import annotations


class TraceletError(Exception):
    """Root of every error Tracelet raises on purpose."""


class UsageError(TraceletError):
    """Bad command line, path or configuration. Fix the invocation; exit code 2."""


class SourceError(TraceletError):
    """Problem in the source files (event files, sidecar, manifest)."""


class CorruptFileError(SourceError):
    """A record whose length CRC does not match, or whose length no record can have: nothing
    after it can be framed."""

    def __init__(self, path: str, offset: int, reason: str):
        self.path, self.offset, self.reason = path, offset, reason
        super().__init__(
            f"{path}: corrupt at byte {offset}: {reason}. Records before this offset were read; "
            "the rest of the file is skipped. Restore the file from the writer or remove it."
        )


class FileReplacedError(SourceError):
    """A file shrank or its first bytes changed since the last sync."""


class NotRegularFileError(SourceError):
    """A FIFO, socket or device where an event file was expected: never opened for reading
    (a FIFO would block forever), skipped and reported."""

    def __init__(self, path: str, kind: str):
        self.path, self.kind = path, kind
        super().__init__(f"{path}: {kind}, not a regular file; skipped (never read). Remove it "
                         "or rename it so it is not named like an event file.")


class OutsideRunError(SourceError):
    """A run's file (artifact, sidecar part, manifest) is a link whose real path leaves the run
    folder: it is not read (``tracelet sync --follow-artifact-links`` allows it)."""

    def __init__(self, path: str, target: str):
        self.path, self.target = path, target
        super().__init__(
            f"{path}: a link to {target}, outside the run folder; not read. Give "
            "--follow-artifact-links to read it."
        )


class DestinationError(TraceletError):
    """A destination refused or failed. Only that destination fails; the others go on."""


class TransientDestinationError(DestinationError):
    """Connection refused, timeouts, HTTP 5xx/429: worth retrying with backoff."""


class RetriesExhaustedError(DestinationError):
    """A transient error outlasted the retry policy (``tracelet.retry``). ``cause`` is its
    one-line cause ("connection refused at http://127.0.0.1:5000"), ``detail`` the whole
    exception chain. The engine's circuit breaker opens for that destination target: its other
    runs of the pass are skipped (``tracelet.engine.breaker``)."""

    cause: str = ""
    detail: str | None = None


class DestinationDownError(DestinationError):
    """The circuit breaker of this destination target is open this pass: the call was not made
    (a run before it exhausted its retries). Nothing is marked done; the next pass tries again."""

    cause: str = ""
    detail: str | None = None


class PermanentDestinationError(DestinationError):
    """The vendor SDK refused a call with a non-transient error. Either the call's content is
    bad (a point, param or file the destination will never accept: the engine isolates and
    quarantines it) or the destination refuses everything (permission denied, run deleted:
    the destination fails). ``tracelet.quarantine`` tells the two apart."""


class MissingExtraError(DestinationError):
    """The vendor SDK for a destination is not installed."""

    def __init__(self, destination: str, module: str, extra: str | None = None):
        self.destination = destination
        # Not `pip install tracelet[...]`: that name on PyPI is another project.
        super().__init__(
            f"destination '{destination}' needs the '{module}' package, which is not installed "
            f"in this environment. Install it (pip install {module}), or Tracelet's extra "
            f"tracelet[{extra or destination}] from your checkout or wheel: "
            f"pip install './[{extra or destination}]'"
        )


class StateError(TraceletError):
    """The state directory holds a checkpoint Tracelet cannot use."""


class InvalidCheckpointError(StateError):
    """A checkpoint that is damaged (not JSON, a wrong type, a value out of range, too big) or
    that describes another run/destination. The engine moves it aside and rebuilds it by asking
    the destination, as after a lost state dir."""

    def __init__(self, path: str, reason: str):
        self.path, self.reason = path, reason
        super().__init__(f"{path}: unusable checkpoint: {reason}")


class UnsafeStatePathError(StateError):
    """A symlink, FIFO, folder, hard link ... where Tracelet keeps a state file or folder. Never
    followed or written through; the message names the path and says what to remove."""


class LockedError(TraceletError):
    """Another sync holds the lock for this run; exit code 75 (EX_TEMPFAIL)."""
