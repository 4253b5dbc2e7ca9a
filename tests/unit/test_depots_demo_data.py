"""The demo's recordings are real WAV files (RIFF/WAVE, 16-bit PCM), of the size asked, written once."""

from __future__ import annotations

import struct
import wave
from pathlib import Path

import pytest

from gateway.lab.demo_data import CLIPS, LARGE_NAME, write_recordings


def test_clips_and_a_long_recording_with_real_headers(tmp_path: Path) -> None:
    size = 3 * 1024 * 1024
    paths = write_recordings(tmp_path / "recordings", large_bytes=size)
    assert sorted(p.name for p in paths) == sorted([*CLIPS, LARGE_NAME])
    for path in paths:
        head = path.read_bytes()[:44]
        riff, riff_size, wave_id, fmt, fmt_size, pcm = struct.unpack_from("<4sI4s4sIH", head)
        assert (riff, wave_id, fmt, fmt_size, pcm) == (b"RIFF", b"WAVE", b"fmt ", 16, 1)
        assert riff_size == path.stat().st_size - 8
        with wave.open(str(path)) as w:
            assert (w.getnchannels(), w.getsampwidth()) == (1, 2)
            assert w.getnframes() * 2 + 44 == path.stat().st_size
            frames = w.readframes(w.getnframes())
        samples = struct.unpack(f"<{len(frames) // 2}h", frames)
        assert max(samples) - min(samples) > 1000  # sound, not silence
    assert (tmp_path / "recordings" / LARGE_NAME).stat().st_size == size
    with wave.open(str(tmp_path / "recordings" / "dawn-chorus.wav")) as w:
        assert w.getframerate() == 22050 and w.getnframes() == 4 * 22050


def test_written_once_and_rewritten_when_the_size_changes(tmp_path: Path) -> None:
    folder = tmp_path / "recordings"
    write_recordings(folder, large_bytes=1024 * 1024)
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    write_recordings(folder, large_bytes=1024 * 1024)
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps
    write_recordings(folder, large_bytes=2 * 1024 * 1024)
    assert (folder / LARGE_NAME).stat().st_size == 2 * 1024 * 1024
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no partial files left


@pytest.mark.parametrize("size", [10, 2**32])
def test_sizes_a_wav_cannot_hold_are_refused(tmp_path: Path, size: int) -> None:
    with pytest.raises(ValueError, match="between"):
        write_recordings(tmp_path, large_bytes=size)
