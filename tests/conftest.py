"""Shared fixtures: the real lab, started with the same code as `hpcgate lab up`.

Helpers that tests import live in tests/helpers/; nothing imports this file.
"""

from __future__ import annotations

import fcntl
import warnings
from typing import Any

import pytest

from gateway.lab import Lab, LabError
from tests.helpers.lab import new_in_unix_homes, unix_homes
from tests.helpers.paths import TEST_LAB_DIR


@pytest.fixture(scope="session")
def lab() -> Any:
    """A two-node lab for the whole test session, with its PostgreSQL, stopped at the end even
    when tests fail.

    A service that cannot start fails the tests that need it (never a skip: a skip would hide a
    missing install step in CI). The lab users' Unix homes are shared by every lab on the
    machine: the session warns when anything new appeared there (tests use the lab's homes).
    """
    test_lab = Lab(TEST_LAB_DIR)
    # Two test sessions on one lab would stop it under each other: the second one waits.
    lock = open(f"{TEST_LAB_DIR}.lock", "w")  # noqa: SIM115 - held for the whole session
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        try:
            info = test_lab.up(nodes=2, fresh_jobs=True, postgres=True)
        except LabError as err:
            test_lab.down()
            pytest.fail(f"the lab could not start: {err}", pytrace=False)
        homes = unix_homes(info)
        try:
            yield info
        finally:
            test_lab.down()
        left = new_in_unix_homes(info, homes)
        if left:
            # A warning, not a failure: another lab on the machine (an older checkout, a benchmark)
            # may have written there meanwhile. test_lab_homes and test_policy_spawn assert it.
            warnings.warn("new files in the lab users' Unix homes during the session (tests use "
                          f"the lab's homes, lab['users'][USER]['workdir']): {left}", stacklevel=1)
    finally:
        lock.close()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # "No tests collected" is neither a pass nor an ordinary failure: say so and fail loudly.
    if session.testscollected == 0:
        print("\nERROR: pytest collected no tests; the test command or layout is broken.")
        session.exitstatus = 1
