"""Durations, one module: Slurm's forms, PBS's, what people type, and every way they are written back."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schedulers.durations import (
    LONGEST,
    format_form,
    format_pbs,
    format_slurm,
    format_words,
    parse_duration,
    parse_pbs_walltime,
    parse_slurm_time,
)

# Whole seconds from 1 s to 366 days: every duration the policy or the form can hold.
WHOLE_SECONDS = st.integers(min_value=1, max_value=int(LONGEST.total_seconds())).map(
    lambda s: timedelta(seconds=s))

# sbatch --time: "minutes", "minutes:seconds", "hours:minutes:seconds", "days-hours",
# "days-hours:minutes" and "days-hours:minutes:seconds". Each form, read by all three Slurm readers.
SLURM_FORMS = [
    ("5", timedelta(minutes=5)),
    ("45", timedelta(minutes=45)),
    ("30:00", timedelta(minutes=30)),
    ("90:30", timedelta(minutes=90, seconds=30)),
    ("00:30:00", timedelta(minutes=30)),
    ("2:00:00", timedelta(hours=2)),
    ("1-12", timedelta(days=1, hours=12)),
    ("2-0", timedelta(days=2)),
    ("1-02:00", timedelta(days=1, hours=2)),
    ("1-12:30", timedelta(days=1, hours=12, minutes=30)),
    ("1-02:03:04", timedelta(days=1, hours=2, minutes=3, seconds=4)),
    ("2-00:00:00", timedelta(days=2)),
]

# Never a duration, for any reader: Unicode digits, separators int() would take, signs, blanks.
JUNK = ["", " ", "４", "١٢", "1_000", "1 000", "-5", "-1:00:00", "+5", "1e3", "0x10", "1.5h", "2x",
        "1:2:3:4", "1-2-3", "1-", "-12:00", ":30", "30:", "1::1", "1\n2", "1-02:00\n#SBATCH", "soon",
        "12:00 PM"]


@pytest.mark.parametrize(("text", "expected"), SLURM_FORMS)
def test_slurm_forms(text: str, expected: timedelta) -> None:
    assert parse_slurm_time(text) == expected
    assert parse_duration(text) == expected  # admins and users may write any of Slurm's forms


def test_slurm_forms_table_is_slurms_reading() -> None:
    """The two readings the old parsers got wrong: M:S (not H:M) and D-H:M (not D-M:S)."""
    assert parse_slurm_time("30:00") == timedelta(minutes=30)
    assert parse_slurm_time("1-02:00") == timedelta(days=1, hours=2)
    assert parse_slurm_time("5") == timedelta(minutes=5)
    assert parse_slurm_time("2-0") == timedelta(days=2)


@pytest.mark.parametrize("word", ["UNLIMITED", "INFINITE", "infinite", "Unlimited", "NONE", "N/A",
                                  "(null)", "", "  UNLIMITED  "])
def test_unlimited_words_mean_no_limit(word: str) -> None:
    assert parse_slurm_time(word) is None


@pytest.mark.parametrize("word", ["UNLIMITED", "infinite", "NONE", "(null)"])
def test_unlimited_is_not_a_duration_a_person_can_ask_for(word: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(word)
    with pytest.raises(ValueError):
        parse_pbs_walltime(word)


def test_scheduler_output_may_end_in_a_newline() -> None:
    """Output lines keep their blanks and newlines; the form refuses them (test_form_junk_refused)."""
    assert parse_slurm_time(" 30:00\n") == timedelta(minutes=30)
    assert parse_pbs_walltime("01:00:00\n") == timedelta(hours=1)


def test_scheduler_output_keeps_big_values() -> None:
    """Scheduler output is not bounded to a year: a site may allow longer jobs."""
    assert parse_slurm_time("1000-00:00:00") == timedelta(days=1000)
    assert parse_pbs_walltime("8199:09:40") == timedelta(hours=8199, minutes=9, seconds=40)
    with pytest.raises(ValueError):
        parse_slurm_time("999999999-24")  # past timedelta's range: refused, not OverflowError


@pytest.mark.parametrize(("value", "expected"), [
    ("01:00:00", timedelta(hours=1)), ("240:00:00", timedelta(hours=240)), ("1:0:0", timedelta(hours=1)),
    ("30:00", timedelta(minutes=30)), ("90", timedelta(seconds=90)), (3600, timedelta(hours=1)),
    (0, timedelta(0)), ("00:00:00", timedelta(0)), ("90.5", timedelta(seconds=90.5)),
    ("00:00:01.25", timedelta(seconds=1.25)), (" 01:00:00 ", timedelta(hours=1)),
    ("8199:09:40", timedelta(hours=8199, minutes=9, seconds=40)),
])
def test_pbs_walltimes(value: str | int, expected: timedelta) -> None:
    """PBS reads `[[H:]M:]S`: a bare number is seconds (Slurm: minutes), and hours pass 24."""
    assert parse_pbs_walltime(value) == expected


@pytest.mark.parametrize("value", [*JUNK, -1, True, None, 1.5])
def test_pbs_junk_refused(value: object) -> None:
    with pytest.raises(ValueError):
        parse_pbs_walltime(value)  # type: ignore[arg-type]


@pytest.mark.parametrize("text", [j for j in JUNK if j.strip()])
def test_slurm_junk_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_slurm_time(text)


@pytest.mark.parametrize(("text", "expected"), [
    ("90m", timedelta(minutes=90)),
    ("90min", timedelta(minutes=90)),
    ("2h", timedelta(hours=2)),
    (" 2H ", timedelta(hours=2)),
    ("1d", timedelta(days=1)),
    ("1d12h", timedelta(days=1, hours=12)),
    ("1d 12h", timedelta(days=1, hours=12)),
    ("1h30m", timedelta(hours=1, minutes=30)),
    ("1h 30m", timedelta(hours=1, minutes=30)),
    ("45s", timedelta(seconds=45)),
    ("1d 2h 3m 4s", timedelta(days=1, hours=2, minutes=3, seconds=4)),
    ("366d", LONGEST),
])
def test_form_units(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", [
    *JUNK, "5\n", "\n5", "0", "0:00:00", "0m", "-1h", "h", "2h\n", "\n2h", "2h;ls", "１h", "2ｈ",
    "99999999", "367d", "1d\n#SBATCH --uid=0", "2 hours", "m30", "30mh", "2h1d", "1h1h",
    "45\u212a", "5\u017f",
])
def test_form_junk_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_form_refusals_say_why() -> None:
    for text, reason in (("soon", "not a duration"), ("0", "zero"), ("367d", "longer than 366 days")):
        with pytest.raises(ValueError, match=reason):
            parse_duration(text)
    with pytest.raises(ValueError, match="not text"):
        parse_duration(90)  # type: ignore[arg-type]


def test_formats() -> None:
    assert format_slurm(timedelta(hours=1, seconds=1)) == "0-01:00:01"
    assert format_slurm(timedelta(seconds=0.2)) == "0-00:00:01"  # rounded up: never less than asked
    assert format_slurm(timedelta(days=1, hours=2)) == "1-02:00:00"
    assert format_pbs(timedelta(days=2, minutes=5)) == "48:05:00"
    assert format_pbs(timedelta(hours=1, minutes=30, seconds=0.2)) == "01:30:01"
    assert format_form(timedelta(minutes=30)) == "0:30:00"
    assert format_form(timedelta(days=1, hours=12)) == "1-12:00:00"
    assert format_words(timedelta(days=1, hours=2, minutes=30)) == "1 day 2 hours 30 minutes"
    assert format_words(timedelta(days=1, hours=2, minutes=30), parts=2) == "1 day 2 hours"
    assert format_words(timedelta(seconds=59), parts=2) == "59 seconds"
    assert format_words(5400.7, parts=2) == "1 hour 30 minutes"  # seconds, as the spawner passes them
    assert format_words(timedelta(0)) == "0 seconds"


@settings(max_examples=1000)
@given(WHOLE_SECONDS)
def test_slurm_round_trip(td: timedelta) -> None:
    assert parse_slurm_time(format_slurm(td)) == td
    assert parse_duration(format_slurm(td)) == td


@settings(max_examples=1000)
@given(WHOLE_SECONDS)
def test_pbs_round_trip(td: timedelta) -> None:
    assert parse_pbs_walltime(format_pbs(td)) == td


@settings(max_examples=1000)
@given(WHOLE_SECONDS)
def test_form_round_trip(td: timedelta) -> None:
    assert parse_duration(format_form(td)) == td
    assert parse_slurm_time(format_form(td)) == td  # what the form writes, sbatch reads the same


def _words_as_units(words: str) -> str:
    # "1 day 2 hours" -> "1d 2h": the same numbers and units in the form's own notation.
    return re.sub(r" (day|hour|minute|second)s?\b", lambda m: m.group(1)[0], words)


@settings(max_examples=1000)
@given(WHOLE_SECONDS)
def test_words_round_trip(td: timedelta) -> None:
    assert parse_duration(_words_as_units(format_words(td))) == td


@settings(max_examples=1000)
@given(WHOLE_SECONDS)
def test_two_words_keep_the_two_largest_parts(td: timedelta) -> None:
    short = parse_duration(_words_as_units(format_words(td, parts=2)))
    assert short <= td
    first = next(size for size in (86400, 3600, 60, 1) if td.total_seconds() >= size)
    second = {86400: 3600, 3600: 60, 60: 1, 1: 1}[first]
    assert td - short < timedelta(seconds=second)


@settings(max_examples=1000)
@given(st.integers(min_value=1, max_value=10**7), st.integers(min_value=0, max_value=999_999))
def test_fractions_round_up_for_the_builders(seconds: int, micro: int) -> None:
    td = timedelta(seconds=seconds, microseconds=micro)
    whole = timedelta(seconds=seconds + (micro > 0))
    assert parse_slurm_time(format_slurm(td)) == whole
    assert parse_pbs_walltime(format_pbs(td)) == whole


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
    for parse in (parse_slurm_time, parse_pbs_walltime):
        try:
            parsed = parse(text)
        except ValueError:
            continue
        assert parsed is None or parsed >= timedelta(0)
        assert text.strip().isascii()


@settings(max_examples=500)
@given(st.text(alphabet="0123456789:-", min_size=1, max_size=12))
def test_slurm_readers_agree(text: str) -> None:
    """Wherever the policy reader takes a Slurm form, it reads what Slurm reads."""
    try:
        mine = parse_duration(text)
    except ValueError:
        return
    assert parse_slurm_time(text) == mine
