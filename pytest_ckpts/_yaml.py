"""Bounded, fast YAML reading for the manifest (see ``manifest``).

Why not ``yaml.safe_load``: the manifest is read in every process of a run (controller
and each xdist worker), a fleet's manifest has thousands of entries, and a pull request
can edit it. So this module

- reads at most :data:`MAX_BYTES` and reports a file that is not UTF-8 with its line;
- takes the events from libyaml's C parser when PyYAML has it (about ten times faster
  than the pure-Python scanner) and composes the node graph here, in Python, without
  recursion: PyYAML's C composer recurses in C and crashes the interpreter on a few
  hundred thousand nested brackets, the pure one raises ``RecursionError``;
- caps nesting at :data:`MAX_DEPTH` and the nodes reached through aliases (the "billion
  laughs" bomb) at :data:`ALIAS_NODES_FLOOR` plus :data:`ALIAS_NODES_PER_NODE` times the
  nodes the document really has, while anchors, aliases and ``<<`` merges stay legal;
- refuses tags other than the plain YAML types (``!!python/object:...``, ``!foo``);
- keeps every node's line, so validation errors can say ``file:line``.

It knows nothing of manifests: problems are raised as :class:`YamlProblem` with a
line, and ``manifest`` turns them into one-line ``ManifestError``.
"""

from __future__ import annotations

import reprlib
from typing import TYPE_CHECKING, Any

from ._fixes import foreign_line
from .errors import YamlProblem

if TYPE_CHECKING:
    import yaml

#: Largest manifest read; a fleet's 10 000-entry manifest is about 2 MiB.
MAX_BYTES = 16 * 1024 * 1024
#: Deepest nesting of lists/mappings; a manifest needs 4.
MAX_DEPTH = 64
#: Nodes reachable through aliases allowed on top of ALIAS_NODES_PER_NODE x real nodes.
ALIAS_NODES_FLOOR = 100_000
ALIAS_NODES_PER_NODE = 10
#: Nested ``<<`` merges (a merged mapping that itself merges ...).
MAX_MERGE_DEPTH = 32

_CORE = "tag:yaml.org,2002:"
MERGE_TAG = _CORE + "merge"
_ALLOWED_TAGS = frozenset(
    _CORE + t for t in ("str", "int", "float", "bool", "null", "seq", "map", "merge", "timestamp")
)

_short = reprlib.Repr()
_short.maxstring = 60
_short.maxother = 60
_short.maxlist = _short.maxtuple = _short.maxdict = _short.maxset = 4
_short.maxlevel = 2


def show(value: object) -> str:
    """A bounded ``repr`` for error messages: a hostile value must not blow up the message."""
    return _short.repr(value)


def _line(mark: Any) -> int | None:
    line = getattr(mark, "line", None)
    return line + 1 if isinstance(line, int) else None


def decode(data: bytes) -> str:
    """UTF-8 text of a manifest (a leading BOM is dropped), with size and encoding checked."""
    if len(data) > MAX_BYTES:
        raise YamlProblem(
            f"file is larger than {MAX_BYTES // (1024 * 1024)} MiB, too big for a manifest; "
            "is this the right file?"
        )
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise YamlProblem("file is UTF-16 text; save it as UTF-8", 1)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise YamlProblem(
            f"file is not UTF-8 text (byte 0x{data[exc.start]:02x}); save it as UTF-8", line
        ) from None
    return text[1:] if text.startswith("\ufeff") else text


class Document:
    """A composed manifest: the root node plus one constructor for scalar values.

    One ``SafeConstructor`` per document, so a node reached through several aliases is
    constructed once, as ``yaml.safe_load`` does.
    """

    def __init__(self, root: yaml.Node | None) -> None:
        import yaml

        self.root = root
        self._constructor = yaml.constructor.SafeConstructor()

    def value(self, node: yaml.Node) -> Any:
        """The Python value of ``node`` the way ``yaml.safe_load`` would build it."""
        import yaml

        try:
            return self._constructor.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, OverflowError, TypeError) as exc:
            problem = getattr(exc, "problem", None) or foreign_line(exc)
            raise YamlProblem(
                f"cannot read this value: {problem}", _line(node.start_mark)
            ) from None

    def pairs(self, node: yaml.MappingNode, depth: int = 1) -> tuple[list[Any], list[Any]]:
        """``(explicit, merged)`` key/value node pairs of a mapping, ``<<`` merges expanded.

        Explicit pairs are returned as written (duplicates are the caller's to report).
        Merged pairs leave out keys written explicitly and keep the first source's value
        for a key, as YAML's merge key says; callers put them before the explicit ones.
        """
        explicit = [(k, v) for k, v in node.value if k.tag != MERGE_TAG]
        merged: list[Any] = []
        if len(explicit) != len(node.value):
            seen = {_key_id(k) for k, _ in explicit}
            for k, v in node.value:
                if k.tag == MERGE_TAG:
                    self._merge_into(v, merged, seen, depth)
        return explicit, merged

    def _merge_into(self, source: Any, out: list[Any], seen: set[object], depth: int) -> None:
        import yaml

        if depth > MAX_MERGE_DEPTH:
            raise YamlProblem(
                f"'<<' merges are nested more than {MAX_MERGE_DEPTH} deep",
                _line(source.start_mark),
            )
        sources = source.value if isinstance(source, yaml.SequenceNode) else [source]
        for sub in sources:
            if not isinstance(sub, yaml.MappingNode):
                raise YamlProblem(
                    "'<<' must merge a mapping (an alias such as *defaults) or a list of them",
                    _line(sub.start_mark),
                )
            explicit, merged = self.pairs(sub, depth + 1)
            for k, v in [*explicit, *merged]:
                key = _key_id(k)
                if key not in seen:
                    seen.add(key)
                    out.append((k, v))


def _key_id(node: Any) -> object:
    import yaml

    return (node.tag, node.value) if isinstance(node, yaml.ScalarNode) else id(node)


def compose(text: str, *, c_parser: bool = True) -> Document:
    """Compose ``text`` (one YAML document) into a node graph, within the limits above.

    ``c_parser=False`` (or a PyYAML built without libyaml) uses the pure-Python parser;
    the graph, lines and errors are the same, only slower.
    """
    import yaml

    c_loader = getattr(yaml, "CSafeLoader", None) if c_parser else None
    source = (c_loader or yaml.SafeLoader)(text)
    try:
        return Document(_compose(source))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "unreadable YAML"
        if "nesting depth" in problem:  # libyaml >= 0.2.5 has its own depth limit
            raise YamlProblem(
                f"lists/mappings are nested more than {MAX_DEPTH} deep; a manifest needs 4",
                _line(mark),
            ) from None
        raise YamlProblem(
            f"YAML syntax error: {problem}. Fix the YAML (check indentation and quoting).",
            _line(mark),
        ) from None
    except yaml.YAMLError as exc:
        # ReaderError (a control character in the stream) and friends: no problem_mark.
        first = foreign_line(exc)
        position = getattr(exc, "position", None)
        line = text.count("\n", 0, position) + 1 if isinstance(position, int) else None
        raise YamlProblem(
            f"YAML syntax error: {first}. Remove the character or escape it in a quoted string.",
            line,
        ) from None
    finally:
        source.dispose()


def _display_tag(tag: str) -> str:
    return "!!" + tag[len(_CORE) :] if tag.startswith(_CORE) else tag


def _compose(source: Any) -> yaml.Node | None:
    """Build the node graph from parser events with an explicit stack (no recursion)."""
    from yaml import events as ev
    from yaml import nodes as nd

    get = source.get_event
    resolve = source.resolve
    get()  # StreamStartEvent
    event = get()
    if isinstance(event, ev.StreamEndEvent):
        return None
    root: nd.Node | None = None
    anchors: dict[str, nd.Node] = {}
    finished: dict[int, int] = {}  # id(anchored node) -> its size with aliases expanded
    # frames: [node, expanded count at start, anchor, pending mapping key]
    stack: list[list[Any]] = []
    expanded = 0  # nodes counting each alias as the whole subtree it stands for
    real = 0  # nodes actually in the document
    scalar_event, alias_event = ev.ScalarEvent, ev.AliasEvent
    seq_start, map_start = ev.SequenceStartEvent, ev.MappingStartEvent
    collection_end = (ev.SequenceEndEvent, ev.MappingEndEvent)
    str_tag = _CORE + "str"
    plain_tags: dict[str, str] = {}  # keys repeat in every entry: resolve each spelling once
    while True:
        event = get()
        kind = type(event)
        node: nd.Node
        if kind is scalar_event:
            tag = event.tag
            value = event.value
            if tag is None or tag == "!":
                if not event.implicit[0]:
                    tag = str_tag  # quoted or '!': a string, as the resolver would say
                else:
                    tag = plain_tags.get(value)
                    if tag is None:
                        tag = plain_tags[value] = resolve(nd.ScalarNode, value, (True, False))
            elif tag not in _ALLOWED_TAGS:
                raise _bad_tag(tag, event)
            node = nd.ScalarNode(tag, value, event.start_mark, event.end_mark, event.style)
            expanded += 1
            real += 1
            if event.anchor is not None:
                _add_anchor(anchors, event, node)
                finished[id(node)] = 1
        elif kind is alias_event:
            target = anchors.get(event.anchor)
            if target is None:
                raise YamlProblem(
                    f"alias *{event.anchor} has no matching anchor &{event.anchor} before it",
                    _line(event.start_mark),
                )
            size = finished.get(id(target))
            if size is None:
                raise YamlProblem(
                    f"alias *{event.anchor} is inside its own anchor &{event.anchor} "
                    "(a recursive structure); a manifest cannot use one",
                    _line(event.start_mark),
                )
            expanded += size
            if expanded - real > ALIAS_NODES_FLOOR + ALIAS_NODES_PER_NODE * real:
                raise YamlProblem(
                    f"aliases expand to more than {expanded - real} nodes from a document of "
                    f"{real}; this looks like an alias bomb. Write the values out or use "
                    "fewer nested aliases",
                    _line(event.start_mark),
                )
            node = target
        elif kind is seq_start or kind is map_start:
            if len(stack) >= MAX_DEPTH:
                raise YamlProblem(
                    f"lists/mappings are nested more than {MAX_DEPTH} deep; a manifest needs 4",
                    _line(event.start_mark),
                )
            is_seq = kind is seq_start
            node_cls = nd.SequenceNode if is_seq else nd.MappingNode
            tag = event.tag
            if tag is None or tag == "!":
                tag = resolve(node_cls, None, event.implicit)
            elif tag not in _ALLOWED_TAGS:
                raise _bad_tag(tag, event)
            node = node_cls(tag, [], event.start_mark, None, flow_style=event.flow_style)
            expanded += 1
            real += 1
            if event.anchor is not None:
                _add_anchor(anchors, event, node)
            stack.append([node, expanded - 1, event.anchor, None])
            continue
        elif isinstance(event, collection_end):
            node, start, anchor, _ = stack.pop()
            node.end_mark = event.end_mark
            if anchor is not None:
                finished[id(node)] = expanded - start
        elif isinstance(event, ev.DocumentEndEvent):
            break
        else:  # pragma: no cover - the parser emits nothing else inside a document
            raise YamlProblem(f"unexpected YAML event {kind.__name__}", _line(event.start_mark))
        if not stack:
            root = node
            continue
        frame = stack[-1]
        parent = frame[0]
        if type(parent) is nd.SequenceNode:
            parent.value.append(node)
        elif frame[3] is None:
            frame[3] = node
        else:
            parent.value.append((frame[3], node))
            frame[3] = None
    event = get()
    if not isinstance(event, ev.StreamEndEvent):
        raise YamlProblem(
            "a manifest is one YAML document, but a second one starts here ('---')",
            _line(event.start_mark),
        )
    return root


def _add_anchor(anchors: dict[str, Any], event: Any, node: Any) -> None:
    if event.anchor in anchors:
        raise YamlProblem(
            f"anchor &{event.anchor} is defined twice; rename one", _line(event.start_mark)
        )
    anchors[event.anchor] = node


def _bad_tag(tag: str, event: Any) -> YamlProblem:
    return YamlProblem(
        f"unsupported YAML tag {_display_tag(tag)}: a manifest holds plain strings, numbers, "
        "lists and mappings. Remove the tag (quote the value if it must stay a string)",
        _line(event.start_mark),
    )
