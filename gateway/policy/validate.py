"""Server-side validation of the spawn form: whatever the browser sends, only typed, bounded values
that the policy allows come out.

The form is a convenience; this is the gate. Partition and account names must equal one of the
policy's names exactly; numbers must be ASCII digits within the user's limits; durations and sizes
go through the strict parsers in `schedulers.durations` and `durations.py`. Every refusal is one
sentence that names the field and the allowed range, and nothing the user typed is ever copied
into the result.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from gateway.policy.durations import MEMORY_EXAMPLES, format_memory, parse_memory_mb
from gateway.policy.model import SitePolicy
from gateway.policy.rules import PartitionOffer, UserRules, rules_for
from schedulers.durations import WALLTIME_EXAMPLES, format_words, parse_duration

FORM_FIELDS = ("partition", "account", "cpus", "memory", "gpus", "walltime")
_DIGITS = frozenset("0123456789")


class PolicyError(ValueError):
    """A request the policy refuses, with a sentence for the user. `field` names the form field."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field


@dataclass(frozen=True)
class ValidatedRequest:
    """What the policy allowed, ready for a JobRequest. Every value is a policy name or a bounded number."""

    partition: str
    account: str | None
    cpus: int
    memory_mb: int
    gpus: int
    walltime: timedelta
    node: str | None = None
    """Set by the policy (a partition pinned to one node), never by the user."""

    def job_request_fields(self) -> dict[str, Any]:
        """Keyword arguments for `schedulers.model.JobRequest`."""
        return {"partition": self.partition, "account": self.account, "cpus": self.cpus,
                "memory_mb": self.memory_mb, "gpus": self.gpus, "walltime": self.walltime,
                "node": self.node}


def shown(value: Any, limit: int = 40) -> str:
    """A user's input, quoted for a message: control characters escaped, long text cut short."""
    text = value if isinstance(value, str) else repr(value)
    out = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    if len(out) > limit:
        out = out[:limit] + "…"
    return f"'{out}'"


class _NotOne(Exception):
    """The form sent a list with zero or several values for one field."""

    def __init__(self, count: int):
        self.sent = "the form sent no value" if count == 0 else f"the form sent {count} values"


def _single(options: Mapping[str, Any], name: str) -> Any:
    """The one value submitted for `name`, None when absent (the user's default applies)."""
    if name not in options:
        return None
    value = options[name]
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise _NotOne(len(value))
        value = value[0]
    return value


def _entered(raw: Any) -> str:
    return "the field was empty" if raw == "" else f"you entered {shown(raw)}"


def _whole_number(value: Any) -> int | None:
    """A whole number from an int or a string of ASCII digits (at most 9 of them), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if -(10**9) < value < 10**9 else None
    if isinstance(value, str):
        text = value.strip(" \t")
        if 0 < len(text) <= 9 and set(text) <= _DIGITS:
            return int(text)
    return None


class _Checker:
    """Each method reads one field: absent -> the user's default; anything else is checked."""

    def __init__(self, rules: UserRules, options: Mapping[str, Any]):
        self.rules = rules
        self.options = options

    def _raw(self, name: str, rule: str) -> Any:
        """The submitted value; `rule` is the sentence's start, naming the field and its range."""
        try:
            return _single(self.options, name)
        except _NotOne as many:
            raise PolicyError(f"{rule}; {many.sent}.", name) from None

    def partition(self) -> PartitionOffer:
        offers = self.rules.partitions
        rule = f"Partition must be one of {', '.join(offers)}"
        raw = self._raw("partition", rule)
        if raw is None or raw == "":
            assert self.rules.default_partition is not None  # may_spawn guarantees offers
            return offers[self.rules.default_partition]
        if isinstance(raw, str) and raw in offers:
            return offers[raw]
        raise PolicyError(f"{rule}; you chose {shown(raw)}.", "partition")

    def account(self) -> str | None:
        accounts = self.rules.accounts
        rule = (f"Account must be one of {', '.join(accounts)}" if accounts
                else "Account must be left empty (this site charges no accounts)")
        raw = self._raw("account", rule)
        if raw is None or raw == "":
            if accounts and self.rules.default_account is None:
                raise PolicyError(f"{rule}; you chose none.", "account")
            return self.rules.default_account
        if isinstance(raw, str) and raw in accounts:
            return raw
        raise PolicyError(f"{rule}; you chose {shown(raw)}.", "account")

    def count(self, name: str, label: str, unit: str, low: int, high: int, default: int,
              part: str) -> int:
        rule = f"{label} must be a whole number from {low} to {high} on partition {part!r}"
        raw = self._raw(name, rule)
        if raw is None:
            return default
        number = _whole_number(raw)
        if number is None:
            raise PolicyError(f"{rule}; {_entered(raw)}.", name)
        if high == 0 and number > 0:
            raise PolicyError(f"Partition {part!r} has no {unit}s, so {label} must be 0; "
                              f"you asked for {number}.", name)
        if not low <= number <= high:
            raise PolicyError(f"Partition {part!r} allows {low} to {high} {unit}s; "
                              f"you asked for {number}.", name)
        return number

    def memory(self, high: int, default: int, part: str) -> int:
        rule = (f"Memory must be a size like {MEMORY_EXAMPLES}, up to {format_memory(high)} "
                f"on partition {part!r}")
        raw = self._raw("memory", rule)
        if raw is None:
            return default
        try:
            if isinstance(raw, bool) or not isinstance(raw, (str, int)):
                raise ValueError
            mb = parse_memory_mb(raw)
        except ValueError:
            raise PolicyError(f"{rule}; {_entered(raw)}.", "memory") from None
        if mb > high:
            raise PolicyError(f"Partition {part!r} allows at most {format_memory(high)} of memory; "
                              f"you asked for {format_memory(mb)}.", "memory")
        return mb

    def walltime(self, high: timedelta, default: timedelta, part: str) -> timedelta:
        rule = (f"Walltime must be a duration like {WALLTIME_EXAMPLES}, up to "
                f"{format_words(high)} on partition {part!r}")
        raw = self._raw("walltime", rule)
        if raw is None:
            return default
        try:
            if isinstance(raw, bool) or not isinstance(raw, (str, int)):
                raise ValueError
            td = parse_duration(str(raw) if isinstance(raw, int) else raw)
        except ValueError:
            raise PolicyError(f"{rule}; {_entered(raw)}.", "walltime") from None
        if td > high:
            raise PolicyError(f"Partition {part!r} allows at most {format_words(high)} of "
                              f"walltime; you asked for {format_words(td)}.", "walltime")
        return td


def validate_options(policy: SitePolicy, groups: Iterable[str], options: Mapping[str, Any]
                     ) -> ValidatedRequest:
    """Check user options (from the form, or JSON from the REST API) against the user's rules.

    Values may be strings, ints or one-item lists of those; a missing field takes the user's
    default. Unknown keys (such as the form's `_xsrf`) are ignored: they never reach the result.
    Raises PolicyError with a sentence for the user.
    """
    rules = rules_for(policy, groups)
    if not rules.may_spawn:
        raise PolicyError("Your account is not in any group that may start notebook servers on "
                          "this cluster; ask the cluster's administrators for access.")
    check = _Checker(rules, options)
    offer = check.partition()
    lim, part = offer.limits, offer.name
    return ValidatedRequest(
        partition=offer.name,
        account=check.account(),
        cpus=check.count("cpus", "Cores", "core", 1, lim.max_cpus, lim.default_cpus, part),
        memory_mb=check.memory(lim.max_memory, lim.default_memory, part),
        gpus=check.count("gpus", "GPUs", "GPU", 0, lim.max_gpus, lim.default_gpus, part),
        walltime=check.walltime(lim.max_walltime, lim.default_walltime, part),
        node=offer.node,
    )


def validate_form(policy: SitePolicy, groups: Iterable[str],
                  form_data: Mapping[str, Sequence[str]]) -> ValidatedRequest:
    """`options_from_form`'s input (a dict of lists of strings) -> ValidatedRequest or PolicyError."""
    return validate_options(policy, groups, form_data)


def options_from_form(form_data: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """The form's fields as JupyterHub keeps them in `user_options`: known keys, raw values.

    Validation happens in `validate_options` at spawn time, which also covers options that arrive
    through the REST API without any form.
    """
    return {k: list(v) if isinstance(v, (list, tuple)) else v
            for k, v in form_data.items() if k in FORM_FIELDS}


def check_server_count(policy: SitePolicy, groups: Iterable[str], running: int) -> None:
    """Refuse one more server when the user already runs as many as their groups allow."""
    allowed = rules_for(policy, groups).max_servers
    if running >= allowed:
        servers = "server" if allowed == 1 else "servers"
        raise PolicyError(f"You may run at most {allowed} notebook {servers} at a time and "
                          f"{running} {'is' if running == 1 else 'are'} running; stop one first.")
