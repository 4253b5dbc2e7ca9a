"""Writing the launch file in a working directory that is full (quota or disk): the user gets a
sentence that says so, and no partial file is left behind."""

from __future__ import annotations

import errno
import subprocess
from pathlib import Path

import pytest

from gateway.hub import spawner
from gateway.job import private


def test_a_full_home_is_said_in_words() -> None:
    for stderr in ("OSError: [Errno 28] No space left on device",
                   "OSError: [Errno 122] Disk quota exceeded"):
        said = spawner.launch_file_refusal("/home/carol", stderr)
        assert "/home/carol is full" in said
        assert "free some space" in said.lower()


def test_other_failures_keep_the_general_sentence() -> None:
    said = spawner.launch_file_refusal("/home/carol", "PermissionError: [Errno 13] Permission denied")
    assert said == ("Your server's files could not be prepared in your working directory "
                    "/home/carol.")


def test_a_write_that_fails_leaves_no_temporary_file(tmp_path: Path) -> None:
    # A real full filesystem: a one-page tmpfs, filled up.
    full = tmp_path / "full"
    full.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(full)], check=True)
    try:
        with pytest.raises(OSError) as raised:
            (full / "filler").write_bytes(b"x" * 65536)
        assert raised.value.errno == errno.ENOSPC
        with pytest.raises(OSError, match="No space left"):
            private.write_private(full / "launch.json", b"{" + b" " * 8192 + b"}")
        assert sorted(p.name for p in full.iterdir()) == ["filler"]
    finally:
        subprocess.run(["umount", str(full)], check=True)
