"""A depot's size, measured as one of its members: `python -m gateway.depots.size PATH`.

The hub's account is in no group of users and never reads a depot itself: the depots page runs
this module as the logged-in user (a member, or they would not see the depot) through the
scheduler's runner, which the sudoers file of `hpcgate deploy-files` allows. It prints one JSON
object: bytes, files, complete, error.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
import time
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class DirSize:
    bytes: int
    files: int
    complete: bool
    """False when the walk hit its time limit: the true size is larger."""
    error: str | None = None
    computed_at: float = 0.0


def tree_size(path: str, time_limit: float) -> DirSize:
    """Apparent size of every file under `path` (symlinks not followed), within `time_limit` s."""
    deadline = time.monotonic() + time_limit
    total = files = 0
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            return DirSize(0, 0, True, "not a directory", time.time())
    except FileNotFoundError:
        return DirSize(0, 0, True, "not provisioned yet", time.time())
    except OSError as err:
        return DirSize(0, 0, True, err.strerror or str(err), time.time())
    stack = [path]
    while stack:
        if time.monotonic() > deadline:
            return DirSize(total, files, False, None, time.time())
        current = stack.pop()
        try:
            with os.scandir(current) as entries:
                for entry in entries:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if stat.S_ISDIR(st.st_mode):
                        stack.append(entry.path)
                    elif stat.S_ISREG(st.st_mode):
                        total += st.st_size
                        files += 1
        except OSError:
            continue  # vanished or unreadable while walking: count what is there
    return DirSize(total, files, True, None, time.time())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.depots.size")
    parser.add_argument("--time-limit", type=float, default=30.0)
    parser.add_argument("path")
    args = parser.parse_args(argv)
    size = asdict(tree_size(args.path, args.time_limit))
    size.pop("computed_at")
    json.dump(size, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
