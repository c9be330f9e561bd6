"""Edit values of ``checkpoints.yaml`` in place, keeping everything else byte-for-byte.

``pytest-ckpts lock`` writes sha256 and revision values into a file a human wrote
and reviews. Re-dumping the YAML would drop comments, reorder keys and requote
values, turning a one-line change into a noisy diff. Instead we locate each scalar
with PyYAML's node marks and splice the new text into the original string.
"""

from __future__ import annotations

from collections.abc import Mapping

import yaml

__all__ = ["set_entry_values"]


def _quoted(value: str, style: str | None) -> str:
    """Render ``value`` in ``style`` ('"', "'" or plain), forcing quotes when needed."""
    if style == "'":
        return "'" + value.replace("'", "''") + "'"
    if style is None or style == "":
        loaded = yaml.safe_load(value) if value else None
        if isinstance(loaded, str) and loaded == value and ":" not in value and "#" not in value:
            return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _newline(text: str) -> str:
    return "\r\n" if "\r\n" in text else "\n"


def set_entry_values(text: str, edits: Mapping[str, Mapping[str, str]]) -> str:
    """Return ``text`` with ``checkpoints.<entry>.<key>`` set to the given strings.

    An existing scalar is replaced in its own quoting style (plain values that would
    not read back as the same string get double quotes); a missing key is added on
    a new line after the entry's last key, double-quoted, with the entry's
    indentation and the file's line ending. Raises ``ValueError`` for entries that
    do not exist or are written in flow style (``{...}``), which we will not reflow.
    """
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if not isinstance(root, yaml.MappingNode):
        raise ValueError("manifest top level is not a mapping")
    checkpoints = next(
        (v for k, v in root.value if isinstance(k, yaml.ScalarNode) and k.value == "checkpoints"),
        None,
    )
    if not isinstance(checkpoints, yaml.MappingNode):
        raise ValueError("manifest has no 'checkpoints' mapping")
    entries = {k.value: v for k, v in checkpoints.value if isinstance(k, yaml.ScalarNode)}
    newline = _newline(text)
    splices: list[tuple[int, int, str]] = []  # (start, end, replacement), non-overlapping
    for name, values in edits.items():
        node = entries.get(name)
        if not isinstance(node, yaml.MappingNode):
            raise ValueError(f"entry '{name}' not found (or not a mapping) under 'checkpoints'")
        if node.flow_style:
            raise ValueError(
                f"entry '{name}' is written in flow style ({{...}}); rewrite it as "
                "one key per line so its values can be edited in place"
            )
        existing = {k.value: (k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode)}
        inserts: list[str] = []
        for key, value in values.items():
            if key in existing:
                vnode = existing[key][1]
                if not isinstance(vnode, yaml.ScalarNode):
                    raise ValueError(f"entry '{name}' key '{key}' is not a scalar")
                start, end = vnode.start_mark.index, vnode.end_mark.index
                if start == end:  # `key:` with nothing after it
                    splices.append((start, end, " " + _quoted(value, '"')))
                else:
                    splices.append((start, end, _quoted(value, vnode.style)))
            else:
                inserts.append(f"{key}: {_quoted(value, chr(34))}")
        if inserts:
            first_key = node.value[0][0]
            indent = " " * first_key.start_mark.column
            last_value = node.value[-1][1]
            pos = last_value.end_mark.index
            # keep an inline comment on the last line where it is: insert after the line
            line_end = text.find("\n", pos)
            if line_end == -1:
                addition = newline + newline.join(indent + line for line in inserts)
                splices.append((len(text), len(text), addition))
            else:
                addition = "".join(indent + line + newline for line in inserts)
                splices.append((line_end + 1, line_end + 1, addition))
    for start, end, replacement in sorted(splices, key=lambda s: s[0], reverse=True):
        text = text[:start] + replacement + text[end:]
    return text
