"""Throttling of failed logins per user name and per client address, on a fake clock."""

from __future__ import annotations

from auth.throttle import LoginThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_user_is_blocked_after_the_limit_until_the_oldest_failure_ages_out() -> None:
    clock = Clock()
    t = LoginThrottle(user_limit=3, address_limit=0, window=60, clock=clock)
    for _ in range(2):
        t.failed("alice", "10.0.0.1")
        clock.now += 10
    assert t.retry_after("alice", "10.0.0.1") == 0
    t.failed("alice", "10.0.0.1")  # third failure at t=20
    assert t.retry_after("alice", None) == 40  # the first (t=0) ages out at t=60
    assert t.retry_after("bob", "10.0.0.1") == 0  # other users and (address limit off) addresses
    clock.now += 40
    assert t.retry_after("alice", None) == 0


def test_an_address_guessing_many_names_is_blocked() -> None:
    clock = Clock()
    t = LoginThrottle(user_limit=5, address_limit=4, window=300, clock=clock)
    for i in range(4):
        t.failed(f"user{i}", "192.0.2.7")
    assert t.retry_after("someone-else", "192.0.2.7") == 300
    assert t.retry_after("someone-else", "192.0.2.8") == 0


def test_success_clears_the_user_but_not_the_address() -> None:
    clock = Clock()
    t = LoginThrottle(user_limit=2, address_limit=3, window=100, clock=clock)
    t.failed("alice", "192.0.2.7")
    t.failed("alice", "192.0.2.7")
    t.failed("bob", "192.0.2.7")
    assert t.retry_after("alice", None) > 0
    t.succeeded("alice")
    assert t.retry_after("alice", None) == 0
    assert t.retry_after(None, "192.0.2.7") > 0


def test_fractional_waits_round_up_and_zero_limits_turn_throttling_off() -> None:
    clock = Clock()
    t = LoginThrottle(user_limit=1, address_limit=0, window=10, clock=clock)
    t.failed("alice", "a")
    clock.now += 9.2
    assert t.retry_after("alice", "a") == 1
    off = LoginThrottle(user_limit=0, address_limit=0, clock=clock)
    for _ in range(100):
        off.failed("alice", "a")
    assert off.retry_after("alice", "a") == 0


def test_memory_is_bounded() -> None:
    clock = Clock()
    t = LoginThrottle(user_limit=5, address_limit=5, window=300, clock=clock, max_keys=100)
    for i in range(1000):
        t.failed(f"junk{i}", f"10.0.{i // 250}.{i % 250}")
    assert len(t.users) == 100 and len(t.addresses) == 100


def test_attempts_in_flight_count_so_concurrent_guesses_cannot_all_pass() -> None:
    clock = Clock()
    t = LoginThrottle(user_limit=3, address_limit=0, window=60, clock=clock)
    with t.attempt("alice", "10.0.0.1"), t.attempt("alice", "10.0.0.2"):
        t.failed("alice", "10.0.0.3")
        assert t.retry_after("alice", None) == 1  # two still waiting on the directory
        assert t.retry_after("bob", None) == 0
    assert t.retry_after("alice", None) == 0  # both ended without failing (they succeeded)
