"""The building blocks of the policy's schema: what kind of value each field holds.

A field is a dataclass field whose metadata carries the help text an admin reads and a `Kind`
that turns one YAML value into a typed one (or says, in one sentence, why it cannot). The YAML
walker in `load.py` uses the kinds; `describe_schema()` prints them as the file's reference.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from gateway.policy.durations import MEMORY_EXAMPLES, format_memory, parse_memory_mb
from schedulers.durations import WALLTIME_EXAMPLES, format_form, parse_duration
from schedulers.model import SAFE_ENV_NAME, SAFE_NAME

REQUIRED: Any = dataclasses.MISSING


class Kind:
    """Converts one YAML value (already a Python str/int/bool/None) into a typed value."""

    description = "a value"

    def convert(self, value: Any) -> Any:
        raise NotImplementedError

    def show(self, value: Any) -> str:
        """The value as an admin would write it (for the schema reference and messages)."""
        return repr(value)


class Text(Kind):
    """One line of text (or several, with `multiline`). Never NUL; never empty when required."""

    def __init__(self, multiline: bool = False, max_length: int = 4096):
        self.multiline = multiline
        self.max_length = max_length
        self.description = "text" if multiline else "one line of text"

    def convert(self, value: Any) -> str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValueError(f"must be {self.description}")
        text = str(value)
        if "\0" in text or (not self.multiline and ("\n" in text or "\r" in text)):
            raise ValueError(f"must be {self.description}")
        if len(text) > self.max_length:
            raise ValueError(f"must be at most {self.max_length} characters long")
        return text


class Name(Kind):
    """A name that reaches a scheduler directive or a command line: letters, digits, . _ + -"""

    description = "a name of letters, digits and . _ + - (it reaches scheduler commands)"

    def convert(self, value: Any) -> str:
        if isinstance(value, bool) or not isinstance(value, (str, int)) or not SAFE_NAME.match(str(value)):
            raise ValueError(f"must be {self.description}, not {value!r}")
        return str(value)


class GroupName(Kind):
    """A directory group name: any single line (directories allow spaces, e.g. 'Domain Users')."""

    description = "a directory group name"

    def convert(self, value: Any) -> str:
        if not isinstance(value, str) or not value.strip() or any(c in value for c in "\0\n\r"):
            raise ValueError(f"must be {self.description} on one line, not {value!r}")
        return value


class EnvName(Kind):
    description = "an environment variable name (letters, digits, _)"

    def convert(self, value: Any) -> str:
        if not isinstance(value, str) or not SAFE_ENV_NAME.match(value):
            raise ValueError(f"must be {self.description}, not {value!r}")
        return value


class Choice(Kind):
    def __init__(self, *choices: str):
        self.choices = choices
        self.description = "one of " + ", ".join(choices)

    def convert(self, value: Any) -> str:
        if value not in self.choices:
            raise ValueError(f"must be {self.description}, not {value!r}")
        return value


class Integer(Kind):
    def __init__(self, minimum: int = 0, maximum: int = 1_000_000):
        self.minimum, self.maximum = minimum, maximum
        self.description = f"a whole number from {minimum} to {maximum}"

    def convert(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be {self.description}, not {value!r}")
        if not self.minimum <= value <= self.maximum:
            raise ValueError(f"must be {self.description}, not {value}")
        return value


class Seconds(Kind):
    """A number of seconds, fractions allowed (short intervals such as 0.5)."""

    def __init__(self, minimum: float = 0, maximum: float = 86400):
        self.minimum, self.maximum = minimum, maximum
        self.description = f"a number of seconds from {minimum:g} to {maximum:g}"

    def convert(self, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"must be {self.description}, not {value!r}")
        if not self.minimum <= value <= self.maximum:
            raise ValueError(f"must be {self.description}, not {value}")
        return float(value)

    def show(self, value: Any) -> str:
        return f"{value:g}"


class Boolean(Kind):
    description = "true or false"

    def convert(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false, not {value!r}")
        return value

    def show(self, value: Any) -> str:
        return "true" if value else "false"


class Duration(Kind):
    description = f"a duration such as {WALLTIME_EXAMPLES}"

    def convert(self, value: Any) -> timedelta:
        if isinstance(value, bool):
            raise ValueError(f"must be {self.description}")
        # YAML reads `90` as an int and `1:30:00` as a str (YAML 1.1 sexagesimal ints are
        # turned off in the loader); a bare number means minutes, as in sbatch.
        try:
            return parse_duration(str(value) if isinstance(value, int) else value)
        except ValueError as err:
            raise ValueError(f"must be {self.description}, not {value!r} ({err})") from None

    def show(self, value: Any) -> str:
        return format_form(value)


class Memory(Kind):
    description = f"a size such as {MEMORY_EXAMPLES}"

    def convert(self, value: Any) -> int:
        try:
            return parse_memory_mb(value)
        except ValueError as err:
            raise ValueError(f"must be {self.description}, not {value!r} ({err})") from None

    def show(self, value: Any) -> str:
        return format_memory(value)


class AbsPath(Kind):
    description = "an absolute path"

    def convert(self, value: Any) -> str:
        if (not isinstance(value, str) or not value.startswith("/")
                or any(c in value for c in "\0\n\r") or len(value) > 4096):
            raise ValueError(f"must be an absolute path on one line, not {value!r}")
        return value


class SearchPath(Kind):
    description = "a PATH: absolute directories separated by ':'"

    def convert(self, value: Any) -> str:
        if not isinstance(value, str) or not value or any(c in value for c in "\0\n\r"):
            raise ValueError(f"must be {self.description}, not {value!r}")
        bad = [p for p in value.split(":") if not p.startswith("/")]
        if bad:
            raise ValueError(f"must list absolute directories only; {bad[0]!r} is not one")
        return value


class Host(Kind):
    description = "a host name or IP address"
    _HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.:-]{0,252}[A-Za-z0-9.])?")

    def convert(self, value: Any) -> str:
        if not isinstance(value, str) or not self._HOST.fullmatch(value):
            raise ValueError(f"must be {self.description}, not {value!r}")
        return value


class Url(Kind):
    def __init__(self, *schemes: str):
        self.schemes = schemes
        self.description = "a URL (" + " or ".join(f"{s}://" for s in schemes) + ")"

    def convert(self, value: Any) -> str:
        if not isinstance(value, str) or any(c in value for c in "\0\n\r "):
            raise ValueError(f"must be {self.description}, not {value!r}")
        parts = urlsplit(value)
        try:
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError:
            raise ValueError(f"has a port that is not a number: {value!r}") from None
        if parts.scheme not in self.schemes or not parts.hostname:
            raise ValueError(f"must be {self.description} with a host, not {value!r}")
        return value


# -- containers (walked node by node in load.py, so each item keeps its own line number) --------


class ListOf(Kind):
    def __init__(self, item: Kind):
        self.item = item
        self.description = f"a list of {item.description}"


class MapOf(Kind):
    def __init__(self, key: Kind, value: Kind):
        self.key, self.value = key, value
        self.description = f"a mapping from {key.description} to {value.description}"


class Section(Kind):
    def __init__(self, cls: type):
        self.cls = cls
        self.description = f"a section ({cls.__name__})"


def setting(help: str, kind: Kind, default: Any = REQUIRED, *, factory: Any = None,
            yaml_name: str | None = None) -> Any:
    """A policy field: its help text, its kind, and its default (REQUIRED when it has none)."""
    meta = {"help": help, "kind": kind, "yaml_name": yaml_name}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def fields_of(cls: type) -> Sequence[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(cls) if "kind" in f.metadata]


def yaml_key(f: dataclasses.Field[Any]) -> str:
    return f.metadata.get("yaml_name") or f.name


def describe_schema(cls: type, indent: int = 0) -> str:
    """The reference of every field: name, kind, default and help, nested as in the file."""
    lines: list[str] = []
    pad = "  " * indent
    for f in fields_of(cls):
        kind: Kind = f.metadata["kind"]
        if f.default is not dataclasses.MISSING:
            default = "" if f.default is None else f" (default {kind.show(f.default)})"
        elif f.default_factory is not dataclasses.MISSING:
            default = ""
        else:
            default = " (required)"
        lines.append(f"{pad}{yaml_key(f)}: {kind.description}{default}")
        lines.append(f"{pad}    {f.metadata['help']}")
        inner = kind
        while isinstance(inner, (ListOf, MapOf)):
            inner = inner.item if isinstance(inner, ListOf) else inner.value
        if isinstance(inner, Section):
            lines.append(describe_schema(inner.cls, indent + 2))
    return "\n".join(lines)
