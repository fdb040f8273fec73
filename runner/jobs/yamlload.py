"""Reading the user's files with line numbers, safely, and pointing at the line of every problem.

Job files and datasets are written by hand, so every problem found in them is reported as
`PATH:LINE: where.in.file: what is wrong`. This module turns bytes into plain Python data plus a
`Locator` (the line of every mapping key and list item), and pydantic errors into `Problem`s.

YAML is read as plain data only (YAML 1.2 core scalars: `yes`/`no`/`on` stay strings, dates stay
strings; no `!!python/...` or any other explicit non-standard tag). Oversized files, deep nesting
and alias bombs are refused before anything big is built. Datasets are `.jsonl`, `.csv` or
`.yaml`/`.yml` (a list of mappings); each row keeps its own line.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from runner.errors import Problem

MAX_YAML_BYTES = 5 * 1024 * 1024
"""A YAML file (job or dataset) larger than this is refused unread."""
MAX_DEPTH = 64
"""Deeper nesting is refused: no job file needs it, and libyaml's composer recurses in C."""
MAX_ALIAS_NODES = 100_000
"""How many nodes YAML aliases may add on top of the file's own (stops "billion laughs")."""
MAX_PROBLEMS_PER_FILE = 50
"""More problems than this in one dataset are summarised in one line."""

Loc = tuple[str | int, ...]

_TAG = "tag:yaml.org,2002:"


class _PyParser(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser, yaml.composer.Composer):
    """The pure-Python parser, when PyYAML was built without libyaml."""

    def __init__(self, stream: str) -> None:
        yaml.reader.Reader.__init__(self, stream)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)
        yaml.composer.Composer.__init__(self)


_LoaderBase: Any = getattr(yaml.cyaml, "CParser", None) or _PyParser


class _Resolver(yaml.resolver.Resolver):
    """YAML 1.2 core schema: only true/false are booleans; no sexagesimals, octals or timestamps."""

    yaml_implicit_resolvers: dict[Any, Any] = {}  # noqa: RUF012 (PyYAML's class-level registry)


for _tag, _pattern, _first in (
    ("bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
    (
        "float",
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        "-+.0123456789",
    ),
    ("null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    ("merge", r"^(?:<<)$", "<"),
):
    _Resolver.add_implicit_resolver(_TAG + _tag, re.compile(_pattern), list(_first))


class _Loader(_LoaderBase, yaml.constructor.SafeConstructor, _Resolver):
    def __init__(self, stream: str) -> None:
        _LoaderBase.__init__(self, stream)
        yaml.constructor.SafeConstructor.__init__(self)
        _Resolver.__init__(self)


@dataclass
class Locator:
    """The lines of one file's keys and items, to turn a location into `PATH:LINE: where`."""

    path: str
    lines: dict[Loc, int] = field(default_factory=dict)

    def line(self, loc: Sequence[str | int]) -> int | None:
        """Line of the deepest known part of `loc` (a missing key points at its parent)."""
        parts = tuple(loc)
        while parts and parts not in self.lines:
            parts = parts[:-1]
        return self.lines.get(parts)

    def at(self, loc: Sequence[str | int], what: str) -> Problem:
        return Problem(self.path, self.line(loc), where(loc), what)


def where(loc: Sequence[str | int]) -> str:
    """`conversations[2].turns[0].expect[1]` from ('conversations', 2, 'turns', 0, 'expect', 1)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part != "[key]":
            out += f".{part}" if out else str(part)
    return out


def suggest(word: str, choices: Sequence[str]) -> str:
    """` (did you mean 'x'?)` when a choice is close enough, else ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def shorten(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class YAMLProblems(Exception):
    """Raised inside this module when a file cannot be turned into data at all."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(map(str, problems)))


# --- YAML ------------------------------------------------------------------------------------------


def read_bytes(path: Path, shown: str, limit: int, what: str = "file") -> bytes:
    """The file's bytes, or YAMLProblems saying why not (missing, a directory, too big)."""
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise YAMLProblems([Problem(shown, None, "", f"is a directory, not a {what}")])
        if size > limit:
            raise YAMLProblems(
                [
                    Problem(
                        shown, None, "", f"{what} is {size / 1e6:.1f} MB; the limit is {limit / 1e6:.0f} MB"
                    )
                ]
            )
        return path.read_bytes()
    except FileNotFoundError:
        raise YAMLProblems([Problem(shown, None, "", f"{what} not found")]) from None
    except OSError as e:
        raise YAMLProblems([Problem(shown, None, "", f"cannot read {what}: {e.strerror or e}")]) from None


def decode(data: bytes, shown: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise YAMLProblems([Problem(shown, line, "", f"not UTF-8 text (byte {e.start + 1})")]) from None


def load_yaml(text: str, shown: str) -> tuple[Any, Locator]:
    """Plain data and its Locator; raises YAMLProblems for anything unsafe or malformed."""
    loc = Locator(shown)
    try:
        _check_depth(text, shown)
        loader = _Loader(text)
        try:
            root = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        what = f"invalid YAML: {e.problem or e.context}"
        if e.context and e.context_mark and e.problem:
            what += f" ({e.context} at line {e.context_mark.line + 1})"
        raise YAMLProblems([Problem(shown, mark.line + 1 if mark else None, "", what)]) from None
    except yaml.YAMLError as e:
        raise YAMLProblems([Problem(shown, None, "", f"invalid YAML: {e}")]) from None
    if root is None:
        raise YAMLProblems([Problem(shown, None, "", "the file is empty")])
    memo: dict[int, int] = {}
    expanded = _count(root, memo, set(), shown)
    if expanded - len(memo) > MAX_ALIAS_NODES:
        raise YAMLProblems(
            [
                Problem(
                    shown,
                    None,
                    "",
                    f"YAML aliases expand to {expanded:,} nodes (limit: {MAX_ALIAS_NODES:,} more than "
                    "the file's own); refusing a possible alias bomb",
                )
            ]
        )
    builder = _Builder(loc)
    loc.lines[()] = root.start_mark.line + 1
    data = builder.build(root, ())
    if builder.problems:
        raise YAMLProblems(builder.problems)
    return data, loc


def _check_depth(text: str, shown: str) -> None:
    """Walk the event stream (no recursion in libyaml's parser) to refuse absurd nesting early."""
    depth = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                line = event.start_mark.line + 1 if event.start_mark else None
                raise YAMLProblems([Problem(shown, line, "", f"nested more than {MAX_DEPTH} levels deep")])
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _count(node: Node, memo: dict[int, int], active: set[int], shown: str) -> int:
    """Nodes the tree has once aliases are expanded; memoised, so cheap even for a bomb."""
    key = id(node)
    if key in memo:
        return memo[key]
    if key in active:
        raise YAMLProblems(
            [Problem(shown, node.start_mark.line + 1, "", "an alias refers to itself (recursive)")]
        )
    active.add(key)
    n = 1
    if isinstance(node, SequenceNode):
        n += sum(_count(child, memo, active, shown) for child in node.value)
    elif isinstance(node, MappingNode):
        for k, v in node.value:
            n += _count(k, memo, active, shown) + _count(v, memo, active, shown)
    active.discard(key)
    memo[key] = n
    return n


_NO_TAG = "tag {} is not allowed (only plain YAML: strings, numbers, true/false, null, lists, mappings)"


def _tag_name(tag: str) -> str:
    return "!!" + tag[len(_TAG) :] if tag.startswith(_TAG) else tag


class _Builder:
    """Nodes → plain data, recording lines; collects duplicate keys and forbidden tags."""

    def __init__(self, loc: Locator):
        self.loc = loc
        self.problems: list[Problem] = []
        self.flattener = yaml.constructor.SafeConstructor()

    def problem(self, node: Node, path: Loc, what: str) -> None:
        self.problems.append(Problem(self.loc.path, node.start_mark.line + 1, where(path), what))

    def build(self, node: Node, path: Loc) -> Any:
        if isinstance(node, ScalarNode):
            return self.scalar(node, path)
        if isinstance(node, SequenceNode):
            if node.tag != _TAG + "seq":
                self.problem(node, path, _NO_TAG.format(_tag_name(node.tag)))
            items = []
            for i, child in enumerate(node.value):
                self.loc.lines[(*path, i)] = child.start_mark.line + 1
                items.append(self.build(child, (*path, i)))
            return items
        assert isinstance(node, MappingNode)
        if node.tag != _TAG + "map":
            self.problem(node, path, _NO_TAG.format(_tag_name(node.tag)))
        own = {id(k) for k, _ in node.value}
        try:
            self.flattener.flatten_mapping(node)
        except yaml.constructor.ConstructorError as e:
            self.problem(node, path, f"invalid merge (<<): {e.problem}")
            return {}
        out: dict[str, Any] = {}
        first: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                self.problem(key_node, path, "a key must be a plain value, not a list or mapping")
                continue
            raw = self.scalar(key_node, path)
            key = _key_str(raw)
            line = key_node.start_mark.line + 1
            if id(key_node) in own:  # keys merged in with << may be overridden
                if key in first:
                    what = f"duplicate key {key!r} (first at line {first[key]})"
                    self.problem(key_node, (*path, key), what)
                first.setdefault(key, line)
            self.loc.lines[(*path, key)] = line
            out[key] = self.build(value_node, (*path, key))
        return out

    def scalar(self, node: ScalarNode, path: Loc) -> Any:
        tag, value = node.tag, node.value
        try:
            if tag in (_TAG + "str", _TAG + "merge"):
                return value
            if tag == _TAG + "null":
                return None
            if tag == _TAG + "bool":
                if value.lower() not in ("true", "false"):
                    raise ValueError
                return value.lower() == "true"
            if tag == _TAG + "int":
                return _to_int(value)
            if tag == _TAG + "float":
                return _to_float(value)
        except ValueError:
            self.problem(node, path, f"{value!r} is not a valid {_tag_name(tag)}")
            return None
        self.problem(node, path, _NO_TAG.format(_tag_name(tag)))
        return None


def _key_str(raw: Any) -> str:
    if isinstance(raw, bool):
        return "true" if raw else "false"
    return "null" if raw is None else str(raw)


def _to_int(value: str) -> int:
    v = value.replace("_", "")
    if v[:2] in ("0o", "0O"):
        return int(v[2:], 8)
    if v[:2] in ("0x", "0X"):
        return int(v[2:], 16)
    return int(v)


def _to_float(value: str) -> float:
    v = value.lower().replace("_", "")
    if v.endswith(".inf"):
        return float("-inf") if v.startswith("-") else float("inf")
    return float("nan") if v == ".nan" else float(v)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, str):
        return f"the string {shorten(value)}"
    return shorten(value)


_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "dict_type": "a mapping (key: value)",
    "model_type": "a mapping (key: value)",
    "model_attributes_type": "a mapping (key: value)",
    "list_type": "a list",
    "tuple_type": "a list",
}


def _unwrap(annotation: Any) -> Any:
    """The model/list/dict inside Optional[...] and Annotated[...]."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
            annotation = models[0] if models else args[0]
        else:
            return annotation


def model_at(root: type[BaseModel], loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The pydantic model that validates the mapping at `loc`, to list its valid keys."""
    current: Any = root
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            if not isinstance(part, str) or part not in current.model_fields:
                return None
            current = current.model_fields[part].annotation
            continue
        origin, args = typing.get_origin(current), typing.get_args(current)
        if origin in (list, tuple, typing.Sequence) and isinstance(part, int) and args:
            current = args[0]
        elif origin is dict and isinstance(part, str) and len(args) == 2:
            current = args[1]
        else:
            return None
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def problems_from(
    error: ValidationError,
    root: type[BaseModel],
    loc: Locator,
    prefix: Loc = (),
    unknown_key: typing.Callable[[Loc, str, list[str]], str | None] | None = None,
) -> list[Problem]:
    """One Problem per pydantic error, located by `loc`; `unknown_key` may word unknown keys itself."""
    out = []
    errors = error.errors(include_url=False)
    error_locs = [e["loc"] for e in errors]
    for err in errors:
        if err["type"] == "too_short" and any(o[: len(err["loc"])] == err["loc"] != o for o in error_locs):
            continue  # "must not be empty" only because its items failed: those errors say why
        parts: Loc = (*prefix, *(p if isinstance(p, int) else str(p) for p in err["loc"]))
        kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
        at = parts
        if kind == "missing":
            at = parts[:-1]
            what = f"missing required key {parts[-1]!r}"
        elif kind == "extra_forbidden":
            at = parts[:-1]
            model = model_at(root, at[len(prefix) :]) if len(at) >= len(prefix) else None
            valid = sorted(model.model_fields) if model else []
            key = str(parts[-1])
            what = (unknown_key(at, key, valid) if unknown_key else None) or (
                f"unknown key {key!r}{suggest(key, valid)}"
                + (f"; valid keys: {', '.join(valid)}" if valid else "")
            )
            out.append(Problem(loc.path, loc.line(parts), where(at), what))
            continue
        elif kind in _EXPECTED:
            what = f"expected {_EXPECTED[kind]}, got {_kind(value)}"
        elif kind in ("literal_error", "enum"):
            expected = {"True": "true", "False": "false"}.get(
                ctx.get("expected", ""), str(ctx.get("expected"))
            )
            choices = re.findall(r"'([^']*)'", expected)
            what = f"expected {expected}, got {_kind(value)}"
            if isinstance(value, str):
                what += suggest(value, choices)
        elif kind in ("value_error", "assertion_error"):
            what = str(ctx.get("error", err["msg"]))
        elif kind in ("too_short", "string_too_short") and ctx.get("min_length") == 1:
            what = "must not be empty"
        else:
            msg = re.sub(r"^Input should be ", "must be ", err["msg"])
            what = msg[:1].lower() + msg[1:] + (f", got {_kind(value)}" if "input" in err else "")
        out.append(Problem(loc.path, loc.line(at), where(at), what))
    return out
