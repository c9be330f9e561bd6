"""One fault plan and one request log for every test server pytest-ckpts ships.

Both the local hub (``pytest_ckpts.testing.hub``) and the MLflow server's ASGI layer
(``pytest_ckpts.testing.mlflow``) read their faults from a :class:`FaultPlan` and write
what they answered to a :class:`RequestLog`, so a fault means the same thing, with the
same defaults, whichever server a test talks to.

A fault matches on the HTTP method, on text in the raw (URL-quoted) request path and
on the *route kind* the server gives the request (the hub: ``"revision"``, ``"head"``,
``"file"``, ...; see docs/local-hub.md). A fault given none of the three hits the
server's ``default_route`` (the hub: every request; the MLflow server: artifact
uploads). Faults are used up in the order they were added; ``n=None`` means every
matching request until :meth:`FaultPlan.clear`.

Stdlib only: importing this never pulls in a server.
"""

from __future__ import annotations

import enum
import threading
import time
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, replace
from email.utils import formatdate

__all__ = [
    "DEFAULT_STATUS",
    "Fault",
    "FaultKind",
    "FaultPlan",
    "Hold",
    "RequestLog",
    "RequestRecord",
    "Ticket",
]

#: The status ``fail_next`` answers with unless told otherwise (both servers).
DEFAULT_STATUS = 503


@dataclass(frozen=True)
class RequestRecord:
    """One request as the server saw it.

    ``bytes_sent``: body bytes written so far; ``range``: the ``Range`` header;
    ``body``: a file-content response (full or ranged) was started; ``route``: the
    server's route kind; ``status`` 0: never answered (blackholed, or cut by stop).
    """

    method: str
    path: str
    status: int
    bytes_sent: int = 0
    range: str | None = None
    body: bool = False
    route: str = "other"


Ticket = tuple[int, int]


class RequestLog:
    """Thread-safe request log with counters.

    A request is logged before its response goes out, and body bytes before they are
    written, so a client that has its answer always finds it counted.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[RequestRecord] = []
        self._generation = 0  # bumped by reset() so in-flight bodies stop counting

    def add(self, record: RequestRecord) -> Ticket:
        """Log a request; the ticket lets the server add body bytes as it sends them."""
        with self._lock:
            self._records.append(record)
            return self._generation, len(self._records) - 1

    def add_bytes(self, ticket: Ticket, n: int) -> None:
        generation, index = ticket
        with self._lock:
            if generation == self._generation:
                r = self._records[index]
                self._records[index] = replace(r, bytes_sent=r.bytes_sent + n)

    def set_status(self, ticket: Ticket, status: int) -> None:
        generation, index = ticket
        with self._lock:
            if generation == self._generation:
                self._records[index] = replace(self._records[index], status=status)

    @property
    def requests(self) -> list[RequestRecord]:
        """A snapshot of every request since the last reset, oldest first."""
        with self._lock:
            return list(self._records)

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self._records)

    @property
    def bytes_served(self) -> int:
        """Body bytes written to clients (file content and API answers)."""
        with self._lock:
            return sum(r.bytes_sent for r in self._records)

    @property
    def bodies_served(self) -> int:
        """File-content GET responses (full or ranged) sent, complete or not."""
        with self._lock:
            return sum(1 for r in self._records if r.body)

    def count(
        self,
        method: str | None = None,
        path_contains: str | None = None,
        *,
        route: str | None = None,
        status: int | None = None,
    ) -> int:
        """Requests with this method, text in the raw path, route kind and/or status."""
        return len(self.select(method, path_contains, route=route, status=status))

    def select(
        self,
        method: str | None = None,
        path_contains: str | None = None,
        *,
        route: str | None = None,
        status: int | None = None,
    ) -> list[RequestRecord]:
        """The logged requests :meth:`count` counts, oldest first."""
        with self._lock:
            return [
                r
                for r in self._records
                if (method is None or r.method == method)
                and (path_contains is None or path_contains in r.path)
                and (route is None or r.route == route)
                and (status is None or r.status == status)
            ]

    def by_route(self) -> dict[str, int]:
        """``{route kind: requests}`` for the kinds seen since the last reset."""
        with self._lock:
            return dict(Counter(r.route for r in self._records))

    def bytes_sent(self, route: str | None = None) -> int:
        """Body bytes written for requests of this route kind (None: all)."""
        with self._lock:
            return sum(r.bytes_sent for r in self._records if route is None or r.route == route)

    def reset(self) -> None:
        with self._lock:
            self._records.clear()
            self._generation += 1


class FaultKind(str, enum.Enum):
    """What a planned fault does; each has its :class:`FaultPlan` method."""

    FAIL = "fail"
    HOLD = "hold"
    DELAY = "delay"
    SLOW = "slow"
    DROP = "drop"
    CORRUPT = "corrupt"
    TAMPER = "tamper"


class Hold:
    """Requests held unanswered by :meth:`FaultPlan.hold` until :meth:`release`.

    The test's side of a held request: :meth:`wait_arrived` returns once the server
    holds that many (a "request arrived" signal, with no sleep), :meth:`release`
    lets every held request and every later match go on.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._arrived = 0
        self._released = False

    @property
    def arrived(self) -> int:
        """Requests that reached the hold so far (released or not)."""
        with self._cond:
            return self._arrived

    def wait_arrived(self, n: int = 1, timeout: float = 60.0) -> bool:
        """True once ``n`` matching requests have arrived; False after ``timeout`` s."""
        with self._cond:
            return self._cond.wait_for(lambda: self._arrived >= n, timeout)

    def release(self) -> None:
        with self._cond:
            self._released = True
            self._cond.notify_all()

    @property
    def released(self) -> bool:
        with self._cond:
            return self._released

    # -- the server's side
    def arrive(self) -> None:
        with self._cond:
            self._arrived += 1
            self._cond.notify_all()

    def wait_released(self, timeout: float) -> bool:
        """For servers: wait up to ``timeout`` s for :meth:`release`; True once released."""
        with self._cond:
            return self._cond.wait_for(lambda: self._released, timeout)


@dataclass
class Fault:
    """One planned misbehaviour; see the :class:`FaultPlan` method that adds each kind."""

    kind: FaultKind
    remaining: int | None  # None: every matching request
    method: str | None = None
    path_contains: str | None = None
    route: str | None = None
    status: int = DEFAULT_STATUS
    seconds: float = 0.0
    after_bytes: int = 0
    reset: bool = True
    retry_after: int | None = None
    http_date: bool = False
    bytes_per_second: float | None = None
    start: int = 0
    end: int | None = None
    echo_auth: bool = False
    gate: Hold | None = None  # "hold": shared by every copy take() hands out

    def matches(self, method: str, path: str, route: str) -> bool:
        if self.method is not None and self.method != method:
            return False
        if self.path_contains is not None and self.path_contains not in path:
            return False
        if self.route is not None and self.route != route:
            return False
        return self.remaining is None or self.remaining > 0

    def retry_after_header(self) -> str | None:
        """``Retry-After`` as seconds, or as an HTTP date that many seconds from now."""
        if self.retry_after is None:
            return None
        if self.http_date:
            return formatdate(time.time() + self.retry_after, usegmt=True)
        return str(self.retry_after)


class FaultPlan:
    """Make a test server misbehave on purpose, request by request.

    ``routes``: the route kinds the server tells apart (a fault naming another is a
    ``ValueError``); ``default_route``: what a fault scoped by nothing hits.
    """

    def __init__(self, *, routes: Collection[str] = (), default_route: str | None = None) -> None:
        self.routes = frozenset(routes)
        self.default_route = default_route
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._blackhole = threading.Event()

    # -- errors
    def fail_next(
        self,
        n: int,
        status: int = DEFAULT_STATUS,
        *,
        method: str | None = None,
        path_contains: str | None = None,
        route: str | None = None,
        retry_after: int | None = None,
        http_date: bool = False,
        echo_auth: bool = False,
    ) -> None:
        """Answer the next ``n`` matching requests with ``status`` and an error body.

        ``retry_after`` adds ``Retry-After`` (seconds; an HTTP date with ``http_date``).
        ``echo_auth`` plays a hostile or careless hub: the request's ``Authorization``
        header is echoed in the error message, the body and the status line's reason.
        The server never handles them: nothing is stored.
        """
        self._add(
            Fault(
                FaultKind.FAIL, _count(n), method, path_contains, route, status=status,
                retry_after=retry_after, http_date=http_date, echo_auth=echo_auth,
            )
        )  # fmt: skip

    def throttle(
        self,
        n: int = 1,
        retry_after: int | None = 1,
        *,
        http_date: bool = False,
        method: str | None = None,
        path_contains: str | None = None,
        route: str | None = None,
    ) -> None:
        """Answer the next ``n`` matching requests ``429 Too Many Requests``.

        With ``Retry-After: <retry_after>`` (seconds, or an HTTP date with
        ``http_date=True``; None sends no header), as a rate-limited hub does.
        """
        self.fail_next(
            n, 429, method=method, path_contains=path_contains, route=route,
            retry_after=retry_after, http_date=http_date,
        )  # fmt: skip

    # -- time
    def hold(
        self,
        *,
        n: int | None = None,
        method: str | None = None,
        path_contains: str | None = None,
        route: str | None = None,
    ) -> Hold:
        """Hold matching requests unanswered until the returned :class:`Hold` is released.

        Applied first, before ``delay``, ``slow`` and ``fail``; a request counts as
        arrived when the hold catches it (the server logs it when it answers). Stopping
        the server ends a hold too. Every matching request if ``n`` is None.
        """
        gate = Hold()
        self._add(Fault(FaultKind.HOLD, _count(n), method, path_contains, route, gate=gate))
        return gate

    def delay(
        self,
        seconds: float,
        *,
        n: int | None = None,
        method: str | None = None,
        path_contains: str | None = None,
        route: str | None = None,
    ) -> None:
        """Wait ``seconds`` before answering matching requests (all of them if ``n`` is None)."""
        self._add(Fault(FaultKind.DELAY, _count(n), method, path_contains, route, seconds=seconds))

    def slow(
        self,
        latency: float = 0.0,
        bytes_per_second: float | None = None,
        *,
        n: int | None = None,
        method: str | None = None,
        path_contains: str | None = None,
        route: str | None = None,
    ) -> None:
        """A slow link: wait ``latency`` before each matching answer, send bodies at
        ``bytes_per_second`` at most (each response on its own, so parallel fetches
        add up). Every matching request if ``n`` is None."""
        if bytes_per_second is not None and bytes_per_second <= 0:
            raise ValueError(f"bytes_per_second must be > 0, not {bytes_per_second!r}")
        self._add(
            Fault(
                FaultKind.SLOW, _count(n), method, path_contains, route, seconds=latency,
                bytes_per_second=bytes_per_second,
            )
        )  # fmt: skip

    # -- bodies (the local hub's file GETs)
    def drop_next(
        self,
        n: int = 1,
        *,
        after_bytes: int = 0,
        path_contains: str | None = None,
        reset: bool = True,
        route: str | None = None,
    ) -> None:
        """Send a file GET's headers and ``after_bytes`` of its body, then drop the connection.

        ``after_bytes`` is capped one byte short of the body, so the body is always
        incomplete. ``reset=True`` aborts with a TCP RST, as a crashed server or a
        broken network does (huggingface_hub raises ``httpx2.ReadError``);
        ``reset=False`` closes cleanly, which the client answers by asking again.
        """
        self._add(
            Fault(FaultKind.DROP, _count(n), "GET", path_contains, route, after_bytes=after_bytes,
                  reset=reset)
        )  # fmt: skip

    def corrupt_next(self, n: int = 1, *, path_contains: str | None = None) -> None:
        """Flip the first byte of the next ``n`` file bodies (length and headers unchanged)."""
        self._add(Fault(FaultKind.CORRUPT, _count(n), "GET", path_contains))

    def tamper(
        self,
        path_contains: str | None = None,
        *,
        start: int = 0,
        end: int | None = None,
        n: int | None = None,
    ) -> None:
        """Serve wrong bytes (each one inverted) for file bytes ``[start, end)``.

        Offsets are positions in the file, so a ranged GET is wrong exactly where it
        overlaps them; ``end=None`` runs to the end of the file (``start=0``: the
        whole file). Length and headers stay right. Every matching body if ``n`` is None.
        """
        if start < 0 or (end is not None and end <= start):
            raise ValueError(f"tamper needs 0 <= start < end, got start={start}, end={end}")
        self._add(Fault(FaultKind.TAMPER, _count(n), "GET", path_contains, start=start, end=end))

    # -- connections
    def blackhole(self, on: bool = True) -> None:
        """Accept connections and read requests, but never answer, until ``blackhole(False)``.

        Requests caught meanwhile are logged with status 0 and their connections are
        closed unanswered when the blackhole ends or the server stops.
        """
        if on:
            self._blackhole.set()
        else:
            self._blackhole.clear()

    @property
    def blackholed(self) -> bool:
        return self._blackhole.is_set()

    # -- plan
    def clear(self) -> None:
        """Forget every pending fault, release every hold and end a blackhole."""
        with self._lock:
            for fault in self._faults:
                if fault.gate is not None:
                    fault.gate.release()
            self._faults.clear()
        self._blackhole.clear()

    @property
    def pending(self) -> list[Fault]:
        """Faults not used up yet, in the order they apply."""
        with self._lock:
            return [replace(f) for f in self._faults if f.remaining is None or f.remaining > 0]

    def take(
        self, kind: FaultKind | str, method: str, path: str, route: str = "other"
    ) -> Fault | None:
        """For servers: use up and return the first matching fault of ``kind``."""
        kind = FaultKind(kind)
        with self._lock:
            for fault in self._faults:
                if fault.kind is kind and fault.matches(method, path, route):
                    if fault.remaining is not None:
                        fault.remaining -= 1
                    return replace(fault)
        return None

    def _add(self, fault: Fault) -> None:
        if fault.route is not None and self.routes and fault.route not in self.routes:
            raise ValueError(
                f"unknown route kind {fault.route!r}; this server has {sorted(self.routes)}"
            )
        if fault.method is None and fault.path_contains is None and fault.route is None:
            fault.route = self.default_route
        with self._lock:
            self._faults.append(fault)


def _count(n: int | None) -> int | None:
    if n is not None and n < 1:
        raise ValueError(f"n must be a positive number of requests (or None for all), not {n}")
    return n
