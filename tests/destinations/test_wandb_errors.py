"""W&B errors typed at the vendor boundary (``client.classify_wandb``), from the exceptions the
SDK itself raises: built by wandb's own code paths (``normalize_exceptions`` around the public
API, ``ProtobufErrorHandler`` for the service's error replies, ``requests`` responses) or raised
by a real offline run. Never from message text: every message here is the same word."""
from __future__ import annotations

import pytest
import requests
from wandb.apis.normalize import normalize_exceptions
from wandb.apis.public.runs import RunNotFoundError
from wandb.errors import AuthenticationError, Error, UsageError
from wandb.errors.util import ProtobufErrorHandler
from wandb.proto import wandb_internal_pb2 as pb
from wandb.proto.wandb_api_pb2 import ApiErrorResponse
from wandb.sdk.lib.service.service_connection import WandbApiFailedError
from wandb.sdk.mailbox import HandleAbandonedError, MailboxClosedError

from tests.destinations.harness_wandb import WandbOfflineHarness
from tracelet.destinations.base import RunRef, classify_error
from tracelet.destinations.wandb.client import _not_on_server, classify_wandb
from tracelet.errors import (DestinationError, PermanentDestinationError,
                             TransientDestinationError)
from tracelet.testing.events import T0

TRANSIENT, CONTENT, DESTINATION = (TransientDestinationError, PermanentDestinationError,
                                   DestinationError)
MSG = "refused"  # the same text everywhere: only types, causes and statuses may decide


def _raised(fn):
    """The exception ``fn`` raises (with its real __cause__/__context__ chain)."""
    try:
        fn()
    except BaseException as e:  # noqa: BLE001 - that is the point
        return e
    raise AssertionError("did not raise")


def _through_public_api(inner: BaseException) -> BaseException:
    """What a ``wandb.Api`` call raises when ``inner`` happens inside it."""
    @normalize_exceptions
    def api_call():
        raise inner

    return _raised(api_call)


def _http_error(status: int) -> requests.HTTPError:
    resp = requests.Response()
    resp.status_code, resp._content, resp.reason = status, b"", MSG
    return requests.HTTPError(MSG, response=resp)


def _service_failure(inner: BaseException) -> WandbApiFailedError:
    """As ``ServiceConnection.api_request`` raises it: ``raise ... from None`` inside except."""
    def request():
        try:
            raise inner
        except (TimeoutError, MailboxClosedError, HandleAbandonedError):
            raise WandbApiFailedError(MSG) from None

    return _raised(request)


def _service_reply(code: int) -> Error:
    """The error ``wandb.init`` raises for the service's ``run_result.error``."""
    return ProtobufErrorHandler.to_exception(pb.ErrorInfo(code=code, message=MSG))


CASES = [
    # the public API (reading what landed, online): a CommError wraps what decides
    ("api: HTTP 503", lambda: _through_public_api(_http_error(503)), TRANSIENT),
    ("api: HTTP 429", lambda: _through_public_api(_http_error(429)), TRANSIENT),
    ("api: HTTP 401", lambda: _through_public_api(_http_error(401)), DESTINATION),
    ("api: HTTP 404", lambda: _through_public_api(_http_error(404)), DESTINATION),
    ("api: HTTP 400", lambda: _through_public_api(_http_error(400)), DESTINATION),
    ("api: core HTTP 502", lambda: _through_public_api(
        WandbApiFailedError(MSG, ApiErrorResponse(message=MSG, http_status=502))), TRANSIENT),
    ("api: core HTTP 403", lambda: _through_public_api(
        WandbApiFailedError(MSG, ApiErrorResponse(message=MSG, http_status=403))), DESTINATION),
    ("api: core HTTP 422", lambda: _through_public_api(
        WandbApiFailedError(MSG, ApiErrorResponse(message=MSG, http_status=422))), DESTINATION),
    ("api: core busy (timeout)", lambda: _through_public_api(_service_failure(TimeoutError(MSG))),
     TRANSIENT),
    ("api: core gone", lambda: _through_public_api(_service_failure(MailboxClosedError())),
     DESTINATION),
    ("api: connection refused", lambda: _through_public_api(requests.ConnectionError(MSG)),
     TRANSIENT),
    ("api: run not found", lambda: _through_public_api(RunNotFoundError(MSG)), DESTINATION),
    ("api: a bug inside", lambda: _through_public_api(TypeError(MSG)), DESTINATION),
    ("api: nothing decisive", lambda: _through_public_api(ValueError(MSG)), TRANSIENT),
    ("api: auth", lambda: AuthenticationError(MSG), DESTINATION),
    # the service's replies to wandb.init (no status, only the error code it maps to a class)
    ("init: communication", lambda: _service_reply(pb.ErrorInfo.COMMUNICATION), TRANSIENT),
    ("init: authentication", lambda: _service_reply(pb.ErrorInfo.AUTHENTICATION), DESTINATION),
    ("init: usage", lambda: _service_reply(pb.ErrorInfo.USAGE), DESTINATION),
    ("init: unsupported", lambda: _service_reply(pb.ErrorInfo.UNSUPPORTED), DESTINATION),
    ("init: unknown", lambda: _service_reply(pb.ErrorInfo.UNKNOWN), DESTINATION),
    # the service process itself
    ("service: timeout", lambda: TimeoutError(MSG), TRANSIENT),
    ("service: connection reset", lambda: ConnectionResetError(MSG), TRANSIENT),
    ("service: broken pipe", lambda: BrokenPipeError(MSG), TRANSIENT),
    ("service: mailbox closed", lambda: MailboxClosedError(), DESTINATION),
    ("service: handle abandoned", lambda: HandleAbandonedError(), DESTINATION),
    ("sdk: usage", lambda: UsageError(MSG), DESTINATION),
    # a value W&B's media types refuse is the content's
    ("media: bad value", lambda: ValueError(MSG), CONTENT),
]


@pytest.mark.parametrize("make,want", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_wandb_errors_are_typed(make, want):
    assert classify_wandb(make()) is want


def test_the_service_replies_were_content_before():
    """Without W&B's types, the common rules call these the content's (the engine would then
    quarantine good points); the W&B rules are what type them."""
    for code in (pb.ErrorInfo.COMMUNICATION, pb.ErrorInfo.USAGE, pb.ErrorInfo.UNKNOWN):
        assert classify_error(_service_reply(code)) is CONTENT
    assert classify_error(_through_public_api(RunNotFoundError(MSG))) is CONTENT


def test_not_on_server_is_read_from_types_and_statuses():
    assert _not_on_server(_through_public_api(RunNotFoundError(MSG)))
    assert _not_on_server(_through_public_api(_http_error(404)))
    assert _not_on_server(_through_public_api(
        WandbApiFailedError(MSG, ApiErrorResponse(message="not found", http_status=404))))
    for status in (400, 403, 500):
        assert not _not_on_server(_through_public_api(_http_error(status)))
    assert not _not_on_server(_through_public_api(ValueError("404 not found")))  # text: no


def test_a_call_on_a_finished_run_fails_the_destination(tmp_path, monkeypatch):
    """A real SDK error through the boundary: W&B's UsageError for a run that is finished is
    the destination's (the run as a whole), not a bad point to quarantine."""
    from tracelet.destinations import create_destination
    from tracelet.reader.points import Batch, ScalarColumns

    h = WandbOfflineHarness()
    dest = create_destination("wandb", h.setup(tmp_path, monkeypatch))
    run = RunRef(run_id="errfinished", run_path="r", project="p", source_dir=tmp_path)
    handle = dest.open_run(run, None)
    try:
        handle.client.finish()
        batch = Batch(path=str(tmp_path / "ev"), start_offset=0, end_offset=10,
                      scalars=ScalarColumns(["loss"], [1], [T0], [0.5]))
        with pytest.raises(DestinationError) as info:
            dest.send(handle, batch, dedupe=False)
        assert type(info.value) is DestinationError and isinstance(info.value.__cause__,
                                                                   UsageError)
    finally:
        dest.close_run(handle)
        dest.close()
