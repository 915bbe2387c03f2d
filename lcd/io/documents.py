"""YAML and JSON documents from user files, read with limits: one loader for every params file,
manifest, edits list and concept card.

A hostile or broken file must end in one `LcdError` line naming the file and the reason, never
a traceback: `yaml.safe_load` and `json.loads` recurse once per nesting level (100k `[` is a
RecursionError), YAML aliases expand without bound (a 1 KB "billion laughs" is 10^9 values once
anything walks it), a repeated YAML key silently replaces the section before it (a second `edit:`
reverted every edit setting to its default and the run exited 0), and a binary or UTF-16 file
surfaces as a UnicodeDecodeError or as an echo of its raw bytes.
"""

from __future__ import annotations

import codecs
import json
import os
import stat
from pathlib import Path
from typing import Any

import yaml

from lcd.errors import LcdError

MAX_DEPTH = 64  # nesting levels; params nest 3 deep, manifest entries 2
MAX_NODES = 1_000_000  # values a YAML document may expand to, aliases counted at every use
MAX_DOC_BYTES = 16 << 20  # params files, edits lists, cards: a few KB each in practice

_BOMS = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
         (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16"))


def read_document_bytes(path: str | Path, what: str, max_bytes: int = MAX_DOC_BYTES) -> bytes:
    """The bytes of a regular local file of at most `max_bytes` (a FIFO or device is never opened:
    it could block or never end); "<path>: <what> not found" and the like otherwise."""
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise LcdError(f"{p}: {what} not found", item=str(p)) from None
    except (OSError, ValueError) as e:  # a NUL in the path, a file on the way, no permission
        raise LcdError(f"{p}: cannot read the {what} ({getattr(e, 'strerror', None) or e})", item=str(p)) from None
    if not stat.S_ISREG(st.st_mode):
        raise LcdError(f"{p}: {what} is not a regular file", item=str(p))
    if st.st_size > max_bytes:
        raise LcdError(f"{p}: {what} is {st.st_size:,} bytes, over the limit of {max_bytes:,}", item=str(p))
    try:
        with open(p, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise LcdError(f"{p}: cannot read the {what} ({e.strerror or e})", item=str(p)) from None
    if len(data) > max_bytes:  # grew since the stat
        raise LcdError(f"{p}: {what} is over the limit of {max_bytes:,} bytes", item=str(p))
    return data


def text_problem(data: bytes) -> str | None:
    """Why `data` is not UTF-8 text, or None: a UTF-16/32 byte-order mark, a NUL byte (binary:
    Parquet, an image, a pickle), or a byte sequence that is not UTF-8. Names the offset, never
    echoes the bytes beyond a short repr."""
    for bom, enc in _BOMS:
        if data.startswith(bom):
            return f"is {enc} text (byte-order mark); save it as UTF-8"
    nul = data.find(b"\x00")
    if nul >= 0:
        return f"not UTF-8 text: a binary file (NUL byte at offset {nul})"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        return f"not UTF-8 text (bytes {data[e.start:e.start + 4]!r} at offset {e.start})"
    return None


def decode_text(data: bytes, name: str, fmt: str | None = None) -> str:
    """UTF-8 bytes -> str (a UTF-8 byte-order mark dropped); LcdError "<name>: not UTF-8 text ...",
    or "<name>: not valid <fmt>: not UTF-8 text ..." when the file was to be `fmt` (JSON, YAML)."""
    problem = text_problem(data)
    if problem is not None:
        raise LcdError(f"{name}: {'not valid ' + fmt + ': ' if fmt else ''}{problem}", item=name)
    return data.decode("utf-8").removeprefix("\ufeff")


def kind(value: Any, fmt: str = "JSON") -> str:
    """The JSON (or YAML) word for a value's type, for messages: 'a list', 'a number', 'null',
    'an object' ('a mapping' in YAML)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping" if fmt == "YAML" else "an object"
    return f"a {type(value).__name__}"


# --- JSON --------------------------------------------------------------------------------------

class _DuplicateKey(Exception):
    pass


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict:
    d = dict(pairs)
    if len(d) != len(pairs):  # the rare case: find which key repeats
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise _DuplicateKey(k)
            seen.add(k)
    return d


def nesting_depth_over(doc: Any, max_depth: int = MAX_DEPTH) -> bool:
    """Whether lists/dicts in `doc` nest deeper than `max_depth` (`[]` is depth 1); iterative,
    so it never recurses itself."""
    stack = [(doc, 1)]
    while stack:
        x, d = stack.pop()
        if isinstance(x, dict):
            x = x.values()
        elif not isinstance(x, list):
            continue
        if d > max_depth:
            return True
        stack.extend((v, d + 1) for v in x if isinstance(v, (dict, list)))
    return False


def json_value(text: str | bytes, max_depth: int = MAX_DEPTH) -> tuple[Any, str | None]:
    """JSON text -> (value, None), or (None, why it is refused): "not valid JSON (line L, column
    C: reason)", nesting deeper than `max_depth`, a key repeated in one object (JSON lets the last
    one win silently), bytes that are not UTF-8. For callers that record a failure row per entry
    (JSON Lines manifests) rather than raise."""
    if isinstance(text, bytes):
        problem = text_problem(text)
        if problem is not None:
            return None, f"not valid JSON: {problem}"
        text = text.decode("utf-8")
    try:
        doc = json.loads(text.removeprefix("\ufeff"), object_pairs_hook=_unique_pairs)
    except json.JSONDecodeError as e:
        return None, f"not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})"
    except _DuplicateKey as e:
        return None, f"not valid JSON: duplicate key {e.args[0]!r} in one object"
    except RecursionError:
        return None, f"not valid JSON: nested deeper than {max_depth} levels"
    except ValueError as e:  # an integer of more than 4,300 digits (Python's limit on int parsing)
        return None, f"not valid JSON: {str(e).split(';')[0]}"
    if nesting_depth_over(doc, max_depth):
        return None, f"not valid JSON: nested deeper than {max_depth} levels"
    return doc, None


def parse_json(text: str | bytes, name: str, max_depth: int = MAX_DEPTH) -> Any:
    """JSON text -> value; LcdError "<name>: <why>" with `json_value`'s reasons."""
    doc, why = json_value(text, max_depth)
    if why is not None:
        raise LcdError(f"{name}: {why}", item=name)
    return doc


def load_json_file(path: str | Path, expect: type | tuple[type, ...], what: str,
                   max_bytes: int = MAX_DOC_BYTES) -> Any:
    """A JSON file whose top level is `expect`; LcdError "<path>: <what> must be ..., got a list"."""
    p = Path(path)
    doc = parse_json(read_document_bytes(p, "JSON file", max_bytes), str(p))
    if not isinstance(doc, expect):
        raise LcdError(f"{p}: must be a JSON {what}, got {kind(doc)}", item=str(p))
    return doc


# --- YAML --------------------------------------------------------------------------------------

class _Refused(Exception):
    """Raised inside the loader; `parse_yaml` adds the file name."""

    def __init__(self, message: str, line: int | None = None):
        super().__init__(message)
        self.line = line


class _LimitedLoader(yaml.SafeLoader):
    """SafeLoader that counts nesting and alias-expanded size while composing (the event parser
    under it is iterative, so the depth check comes before any deep recursion) and refuses a key
    repeated in one mapping."""

    def __init__(self, stream: str, max_depth: int, max_nodes: int):
        super().__init__(stream)
        self._max_depth, self._max_nodes = max_depth, max_nodes
        self._depth = 0
        self._sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (values when expanded, height)
        self.last_mark = None  # of the node constructed last: where a ValueError from a constructor is

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > self._max_depth and self.check_event(yaml.CollectionStartEvent):
                raise _Refused(f"nested deeper than {self._max_depth} levels", self.peek_event().start_mark.line + 1)
            alias = self.check_event(yaml.AliasEvent)
            mark = self.peek_event().start_mark
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if alias:
            if id(node) not in self._sizes:
                raise _Refused("an alias refers to the node that holds it (a recursive structure)", mark.line + 1)
            size, height = self._sizes[id(node)]
            if self._depth + height > self._max_depth:
                raise _Refused(f"nested deeper than {self._max_depth} levels once aliases are expanded", mark.line + 1)
        else:
            children = (node.value if isinstance(node, yaml.SequenceNode)
                        else [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else [])
            sub = [self._sizes.get(id(c), (1, 1)) for c in children]
            size = 1 + sum(s for s, _ in sub)
            height = 1 + max((h for _, h in sub), default=0)
            self._sizes[id(node)] = (size, height)
        if size > self._max_nodes:
            raise _Refused(f"expands to more than {self._max_nodes:,} values (aliases repeated inside aliases)",
                           mark.line + 1)
        return node

    def construct_object(self, node, deep=False):
        self.last_mark = node.start_mark
        return super().construct_object(node, deep)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, int] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # keys from a `<<` merge may be overridden: that is what merges are for
                key = self.construct_object(key_node)
                try:
                    line = first.get(key)
                except TypeError:
                    continue  # unhashable: SafeConstructor refuses it below
                if line is not None:
                    raise _Refused(f"duplicate key {one_line(repr(key), 80)} (first at line {line})",
                                   key_node.start_mark.line + 1)
                first[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def _construct_int(loader: _LimitedLoader, node) -> int:
    """Integers of at most 400 characters: `0b` + 20,000 digits parses, then cannot be printed or
    saved (Python refuses int -> str past 4,300 digits) wherever the config is written."""
    if len(node.value) > 400:
        raise _Refused(f"an integer of {len(node.value):,} characters (at most 400)", node.start_mark.line + 1)
    return loader.construct_yaml_int(node)


_LimitedLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def parse_yaml(text: str | bytes, name: str, max_depth: int = MAX_DEPTH, max_nodes: int = MAX_NODES) -> Any:
    """YAML text -> value (safe tags only). LcdError "<name>: not valid YAML (line L, column C):
    problem", "<name> line L: duplicate key 'edit' (first at line 12)", or a depth / size refusal."""
    if isinstance(text, bytes):
        text = decode_text(text, name, "YAML")
    loader = None
    try:
        loader = _LimitedLoader(text, max_depth, max_nodes)  # the reader checks characters here
        return loader.get_single_data()
    except _Refused as e:
        where = f" line {e.line}" if e.line else ""
        raise LcdError(f"{name}{where}: {e}", item=name) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = str(e.problem or e.context or "syntax error")
        if e.context and problem.startswith("but "):  # "but found another document": say what was expected
            problem = f"{e.context}, {problem}"
        problem = " ".join(problem.split())
        raise LcdError(f"{name}: not valid YAML{at}: {problem}", item=name) from None
    except yaml.reader.ReaderError as e:  # a control character
        raise LcdError(f"{name}: not valid YAML (character {e.position}): {e.reason} "
                       f"(#x{e.character if isinstance(e.character, int) else ord(e.character):04x})",
                       item=name) from None
    except yaml.YAMLError as e:
        raise LcdError(f"{name}: not valid YAML: {one_line(str(e))}", item=name) from None
    except RecursionError:  # a limit above the interpreter's: still one line
        raise LcdError(f"{name}: not valid YAML: nested too deeply", item=name) from None
    except (ValueError, TypeError, OverflowError) as e:  # a scalar its tag cannot hold: month 13, a 5,000-digit int
        mark = getattr(loader, "last_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise LcdError(f"{name}: not valid YAML{at}: cannot read a value: {one_line(str(e).split(';')[0], 200)}",
                       item=name) from None
    finally:
        if loader is not None:
            loader.dispose()


def load_yaml_file(path: str | Path, what: str, max_bytes: int = MAX_DOC_BYTES) -> Any:
    """A YAML file, read with `read_document_bytes` and parsed with `parse_yaml`."""
    p = Path(path)
    return parse_yaml(read_document_bytes(p, what, max_bytes), str(p))


def read_text_file(path: str | Path, what: str, max_bytes: int = MAX_DOC_BYTES) -> str:
    """A small UTF-8 text file (captions, listings, prompt tables); LcdError naming it when it is
    missing, not a regular file, over `max_bytes`, binary, UTF-16 or not UTF-8."""
    return decode_text(read_document_bytes(path, what, max_bytes), str(path))


def one_line(message: str, limit: int = 500) -> str:
    """`message` as one printable line of at most `limit` characters: its lines joined by " / ",
    control characters and raw bytes shown escaped."""
    lines = [ln.strip() for ln in str(message).splitlines() if ln.strip()]
    text = " / ".join(lines)
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."
