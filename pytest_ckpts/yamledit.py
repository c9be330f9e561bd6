"""Edit values of ``checkpoints.yaml`` in place, keeping everything else byte-for-byte.

``pytest-ckpts lock`` writes sha256 and revision values into a file a human wrote
and reviews. Re-dumping the YAML would drop comments, reorder keys and requote
values, turning a one-line change into a noisy diff. Instead we locate each scalar
with PyYAML's node and token marks (character offsets into the original text) and
splice the new text into the original string. Core dependency only (pyyaml).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

import yaml

__all__ = ["set_entry_values"]

# A conservative plain-scalar alphabet (hex digests, branch names, paths); anything
# else is quoted rather than risk a different reading.
_PLAIN_SAFE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./+-]*")
# Numbers in YAML 1.2's core schema that PyYAML (YAML 1.1) reads as str: "123e456"
# is a float to ruamel.yaml and most other current readers, so it must be quoted too.
_YAML12_NUMBER = re.compile(
    r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?|0o[0-7]+|0x[0-9a-fA-F]+"
)
_CONTENT_END_SKIP = (yaml.BlockEndToken, yaml.StreamEndToken)


def _plain_ok(value: str) -> bool:
    """True if ``value`` written unquoted reads back as the same str in every YAML reader."""
    if not _PLAIN_SAFE.fullmatch(value) or _YAML12_NUMBER.fullmatch(value):
        return False
    try:
        loaded = yaml.safe_load(value)
    except yaml.YAMLError:
        return False
    return isinstance(loaded, str) and loaded == value


def _double(value: str) -> str:
    # JSON string escapes (\" \\ \n \uXXXX ...) are all valid YAML double-quoted escapes.
    return json.dumps(value, ensure_ascii=False)


def _render(value: str, style: str | None) -> str:
    """Render ``value`` in the existing ``style`` (plain, ' or "), quoting when needed."""
    if style == "'" and value.isprintable():
        return "'" + value.replace("'", "''") + "'"
    if not style and _plain_ok(value):
        return value
    return _double(value)


class _Doc:
    """The text with its node tree and tokens, so edits can be turned into splices."""

    def __init__(self, text: str) -> None:
        self.text = text
        try:
            self.root = yaml.compose(text, Loader=yaml.SafeLoader)
            self.tokens = list(yaml.scan(text, Loader=yaml.SafeLoader))
        except yaml.YAMLError as exc:
            raise ValueError(f"manifest is not valid YAML: {exc}") from exc
        self.scalar_token_by_end = {
            t.end_mark.index: t for t in self.tokens if isinstance(t, yaml.ScalarToken)
        }

    def newline_at(self, index: int) -> str:
        """The line ending used by the line ending at ``index`` (CRLF or LF)."""
        return "\r\n" if index > 0 and self.text[index - 1] == "\r" else "\n"

    def dominant_newline(self) -> str:
        return "\r\n" if "\r\n" in self.text else "\n"

    def content_end(self, node: yaml.Node) -> tuple[int, bool]:
        """Offset just after the last character of ``node``'s content (comments excluded).

        The second value is True when that offset is already the start of a line that
        must stay after the insertion: the end of a ``|+`` / ``>+`` block scalar, whose
        trailing blank lines belong to its value.
        """
        start, end = node.start_mark.index, node.end_mark.index
        inside = [
            t
            for t in self.tokens
            if start <= t.start_mark.index < end and not isinstance(t, _CONTENT_END_SKIP)
        ]
        if not inside:  # an empty value
            return start, False
        last = max(inside, key=lambda t: t.end_mark.index)
        pos = last.end_mark.index
        if isinstance(last, yaml.ScalarToken) and last.style in ("|", ">"):
            header = self.text[last.start_mark.index :].split("\n", 1)[0].split("#", 1)[0]
            if "+" in header:
                return pos, True
            while pos > last.start_mark.index and self.text[pos - 1] in " \t\r\n":
                pos -= 1
        return pos, False


def _entries(doc: _Doc) -> dict[str, yaml.Node]:
    root = doc.root
    if not isinstance(root, yaml.MappingNode):
        raise ValueError("manifest top level is not a mapping")
    checkpoints = None
    for k, v in root.value:  # the last duplicate wins, as in yaml.safe_load
        if isinstance(k, yaml.ScalarNode) and k.value == "checkpoints":
            checkpoints = v
    if not isinstance(checkpoints, yaml.MappingNode):
        raise ValueError("manifest has no 'checkpoints' mapping")
    return {k.value: v for k, v in checkpoints.value if isinstance(k, yaml.ScalarNode)}


def _replace(
    doc: _Doc, name: str, key: str, knode: yaml.Node, vnode: yaml.Node, value: str
) -> tuple[int, int, str]:
    """The splice that sets existing ``key`` of entry ``name`` to ``value``."""
    where = f"entry '{name}' key '{key}'"
    if not isinstance(vnode, yaml.ScalarNode):
        raise ValueError(f"{where} is not a single value")
    start, end = vnode.start_mark.index, vnode.end_mark.index
    if start < knode.end_mark.index:
        raise ValueError(f"{where} is an alias (*name); write the value itself to edit it")
    if start == end:  # `key:` with nothing after it (maybe a comment)
        return start, end, " " + _render(value, '"')
    token = doc.scalar_token_by_end.get(end)
    if token is None or token.start_mark.index < start:
        raise ValueError(f"{where}: cannot locate its value in the text")
    if token.style in ("|", ">"):
        raise ValueError(
            f"{where} is a block scalar ({token.style}); write it on one line to edit it"
        )
    # the token (not the node) starts after any anchor (&a) or tag (!!str), which stay
    return token.start_mark.index, end, _render(value, token.style)


def _insert(doc: _Doc, node: yaml.MappingNode, new: list[tuple[str, str]]) -> tuple[int, int, str]:
    """The splice that adds the keys ``new`` after the last key of mapping ``node``."""
    text = doc.text
    items = [f"{_render(k, None)}: {_render(v, chr(34))}" for k, v in new]
    if node.flow_style:
        close = node.end_mark.index - 1  # the "}"
        inside = [t for t in doc.tokens if node.start_mark.index < t.start_mark.index < close]
        content = [t for t in inside if not isinstance(t, (yaml.FlowEntryToken, yaml.KeyToken))]
        if not content:  # "{}"
            return close, close, ", ".join(items)
        pos = max(t.end_mark.index for t in content)
        if any(isinstance(t, yaml.FlowEntryToken) and t.start_mark.index >= pos for t in inside):
            comma = next(
                t
                for t in inside
                if isinstance(t, yaml.FlowEntryToken) and t.start_mark.index >= pos
            )
            at = comma.end_mark.index  # after a trailing comma: no second comma
            return at, at, " " + ", ".join(items) + ","
        return pos, pos, ", " + ", ".join(items)
    indent = " " * node.value[0][0].start_mark.column
    pos, at_line_start = doc.content_end(node)
    if at_line_start:
        nl = doc.newline_at(pos)
        return pos, pos, "".join(indent + item + nl for item in items)
    line_end = text.find("\n", pos)
    if line_end == -1:  # last line of the file, no trailing newline: keep it that way
        nl = doc.dominant_newline()
        return len(text), len(text), "".join(nl + indent + item for item in items)
    nl = doc.newline_at(line_end)
    return line_end + 1, line_end + 1, "".join(indent + item + nl for item in items)


def set_entry_values(text: str, edits: Mapping[str, Mapping[str, str]]) -> str:
    """Return ``text`` with ``checkpoints.<entry>.<key>`` set to the given strings.

    ``edits`` is ``{entry name: {key: new value}}``. Only the edited values change;
    comments, blank lines, key order, quoting and line endings (LF or CRLF) stay
    byte-for-byte. An existing value keeps its quoting style (plain, ``'single'`` or
    ``"double"``); a plain value that would not read back as the same string (such
    as a digest made only of digits, which YAML reads as a number) gets double
    quotes. A missing key is added after the entry's last key with the entry's
    indentation, always double-quoted; entries in flow style (``{...}``) get it
    inside the braces. Raises ``ValueError`` for entries that do not exist or are
    not mappings, and for values written as aliases or block scalars.

        >>> set_entry_values("checkpoints:\\n  a:\\n    sha256: <to_be_calculated>\\n",
        ...                  {"a": {"sha256": "ab" * 32}}) == (
        ...     "checkpoints:\\n  a:\\n    sha256: " + "ab" * 32 + "\\n")
        True
    """
    doc = _Doc(text)
    entries = _entries(doc)
    splices: list[tuple[int, int, str]] = []
    for name, values in edits.items():
        node = entries.get(name)
        if not isinstance(node, yaml.MappingNode):
            raise ValueError(f"entry '{name}' not found (or not a mapping) under 'checkpoints'")
        existing = {k.value: (k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode)}
        new: list[tuple[str, str]] = []
        for key, value in values.items():
            if key in existing:
                splices.append(_replace(doc, name, key, *existing[key], value))
            else:
                new.append((key, value))
        if new:
            splices.append(_insert(doc, node, new))
    # Right to left, so earlier offsets stay valid. At one offset (an empty last value
    # at the end of a file, then keys added after it) the later splice goes in first,
    # so the earlier one ends up before it, in the order they were made.
    order = sorted(range(len(splices)), key=lambda i: (splices[i][0], splices[i][1], i))
    for i in reversed(order):
        start, end, replacement = splices[i]
        text = text[:start] + replacement + text[end:]
    return text
