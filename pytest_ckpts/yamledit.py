"""Edit values of ``checkpoints.yaml`` in place, keeping everything else byte-for-byte.

``pytest-ckpts lock`` writes sha256 and revision values into a file a human wrote
and reviews. Re-dumping the YAML would drop comments, reorder keys and requote
values, turning a one-line change into a noisy diff. Instead we locate each scalar
with PyYAML's node marks (``start_mark.index``/``end_mark.index`` are offsets into
the text) and splice the new text into the original string. PyYAML only: the
manifest loader already depends on it, and ruamel would be a second YAML stack.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import yaml

__all__ = ["set_entry_values"]

_FLOW_INDICATORS = frozenset(",[]{}")


def _reads_back_plain(value: str, *, flow: bool) -> bool:
    """True when ``value`` written unquoted loads back as exactly the same string."""
    if not value or value != value.strip() or "\n" in value or "\r" in value:
        return False
    if ": " in value or " #" in value or value.endswith(":"):
        return False
    if flow and any(ch in _FLOW_INDICATORS for ch in value):
        return False
    try:
        loaded = yaml.safe_load(value)
    except yaml.YAMLError:
        return False
    return isinstance(loaded, str) and loaded == value


def _double(value: str) -> str:
    # A JSON string is a valid YAML double-quoted scalar, with every escape it needs.
    return json.dumps(value, ensure_ascii=False)


def _render(value: str, style: str | None, *, flow: bool) -> str:
    """Render ``value`` in ``style`` ('"', "'" or plain), forcing quotes when needed.

    Keeping the author's quoting keeps the diff to the value itself; a plain value
    that would load as a number, bool or null (an all-digit sha256, say) gets double
    quotes, because the manifest loader rejects a sha256 that is not a string.
    """
    if style == "'" and "\n" not in value and "\r" not in value and value.isprintable():
        return "'" + value.replace("'", "''") + "'"
    if not style and _reads_back_plain(value, flow=flow):
        return value
    return _double(value)


def _last_scalar_end(node: yaml.Node) -> int:
    """Offset just past the last scalar inside ``node`` (collection end marks overshoot)."""
    while isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and node.value:
        last = node.value[-1]
        node = last[1] if isinstance(node, yaml.MappingNode) else last
    index: int = node.end_mark.index
    return index


def _line_ending_at(text: str, line_end: int) -> str:
    """The line ending of the line ending at ``line_end`` (the index of its ``\\n``)."""
    return "\r\n" if line_end > 0 and text[line_end - 1] == "\r" else "\n"


def _file_newline(text: str) -> str:
    return "\r\n" if "\r\n" in text else "\n"


def set_entry_values(text: str, edits: Mapping[str, Mapping[str, str]]) -> str:
    """Return ``text`` with ``checkpoints.<entry>.<key>`` set to the given strings.

    An existing scalar is replaced in its own quoting style (plain values that would
    not read back as the same string get double quotes); a missing key is added,
    double-quoted, on a new line after the entry's last key with that key's
    indentation and line ending. Entries written in flow style (``{...}``) are
    edited in place too: a missing key is appended inside the braces. Raises
    ``ValueError`` naming the entry and key for anything that cannot be edited
    without rewriting the author's text (unknown entries, block scalars, aliases).
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise ValueError(f"manifest is not valid YAML: {exc}") from exc
    if not isinstance(root, yaml.MappingNode):
        raise ValueError("manifest top level is not a mapping")
    checkpoints = next(
        (v for k, v in root.value if isinstance(k, yaml.ScalarNode) and k.value == "checkpoints"),
        None,
    )
    if not isinstance(checkpoints, yaml.MappingNode):
        raise ValueError("manifest has no 'checkpoints' mapping")
    entries = {k.value: v for k, v in checkpoints.value if isinstance(k, yaml.ScalarNode)}
    splices: list[tuple[int, int, str]] = []  # (start, end, replacement), non-overlapping
    for name, values in edits.items():
        node = entries.get(name)
        if not isinstance(node, yaml.MappingNode):
            raise ValueError(f"entry '{name}' not found (or not a mapping) under 'checkpoints'")
        flow = bool(node.flow_style)
        existing = {k.value: (k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode)}
        inserts: list[str] = []
        for key, value in values.items():
            if key not in existing:
                inserts.append(f"{key}: {_double(value)}")
                continue
            knode, vnode = existing[key]
            where = f"entry '{name}' key '{key}'"
            if not isinstance(vnode, yaml.ScalarNode):
                raise ValueError(f"{where} is not a scalar")
            start, end = vnode.start_mark.index, vnode.end_mark.index
            if start < knode.end_mark.index:
                raise ValueError(f"{where} is an alias (*anchor); write the value out to edit it")
            if vnode.style in ("|", ">"):
                raise ValueError(f"{where} is a block scalar; write it on one line to edit it")
            if start == end:  # `key:` with nothing after it
                splices.append((start, end, " " + _double(value)))
            else:
                splices.append((start, end, _render(value, vnode.style, flow=flow)))
        if not inserts:
            continue
        if flow:
            if node.value:
                pos = _last_scalar_end(node)
                splices.append((pos, pos, "".join(", " + item for item in inserts)))
            else:  # `{}`: the closing brace is the last character of the node
                pos = node.end_mark.index - 1
                splices.append((pos, pos, ", ".join(inserts)))
            continue
        indent = " " * node.value[0][0].start_mark.column
        pos = _last_scalar_end(node)
        if pos > 0 and text[pos - 1] == "\n":  # a block scalar ends after its newline
            newline = _line_ending_at(text, pos - 1)
            splices.append((pos, pos, "".join(indent + i + newline for i in inserts)))
            continue
        line_end = text.find("\n", pos)  # after the last line, inline comment included
        if line_end == -1:  # last line of a file without a trailing newline
            newline = _file_newline(text)
            splices.append((len(text), len(text), "".join(newline + indent + i for i in inserts)))
        else:
            newline = _line_ending_at(text, line_end)
            addition = "".join(indent + i + newline for i in inserts)
            splices.append((line_end + 1, line_end + 1, addition))
    for start, end, replacement in sorted(splices, key=lambda s: s[0], reverse=True):
        text = text[:start] + replacement + text[end:]
    return text
