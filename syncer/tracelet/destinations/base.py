"""The destination contract: the five calls the engine makes, and what each must guarantee.

A destination is a vendor adapter (MLflow, W&B, ClearML, Aim). The engine owns reading,
batching, checkpoints and retries; a destination only turns points into vendor calls. The
contract is narrow on purpose, so each guarantee can be written next to the call it binds:

=================  ============================================================================
call               guarantee
=================  ============================================================================
``open_run``       Find or create the run **idempotently**. ``identity`` is what this method
                   returned last time (from the checkpoint) or ``None`` (first sync, or the
                   state dir was lost): with ``None`` it must first look the run up by
                   ``tracelet.run_id`` on the destination and set ``existed=True`` if found,
                   so a lost state dir never creates a second run. An ``identity`` that
                   does not name a run of *this* tracelet run (a damaged or crafted
                   checkpoint) is never used: look the run up as with ``None`` and set
                   ``identity_ignored=True`` (the engine then rebuilds the checkpoint).
``send``           Write one batch of points durably before returning. When ``dedupe`` is
                   true, some of these points may already be on the destination (a crash
                   between send and commit, or a lost state dir): the destination must not
                   store them twice (ask what landed, or rely on a write that is idempotent).
                   A point the vendor can never take (an image it cannot decode) is left out
                   and returned as a :class:`Rejected`; the engine quarantines it (reported,
                   never retried). Any batch of whole records, in file order, may be sent:
                   the engine resends parts of a refused batch to isolate a bad record.
``send_system``    Same contract for a table of system metrics (sidecar part).
``log_params``     Set params; return the names the destination refused because a different
                   value is already there (write-once params): reported, never raised.
``log_artifacts``  Upload files under their relative names; re-uploading a name overwrites.
``finish``         Set the run's status/end time; idempotent.
=================  ============================================================================

Anything a destination lacks is declared in :class:`Capabilities`; the engine counts those
points as "unsupported" in the report instead of calling the destination with them.
Transient failures (connection refused, 5xx, 429) must surface as exceptions for which
``is_transient`` is true: the engine retries them with bounded backoff. Any other exception
from the vendor is permanent: the engine isolates the record, param or file that causes it
(``tracelet.quarantine``); a ``DestinationError`` raised on purpose fails the destination.
"""
from __future__ import annotations

import abc
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from ..reader.points import AUDIO, HISTOGRAM, HPARAMS, IMAGE, SCALAR, TEXT, Batch

if TYPE_CHECKING:
    import pyarrow as pa


@dataclass(frozen=True)
class Capabilities:
    """What a destination can store natively, and how much one call may carry."""

    kinds: frozenset[str] = frozenset({SCALAR})  # point kinds sent by ``send``
    system_metrics: bool = True
    params: bool = True
    artifacts: bool = True
    status: bool = True
    max_points_per_call: int = 1000  # the engine's batches may be larger; split inside send
    max_bytes_per_call: int = 1_000_000


@dataclass(frozen=True)
class Rejected:
    """A point ``send`` left out because the vendor can never take it: ``kind`` and ``index``
    into the batch's list of that kind (``batch.images[index]``), ``reason`` in one line."""

    kind: str
    index: int
    reason: str


@dataclass(frozen=True)
class RunRef:
    """A source run as a destination sees it (DESIGN §5 identity inputs)."""

    run_id: str
    run_path: str  # relative to the logdir: the run's name on every destination
    project: str
    source_dir: Path
    manifest: Mapping[str, Any] | None = None

    @property
    def tags(self) -> dict[str, str]:
        m = self.manifest or {}
        tags = m.get("tags") or {}
        return {str(k): str(v) for k, v in tags.items()} if isinstance(tags, dict) else {}


@dataclass
class RunHandle:
    """An open destination run. ``identity`` is JSON-able and saved in the checkpoint after
    every commit, so a destination may keep counters in it (W&B's next ``_step``)."""

    identity: dict[str, Any]
    existed: bool = False  # found on the destination rather than created by this open
    identity_ignored: bool = False  # the identity given was not this run's: not used
    client: Any = None  # vendor objects; never persisted
    extra: dict[str, Any] = field(default_factory=dict)


class Destination(abc.ABC):
    """Base class of every destination. Subclasses live in ``tracelet.destinations.<name>``
    and import their vendor SDK lazily (inside methods), so ``import tracelet`` stays cheap."""

    name: str = ""
    capabilities: Capabilities = Capabilities()

    def __init__(self, config: Mapping[str, Any] | None = None):
        self.config = dict(config or {})

    @property
    def target(self) -> str:
        """Human-readable target (URI, repo path, mode) for reports and state keys."""
        return self.name

    @abc.abstractmethod
    def open_run(self, run: RunRef, identity: dict[str, Any] | None) -> RunHandle: ...

    @abc.abstractmethod
    def send(self, handle: RunHandle, batch: Batch, *, dedupe: bool) -> list[Rejected] | None: ...

    def send_system(self, handle: RunHandle, table: pa.Table, run: RunRef, *, dedupe: bool) -> None:
        """Send sidecar rows (``timestamp``, ``name``, ``value``) as ``system/<name>``."""
        raise NotImplementedError

    def log_params(self, handle: RunHandle, params: Mapping[str, Any]) -> list[str]:
        raise NotImplementedError

    def log_artifacts(self, handle: RunHandle, files: list[tuple[Path, str]]) -> None:
        raise NotImplementedError

    def finish(self, handle: RunHandle, status: str, ended_at: float | None) -> None:
        raise NotImplementedError

    def close_run(self, handle: RunHandle) -> None:
        """Release per-run resources (flush writers). Called once per open_run."""

    def close(self) -> None:
        """Release clients. Called once at the end of a sync."""

    def is_transient(self, exc: BaseException) -> bool:
        """True for errors worth retrying: connection refused/reset, timeouts, HTTP 5xx/429."""
        return is_transient_error(exc)

    def metric_key(self, tag: str) -> str:
        """The destination's name for a TensorBoard tag (DESIGN §6: unchanged where accepted;
        a tag that must be rewritten ends in ``-<8 hex of its SHA-1>``, see ``keys.py``)."""
        return tag

    def param_key(self, name: str) -> str:
        """The destination's name for a (flattened) param, by the same rule."""
        return name


_TRANSIENT_TEXT = re.compile(
    r"connection (refused|reset|aborted)|timed? ?out|temporarily unavailable|"
    r"too many requests|\b(429|500|502|503|504)\b|max retries exceeded|"
    r"remote end closed|broken pipe|name or service not known",
    re.I,
)


def is_transient_error(exc: BaseException) -> bool:
    """Classify an exception from any HTTP-based SDK by type first, text second."""
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    for e in _chain(exc):
        status = getattr(getattr(e, "response", None), "status_code", None)
        if isinstance(status, int) and (status == 429 or status >= 500):
            return True
        if _TRANSIENT_TEXT.search(str(e)):
            return True
    return False


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


ALL_KINDS = frozenset({SCALAR, HISTOGRAM, IMAGE, TEXT, HPARAMS, AUDIO})
