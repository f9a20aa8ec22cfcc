"""The circuit breaker: a destination that stays down costs one run's patience per pass.

One :class:`Breaker` per destination TARGET (its target key: two MLflow servers are two
breakers), shared by the worker threads of a sync:

* **closed** — calls go through under the retry policy (``tracelet.retry``);
* **open** — a call to this target exhausted its retries (:class:`RetriesExhaustedError`, the
  typed error of a transient failure that lasted the whole policy, ~15 s by default), or
  :data:`RUNS_FAILING_AT_ONCE` runs' calls failed transiently with nothing answered in between
  (workers: several runs meet the dead target at once, no need to wait out the policy), or one
  run's tries found nothing there :data:`NOTHING_THERE_TRIES` times in a row (connection
  refused, host unreachable, name not resolved: ``retry.nothing_there``; ~1.5 s with the
  default policy — a pass of 1,000 quick runs takes a few seconds, and waiting out the whole
  policy would make a dead destination cost it several times over): every
  other run of the pass skips this destination at once, without a call
  (:class:`DestinationDownError`); calls of other runs already waiting for their next try stop
  there. Their checkpoints stay as they were; the pass reports one line per open breaker
  (:meth:`Breaker.line`) and exits 1;
* **half-open** — the next pass (``--follow``'s next pass; a cron sync is a new process, so it
  starts closed): the first call probes; other workers reaching the target wait for its
  outcome. The probe is answered (success, or any error but a transient one) -> closed; its
  retries run out -> open again.

Only transient failures open a breaker: a destination that answers, even with an error (403, a
refused point), is up, and that error stays the run's. A server that is there but slow or busy
(timeouts, resets, HTTP 429/503) gets the whole policy; one that is not there at all (nothing
listens) is skipped for the pass after a few refused tries — a restart that takes longer than
that costs one pass (exit 1, "retry next pass"), never a point.
"""
from __future__ import annotations

import threading
import time

from ..errors import DestinationDownError, RetriesExhaustedError
from ..retry import cause_line, error_chain, nothing_there

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"
# Distinct runs (worker threads) whose calls to one target failed transiently, with no answer
# from it in between: the target is down. One run alone (--workers 1) waits out the policy for
# a server that is there but failing (timeouts, 503s): a busy server must not cost the pass.
RUNS_FAILING_AT_ONCE = 3
# Tries of one run in a row that found nothing there (refused, unreachable, unresolvable), with
# no answer in between: the target is down. With the default policy (0.5 s doubling) the third
# refused try comes 1.5 s after the first.
NOTHING_THERE_TRIES = 3


class Breaker:
    """The breaker of one destination target (thread-safe)."""

    def __init__(self, name: str, target_key: str):
        self.name, self.target_key = name, target_key
        self.state = CLOSED
        self.cause = ""  # one line: "connection refused at http://127.0.0.1:5000"
        self.detail: str | None = None  # the whole chain of the error that opened it
        self.opened_by = ""  # the call that ran out of retries ("mlflow: open run")
        self.why = ""  # why it opened, for the runs whose calls it stopped
        self.cond = threading.Condition()
        self.prober: int | None = None  # thread making the half-open probe
        self.failing: set[int] = set()  # threads whose call failed transiently, none answered since
        self.refused: dict[int, int] = {}  # thread -> its tries in a row that found nothing there

    # -- asked before a call ----------------------------------------------------------------------
    def down(self) -> DestinationDownError | None:
        """The error to raise instead of calling (the breaker is open), else None."""
        if self.state != OPEN:
            return None
        err = DestinationDownError(
            f"{self.name}: down ({self.cause}); skipped this pass without a call, retried at the "
            "next pass")
        err.cause, err.detail = self.cause, self.detail
        return err

    def admit(self, stop: threading.Event | None, probe: bool = True) -> None:
        """Raise :class:`DestinationDownError` if open. Half-open: the first caller becomes the
        probe (``probe``: False only waits, for a check made before any call); the others
        wait until it is answered or gives up."""
        with self.cond:
            me = threading.get_ident()
            while True:
                err = self.down()
                if err is not None:
                    raise err
                if self.state == CLOSED or self.prober == me:
                    return
                if self.prober is None:
                    if probe:
                        self.prober = me
                    return
                if stop is not None and stop.is_set():
                    return  # draining: the call itself sees the stop
                self.cond.wait(0.25)

    # -- told after a call --------------------------------------------------------------------------
    def answered(self) -> None:
        """The destination answered (a result, or an error that is not transient): closed."""
        if self.state == CLOSED and not self.failing and not self.refused:
            return  # the common case: no lock per call
        with self.cond:
            self.failing.clear()  # it answered: the failures before are not "at once" any more
            self.refused.clear()
            if self.state == HALF_OPEN:
                self.state, self.prober = CLOSED, None
                self.cond.notify_all()

    def failed_try(self, err: BaseException) -> None:
        """A call failed transiently and will be tried again: with
        :data:`RUNS_FAILING_AT_ONCE` runs failing so, or one run's :data:`NOTHING_THERE_TRIES`
        tries in a row finding nothing there, the breaker opens (the calls stop at once; see
        :meth:`wait`). Half-open, only the probe calls: the same rules decide its fate."""
        me = threading.get_ident()
        with self.cond:
            if self.state == OPEN:
                return
            refused = self.refused.get(me, 0) + 1 if nothing_there(err) else 0
            if refused:
                self.refused[me] = refused
            else:
                self.refused.pop(me, None)
            if refused >= NOTHING_THERE_TRIES:
                self._open(err, f"{refused} tries in a row found nothing there")
                return
            if self.state != CLOSED:
                return
            self.failing.add(me)
            if len(self.failing) >= RUNS_FAILING_AT_ONCE:
                self._open(err, f"{len(self.failing)} runs failing at once")

    def _open(self, err: BaseException, why: str) -> None:
        self.state, self.cause, self.detail = OPEN, cause_line(err), error_chain(err)
        self.opened_by = self.why = why
        self.prober = None
        self.failing.clear()
        self.refused.clear()
        self.cond.notify_all()

    def trip(self, err: RetriesExhaustedError, what: str = "") -> None:
        with self.cond:
            if self.state != OPEN:
                self.state = OPEN
                self.cause = err.cause or str(err)
                self.detail = err.detail
                self.opened_by = what
                self.why = f"{what} of another run ran out of retries"
            self.prober = None
            self.failing.clear()
            self.refused.clear()
            self.cond.notify_all()

    def release(self) -> None:
        """The probe ended without an answer (an unexpected error): another call probes."""
        with self.cond:
            self.failing.discard(threading.get_ident())
            self.refused.pop(threading.get_ident(), None)
            if self.prober == threading.get_ident():
                self.prober = None
                self.cond.notify_all()

    def wait(self, seconds: float, stop: threading.Event | None) -> None:
        """The retry policy's backoff: ends early when the breaker opens (another run found the
        destination down: no reason to try again) or the sync is stopped."""
        deadline = time.monotonic() + seconds
        with self.cond:
            while self.state != OPEN and not (stop is not None and stop.is_set()):
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self.cond.wait(min(left, 0.25))

    def new_pass(self) -> None:
        with self.cond:
            if self.state == OPEN:
                self.state = HALF_OPEN
            self.prober = None
            self.cond.notify_all()

    def line(self, skipped: int) -> str:
        """The one line a pass reports for an open breaker."""
        runs = "1 run" if skipped == 1 else f"{skipped} runs"
        return f"{self.name}: down ({self.cause}), {runs} skipped, retry next pass"


class Breakers:
    """The breakers of one sync, by target key (created on first use)."""

    def __init__(self) -> None:
        self._by_key: dict[str, Breaker] = {}
        self._lock = threading.Lock()

    def get(self, name: str, target_key: str) -> Breaker:
        b = self._by_key.get(target_key)
        if b is None:
            with self._lock:
                b = self._by_key.setdefault(target_key, Breaker(name, target_key))
        return b

    def new_pass(self) -> None:
        for b in list(self._by_key.values()):
            b.new_pass()

    def open(self) -> list[Breaker]:
        return [b for b in self._by_key.values() if b.state == OPEN]
