"""The tunnel supervisor, with a stand-in for ssh that prints what ssh -v prints."""

from __future__ import annotations

import sys
import time

import pytest

from gateway.tunnel.client import TunnelError, TunnelSupervisor

FAKE_SSH = """
import sys, time
print("debug1: Local forwarding listening on 127.0.0.1 port 36002.", file=sys.stderr, flush=True)
print("debug1: remote forward success for: listen 127.0.0.1:41234, connect 127.0.0.1:1",
      file=sys.stderr, flush=True)
time.sleep(float(sys.argv[1]))
"""
EXPECT = {("remote-ok", 41234), ("local-ok", 36002)}


def test_up_only_after_both_forwards_and_restarted_when_ssh_dies() -> None:
    lines: list[str] = []
    sup = TunnelSupervisor([sys.executable, "-c", FAKE_SSH, "0.3"], EXPECT, log=lines.append,
                           first_delay=0.05, max_delay=0.2).start()
    try:
        sup.wait_ready(5)
        first = sup.proc.pid
        deadline = time.monotonic() + 5
        while sup.connects < 3:
            assert time.monotonic() < deadline, lines
            time.sleep(0.02)
        assert sup.proc.pid != first
        assert any("reconnecting in" in x for x in lines)
    finally:
        sup.stop()


def test_not_up_when_a_forward_is_missing() -> None:
    sup = TunnelSupervisor([sys.executable, "-c", FAKE_SSH, "5"],
                           {*EXPECT, ("remote-ok", 9)}, log=lambda _: None).start()
    try:
        with pytest.raises(TunnelError):
            sup.wait_ready(0.7)
    finally:
        sup.stop()


def test_gives_up_with_what_ssh_said() -> None:
    script = "import sys; print('Permission denied (publickey).', file=sys.stderr); sys.exit(255)"
    sup = TunnelSupervisor([sys.executable, "-c", script], EXPECT, log=lambda _: None,
                           first_delay=0.01, max_delay=0.02).start()
    try:
        with pytest.raises(TunnelError, match=r"Permission denied \(publickey\)"):
            sup.wait_ready(20, give_up_after=3)
    finally:
        sup.stop()
