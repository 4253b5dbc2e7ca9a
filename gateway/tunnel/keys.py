"""Per-job SSH keys and the authorized_keys lines that confine them.

Each job gets its own ed25519 key pair, made in the hub's memory (never by a command whose argv
or environment another user could read). Its public half goes into the tunnel account's
authorized_keys with options that allow nothing but forwarding the job's own loopback port to the
hub host, and the hub API port back. The line carries a tag (`hpcgate-job:<tag>`) so it can be
removed at stop without touching lines it did not write.

Concurrent spawns and stops edit one file: every change takes an exclusive lock on a side file,
rewrites the whole file into a temporary one in the same directory and renames it over the old one,
so sshd never reads half a file and no writer loses another's line.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

TAG_PREFIX = "hpcgate-job:"
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$")
_HOST = re.compile(r"^[A-Za-z0-9.:\[\]-]{1,253}$")
_PERMITLISTEN = re.compile(r'permitlisten="[^":]*:(\d+)"')


class KeyFileError(OSError):
    """The authorized_keys file cannot be managed safely; the message says why."""


@dataclass(frozen=True)
class JobKey:
    """An ed25519 key pair: the private key in OpenSSH format, the public key as one line."""

    private_openssh: str
    public: str  # "ssh-ed25519 AAAA..."


def generate_key() -> JobKey:
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    return JobKey(private, public)


def check_tag(tag: str) -> str:
    if not _TAG.match(tag):
        raise ValueError(f"tunnel key tag {tag!r}: letters, digits, '_', '.', '@', '-' only")
    return tag


def entry_line(public_key: str, tag: str, listen_port: int, open_host: str, open_port: int) -> str:
    """The authorized_keys line for one job: forward 127.0.0.1:listen_port (ssh -R) and open
    open_host:open_port (ssh -L, the hub API); no shell, no pty, no agent, no X11, no rc file."""
    parts = public_key.split()
    if len(parts) < 2 or parts[0] != "ssh-ed25519" or not re.fullmatch(r"[A-Za-z0-9+/=]+", parts[1]):
        raise ValueError("the job's public key must be one ssh-ed25519 key")
    for port in (listen_port, open_port):
        if not 1 <= port <= 65535:
            raise ValueError(f"port {port} is out of range")
    if not _HOST.match(open_host):
        raise ValueError(f"bad host {open_host!r}")
    options = ",".join([
        "restrict", "port-forwarding", 'command="/bin/false"',
        f'permitlisten="127.0.0.1:{listen_port}"', f'permitopen="{open_host}:{open_port}"',
    ])
    return f"{options} {parts[0]} {parts[1]} {TAG_PREFIX}{check_tag(tag)}"


def tag_of(line: str) -> str | None:
    """The tag of a line this module wrote, else None (lines of others are never touched)."""
    last = line.rstrip().rsplit(" ", 1)[-1]
    return last[len(TAG_PREFIX):] if last.startswith(TAG_PREFIX) else None


class AuthorizedKeys:
    """One authorized_keys file managed under a lock: add, remove, list the job lines."""

    def __init__(self, path: str | Path, mode: int = 0o644):
        self.path = Path(path)
        self.lock_path = self.path.with_name(f".{self.path.name}.lock")
        self.mode = mode

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if not self.path.parent.is_dir():
            raise KeyFileError(f"the directory of {self.path} does not exist")
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read(self) -> list[str]:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return []
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"{self.path} is not a regular file (a symlink?); not touching it")
        fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd) as f:
            return f.read().splitlines()

    def _write(self, lines: list[str]) -> None:
        try:
            st = os.lstat(self.path)
            owner = (st.st_uid, st.st_gid)
        except FileNotFoundError:
            owner = None
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, self.mode)
        try:
            with os.fdopen(fd, "w") as f:
                f.write("".join(f"{line}\n" for line in lines))
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, self.mode)
            if owner is not None and os.geteuid() == 0:
                os.chown(tmp, *owner)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def add(self, line: str) -> None:
        """Add one job line (replacing an older line with the same tag)."""
        tag = tag_of(line)
        if tag is None:
            raise ValueError("only tagged job lines can be added")
        with self._locked():
            lines = [x for x in self._read() if tag_of(x) != tag]
            self._write([*lines, line])

    def remove(self, *tags: str) -> int:
        """Remove the lines of these jobs; returns how many went. Missing ones are no error."""
        wanted = set(tags)
        with self._locked():
            lines = self._read()
            kept = [x for x in lines if tag_of(x) not in wanted]
            if len(kept) != len(lines):
                self._write(kept)
            return len(lines) - len(kept)

    def tags(self) -> list[str]:
        with self._locked():
            return [t for t in (tag_of(x) for x in self._read()) if t is not None]

    def add_on_free_port(self, make_line: Callable[[int], str], pick: Callable[[set[int]], int]) -> int:
        """Add the line `make_line(port)` for a port `pick` chooses among those no job line of the
        file may listen on: a line left behind (a hub that died, a failed removal) keeps its port
        from ever going to another user's server, whose traffic its key could otherwise take."""
        with self._locked():
            lines = self._read()
            taken = {int(m) for x in lines if tag_of(x) is not None
                     for m in _PERMITLISTEN.findall(x)}
            port = pick(taken)
            line = make_line(port)
            tag = tag_of(line)
            self._write([*(x for x in lines if tag_of(x) != tag), line])
            return port
