"""The one retry policy of uploads: which failures are transient, and the backoff loop.

Every upload attempt is made with mlflow's own HTTP retries off (``_transport``), so
the attempts counted here are the requests the server sees: ``max_retries + 1`` at
most, not that times mlflow's default of 7 retries.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import TypeVar

from ..errors import UploadError
from ..retry import backoff_delay

logger = logging.getLogger("pytest_ckpts.uploads")

T = TypeVar("T")

# requests/urllib3 transport failures, matched by name so mlflow's HTTP stack stays lazy
_TRANSPORT_ERRORS = frozenset(
    {
        "ConnectionError",
        "ConnectTimeout",
        "ReadTimeout",
        "Timeout",
        "ChunkedEncodingError",
        "ProtocolError",
        "MaxRetryError",
        "NewConnectionError",
        "RemoteDisconnected",
    }
)
_URLLIB3_STATUS = re.compile(r"too many (\d{3}) error responses")


def http_status(exc: BaseException) -> int | None:
    """The HTTP status behind an exception from mlflow/requests, if any.

    Artifact PUTs fail with a ``requests.HTTPError`` carrying the response; REST calls
    (the ``runs/get`` that precedes an upload) fail with an ``MlflowException`` whose
    error code maps to a status. A status that urllib3's retry policy handled (mlflow
    lists 429 and 5xx) arrives only as the text of a ``MaxRetryError``.
    """
    seen: BaseException | None = exc
    while seen is not None:
        code = getattr(getattr(seen, "response", None), "status_code", None)
        if isinstance(code, int):
            return code
        found = _URLLIB3_STATUS.search(str(seen))
        if found:
            return int(found.group(1))
        seen = seen.__cause__ or seen.__context__
    return None


def _is_transport_error(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (ConnectionError, TimeoutError)):
            return True
        if type(seen).__name__ in _TRANSPORT_ERRORS:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def is_transient(exc: BaseException) -> bool:
    """Connection problems, 5xx and 429 are worth retrying; other 4xx are not."""
    status = http_status(exc)
    if status is not None:
        return status >= 500 or status == 429
    if _is_transport_error(exc):
        return True
    get_code = getattr(exc, "get_http_status_code", None)  # MlflowException
    if callable(get_code):
        code = get_code()
        return isinstance(code, int) and (code >= 500 or code == 429)
    return False


def call_with_retries(
    fn: Callable[[], T],
    *,
    what: str,
    max_retries: int,
    base_delay: float,
    sleep: Callable[[float], None],
    on_attempt: Callable[[int], None],
) -> T:
    """Call ``fn``; retry transient failures with exponential backoff and jitter.

    Attempt ``k`` (0-based) that fails transiently waits ``uniform(d/2, d)``, ``d =
    base_delay * 2**k`` (:func:`pytest_ckpts.retry.backoff_delay`, the hub client's
    formula, uncapped here): the jitter spreads the retries of many workers hitting one
    server, the floor keeps any retry from being immediate.
    ``on_attempt(n)`` is told the number of every attempt before it is made. A failure
    that is not transient, or the last one, raises :class:`UploadError` naming ``what``.
    """
    attempt = 0
    while True:
        on_attempt(attempt + 1)
        try:
            return fn()
        except Exception as exc:
            status = http_status(exc)
            if not is_transient(exc):
                hint = (
                    " - the server refused the request itself (credentials, "
                    "permissions, run id or artifact path), so it is not retried"
                    if status is not None and 400 <= status < 500
                    else " (not retried)"
                )
                raise UploadError(
                    f"pytest-ckpts: uploading {what} failed"
                    f"{f' with HTTP {status}' if status else ''}{hint}: {exc}"
                ) from exc
            if attempt >= max_retries:
                raise UploadError(
                    f"pytest-ckpts: uploading {what} failed after {attempt + 1} attempts"
                    f"{f' (last: HTTP {status})' if status else ''}: {exc}"
                ) from exc
            delay = backoff_delay(attempt, base=base_delay, cap=None)
            logger.warning(
                "pytest-ckpts: upload of %s failed (%s); retry %d/%d in %.1fs",
                what,
                f"HTTP {status}" if status else type(exc).__name__,
                attempt + 1,
                max_retries,
                delay,
            )
            sleep(delay)
            attempt += 1
