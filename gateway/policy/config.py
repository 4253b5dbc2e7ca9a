"""The site policy file as the hub reads it: loaded once, again whenever it changes.

An admin's edit takes effect at the next spawn without a hub restart. A file that fails to load
keeps the last good policy (and logs why) rather than stopping spawns.
"""

from __future__ import annotations

import logging
import os

from gateway.policy.load import PolicyFileError, load_policy
from gateway.policy.model import SitePolicy


class PolicyFile:
    """One policy file, re-read when its mtime or size changes."""

    def __init__(self, path: str, log: logging.Logger | logging.LoggerAdapter | None = None):
        self.path = path
        self.log = log or logging.getLogger("hpcgate.policy")
        self._policy: SitePolicy | None = None
        self._stamp: tuple[float, int] | None = None

    def policy(self) -> SitePolicy:
        """The current policy; PolicyFileError when it cannot be loaded and never could."""
        try:
            st = os.stat(self.path)
            stamp: tuple[float, int] | None = (st.st_mtime, st.st_size)
        except OSError:
            stamp = None
        if self._policy is not None and stamp == self._stamp:
            return self._policy
        try:
            policy = load_policy(self.path)
        except PolicyFileError as err:
            if self._policy is None:
                raise
            self.log.error("Keeping the previous site policy; %s could not be loaded:\n%s",
                           self.path, err)
            self._stamp = stamp  # do not re-parse a broken file on every spawn
            return self._policy
        self._policy, self._stamp = policy, stamp
        return policy
