"""Durations, read and written in one place: Slurm's, PBS's and the ones people type.

The readers differ on purpose, because their sources do:

- `parse_slurm_time`: what Slurm prints and what `sbatch --time` reads: `M`, `M:S`, `H:M:S`, `D-H`,
  `D-H:M`, `D-H:M:S` (a bare number is minutes, `30:00` is 30 minutes, `1-02:00` is 1 day 2 hours),
  and UNLIMITED-like words, read as None.
- `parse_pbs_walltime`: what PBS prints: `[[H:]M:]S[.fraction]` or an int of seconds (a bare number is
  seconds, `30:00` is 30 minutes, hours may pass 24).
- `parse_duration`: what admins write in the site policy and users type in the form: Slurm's forms
  plus units (`90m`, `2h`, `1d`, `1d12h`, `1h 30m`), strict and bounded.

Only ASCII digits are read: `int()` alone would take '４' or '1_000', and `\\d` matches every
Unicode digit. Nothing here imports from the rest of the code base (gateway depends on
schedulers, never the reverse).
"""

from __future__ import annotations

import re
from datetime import timedelta

# Nobody runs a notebook for more than a year; the bound also keeps timedelta from overflowing.
LONGEST = timedelta(days=366)

WALLTIME_EXAMPLES = "2:00:00, 90m, 1-12:00, 2h or 1d"

# What Slurm prints for a time that is "no limit" (MaxTime=UNLIMITED, sinfo's `infinite`) or "not
# set" (DefaultTime=NONE, `n/a`, `(null)`); compared upper-cased.
UNLIMITED_TIMES = frozenset({"UNLIMITED", "INFINITE", "NONE", "N/A", "(NULL)", ""})

_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_N = "([0-9]{1,9})"  # a huge number is refused by a bound or an overflow check, never read slowly

# Slurm's forms, in the order of sbatch's manual.
_SLURM_FORMS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(rf"{_N}"), "m"),
    (re.compile(rf"{_N}:{_N}"), "ms"),
    (re.compile(rf"{_N}:{_N}:{_N}"), "hms"),
    (re.compile(rf"{_N}-{_N}"), "dh"),
    (re.compile(rf"{_N}-{_N}:{_N}"), "dhm"),
    (re.compile(rf"{_N}-{_N}:{_N}:{_N}"), "dhms"),
)
# PBS: up to three colon-separated numbers ending in seconds, the last one may hold a fraction.
_PBS = re.compile(r"(?:(?:([0-9]{1,9}):)?([0-9]{1,9}):)?([0-9]{1,9})(?:\.([0-9]{1,6})[0-9]*)?")
# Units a person types: 2h, 90m, 90min, 1d, 1d12h, 1h 30m, 45s (in this order, each at most once).
# re.ASCII keeps IGNORECASE from matching the Kelvin sign or the long s.
_UNITS = re.compile(rf"(?:{_N} ?d)? ?(?:{_N} ?h)? ?(?:{_N} ?m(?:in)?)? ?(?:{_N} ?s)?",
                    re.ASCII | re.IGNORECASE)


def _slurm_seconds(value: str) -> int | None:
    for pattern, units in _SLURM_FORMS:
        match = pattern.fullmatch(value)
        if match:
            return sum(int(n) * _SECONDS[u] for n, u in zip(match.groups(), units, strict=True))
    return None


def _timedelta(seconds: int, text: str) -> timedelta:
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError(f"duration out of range: {text!r}") from None


def parse_slurm_time(text: str) -> timedelta | None:
    """A time as Slurm prints or reads it -> timedelta; None for UNLIMITED, INFINITE, NONE and the like.

    Raises ValueError for anything else. Whitespace around the value is ignored, as the old
    parsers did: this is scheduler output, never copied into a script.
    """
    if not isinstance(text, str):
        raise ValueError(f"not a Slurm time: {text!r}")
    value = text.strip()
    if value.upper() in UNLIMITED_TIMES:
        return None
    seconds = _slurm_seconds(value)
    if seconds is None:
        raise ValueError(f"not a Slurm time: {text!r}")
    return _timedelta(seconds, text)


def parse_pbs_walltime(value: str | int) -> timedelta:
    """A PBS walltime (`01:30:00`, `240:00:00`, `30:00`, `90` seconds, `90.5`, or an int of seconds).

    Raises ValueError for anything else (PBS prints no word for an unlimited walltime: it leaves
    the resource out).
    """
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"not a PBS walltime: {value!r}")
        return _timedelta(value, str(value))
    match = _PBS.fullmatch(value.strip()) if isinstance(value, str) else None
    if not match:
        raise ValueError(f"not a PBS walltime: {value!r}")
    hours, minutes, seconds, fraction = match.groups()
    total = int(hours or 0) * 3600 + int(minutes or 0) * 60 + int(seconds)
    micro = int((fraction or "").ljust(6, "0"))  # PBS's sub-second part, cut to microseconds
    return _timedelta(total, value) + timedelta(microseconds=micro)


def parse_duration(text: str) -> timedelta:
    """A duration a person wrote: Slurm's forms (`2:00:00`, `1-12:00`, `45` minutes) or units
    (`90m`, `2h`, `1d`, `1d12h`, `1h 30m`, `45s`) -> timedelta.

    Raises ValueError with a short reason for anything else, for zero and for more than 366 days.
    Only spaces and tabs around the value are ignored: a newline is never "whitespace to ignore"
    in a value that could end up near a script.
    """
    if not isinstance(text, str):
        raise ValueError("not text")
    value = text.strip(" \t")
    seconds = _slurm_seconds(value)
    if seconds is None:
        match = _UNITS.fullmatch(value)
        if not match or not any(match.groups()):
            raise ValueError("not a duration")
        seconds = sum(int(n) * _SECONDS[u] for n, u in zip(match.groups(), "dhms", strict=True) if n)
    if seconds <= 0:
        raise ValueError("zero")
    if seconds > LONGEST.total_seconds():
        raise ValueError("longer than 366 days")
    return timedelta(seconds=seconds)


def _whole_seconds_up(td: timedelta) -> int:
    # A job must get at least the time asked for: a fraction of a second counts as a whole one.
    return -(-td // timedelta(seconds=1))


def format_slurm(td: timedelta) -> str:
    """`D-HH:MM:SS` for sbatch --time (the day always written), rounding up to whole seconds."""
    days, rest = divmod(_whole_seconds_up(td), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{days}-{hours:02d}:{minutes:02d}:{seconds:02d}"


def format_pbs(td: timedelta) -> str:
    """`HH:MM:SS` for `-l walltime=` (hours may pass 24: PBS has no days), rounding up to whole seconds."""
    hours, rest = divmod(_whole_seconds_up(td), 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}"


def format_form(td: timedelta) -> str:
    """The form's and the policy's way of writing a duration back: `0:30:00`, `1-12:00:00`."""
    days, rest = divmod(int(td.total_seconds()), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}-{hours:02d}:{minutes:02d}:{seconds:02d}"
    return f"{hours}:{minutes:02d}:{seconds:02d}"


def format_words(td: timedelta | float, parts: int | None = None) -> str:
    """Plain words: '1 day 2 hours 30 minutes'; `parts=2` keeps the two largest ('1 day 2 hours').

    Every part by default, so a limit reads exactly; messages about a job's time keep two.
    `td` may also be a number of seconds. Fractions of a second are dropped.
    """
    seconds = int(td.total_seconds() if isinstance(td, timedelta) else td)
    words = []
    for size, unit in ((86400, "day"), (3600, "hour"), (60, "minute"), (1, "second")):
        n, seconds = divmod(seconds, size)
        if n:
            words.append(f"{n} {unit}{'s' if n != 1 else ''}")
    return " ".join(words[:parts]) or "0 seconds"
