"""Who may see the token, how an endpoint's own credentials are sent, and how what a hub
says back is scrubbed before anything holds it (docs/how-to/ci.md "Tokens").

:class:`EndpointAuth` is the part of :class:`~pytest_ckpts.hub_client.HubClient` that
handles secrets: the token goes only to the public hub or to ``HF_ENDPOINT`` (or to a
trusted manifest endpoint), held by a :class:`_BearerAuth` whose ``repr`` hides it;
credentials in the endpoint's userinfo are sent as Basic auth, never in a URL; the
endpoint is shown as :attr:`EndpointAuth.shown` (userinfo masked); server text is
scrubbed by :meth:`EndpointAuth._heard` and :meth:`EndpointAuth._listen` as it arrives.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from ._redact import redact as _scrub
from ._redact import redact_url, secrets_of, split_userinfo
from .settings import env_value

if TYPE_CHECKING:
    from .retry import Failure

__all__ = ["DEFAULT_ENDPOINT", "EndpointAuth"]

DEFAULT_ENDPOINT = "https://huggingface.co"


def _auth_class() -> type[Any]:
    import httpx2

    class _BearerAuth(httpx2.Auth):
        """Adds the token to the first request only (redirects to a CDN drop it)."""

        def __init__(self, token: str) -> None:
            self._token = token

        def __repr__(self) -> str:
            return "<token ***>"

        def auth_flow(self, request: Any) -> Generator[Any, Any, None]:
            request.headers["Authorization"] = f"Bearer {self._token}"
            yield request

    return _BearerAuth


#: huggingface_hub functions looked up once per module object (name -> (module, function)):
#: a ``from ... import`` through its lazy package costs ~20-40 µs, twice per request; a
#: package imported again (pytester's inline runs drop and re-import modules) is looked
#: up again, so a call never reaches the client of a module that is gone
_HF: dict[str, tuple[object, Any]] = {}


def _hf_function(module: str, name: str) -> Any:
    owner = sys.modules.get(module)
    found = _HF.get(name)
    if found is None or found[0] is not owner or owner is None:
        imported = importlib.import_module(module)
        found = _HF[name] = (imported, getattr(imported, name))
    return found[1]


def _get_token() -> Any:
    """``huggingface_hub.get_token`` (see :data:`_HF`)."""
    return _hf_function("huggingface_hub", "get_token")


def _get_session() -> Any:
    """``huggingface_hub.utils.get_session`` (see :data:`_HF`)."""
    return _hf_function("huggingface_hub.utils", "get_session")


class EndpointAuth:
    """Credentials of one endpoint (mixed into ``HubClient``, which sets the fields)."""

    endpoint: str
    trust_endpoint: bool

    def token(self) -> str | None:
        """The user's token, if this endpoint may see it (docs/how-to/ci.md "Tokens")."""
        endpoint = self.endpoint.rstrip("/")
        machine = (env_value("HF_ENDPOINT") or "").rstrip("/")
        if self.trust_endpoint or endpoint in (DEFAULT_ENDPOINT, machine):
            token: str | None = _get_token()()
            return token
        return None

    def _session(self) -> Any:
        """huggingface_hub's shared client (whatever it holds now: a factory may replace it)."""
        return _get_session()()

    def has_token(self) -> bool:
        return self.token() is not None

    def _auth(self) -> Any:
        """Bearer token, else the endpoint's userinfo as Basic auth (what httpx would do
        with the URL), so URLs built here never carry the userinfo."""
        token = self.token()
        if token:
            return _auth_class()(token)
        _, user, password = split_userinfo(self.endpoint)
        if user is None and password is None:
            return None
        import httpx2

        return httpx2.BasicAuth(user or "", password or "")

    @property
    def base_url(self) -> str:
        """The endpoint without its userinfo: requests are built on it."""
        return split_userinfo(self.endpoint)[0]

    @property
    def shown(self) -> str:
        """The endpoint as it may be printed (userinfo masked)."""
        return redact_url(self.endpoint)

    def __repr__(self) -> str:
        return f"HubClient(endpoint={self.shown!r}, trust_endpoint={self.trust_endpoint!r})"

    def _secrets(self) -> tuple[str, ...]:
        machine = env_value("HF_ENDPOINT")
        return secrets_of(self.endpoint, self.token()) + secrets_of(machine)

    def redact(self, text: str) -> str:
        return _scrub(text, self._secrets())

    def _heard(self, failure: Failure) -> Failure:
        """Text a server sent, scrubbed where it is received: before any exception or
        record holds it (a hostile hub may echo the Authorization header)."""
        failure.text = self.redact(failure.text)
        return failure

    def _listen(self, response: Any) -> Any:
        """Scrub the status line's reason phrase as the answer arrives: the response's
        ``repr`` shows it, and ``pytest -l`` prints the locals holding the response."""
        extensions = getattr(response, "extensions", None)
        if not isinstance(extensions, dict):
            return response
        raw = extensions.get("reason_phrase")
        if isinstance(raw, bytes) and raw:
            clean = self.redact(raw.decode("ascii", errors="ignore"))
            extensions["reason_phrase"] = clean.encode("ascii", errors="ignore")
        return response
