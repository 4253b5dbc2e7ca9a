"""Memory sizes as people write them, parsed strictly into numbers.

The same parser reads the site policy (written by admins) and the spawn form (typed by users), so
an admin's `max_memory: 4G` and a user's `4G` mean the same thing. Only ASCII digits and a few
units are accepted: `int()` alone would take '４' or '1_000', and `\\d` in a regex matches every
Unicode digit. Durations have their own module, `schedulers.durations`, shared with the
schedulers' parsers so that a walltime means the same thing everywhere.
"""

from __future__ import annotations

import math
import re

# A bound that keeps numbers sane before any policy limit is applied: nobody asks for more than a
# pebibyte.
LARGEST_MB = 1024**3

MEMORY_EXAMPLES = "4G, 512M or 4096 (MB)"

_MEMORY = re.compile(r"([0-9]{1,10})(?:\.([0-9]{1,3}))? ?(k|kb|kib|m|mb|mib|g|gb|gib|t|tb|tib)?",
                     re.ASCII | re.IGNORECASE)
_MB_PER_UNIT = {"k": 1 / 1024, "m": 1, "g": 1024, "t": 1024 * 1024}


def _strip(text: str) -> str:
    # Only plain spaces and tabs: a newline is never "whitespace to ignore" in a value that could
    # end up near a script.
    return text.strip(" \t")


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
