"""Shared fixtures: the real lab, started with the same code as `hpcgate lab up`."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any

import pytest

from gateway.lab import Lab, LabError

TEST_LAB_DIR = Path(os.environ.get("HPCGATE_TEST_LAB_DIR", "/var/tmp/hpcgate-lab-test"))
SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def lab() -> Any:
    """A two-node lab for the whole test session, stopped at the end even when tests fail.

    A service that cannot start fails the tests that need it (never a skip: a skip would hide a
    missing install step in CI).
    """
    test_lab = Lab(TEST_LAB_DIR)
    # Two test sessions on one lab would stop it under each other: the second one waits.
    lock = open(f"{TEST_LAB_DIR}.lock", "w")  # noqa: SIM115 - held for the whole session
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        try:
            info = test_lab.up(nodes=2, fresh_jobs=True)
        except LabError as err:
            test_lab.down()
            pytest.fail(f"the lab could not start: {err}", pytrace=False)
        try:
            yield info
        finally:
            test_lab.down()
    finally:
        lock.close()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # "No tests collected" is neither a pass nor an ordinary failure: say so and fail loudly.
    if session.testscollected == 0:
        print("\nERROR: pytest collected no tests; the test command or layout is broken.")
        session.exitstatus = 1
