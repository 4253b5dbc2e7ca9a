"""Walltimes and memory sizes as people write them, parsed strictly into numbers.

The same parsers read the site policy (written by admins) and the spawn form (typed by users), so
an admin's `max_walltime: 1-12:00` and a user's `1-12:00` mean the same thing. Only ASCII digits
and a few units are accepted: `int()` alone would take '４' or '1_000', and `\\d` in a regex
matches every Unicode digit.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta

# Bounds that keep numbers sane before any policy limit is applied: nobody runs a notebook for
# more than a year or asks for more than a pebibyte, and these stop overflow in timedelta.
LONGEST = timedelta(days=366)
LARGEST_MB = 1024**3

WALLTIME_EXAMPLES = "2:00:00, 90m, 1-12:00, 2h or 1d"
MEMORY_EXAMPLES = "4G, 512M or 4096 (MB)"

_N = "([0-9]{1,7})"  # at most 7 digits: huge numbers are refused by the bound, not by overflow
# Slurm's own forms: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S (a bare number is minutes, as in sbatch).
_SLURM_FORMS: tuple[tuple[re.Pattern[str], tuple[str, ...]], ...] = (
    (re.compile(rf"{_N}"), ("m",)),
    (re.compile(rf"{_N}:{_N}"), ("m", "s")),
    (re.compile(rf"{_N}:{_N}:{_N}"), ("h", "m", "s")),
    (re.compile(rf"{_N}-{_N}"), ("d", "h")),
    (re.compile(rf"{_N}-{_N}:{_N}"), ("d", "h", "m")),
    (re.compile(rf"{_N}-{_N}:{_N}:{_N}"), ("d", "h", "m", "s")),
)
# Unit forms: 2h, 90m, 1d, 1d12h, 1h 30m, 45s (units in this order, each at most once).
_UNITS = re.compile(r"(?:([0-9]{1,7}) ?d)? ?(?:([0-9]{1,7}) ?h)? ?(?:([0-9]{1,7}) ?m(?:in)?)? ?"
                    r"(?:([0-9]{1,7}) ?s)?", re.ASCII | re.IGNORECASE)
_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}

_MEMORY = re.compile(r"([0-9]{1,10})(?:\.([0-9]{1,3}))? ?(k|kb|kib|m|mb|mib|g|gb|gib|t|tb|tib)?",
                     re.ASCII | re.IGNORECASE)
_MB_PER_UNIT = {"k": 1 / 1024, "m": 1, "g": 1024, "t": 1024 * 1024}


def _strip(text: str) -> str:
    # Only plain spaces and tabs: a newline is never "whitespace to ignore" in a value that could
    # end up near a script.
    return text.strip(" \t")


def parse_duration(text: str) -> timedelta:
    """`2:00:00`, `90m`, `1-12:00`, `2h`, `1d`, `1h30m`, `45` (minutes) -> timedelta.

    Raises ValueError (a short reason) for anything else, for zero and for more than a year.
    """
    if not isinstance(text, str):
        raise ValueError("not text")
    value = _strip(text)
    seconds: int | None = None
    for pattern, units in _SLURM_FORMS:
        match = pattern.fullmatch(value)
        if match:
            seconds = sum(int(n) * _SECONDS[u] for n, u in zip(match.groups(), units, strict=True))
            break
    else:
        match = _UNITS.fullmatch(value)
        if match and any(match.groups()) and value[-1:].isalpha():
            seconds = sum(int(n) * _SECONDS[u]
                          for n, u in zip(match.groups(), "dhms", strict=True) if n is not None)
    if seconds is None:
        raise ValueError("not a duration")
    if seconds <= 0:
        raise ValueError("zero")
    if seconds > LONGEST.total_seconds():
        raise ValueError("longer than a year")
    return timedelta(seconds=seconds)


def format_walltime(td: timedelta) -> str:
    """The form's way of writing a duration back: `0:30:00`, `2:00:00`, `1-12:00:00`."""
    total = int(td.total_seconds())
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{days}-{hours:02d}:{minutes:02d}:{secs:02d}" if days else clock


def parse_memory_mb(text: str | int) -> int:
    """`4G`, `512M`, `1.5G`, `4096` (MB), `2T`, `4GiB` -> whole MB (binary units, as Slurm).

    An int is taken as MB (YAML gives ints for `memory: 4096`). Fractions round up to whole MB.
    Raises ValueError for anything else, zero, or more than a pebibyte.
    """
    if isinstance(text, bool):
        raise ValueError("not a size")
    if isinstance(text, int):
        mb = text
    elif isinstance(text, str):
        match = _MEMORY.fullmatch(_strip(text))
        if not match:
            raise ValueError("not a size")
        whole, frac, unit = match.groups()
        number = int(whole) + (int(frac) / 10 ** len(frac) if frac else 0)
        mb = math.ceil(number * _MB_PER_UNIT[(unit or "m")[0].lower()])
    else:
        raise ValueError("not a size")
    if mb <= 0:
        raise ValueError("zero")
    if mb > LARGEST_MB:
        raise ValueError("more than a pebibyte")
    return mb


def format_memory(mb: int) -> str:
    """Plain words for a size: '512 MB', '8 GB', '1.5 GB', '2 TB', '8000 MB' (not '7.8 GB')."""
    for unit, size in (("TB", 1024 * 1024), ("GB", 1024)):
        if mb >= size and (mb * 10) % size == 0:
            value = mb / size
            return f"{value:.0f} {unit}" if mb % size == 0 else f"{value:.1f} {unit}"
    return f"{mb} MB"


def format_memory_input(mb: int) -> str:
    """The form's way of writing a size back: `8G` when whole gigabytes, else `1536M`."""
    return f"{mb // 1024}G" if mb % 1024 == 0 else f"{mb}M"
