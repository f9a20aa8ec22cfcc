"""The one retry policy: bounded exponential backoff for transient destination errors."""
from __future__ import annotations

import os
import threading
from typing import Any, Callable

from .errors import (DestinationError, PermanentDestinationError, TraceletError,
                     TransientDestinationError)
from .redact import scrub

# 6 tries, 0.5 s doubling to 8 s: ~15 s of patience, enough for a tracking server restart or a
# 429 burst, short enough that a destination that stays down fails itself within one cron period.
RETRY_ATTEMPTS = int(os.environ.get("TRACELET_RETRY_ATTEMPTS", "6"))
RETRY_BASE_DELAY_S = float(os.environ.get("TRACELET_RETRY_BASE_DELAY_S", "0.5"))
RETRY_MAX_DELAY_S = 8.0


def call_with_retry(
    fn: Callable[..., Any],
    *args: Any,
    what: str,
    stop: threading.Event | None = None,
    sleep: Callable[[float], Any] | None = None,
    attempts: int | None = None,
    base_delay_s: float | None = None,
    max_delay_s: float | None = None,
    **kwargs: Any,
) -> Any:
    """Call ``fn`` (a destination's contract method: it raises typed errors, see
    ``destinations/base.py``); retry :class:`TransientDestinationError` with backoff. Raises:
    ``DestinationError`` once retries ran out, ``PermanentDestinationError`` (content the
    vendor refused) or ``DestinationError`` (the destination refuses) at once.

    ``attempts``/``base_delay_s``/``max_delay_s`` replace the policy's budget for a wait that
    is known to be short (Aim's index lock, held by ``aim up`` while it indexes one run)."""
    tries = RETRY_ATTEMPTS if attempts is None else max(1, attempts)
    delay = RETRY_BASE_DELAY_S if base_delay_s is None else base_delay_s
    cap = RETRY_MAX_DELAY_S if max_delay_s is None else max_delay_s
    wait = sleep or (stop.wait if stop is not None else threading.Event().wait)
    for attempt in range(1, tries + 1):
        try:
            return fn(*args, **kwargs)
        except TraceletError as e:
            if isinstance(e, PermanentDestinationError):
                raise PermanentDestinationError(
                    f"{what}: {_short(e)} (not retried (not a transient error))") from e
            if not isinstance(e, TransientDestinationError):
                raise
            if attempt == tries:
                raise DestinationError(f"{what}: {_short(e)} (still failing after {attempt} "
                                       "tries; it is retried at the next sync)") from e
        except Exception as e:  # not through a Destination's boundary (a plain callable)
            from .destinations.base import classify_error, typed_error

            cls = classify_error(e)
            if cls is not TransientDestinationError:
                raise typed_error(cls, e) from e
            if attempt == tries:
                raise DestinationError(f"{what}: {type(e).__name__}: {_short(e)} (still failing "
                                       f"after {attempt} tries; it is retried at the next sync)") from e
        wait(delay)
        delay = min(delay * 2, cap)
    raise AssertionError("unreachable")


def _short(e: BaseException, limit: int = 400) -> str:
    # vendor text becomes ours here: a URI with its credentials must not go on
    text = scrub(str(e).strip().replace("\n", " "))
    return text if len(text) <= limit else text[: limit - 3] + "..."
