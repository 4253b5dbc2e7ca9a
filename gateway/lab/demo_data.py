"""Generated field recordings for the demo's soundscape-lab depot: real WAV files, nothing downloaded.

A few short clips (birdsong chirps, a wren's trill, rain, a frog chorus) and one long continuous
recording whose size is chosen by the caller: small for tests (64 MiB), larger for the demo, so
that streaming and Range requests have something real to chew on. 16-bit PCM, mono, RIFF/WAVE
headers written by the standard library's `wave` module. Deterministic (seeded), written once:
a file already there with the right size is kept.
"""

from __future__ import annotations

import math
import os
import random
import secrets
import wave
from array import array
from collections.abc import Callable
from pathlib import Path

from gateway.depots.command import check_depot
from gateway.depots.groups import GroupResolver
from gateway.depots.provision import ProvisionError
from gateway.policy.load import load_policy

MIB = 1024 * 1024
TEST_LARGE_BYTES = 64 * MIB
DEMO_LARGE_BYTES = 512 * MIB
DEMO_DEPOT = "soundscape-lab"
LARGE_NAME = "site-a-continuous.wav"
_HEADER_BYTES = 44  # RIFF + fmt + data chunk headers of a plain PCM file
_MAX_WAV_BYTES = 2**32 - 1  # RIFF sizes are 32-bit


def _chirp(out: list[float], rate: int, start: float, length: float, f0: float, f1: float,
           amp: float) -> None:
    """Add a Hann-windowed sweep from f0 to f1 Hz (a bird's note) at `start` seconds."""
    first, n = int(start * rate), int(length * rate)
    phase = 0.0
    for i in range(min(n, len(out) - first)):
        x = i / n
        phase += 2 * math.pi * (f0 + (f1 - f0) * x) / rate
        out[first + i] += amp * math.sin(phase) * (0.5 - 0.5 * math.cos(2 * math.pi * x))


def _noise(n: int, rng: random.Random, amp: float, smooth: float) -> list[float]:
    """Low-passed noise: wind, rain, distant traffic (`smooth` near 1 is darker)."""
    out, y = [0.0] * n, 0.0
    for i in range(n):
        y = smooth * y + (1 - smooth) * rng.uniform(-1, 1)
        out[i] = amp * y
    return out


def _pcm(samples: list[float]) -> bytes:
    return array("h", (max(-32767, min(32767, int(s * 32767))) for s in samples)).tobytes()


def dawn_chorus(rate: int, seconds: float, rng: random.Random) -> list[float]:
    out = _noise(int(rate * seconds), rng, 0.02, 0.9)
    for _ in range(int(seconds * 6)):
        f0 = rng.uniform(2000, 5000)
        _chirp(out, rate, rng.uniform(0, seconds - 0.3), rng.uniform(0.05, 0.25), f0,
               f0 * rng.uniform(0.6, 1.6), rng.uniform(0.1, 0.35))
    return out


def wren_trill(rate: int, seconds: float, rng: random.Random) -> list[float]:
    out = _noise(int(rate * seconds), rng, 0.01, 0.9)
    t = 0.3
    while t < seconds - 0.5:
        for k in range(rng.randint(8, 16)):
            _chirp(out, rate, t + k * 0.045, 0.035, 4200, 6800, 0.3)
        t += rng.uniform(0.9, 1.4)
    return out


def rain(rate: int, seconds: float, rng: random.Random) -> list[float]:
    out = _noise(int(rate * seconds), rng, 0.25, 0.6)
    for _ in range(int(seconds * 40)):  # drops on leaves
        _chirp(out, rate, rng.uniform(0, seconds - 0.02), 0.008, 3000, 1500, rng.uniform(0.05, 0.2))
    return out


def frog_chorus(rate: int, seconds: float, rng: random.Random) -> list[float]:
    out = _noise(int(rate * seconds), rng, 0.02, 0.95)
    for _ in range(int(seconds * 3)):
        start = rng.uniform(0, seconds - 0.4)
        for k in range(6):
            _chirp(out, rate, start + k * 0.05, 0.04, 600, 560, 0.25)
    return out


CLIPS: dict[str, tuple[Callable[[int, float, random.Random], list[float]], float]] = {
    "dawn-chorus.wav": (dawn_chorus, 4.0),
    "wren-trill.wav": (wren_trill, 3.0),
    "rain-on-canopy.wav": (rain, 3.0),
    "frog-chorus.wav": (frog_chorus, 3.0),
}
CLIP_RATE = 22050
LARGE_RATE = 44100


def write_wav(path: Path, rate: int, blocks: list[bytes], data_bytes: int) -> None:
    """A mono 16-bit WAV of exactly `data_bytes` of samples, cycling through `blocks`, written to a
    temporary name first so that a reader never sees half a file under the real name."""
    # The folder is group-writable and this runs as root: a fresh random name, created only if
    # it does not exist and never through a symlink a member may have planted.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.partial")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o664)
    with os.fdopen(fd, "wb") as f, wave.open(f, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.setnframes(data_bytes // 2)  # the header is right from the start: no rewrite at close
        left, i = data_bytes, 0
        while left > 0:
            chunk = blocks[i % len(blocks)][:left]
            w.writeframesraw(chunk)
            left -= len(chunk)
            i += 1
    os.replace(tmp, path)


def write_recordings(folder: Path, large_bytes: int = TEST_LARGE_BYTES, seed: int = 7) -> list[Path]:
    """The clips and the long recording in `folder` (created); files already right are kept."""
    if not _HEADER_BYTES + 2 <= large_bytes <= _MAX_WAV_BYTES:
        raise ValueError(f"the long recording must be between {_HEADER_BYTES + 2} bytes and 4 GiB; "
                         f"{large_bytes} was asked for")
    folder.mkdir(parents=True, exist_ok=True)
    if folder.is_symlink():
        raise ValueError(f"{folder} is a symlink; not writing recordings through it")
    rng = random.Random(seed)
    written = []
    for name, (make, seconds) in CLIPS.items():
        path = folder / name
        samples = make(CLIP_RATE, seconds, rng)  # made even when kept: the seed sequence stays put
        if not path.exists():
            write_wav(path, CLIP_RATE, [_pcm(samples)], len(samples) * 2)
        written.append(path)
    data_bytes = (large_bytes - _HEADER_BYTES) // 2 * 2
    path = folder / LARGE_NAME
    if not (path.exists() and path.stat().st_size == _HEADER_BYTES + data_bytes):
        # Four different six-second stretches, cycled: hours of "field recording" in seconds.
        blocks = [_pcm(dawn_chorus(LARGE_RATE, 6.0, rng)), _pcm(rain(LARGE_RATE, 6.0, rng)),
                  _pcm(frog_chorus(LARGE_RATE, 6.0, rng)), _pcm(wren_trill(LARGE_RATE, 6.0, rng))]
        write_wav(path, LARGE_RATE, blocks, data_bytes)
    written.append(path)
    return written


def prepare_lab_depots(policy_file: str | Path, large_bytes: int = TEST_LARGE_BYTES,
                       log: Callable[[str], None] = print) -> list[Path]:
    """Provision every depot of the lab's policy (as `hpcgate depot create` would) and fill
    soundscape-lab with recordings. Run as root; idempotent."""
    policy = load_policy(policy_file)
    with GroupResolver(policy) as resolver:
        reports = [check_depot(policy, name, resolver, fix=True) for name in policy.depots]
    problems = [f"{r.name}: {r.error or '; '.join(map(str, r.drifts))}" for r in reports
                if not r.in_order]
    if problems:
        raise ProvisionError("the lab's depots could not be provisioned: " + " / ".join(problems))
    for r in reports:
        if r.repaired:
            log(f"hpcgate: depot {r.name} provisioned at {r.path}")
    if DEMO_DEPOT not in policy.depots:
        return []
    return write_recordings(Path(policy.depots[DEMO_DEPOT].path) / "recordings", large_bytes)
