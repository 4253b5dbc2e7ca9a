"""Read a site policy from YAML, with errors that name the file, the line and the field.

The document is composed into YAML nodes first (each node knows its line), then walked against the
schema in `model.py`. Every problem is collected, so an admin fixes a file in one pass:

    site.yaml, line 14, partitions.debug.max_walltime: must be a duration such as 2:00:00, ...

The loader reads YAML 1.2-style scalars only: `1:30:00` stays text (YAML 1.1 would read the
number 5400) and `no`/`on` stay text (YAML 1.1 would read booleans).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass
from pathlib import Path as FsPath
from types import MappingProxyType
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from gateway.policy.model import Path, SitePolicy
from gateway.policy.schema import Kind, ListOf, MapOf, Section, fields_of, yaml_key


class _PolicyLoader(yaml.SafeLoader):
    """SafeLoader with plain YAML 1.2 core scalars: no sexagesimal numbers, no yes/no booleans."""


_PolicyLoader.yaml_implicit_resolvers = {}
for _tag, _regexp, _first in (
    ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("tag:yaml.org,2002:int", r"^[-+]?[0-9]+$", "-+0123456789"),
    ("tag:yaml.org,2002:float", r"^[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?$",
     "-+0123456789."),
    ("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    ("tag:yaml.org,2002:merge", r"^(?:<<)$", "<"),  # `<<: *anchor` shares limits between entries
):
    _PolicyLoader.add_implicit_resolver(_tag, re.compile(_regexp), list(_first))


@dataclass(frozen=True)
class FileProblem:
    file: str
    line: int | None
    """1-based; None when the problem is the file as a whole."""
    field: str
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}, line {self.line}"
        return f"{where}, {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class PolicyFileError(ValueError):
    """The policy file could not be read; `problems` lists each one with its line and field."""

    def __init__(self, problems: list[FileProblem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def field_name(path: Path) -> str:
    """('groups', 'hub-admins', 'partitions', 1) -> 'groups.hub-admins.partitions[1]'."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


_BAD = object()  # a value that failed; its problem is already recorded


class _Walker:
    def __init__(self, filename: str):
        self.filename = filename
        self.problems: list[FileProblem] = []
        self.lines: dict[Path, int] = {}
        self._scalars = _PolicyLoader("")

    def problem(self, node: Node | None, path: Path, message: str) -> None:
        line = node.start_mark.line + 1 if node is not None else None
        self.problems.append(FileProblem(self.filename, line, field_name(path), message))

    def line_of(self, path: Path) -> int | None:
        for end in range(len(path), -1, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return None

    def value(self, kind: Kind, node: Node, path: Path) -> Any:
        self.lines[path] = node.start_mark.line + 1
        if isinstance(kind, Section):
            return self.section(kind.cls, node, path)
        if isinstance(kind, ListOf):
            if not isinstance(node, SequenceNode):
                self.problem(node, path, f"must be a list (- item per line), not {_shape(node)}")
                return _BAD
            items = [self.value(kind.item, item, (*path, i)) for i, item in enumerate(node.value)]
            return _BAD if _BAD in items else tuple(items)
        if isinstance(kind, MapOf):
            pairs = self.mapping(node, path)
            if pairs is None:
                return _BAD
            result: dict[str, Any] = {}
            failed = False
            for key, key_node, value_node in pairs:
                try:
                    name = kind.key.convert(key)
                except ValueError as err:
                    self.problem(key_node, (*path, str(key)), f"the name {err}")
                    failed = True
                    continue
                item = self.value(kind.value, value_node, (*path, name))
                failed |= item is _BAD
                result[name] = item
            return _BAD if failed else MappingProxyType(result)
        if not isinstance(node, ScalarNode):
            self.problem(node, path, f"must be {kind.description}, not {_shape(node)}")
            return _BAD
        try:
            return kind.convert(self._scalars.construct_object(node, deep=True))
        except (ValueError, yaml.YAMLError) as err:
            self.problem(node, path, str(err))
            return _BAD

    def mapping(self, node: Node, path: Path) -> list[tuple[Any, Node, Node]] | None:
        if not isinstance(node, MappingNode):
            self.problem(node, path, f"must be a mapping (key: value lines), not {_shape(node)}")
            return None
        own = [k.value for k, _ in node.value
               if isinstance(k, ScalarNode) and k.tag != "tag:yaml.org,2002:merge"]
        try:
            self._scalars.flatten_mapping(node)  # resolves `<<: *anchor` merges in place
        except yaml.YAMLError as err:
            self.problem(node, path, str(err))
            return None
        pairs: list[tuple[Any, Node, Node]] = []
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                self.problem(key_node, path, "keys must be plain names")
                continue
            key = self._scalars.construct_object(key_node)
            if key in seen:
                if own.count(key_node.value) > 1:
                    self.problem(key_node, (*path, str(key)),
                                 f"appears twice in this mapping (first on line {seen[key]})")
                pairs = [p for p in pairs if p[0] != key]  # a merged value yields to the own one
            seen[key] = key_node.start_mark.line + 1
            pairs.append((key, key_node, value_node))
        return pairs

    def section(self, cls: type, node: Node, path: Path) -> Any:
        pairs = self.mapping(node, path)
        if pairs is None:
            return _BAD
        fields = {yaml_key(f): f for f in fields_of(cls)}
        values: dict[str, Any] = {}
        failed = False
        for key, key_node, value_node in pairs:
            f = fields.get(key) if isinstance(key, str) else None
            if f is None:
                self.problem(key_node, (*path, str(key)), _unknown_field(str(key), list(fields), cls))
                failed = True
                continue
            if _is_null(value_node) and not _required(f):
                continue  # `key:` with nothing after it means "the default"
            item = self.value(f.metadata["kind"], value_node, (*path, key))
            failed |= item is _BAD
            values[f.name] = item
        for key, f in fields.items():
            if _required(f) and f.name not in values and not any(p[0] == key for p in pairs):
                self.problem(node, (*path, key), f"is required: {f.metadata['help']}")
                failed = True
        if failed:
            return _BAD
        return cls(**values)


def _is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == "tag:yaml.org,2002:null"


def _required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _shape(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    return f"{node.value!r}" if node.value else "nothing"


def _unknown_field(key: str, known: list[str], cls: type) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown field {key!r} in {cls.__name__}{hint}; known fields: {', '.join(known)}"


def load_policy_text(text: str, filename: str = "<policy>") -> SitePolicy:
    """Parse and check a policy; raise PolicyFileError listing every problem with its line."""
    walker = _Walker(filename)
    try:
        documents = list(yaml.compose_all(text, Loader=_PolicyLoader))
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark is not None else None
        message = " ".join(str(s) for s in (err.context, err.problem) if s)
        raise PolicyFileError([FileProblem(filename, line, "", f"not valid YAML: {message}")]) from None
    except yaml.YAMLError as err:
        raise PolicyFileError([FileProblem(filename, None, "", f"not valid YAML: {err}")]) from None
    if len(documents) != 1 or documents[0] is None or _is_null(documents[0]):
        raise PolicyFileError([FileProblem(filename, None, "",
                                           "must hold exactly one YAML document with the policy")])
    policy = walker.section(SitePolicy, documents[0], ())
    if policy is _BAD or walker.problems:
        raise PolicyFileError(walker.problems)
    problems = [FileProblem(filename, walker.line_of(path), field_name(path), message)
                for path, message in policy.problems()]
    if problems:
        raise PolicyFileError(problems)
    return policy


def load_policy(path: str | FsPath) -> SitePolicy:
    """Read the policy file at `path`."""
    name = str(path)
    try:
        text = FsPath(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise PolicyFileError([FileProblem(name, None, "", f"cannot be read: {reason}")]) from None
    return load_policy_text(text, name)
