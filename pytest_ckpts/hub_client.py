"""The only module that talks to a hub: probe, download, upload, one error classifier.

huggingface_hub provides the HTTP session, headers, URLs and upload protocol; this
module owns the *retry loop* because the client's own loops have no cap on the total
wait (a ``Retry-After: 3600`` sleeps an hour, an unreachable hub costs ~23 s per file;
docs/how-to/ci.md "Retries and the retry budget" lists what was measured). Every request goes through :meth:`HubClient.send`:

- transient failures (429, 500, 502, 503, 504, resets, cut bodies, read timeouts) are
  retried with backoff and jitter, honouring ``Retry-After`` (on a 429 without it, the
  ``RateLimit`` reset), within the run's :class:`~pytest_ckpts.retry.RetryBudget`: each
  retry costs it the failed attempt's wall time plus the wait, and the wait is never
  below the backoff floor; :data:`~pytest_ckpts.retry.MAX_ATTEMPTS` per request at most;
- an unreachable endpoint (refused, DNS, connect timeout, no answer to the probe) is
  recorded in the :class:`~pytest_ckpts.retry.RunState`, so every later request of the
  run, in any process, fails at once;
- permanent failures (401, 403, 404, not found) are never retried.

The token goes only to the public hub or to ``HF_ENDPOINT`` (set by the machine), unless
the user trusts the manifest's own ``config.endpoint`` (docs/how-to/ci.md "Tokens"). It is held by a
:class:`_BearerAuth` whose ``repr`` hides it, so ``pytest -l`` never shows it (``_hub_auth``).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._fixes import hub_error_cause
from ._hf_state import hf_constants, user_agent
from ._hub_auth import DEFAULT_ENDPOINT, EndpointAuth
from ._redact import redact as _scrub
from ._redact import secrets_of
from ._transfer import Downloaded, TransferStop, download
from .cache import Cache
from .errors import (
    CacheError,
    CheckpointDownloadError,
    Fix,
    Kind,
    RetrySignal,
    TransferStopped,
    UsageFailure,
)
from .manifest import CheckpointSpec, Manifest, is_pinned
from .retry import (
    MAX_ATTEMPTS,
    TRANSIENT_STATUS,
    Failure,
    RetryBudget,
    RunState,
    backoff_delay,
    classify_exception,
    classify_response,
    give_up_hint,
)
from .settings import env_value

__all__ = [
    "Downloaded",
    "HubClient",
    "ProbeAnswer",
    "Ranged",
    "create_commit",
    "redact",
    "resolve_endpoint",
]

logger = logging.getLogger("pytest_ckpts")

#: Ways out when the hub cannot be reached (each front end names its own options).
_OFFLINE_FIXES = (
    Fix.set("mode", "offline", why="to run from the cache"),
    Fix.say("check HF_ENDPOINT / config.endpoint"),
)
_REMEMBERED = "remembered for this run"


def resolve_endpoint(manifest: Manifest) -> str:
    """Manifest ``config.endpoint`` > ``HF_ENDPOINT`` (read now) > the public hub."""
    return (manifest.endpoint or env_value("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def redact(text: str, token: str | None) -> str:
    """Remove the token, URL userinfo and credential-shaped strings from text that may
    reach a terminal or a log (docs/how-to/ci.md "Tokens")."""
    return _scrub(text, secrets_of(env_value("HF_ENDPOINT"), token))


@dataclass(frozen=True)
class Ranged:
    """One ``Range`` answer: the bytes asked for and the size of the whole file."""

    data: bytes
    size: int
    seconds: float


def _content_range(response: Any, begin: int, end: int) -> int | None:
    """The file size a 206 announces for ``[begin, end)`` (cut short at the end of a
    file smaller than asked: the caller's hash check then says it changed), else None."""
    text = str(response.headers.get("Content-Range") or "")
    m = re.fullmatch(r"\s*bytes (\d+)-(\d+)/(\d+)\s*", text)
    if response.status_code != 206 or m is None or int(m[1]) != begin:
        return None
    last, total = int(m[2]) + 1, int(m[3])
    return total if last == end or last == total < end else None


def failure_hint(failure: Failure) -> tuple[Fix, ...]:
    """The fixes a permanent failure suggests, told apart by the hub's ``X-Error-Code``
    (docs/how-to/ci.md "Retries and the retry budget")."""
    if failure.status in (401, 403):
        return (
            Fix.say("the repo needs a token with read access: set HF_TOKEN"),
            Fix.say("run `hf auth login`"),
        )
    if failure.status == 404 and failure.code == "RevisionNotFound":
        return (Fix.say("check the revision in the manifest"),)
    if failure.status == 404 and failure.code == "EntryNotFound":
        return (Fix.say("check hf_path in the manifest"),)
    if failure.status == 404:
        return (Fix.say("check hf_repo/repo, revision and repo_type in the manifest"),)
    return ()


def probe_hint(failure: Failure, has_token: bool) -> tuple[Fix, ...]:
    """The fixes a failed revision probe suggests."""
    if failure.status in (401, 403):
        if has_token:
            return (Fix.say("the hub refused the token: check HF_TOKEN or `hf auth login`"),)
        return (
            Fix.say("the repo needs authentication: set HF_TOKEN"),
            Fix.say("run `hf auth login`"),
        )
    if failure.status == 404:
        return (Fix.say("check hf_repo/repo and revision in the manifest"),)
    return ()


@dataclass(frozen=True)
class ProbeAnswer:
    """What one revision probe found: the ``commit``, or why not (``cause``, ``kind``,
    ``status``, ``fixes``). Remembered for the run; xdist workers get it as JSON
    (``workerinput``), in the shape :meth:`to_json` writes."""

    commit: str | None = None
    cause: str = ""
    kind: Kind = Kind.PERMANENT
    status: int | None = None
    fixes: tuple[Fix, ...] = ()

    @classmethod
    def failed(cls, exc: CheckpointDownloadError) -> ProbeAnswer:
        return cls(None, exc.cause or exc.summary, exc.kind, exc.status, exc.fixes)

    def to_json(self) -> dict[str, Any]:
        if self.commit is not None:
            return {"commit": self.commit}
        fixes = [dataclasses.asdict(f) for f in self.fixes]
        return {"error": self.cause, "kind": self.kind.value, "status": self.status, "fixes": fixes}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProbeAnswer:
        if isinstance(data.get("commit"), str):
            return cls(commit=data["commit"])
        fixes = tuple(
            Fix(**{**f, "command": tuple(f.get("command", ()))}) for f in data.get("fixes") or ()
        )
        return cls(None, str(data.get("error", "")), Kind(data["kind"]), data.get("status"), fixes)

    def error(self, spec: CheckpointSpec, where: str) -> CheckpointDownloadError:
        """This failure raised for ``spec`` (``where``: its repo, revision and endpoint)."""
        return CheckpointDownloadError(
            what=f"checkpoint '{spec.name}' from {where}",
            name=spec.name,
            status=self.status,
            kind=self.kind,
            cause=self.cause,
            fixes=self.fixes,
        )


@dataclass(repr=False)  # EndpointAuth's repr: the endpoint without its userinfo
class HubClient(EndpointAuth):
    """One endpoint's client for a run: probes, downloads and uploads with one policy."""

    endpoint: str
    budget: RetryBudget = field(default_factory=lambda: RetryBudget(60.0))
    run_state: RunState = field(default_factory=RunState)
    trust_endpoint: bool = False
    probe_timeout: float = 5.0
    read_timeout: float = 30.0
    progress: bool = False
    sleep: Callable[[float], object] = time.sleep
    clock: Callable[[], float] = time.monotonic
    #: set by the prefetcher: stopping it ends this client's transfers (docs/how-to/ci.md "Prefetch")
    stop: TransferStop | None = None
    _probes: dict[str, ProbeAnswer] = field(default_factory=dict, repr=False)
    #: body bytes received per checkpoint name by :meth:`download`, finished or not (reports)
    received: dict[str, int] = field(default_factory=dict, repr=False)
    _probe_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _built_headers: dict[str, str] | None = field(default=None, repr=False)

    @classmethod
    def for_manifest(cls, manifest: Manifest, **kwargs: Any) -> HubClient:
        return cls(endpoint=resolve_endpoint(manifest), **kwargs)

    # ------------------------------------------------------------------ the loop
    def describe(self, spec: CheckpointSpec, revision: str | None = None) -> str:
        return (
            f"repo '{spec.repo}' ({spec.repo_type}), path '{spec.hf_path}', "
            f"revision '{revision or spec.revision}', endpoint {self.shown}"
        )

    def _error(
        self,
        spec: CheckpointSpec | None,
        what: str,
        failure: Failure,
        fixes: tuple[Fix, ...] = (),
        note: str = "",
    ) -> CheckpointDownloadError:
        """``cause``: the hub's answer (and ``note``); ``fixes``: data, worded by front ends."""
        cause = self.redact(failure.text + (f" ({note})" if note else ""))
        return CheckpointDownloadError(
            what=self.redact(what),
            name=spec.name if spec else None,
            status=failure.status,
            kind=failure.kind,
            cause=cause,
            fixes=fixes,
        )

    def dead(self) -> str | None:
        """Why this endpoint must not be asked again in this run, if so."""
        return self.run_state.failure(self.shown)

    def send(
        self,
        spec: CheckpointSpec | None,
        what: str,
        attempt_once: Callable[[], Any],
        *,
        probing: bool = False,
        progress: Callable[[], int] | None = None,
    ) -> Any:
        """Run ``attempt_once`` (one HTTP exchange) under the retry policy.

        ``progress`` (bytes received so far) tells a cut body that brought bytes from
        one that did not: an attempt that made progress is continued (``Range``) and
        costs only its wait; the others cost their wall time too and count toward
        :data:`MAX_ATTEMPTS`.
        """
        attempt = 0  # attempts in a row without progress
        made = 0
        while True:
            if self.stop is not None:
                self.stop.check(what)
            dead = self.dead()
            if dead is not None:
                failure = Failure(Kind.UNREACHABLE, None, dead)
                raise self._error(spec, what, failure, _OFFLINE_FIXES, _REMEMBERED)
            started = self.clock()
            before = progress() if progress is not None else 0
            made += 1
            try:
                return attempt_once()
            except RetrySignal as retry:
                failure = retry.failure
            except (CacheError, CheckpointDownloadError, TransferStopped):
                raise
            except Exception as exc:
                if self.stop is not None:
                    self.stop.check(what)  # the stop shut the connection down
                failure = self._heard(classify_exception(exc, probing=probing))
            if failure.kind is Kind.UNREACHABLE:
                failure.text = f"hub unreachable at {self.shown}: {failure.text}"
                self.run_state.mark_failed(self.shown, failure.text)
                raise self._error(spec, what, failure, _OFFLINE_FIXES, _REMEMBERED) from None
            if failure.kind is not Kind.TRANSIENT:
                raise self._error(spec, what, failure, failure_hint(failure)) from None
            moved = progress is not None and progress() > before
            attempt = 0 if moved else attempt + 1
            asked = failure.retry_after
            wait = max(asked or 0.0, backoff_delay(max(0, attempt - 1)))
            cost = wait + (0.0 if moved else max(0.0, self.clock() - started))
            if attempt >= MAX_ATTEMPTS or not self.budget.take(cost):
                raise self._give_up(spec, what, failure, made, attempt >= MAX_ATTEMPTS) from None
            logger.info(
                "pytest-ckpts: %s: %s; retrying in %.1fs%s",
                what,
                failure.text,
                wait,
                f" (the hub asked for {asked:.0f}s: {failure.asked_by})" if asked else "",
            )
            self._pause(what, wait)

    def _pause(self, what: str, seconds: float) -> None:
        """Wait between attempts; a wait that overran costs the budget its wall time."""
        started = self.clock()
        wait = self.stop.wait if self.stop is not None and self.sleep is time.sleep else self.sleep
        wait(seconds)  # a stop ends a real wait at once
        if self.stop is not None:
            self.stop.check(what)
        self.budget.charge(self.clock() - started - seconds)

    def _give_up(
        self, spec: CheckpointSpec | None, what: str, failure: Failure, attempts: int, capped: bool
    ) -> CheckpointDownloadError:
        hint = give_up_hint(failure, self.budget, attempts=attempts, capped=capped)
        if self.budget.left < 1.0:
            self.run_state.mark_failed(
                self.shown,
                f"hub at {self.shown} kept failing ({failure.text}) and the retry budget is spent",
            )
        fixes = (Fix.set("retry_budget", why="to wait longer"),)
        return self._error(spec, what, failure, fixes, hint)

    def _headers(self) -> dict[str, str]:
        """Headers of a probe or a file GET: our own user agent (see
        :func:`~pytest_ckpts._hf_state.user_agent`; no token: ``_auth`` adds it), built once
        per client; a copy, so a caller may add its own."""
        if self._built_headers is None:
            self._built_headers = {"user-agent": user_agent()}
        return dict(self._built_headers)

    # ------------------------------------------------------------------ probe
    def probe(self, spec: CheckpointSpec) -> str:
        """The commit ``spec.revision`` names now (one bounded request per run and repo).

        Pinned commits are probed too when something must be fetched: it answers
        "is the hub there" in one short request instead of the client's long retries.
        Failures are remembered like answers.
        """
        key = "\0".join((spec.repo_type, spec.repo, spec.revision))
        with self._probe_lock:  # prefetch threads: one probe per key, not one per thread
            known = self._probes.get(key)
            if known is None:
                known = self._do_probe(spec)
                self._probes[key] = known
        if known.commit is not None:
            return known.commit
        raise known.error(spec, self.describe(spec))

    def _do_probe(self, spec: CheckpointSpec) -> ProbeAnswer:
        import httpx2

        url = (
            f"{self.base_url}/api/{spec.repo_type}s/{spec.repo}/revision/"
            f"{urllib.parse.quote(spec.revision, safe='')}"
        )
        what = f"cannot resolve revision '{spec.revision}' of repo '{spec.repo}' ({spec.repo_type}) at {self.shown}"

        def once() -> Any:
            response = self._session().get(
                url,
                headers=self._headers(),
                auth=self._auth(),
                timeout=httpx2.Timeout(self.probe_timeout),
                follow_redirects=True,
            )
            self._listen(response)
            if response.status_code in TRANSIENT_STATUS:
                raise RetrySignal(self._heard(classify_response(response)))
            if response.status_code >= 400:
                failure = self._heard(classify_response(response))
                raise self._error(None, what, failure, probe_hint(failure, self.has_token()))
            try:
                body = response.json()
            except ValueError:
                not_hub = "the answer is not JSON: not a Hugging Face Hub"
                raise self._error(None, what, Failure(Kind.UNREACHABLE, None, not_hub)) from None
            return body

        try:
            body = self.send(None, what, once, probing=True)
        except CheckpointDownloadError as exc:
            return ProbeAnswer.failed(exc)
        commit = body.get("sha") if isinstance(body, dict) else None
        if not isinstance(commit, str) or not is_pinned(commit):
            return ProbeAnswer(cause="the hub gave no commit")
        return ProbeAnswer(commit=commit)

    def known_commit(self, spec: CheckpointSpec) -> str | None:
        """The commit ``spec``'s revision resolved to in this run, if it was asked."""
        if is_pinned(spec.revision):
            return spec.revision
        known = self._probes.get("\0".join((spec.repo_type, spec.repo, spec.revision)))
        return None if known is None else known.commit

    def probes_to_json(self) -> dict[str, dict[str, Any]]:
        """Probe answers (commits and failures) for xdist workers (``workerinput``)."""
        return {key: answer.to_json() for key, answer in self._probes.items()}

    def probes_from_json(self, data: dict[str, dict[str, Any]]) -> None:
        """Seed this client with answers the controller already got."""
        self._probes.update({key: ProbeAnswer.from_json(v) for key, v in data.items()})

    # ------------------------------------------------------------------ file GETs
    @contextmanager
    def get_file(
        self, spec: CheckpointSpec, commit: str, what: str, byte_range: str | None
    ) -> Iterator[Any]:
        """One streamed GET of ``spec``'s file at ``commit`` (a ``Range`` if given); a
        transient status raises ``RetrySignal`` for :meth:`send`, a permanent one the error."""
        import httpx2

        url = (
            f"{self.base_url}/{'datasets/' if spec.repo_type == 'dataset' else ''}{spec.repo}"
            f"/resolve/{commit}/{urllib.parse.quote(spec.hf_path)}"
        )
        headers = self._headers()
        headers["Accept-Encoding"] = "identity"
        if byte_range:
            headers["Range"] = byte_range
        timeout = httpx2.Timeout(self.read_timeout, connect=self.probe_timeout)
        with self._session().stream(
            "GET", url, headers=headers, auth=self._auth(), timeout=timeout, follow_redirects=True
        ) as response:
            self._listen(response)
            if response.status_code in TRANSIENT_STATUS:
                raise RetrySignal(self._heard(classify_response(response)))
            if response.status_code >= 400:
                failure = self._heard(classify_response(response))
                raise self._error(spec, what, failure, failure_hint(failure))
            if self.stop is None:
                yield response
                return
            with self.stop.watch(response):
                yield response

    # ------------------------------------------------------------------ transfers
    def download(
        self,
        spec: CheckpointSpec,
        commit: str,
        cache: Cache,
        on_bytes: Callable[[int], None] | None = None,
    ) -> Downloaded:
        """Stream ``spec`` at ``commit`` into ``cache`` (see :func:`download`)."""

        def counted(n: int) -> None:  # one thread per name at a time: the file lock
            self.received[spec.name] = self.received.get(spec.name, 0) + n
            if on_bytes is not None:
                on_bytes(n)

        return download(self, spec, commit, cache, counted)  # in _transfer: the file side

    def read_range(
        self, spec: CheckpointSpec, commit: str, begin: int, end: int, *, what: str = ""
    ) -> Ranged:
        """Bytes ``[begin, end)`` of ``spec`` at ``commit`` by one HTTP ``Range`` request.

        For :mod:`pytest_ckpts.partial`, which verifies them. An answer with the whole
        file (200) or another range is refused, not read: never a silent full download.
        """
        if not 0 <= begin < end:
            raise ValueError(f"bad byte range [{begin}, {end})")
        what = what or (
            f"failed to read bytes {begin}-{end - 1} of checkpoint '{spec.name}' from "
            f"{self.describe(spec, commit)}"
        )
        started = time.perf_counter()

        def once() -> Ranged:
            with self.get_file(spec, commit, what, f"bytes={begin}-{end - 1}") as response:
                total = _content_range(response, begin, end)
                if total is None:
                    got = self.redact(response.headers.get("Content-Range") or "no Content-Range")
                    text = f"HTTP {response.status_code} ({got}) for bytes={begin}-{end - 1}"
                    note = "partial reads need a hub that serves byte ranges"
                    failure = Failure(Kind.PERMANENT, int(response.status_code), text)
                    raise self._error(spec, what, failure, (), note)
                data = _body(response, min(end, total) - begin)
                return Ranged(data, total, time.perf_counter() - started)

        result: Ranged = self.send(spec, what, once)
        return result


def _body(response: Any, want: int) -> bytes:
    """Exactly ``want`` bytes of ``response``'s body; a shorter or longer one is retried."""
    chunks: list[bytes] = []
    got = 0
    for chunk in response.iter_bytes():
        got += len(chunk)
        if got > want:
            break
        chunks.append(chunk)
    if got != want:
        cut = f"body of {got} bytes, not the {want} asked for"
        raise RetrySignal(Failure(Kind.TRANSIENT, None, cut))
    return b"".join(chunks)


# --------------------------------------------------------------------------- uploads


def create_commit(
    client: HubClient,
    *,
    repo: str,
    repo_type: str,
    branch: str,
    files: dict[str, Path],
    message: str,
) -> str:
    """Upload ``files`` (path in repo -> local file) in one commit; its id. It uses the
    client's endpoint, token and progress setting only: no retry loop (huggingface_hub's
    upload protocol has its own), so it is a function of this module, not a method.

    huggingface_hub's upload protocol does the work. Its 2.4.0 upload path reads two
    constants at call time and has no argument for either, so they are set for this
    call only and restored (:func:`~pytest_ckpts._hf_state.hf_constants`):

    - ``HF_HUB_DISABLE_XET``: ``_commit_api._upload_files`` uses Xet whenever
      ``utils.is_xet_available()`` (``hf_xet`` installed and the constant false); only
      the public hub is known to run it, so other endpoints get the plain LFS protocol.
    - its progress bars (drawn on any stream, pipes included) only if ``client.progress``.
    - ``HF_HUB_DISABLE_TELEMETRY``: ``HfApi._build_hf_headers`` and
      ``lfs.post_lfs_batch_info`` call ``build_hf_headers``, which would ask the public
      hub for its agent list (see :func:`~pytest_ckpts._hf_state.user_agent`).
    """
    import httpx2
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub import errors as hf_errors

    api = HfApi(endpoint=client.endpoint, token=client.token())
    ops = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(f)) for p, f in files.items()]
    scoped: dict[str, Any] = {"HF_HUB_DISABLE_TELEMETRY": True}
    if client.endpoint != DEFAULT_ENDPOINT:
        scoped["HF_HUB_DISABLE_XET"] = True
    where = f"repo '{repo}' ({repo_type}) at {client.shown}"
    try:
        with hf_constants(progress_bars=client.progress, **scoped):
            info: Any = api.create_commit(
                repo_id=repo,
                repo_type=repo_type,
                revision=branch,
                operations=ops,
                commit_message=message,
            )
    except hf_errors.RepositoryNotFoundError as exc:
        raise UsageFailure(
            client.redact(
                f"pytest-ckpts: {where} not found or the token cannot write to it "
                f"({type(exc).__name__}). Create it first (`hf repo create {repo}`) or fix "
                "hf_repo in the manifest."
            )
        ) from None
    except hf_errors.HfHubHTTPError as exc:
        first = hub_error_cause(exc)
        raise UsageFailure(
            client.redact(f"pytest-ckpts: upload to {where} failed: {first}")
        ) from None
    except (httpx2.TransportError, OSError) as exc:
        failure = classify_exception(exc, probing=False)
        raise UsageFailure(
            client.redact(
                f"pytest-ckpts: upload to {where} failed: {failure.text}. Nothing in the "
                "manifest was changed; re-run when the hub is reachable."
            )
        ) from None
    return str(getattr(info, "oid", "") or "")
