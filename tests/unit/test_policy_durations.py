"""Sizes as admins and users write them: strict, ASCII-only, bounded (durations: test_durations.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.policy.durations import LARGEST_MB, format_memory, format_memory_input, parse_memory_mb


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
    assert format_memory(8192) == "8 GB" and format_memory(8000) == "8000 MB"
    assert format_memory(1536) == "1.5 GB" and format_memory(512) == "512 MB"
    assert format_memory_input(8192) == "8G" and format_memory_input(1536) == "1536M"


@settings(max_examples=1500)
@given(st.integers(min_value=1, max_value=LARGEST_MB))
def test_written_sizes_parse_back_exactly(mb: int) -> None:
    assert parse_memory_mb(format_memory_input(mb)) == mb


@settings(max_examples=2000)
@given(st.text(max_size=30))
def test_any_text_parses_to_a_bounded_value_or_is_refused(text: str) -> None:
    try:
        mb = parse_memory_mb(text)
    except ValueError:
        pass
    else:
        assert 0 < mb <= LARGEST_MB
        assert text.strip(" \t").isascii() and "\n" not in text
