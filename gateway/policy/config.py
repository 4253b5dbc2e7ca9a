"""The policy in JupyterHub's configuration: `c.SitePolicyConfig.policy_file = "/etc/hpcgate/site.yaml"`.

The spawner holds one of these (as a trait or by `parent=`) and calls `policy()`; the file is read
again when it changes, so an admin's edit takes effect at the next spawn without a hub restart.
A file that fails to load keeps the last good policy (and logs why) rather than stopping spawns.
"""

from __future__ import annotations

import os

from traitlets import Float, Unicode
from traitlets.config import LoggingConfigurable

from gateway.policy.load import PolicyFileError, load_policy
from gateway.policy.model import SitePolicy


class SitePolicyConfig(LoggingConfigurable):
    policy_file = Unicode(
        "/etc/hpcgate/site.yaml",
        help="The site policy (YAML): partitions and their limits, per-group rules, the job's "
             "environment, the connection mode, depots. Check it with `hpcgate check-config FILE`.",
    ).tag(config=True)

    live_limits_ttl = Float(
        300.0,
        help="Seconds the scheduler's own partition limits are cached before they are read again.",
    ).tag(config=True)

    _policy: SitePolicy | None = None
    _stamp: tuple[float, int] | None = None

    def policy(self) -> SitePolicy:
        """The current policy; re-read when the file's mtime or size changed."""
        try:
            st = os.stat(self.policy_file)
            stamp = (st.st_mtime, st.st_size)
        except OSError:
            stamp = None
        if self._policy is not None and stamp == self._stamp:
            return self._policy
        try:
            policy = load_policy(self.policy_file)
        except PolicyFileError as err:
            if self._policy is None:
                raise
            self.log.error("Keeping the previous site policy; %s could not be loaded:\n%s",
                           self.policy_file, err)
            self._stamp = stamp  # do not re-parse a broken file on every spawn
            return self._policy
        self._policy, self._stamp = policy, stamp
        return policy
