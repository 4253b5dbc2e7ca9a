"""Files only the job's user may read: the launch file (token inside) and the tunnel key."""

from __future__ import annotations

import os
from pathlib import Path


def write_private(path: Path, data: bytes) -> None:
    """Write a file only the calling user can read, whole or not at all (a fresh temporary name,
    never through a symlink, then renamed over `path`)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        # A full home or quota: no half-written file (a token inside) left behind.
        tmp.unlink(missing_ok=True)
        raise
