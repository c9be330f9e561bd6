"""Keep secrets out of everything pytest-ckpts prints, writes or stores (docs/how-to/ci.md "Tokens").

Two kinds of secret reach the project: the Hugging Face token (``HF_TOKEN`` or the token
file) and credentials written into a URL's userinfo (``HF_ENDPOINT=http://user:pw@host``,
a manifest's ``config.endpoint``). Both leave through text: messages, reports, junit,
the step summary, and the locals ``pytest -l`` prints. So:

- :func:`redact_url` shows a URL without its userinfo (``http://***@host``): use it
  wherever a URL becomes text;
- :func:`redact` scrubs free text: every URL's userinfo, ``Authorization``-style
  credentials (``Bearer ...``, ``Basic ...``), strings shaped like Hugging Face tokens,
  and the given secrets (and their ``Basic`` encodings) wherever they appear;
- :func:`secrets_of` lists the secrets a request to an endpoint carries, so text a
  server sends back is scrubbed of exactly them *where it is received*, before any
  exception or record holds it.

huggingface_hub hides the ``Authorization`` header in its own debug output
(``<TOKEN>``) but has no public helper for userinfo or free text, hence this module.
Stdlib only.
"""

from __future__ import annotations

import base64
import re
import urllib.parse
from collections.abc import Iterable

__all__ = ["MASK", "redact", "redact_url", "secrets_of", "split_userinfo"]

MASK = "***"

# scheme://userinfo@ : userinfo is everything up to the last '@' before the host ends
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/?#\s@]*@")
# credentials a server may echo from the Authorization header
_AUTH_VALUE = re.compile(r"(?i)\b(bearer|basic)(\s+)([A-Za-z0-9._~+/\-]{8,}=*)")
# Hugging Face tokens (user and org tokens, old api tokens), wherever they appear
_HF_TOKEN = re.compile(r"\b(hf_|api_)[A-Za-z0-9]{16,}\b")


def split_userinfo(url: str) -> tuple[str, str | None, str | None]:
    """``(url without userinfo, username, password)``; names are URL-decoded."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url, None, None
    userinfo, _, host = parts.netloc.rpartition("@")
    user, sep, password = userinfo.partition(":")
    clean = urllib.parse.urlunsplit(parts._replace(netloc=host))
    return (
        clean,
        urllib.parse.unquote(user) or None,
        urllib.parse.unquote(password) if sep else None,
    )


def redact_url(url: str) -> str:
    """``url`` with its userinfo replaced by ``***`` (the rest is kept for the reader)."""
    return _USERINFO.sub(lambda m: f"{m[1]}{MASK}@", url)


def secrets_of(endpoint: str | None = None, token: str | None = None) -> tuple[str, ...]:
    """The secrets a request to ``endpoint`` with ``token`` carries: the token, the
    password of the endpoint's userinfo (its user name when there is no password), and
    their ``Basic`` encoding."""
    found: list[str] = []
    if token:
        found.append(token)
        prefix, _, body = token.partition("_")
        if prefix in ("hf", "api") and len(body) >= 16:
            found.append(body)  # echoed without its prefix
    if endpoint:
        _, user, password = split_userinfo(endpoint)
        if user is not None or password is not None:
            pair = f"{user or ''}:{password or ''}"
            found.append(base64.b64encode(pair.encode()).decode())
            # a lone user name is often a token itself (https://TOKEN@host), as pip treats it
            secret = password if password is not None else user
            if secret:
                found.append(secret)
    return tuple(found)


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with every secret it may hold replaced by ``***``.

    Known ``secrets`` go first (longest first, URL-quoted forms too), then the shapes of
    credentials: URL userinfo, ``Bearer``/``Basic`` values, Hugging Face tokens.
    Secrets shorter than 4 characters are left to the shapes (masking every ``a`` in a
    message hides nothing and ruins it).
    """
    if not text:
        return text
    known = {s for s in secrets if s and len(s) >= 4}
    known |= {urllib.parse.quote(s, safe="") for s in known}
    for secret in sorted(known, key=len, reverse=True):
        text = text.replace(secret, MASK)
    text = _USERINFO.sub(lambda m: f"{m[1]}{MASK}@", text)
    text = _AUTH_VALUE.sub(lambda m: f"{m[1]}{m[2]}{MASK}", text)
    return _HF_TOKEN.sub(lambda m: f"{m[1]}{MASK}", text)
