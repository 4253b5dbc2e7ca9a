"""The site policy: what a cluster's admins let the portal ask of their scheduler.

- `load_policy(path)` reads the YAML file into a typed `SitePolicy` (errors name file, line, field).
- `render_form(policy, groups)` is the spawn form for a member of `groups`.
- `validate_options(policy, groups, options)` / `validate_form(...)` turn submitted values into a
  `ValidatedRequest`, or raise `PolicyError` with a sentence for the user.
- `check_server_count(policy, groups, running)` enforces max_servers.
- `compare_limits(policy, live, nodes)` and `compare_queue_limits(policy, queues)` hold the
  policy against Slurm's partitions or PBS's queues (`hpcgate check-config`).
- `hpcgate check-config` lives in `gateway.admin.check`; the hub reads the file through
  `gateway.policy.config.PolicyFile`.
"""

from gateway.policy.form import render_form
from gateway.policy.live import LimitProblem, compare_limits, compare_queue_limits
from gateway.policy.load import FileProblem, PolicyFileError, load_policy, load_policy_text
from gateway.policy.model import SitePolicy
from gateway.policy.rules import UserRules, rules_for
from gateway.policy.validate import (
    PolicyError,
    ValidatedRequest,
    check_server_count,
    options_from_form,
    validate_form,
    validate_options,
)

__all__ = [
    "FileProblem",
    "LimitProblem",
    "PolicyError",
    "PolicyFileError",
    "SitePolicy",
    "UserRules",
    "ValidatedRequest",
    "check_server_count",
    "compare_limits",
    "compare_queue_limits",
    "load_policy",
    "load_policy_text",
    "options_from_form",
    "render_form",
    "rules_for",
    "validate_form",
    "validate_options",
]
