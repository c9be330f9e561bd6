"""Mirror URL templates: parse, check, fill in, redact. Pure text: no I/O, no imports.

A mirror is a URL template (docs/mirrors.md "What happens on a fetch"): ``/mnt/ckpts/{sha256}``,
``https://github.com/ORG/REPO/releases/download/ckpts/{sha256}``, ``s3://bucket/ckpts``.
Placeholders: ``{sha256}`` ``{name}`` ``{repo}`` ``{revision}`` ``{path}`` ``{filename}``;
a template without any gets ``/{sha256}`` appended (the layout ``mirror push`` writes).

The manifest is untrusted (a pull request can edit it), so what it puts into a URL can
neither change the mirror's host nor leave its prefix: placeholders may only follow the
host, every value is refused when a component is empty, ``.`` or ``..``, and URL values
are percent-encoded per component (``?``, ``#``, ``%`` and ``/`` inside a component
cannot change what the URL means). Folder values are used as written (they are file
names) after the same checks, and the result must stay under the template's prefix.
"""

from __future__ import annotations

import enum
import hashlib
import os
import re
import string
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import SettingError

if TYPE_CHECKING:
    from ..manifest import CheckpointSpec

__all__ = [
    "DEFAULT_LAYOUT",
    "PLACEHOLDERS",
    "Mirror",
    "SecretText",
    "Storage",
    "parse_mirror",
    "redact_url",
]

PLACEHOLDERS = ("sha256", "name", "repo", "revision", "path", "filename")
DEFAULT_LAYOUT = "{sha256}"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/@\s]*)@")
_QUERY_VALUE = re.compile(r"(?P<key>[?&][^=&#\s]+=)[^&#\s]*")
_BAD_VALUE = re.compile(r"[\x00-\x1f\x7f\\]")


def redact_url(text: str) -> str:
    """``text`` with userinfo (``user:password@``) and query values of any URL hidden."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}***@", text)
    return _QUERY_VALUE.sub(lambda m: f"{m['key']}***", text)


class SecretText(str):
    """A string that may hold credentials: its ``repr`` (what ``pytest -l`` tracebacks,
    dataclass reprs and logs of objects show) is redacted; ``str()`` is the real value."""

    __slots__ = ()

    def __repr__(self) -> str:
        return repr(redact_url(str(self)))


class Storage(str, enum.Enum):
    """What kind of mirror a template names, and so which backend reads it."""

    FOLDER = "folder"  # a local or mounted directory, file://
    HTTP = "http"  # http:// and https:// (read-only)
    FSSPEC = "fsspec"  # s3://, gs://, any other fsspec URL

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Mirror:
    """One mirror: its template (which may hold credentials: never print it) and kind."""

    template: str
    kind: Storage
    protocol: str  # "file", "http", "https", "s3", "gs", ...

    @property
    def label(self) -> str:
        """The template with credentials redacted: what messages and reports show."""
        return redact_url(self.template)

    @property
    def key(self) -> str:
        """A stable id for run-state records (never the template: it may hold secrets)."""
        return "mirror:" + hashlib.sha256(self.template.encode()).hexdigest()[:16]

    def __repr__(self) -> str:  # tracebacks with locals (pytest -l) show no secret
        return f"Mirror({self.label!r})"

    @property
    def prefix(self) -> str:
        """The fixed text before the first placeholder."""
        return self.template.split("{", 1)[0]

    def url(self, spec: CheckpointSpec) -> str:
        """This mirror's location of ``spec``'s file (``spec.sha256`` must be set)."""
        values = {
            "sha256": spec.sha256 or "",
            "name": spec.name,
            "repo": spec.repo,
            "revision": spec.revision,
            "path": spec.hf_path,
            "filename": spec.filename,
        }
        folder = self.kind is Storage.FOLDER
        filled = {}
        for key, value in values.items():
            parts = value.split("/")
            if not value or any(p in ("", ".", "..") for p in parts) or _BAD_VALUE.search(value):
                raise ValueError(
                    f"pytest-ckpts: checkpoint '{spec.name}': {key} {value!r} cannot be used in "
                    f"mirror {self.label}: empty, '.' or '..' components are refused"
                )
            if folder:
                filled[key] = value
            elif key == "revision":  # one component: refs/pr/3 -> refs%2Fpr%2F3
                filled[key] = urllib.parse.quote(value, safe="")
            else:
                filled[key] = "/".join(urllib.parse.quote(p, safe="") for p in parts)
        result = self.template.format_map(filled)
        if folder:
            base = os.path.normpath(_local_path(self.prefix) or ".")
            where = os.path.normpath(_local_path(result))
            if not (where == base or where.startswith(base.rstrip(os.sep) + os.sep)):
                raise ValueError(
                    f"pytest-ckpts: checkpoint '{spec.name}' would leave mirror {self.label}"
                )
            return where
        return SecretText(result)


def _local_path(text: str) -> str:
    if text.startswith("file://"):
        return urllib.parse.unquote(text[len("file://") :])
    return os.path.expanduser(text)


def parse_mirror(text: str, *, source: str) -> Mirror:
    """Check ``text`` as a mirror template; ``ValueError`` naming ``source`` and the fix."""
    template = text.strip()
    where = f"mirror {redact_url(template)!r} from {source}"
    if not template:
        raise SettingError(f"pytest-ckpts: empty {where}")
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise SettingError(
            f"pytest-ckpts: {where}: {exc} (write '{{{{' and '}}}}' for literal braces)"
        ) from None
    unknown = [f for f in fields if f not in PLACEHOLDERS]
    if unknown:
        known = ", ".join(f"{{{p}}}" for p in PLACEHOLDERS)
        raise SettingError(
            f"pytest-ckpts: {where}: unknown placeholder {{{unknown[0]}}}; known: {known}"
        )
    if not fields:
        template = template.rstrip("/") + "/" + DEFAULT_LAYOUT
    match = _SCHEME.match(template)
    protocol = match[1].lower() if match else "file"
    if match:
        rest = template[match.end() :]
        host_end = rest.find("/")
        if protocol != "file" and (host_end < 0 or "{" in rest[:host_end] or host_end == 0):
            raise SettingError(
                f"pytest-ckpts: {where}: placeholders may only follow the host "
                "(scheme://host/prefix/{sha256})"
            )
    kind = (
        Storage.FOLDER
        if protocol == "file"
        else Storage.HTTP
        if protocol in ("http", "https")
        else Storage.FSSPEC
    )
    return Mirror(template=SecretText(template), kind=kind, protocol=protocol)
