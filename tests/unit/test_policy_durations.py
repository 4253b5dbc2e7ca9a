"""Walltimes and sizes as admins and users write them: strict, ASCII-only, bounded."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.policy.durations import (
    LARGEST_MB,
    LONGEST,
    format_memory,
    format_memory_input,
    format_walltime,
    parse_duration,
    parse_memory_mb,
)


@pytest.mark.parametrize(("text", "expected"), [
    ("2:00:00", timedelta(hours=2)),
    ("0:30:00", timedelta(minutes=30)),
    ("30:00", timedelta(minutes=30)),  # Slurm: M:S
    ("45", timedelta(minutes=45)),  # Slurm: a bare number is minutes
    ("90m", timedelta(minutes=90)),
    ("90min", timedelta(minutes=90)),
    ("2h", timedelta(hours=2)),
    ("1d", timedelta(days=1)),
    ("1-12:00", timedelta(days=1, hours=12)),  # Slurm: D-H:M
    ("1-12", timedelta(days=1, hours=12)),  # Slurm: D-H
    ("2-00:00:00", timedelta(days=2)),
    ("1d12h", timedelta(days=1, hours=12)),
    ("1h 30m", timedelta(hours=1, minutes=30)),
    ("45s", timedelta(seconds=45)),
    (" 2H ", timedelta(hours=2)),
])
def test_durations_in_every_documented_form(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", [
    "", " ", "0", "0:00:00", "-1", "-1h", "2x", "h", "1.5h", "2h\n", "\n2h", "2h;ls", "1:2:3:4",
    "１h", "٣", "2ｈ", "1_000", "0x10", "1e3", "99999999", "400d", "1d\n#SBATCH --uid=0", "2 hours",
    "m30", "30mh", "1-", "-12:00",
])
def test_durations_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(("text", "mb"), [
    ("4G", 4096), ("4g", 4096), ("4GB", 4096), ("4GiB", 4096), ("512M", 512), ("4096", 4096),
    (4096, 4096), ("1.5G", 1536), ("2T", 2 * 1024 * 1024), ("1024K", 1), ("1K", 1), ("8 G", 8192),
])
def test_memory_sizes(text: str | int, mb: int) -> None:
    assert parse_memory_mb(text) == mb


@pytest.mark.parametrize("text", [
    "", "0", "0G", "-4G", "4X", "4G\n", "G", "4 G B", "４G", "4\u212aB", "1e3", "4G;rm", True, None,
    4.5, "99999999999T", -1,
])
def test_memory_refused(text: object) -> None:
    with pytest.raises(ValueError):
        parse_memory_mb(text)  # type: ignore[arg-type]


def test_formatting_reads_back() -> None:
    assert format_walltime(timedelta(minutes=30)) == "0:30:00"
    assert format_walltime(timedelta(days=1, hours=12)) == "1-12:00:00"
    assert format_memory(8192) == "8 GB" and format_memory(8000) == "8000 MB"
    assert format_memory(1536) == "1.5 GB" and format_memory(512) == "512 MB"
    assert format_memory_input(8192) == "8G" and format_memory_input(1536) == "1536M"


@settings(max_examples=1500)
@given(st.integers(min_value=1, max_value=int(LONGEST.total_seconds())))
def test_written_walltimes_parse_back_exactly(seconds: int) -> None:
    td = timedelta(seconds=seconds)
    assert parse_duration(format_walltime(td)) == td


@settings(max_examples=1500)
@given(st.integers(min_value=1, max_value=LARGEST_MB))
def test_written_sizes_parse_back_exactly(mb: int) -> None:
    assert parse_memory_mb(format_memory_input(mb)) == mb


@settings(max_examples=2000)
@given(st.text(max_size=30))
def test_any_text_parses_to_a_bounded_value_or_is_refused(text: str) -> None:
    try:
        td = parse_duration(text)
    except ValueError:
        pass
    else:
        assert timedelta(0) < td <= LONGEST
        assert text.strip(" \t").isascii() and "\n" not in text
    try:
        mb = parse_memory_mb(text)
    except ValueError:
        pass
    else:
        assert 0 < mb <= LARGEST_MB
        assert text.strip(" \t").isascii() and "\n" not in text
