"""Server-side validation: whatever arrives, only policy names and bounded numbers come out.

The property tests throw thousands of hostile submissions at the validator (shell metacharacters,
newlines, `#SBATCH` lines, Unicode digits, huge and negative numbers, empty values, two values for
one field) and check both halves of the contract: a refusal is one sentence naming the field and
its allowed range; an acceptance holds only values the policy itself defines or bounds.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.policy.durations import format_memory, format_memory_input
from gateway.policy.load import load_policy
from gateway.policy.model import SitePolicy
from gateway.policy.rules import rules_for
from gateway.policy.validate import (
    FORM_FIELDS,
    PolicyError,
    ValidatedRequest,
    check_server_count,
    options_from_form,
    validate_form,
    validate_options,
)
from schedulers.durations import format_form, format_words
from schedulers.model import JobRequest, check_name

SITES = Path(__file__).resolve().parents[2] / "site_configs"
DEMO = load_policy(SITES / "demo.yaml")
UNIVERSITY = load_policy(SITES / "university-slurm.yaml")
ALICE = ["hpc-users", "soundscape-lab"]
CAROL = ["hpc-users", "hub-admins"]


def refusal(policy: SitePolicy, groups: list[str], form: dict[str, Any]) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        validate_form(policy, groups, form)
    return info.value


# -- the sentences users read --------------------------------------------------------------------


def test_over_the_partitions_walltime() -> None:
    err = refusal(DEMO, CAROL, {"partition": ["debug"], "walltime": ["3:00:00"]})
    assert str(err) == "Partition 'debug' allows at most 30 minutes of walltime; you asked for 3 hours."
    assert err.field == "walltime"


def test_shell_in_the_cores_field() -> None:
    err = refusal(DEMO, CAROL, {"cpus": ["4; rm -rf"]})
    assert str(err) == ("Cores must be a whole number from 1 to 16 on partition 'debug'; "
                        "you entered '4; rm -rf'.")
    assert err.field == "cpus"


def test_group_limits_apply_alice_vs_carol() -> None:
    form = {"partition": ["long"], "walltime": ["13h"], "cpus": ["12"], "memory": ["12G"]}
    err = refusal(DEMO, ALICE, form)
    assert str(err) == "Partition 'long' allows 1 to 8 cores; you asked for 12."
    err = refusal(DEMO, ALICE, {**form, "cpus": ["8"]})
    assert str(err) == "Partition 'long' allows at most 8 GB of memory; you asked for 12 GB."
    err = refusal(DEMO, ALICE, {**form, "cpus": ["8"], "memory": ["8G"]})
    assert str(err) == "Partition 'long' allows at most 12 hours of walltime; you asked for 13 hours."
    ok = validate_form(DEMO, CAROL, form)
    assert ok == ValidatedRequest(partition="long", account=None, cpus=12, memory_mb=12288, gpus=0,
                                  walltime=timedelta(hours=13))


def test_a_partition_the_user_may_not_use() -> None:
    err = refusal(DEMO, ["hpc-users"], {"partition": ["long"]})
    assert str(err) == "Partition must be one of debug; you chose 'long'."


def test_missing_fields_take_the_users_defaults_and_xsrf_is_ignored() -> None:
    req = validate_form(DEMO, CAROL, {"_xsrf": ["token"], "partition": ["long"]})
    assert req == ValidatedRequest("long", None, 2, 4096, 0, timedelta(hours=1))
    assert validate_form(DEMO, CAROL, {}).partition == "debug"


@pytest.mark.parametrize(("field", "value", "sentence"), [
    ("cpus", ["1", "2"], "Cores must be a whole number from 1 to 16 on partition 'debug'; the form "
                         "sent 2 values."),
    ("cpus", [], "Cores must be a whole number from 1 to 16 on partition 'debug'; the form sent no "
                 "value."),
    ("cpus", [""], "Cores must be a whole number from 1 to 16 on partition 'debug'; the field was "
                   "empty."),
    ("cpus", ["0"], "Partition 'debug' allows 1 to 16 cores; you asked for 0."),
    ("cpus", ["-1"], "Cores must be a whole number from 1 to 16 on partition 'debug'; you entered "
                     "'-1'."),
    ("cpus", ["１６"], "Cores must be a whole number from 1 to 16 on partition 'debug'; you entered "
                      "'１６'."),
    ("cpus", ["99999999999999999999"], "Cores must be a whole number from 1 to 16 on partition "
                                       "'debug'; you entered '99999999999999999999'."),
    ("gpus", ["1"], "Partition 'debug' has no GPUs, so GPUs must be 0; you asked for 1."),
    ("memory", ["9G"], "Partition 'debug' allows at most 8000 MB of memory; you asked for 9 GB."),
    ("memory", ["4G\n#SBATCH --uid=0"], "Memory must be a size like 4G, 512M or 4096 (MB), up to "
                                        "8000 MB on partition 'debug'; you entered "
                                        "'4G\\n#SBATCH --uid=0'."),
    ("walltime", ["10\n#SBATCH -p long"], "Walltime must be a duration like 2:00:00, 90m, 1-12:00, "
                                          "2h or 1d, up to 30 minutes on partition 'debug'; you "
                                          "entered '10\\n#SBATCH -p long'."),
    ("partition", ["debug\n#SBATCH -p long"], "Partition must be one of debug, long; you chose "
                                              "'debug\\n#SBATCH -p long'."),
    ("partition", ["DEBUG"], "Partition must be one of debug, long; you chose 'DEBUG'."),
    ("partition", ["debug "], "Partition must be one of debug, long; you chose 'debug '."),
    ("account", ["root"], "Account must be left empty (this site charges no accounts); you chose "
                          "'root'."),
])
def test_refusals_name_the_field_and_the_range(field: str, value: list[str], sentence: str) -> None:
    err = refusal(DEMO, CAROL, {field: value})
    assert str(err) == sentence
    assert err.field == field


def test_long_input_is_cut_short_in_the_message() -> None:
    err = refusal(DEMO, CAROL, {"walltime": ["9" * 5000]})
    assert len(str(err)) < 300 and "…" in str(err)


def test_accounts_must_be_the_users_own() -> None:
    neuro = ["hpc-users", "neuro"]
    assert validate_form(UNIVERSITY, neuro, {}).account == "teaching"
    assert validate_form(UNIVERSITY, neuro, {"account": ["neuro-imaging"]}).account == "neuro-imaging"
    err = refusal(UNIVERSITY, neuro, {"account": ["astro-2025"]})
    assert str(err) == "Account must be one of teaching, neuro-imaging; you chose 'astro-2025'."
    req = validate_form(UNIVERSITY, neuro, {"partition": ["gpu"], "gpus": ["2"]})
    assert req.gpus == 2
    err = refusal(UNIVERSITY, neuro, {"partition": ["gpu"], "gpus": ["3"]})
    assert str(err) == "Partition 'gpu' allows 0 to 2 GPUs; you asked for 3."


def test_users_in_no_group_cannot_spawn() -> None:
    err = refusal(DEMO, ["students"], {})
    assert "not in any group that may start notebook servers" in str(err)


def test_options_from_the_rest_api() -> None:
    req = validate_options(DEMO, CAROL, {"partition": "long", "cpus": 4, "walltime": 90,
                                         "memory": 2048})
    assert (req.cpus, req.walltime, req.memory_mb) == (4, timedelta(minutes=90), 2048)
    assert validate_options(DEMO, CAROL, {"walltime": None}).walltime == timedelta(minutes=10)  # JSON null
    for bad in ({"cpus": True}, {"cpus": 4.0}, {"cpus": {"$gt": 1}}, {"cpus": -3}, {"cpus": 10**40},
                {"memory": [1, 2]}, {"partition": ["long", "debug"]}, {"partition": 5}):
        with pytest.raises(PolicyError):
            validate_options(DEMO, CAROL, bad)
    assert options_from_form({"_xsrf": ["x"], "cpus": ["2"]}) == {"cpus": ["2"]}


def test_concurrent_servers() -> None:
    check_server_count(DEMO, ALICE, 1)  # soundscape-lab allows 2
    with pytest.raises(PolicyError, match="at most 2 notebook servers at a time and 2 are running"):
        check_server_count(DEMO, ALICE, 2)
    with pytest.raises(PolicyError, match="at most 1 notebook server at a time and 1 is running"):
        check_server_count(DEMO, ["hpc-users"], 1)


def test_a_validated_request_makes_a_job_request() -> None:
    req = validate_form(DEMO, CAROL, {"partition": ["long"], "walltime": ["1-12:00"]})
    job = JobRequest(script="jupyterhub-singleuser", **req.job_request_fields())
    assert job.partition == "long" and job.walltime_seconds() == 36 * 3600


# -- properties over thousands of submissions ------------------------------------------------------

HOSTILE = [
    "4; rm -rf /", "$(reboot)", "`id`", "1 && id", "1|id", "16\n#SBATCH --uid=0", "#SBATCH -p long",
    "debug\n#SBATCH --partition=long", "debug\r", "debug\x00", "long\u200b", "ｄｅｂｕｇ", "１６", "٣",
    "\u00b2", "1e3", "0x10", "1_0", "-1", "-0", "+4", "4.0", "4,0", "", " ", "\n", "99999999999",
    "10**100", "NaN", "inf", "None", "null", "true", "[]", "{}", "'", '"', "\\", "%(x)s", "{0}",
    "${PATH}", "..", "/etc/passwd", "debug;long", "1d\n", "2h;id", "8G`id`", "4GiB\n", "0:00:00",
    "-1-00:00:00", "400d", "4\u212aB", "30mins",
]
NAMES = ["debug", "long", "gpu", "interactive", "standard", "teaching", "neuro-imaging", "astro-2025"]
GOOD_LOOKING = ["1", "2", "4", "8", "16", "17", "32", "0", "30m", "2h", "13h", "1-12:00", "2d", "3d",
                "512M", "4G", "8G", "15G", "16G", "9999G"]
value_text = st.one_of(st.sampled_from(HOSTILE + NAMES + GOOD_LOOKING), st.text(max_size=40),
                       st.integers(-(10**30), 10**30).map(str))
form_value = st.one_of(value_text.map(lambda v: [v]), st.lists(value_text, min_size=0, max_size=3))
forms = st.dictionaries(st.sampled_from([*FORM_FIELDS, "_xsrf", "script", "node", "environment"]),
                        form_value, max_size=8)
users = st.sampled_from([(DEMO, ALICE), (DEMO, CAROL), (DEMO, ["hpc-users"]),
                         (UNIVERSITY, ["hpc-users", "neuro"]), (UNIVERSITY, ["climate", "astro"])])

NOUN = {"partition": "Partition", "account": "Account", "cpus": "core", "memory": "memory",
        "gpus": "GPU", "walltime": "walltime"}


def _chosen_partition(policy: SitePolicy, groups: list[str], form: dict[str, list[str]]) -> str | None:
    rules = rules_for(policy, groups)
    value = form.get("partition")
    if value is None or value == [""]:
        return rules.default_partition
    if len(value) == 1 and value[0] in rules.partitions:
        return value[0]
    return None


@settings(max_examples=4000, deadline=None)
@given(users, forms)
def test_hostile_forms_never_yield_anything_but_policy_values(user: tuple[SitePolicy, list[str]],
                                                              form: dict[str, list[str]]) -> None:
    policy, groups = user
    rules = rules_for(policy, groups)
    try:
        req = validate_form(policy, groups, form)
    except PolicyError as err:
        message = str(err)
        assert err.field in FORM_FIELDS
        assert "\n" not in message and "\r" not in message and "\x00" not in message
        assert NOUN[err.field].lower() in message.lower()
        part = _chosen_partition(policy, groups, form)
        if err.field == "partition":
            assert part is None
            assert ", ".join(rules.partitions) in message
            return
        assert part is not None
        lim = rules.partitions[part].limits
        expected_range = {
            "cpus": f"{lim.max_cpus}", "gpus": f"{lim.max_gpus}",
            "memory": format_memory(lim.max_memory), "walltime": format_words(lim.max_walltime),
            "account": ", ".join(rules.accounts) if rules.accounts else "left empty",
        }[err.field]
        assert expected_range in message
        return
    # Accepted: every string is one of the policy's own names, every number is bounded.
    assert req.partition in rules.partitions and req.partition in policy.partitions
    assert req.account is None or (req.account in rules.accounts and req.account in policy.accounts)
    check_name("partition", req.partition)
    lim = rules.partitions[req.partition].limits
    assert type(req.cpus) is int and 1 <= req.cpus <= lim.max_cpus
    assert type(req.gpus) is int and 0 <= req.gpus <= lim.max_gpus
    assert type(req.memory_mb) is int and 1 <= req.memory_mb <= lim.max_memory
    assert isinstance(req.walltime, timedelta) and timedelta(0) < req.walltime <= lim.max_walltime
    assert req.node == policy.partitions[req.partition].node


@st.composite
def valid_forms(draw: st.DrawFn) -> tuple[SitePolicy, list[str], dict[str, list[str]], dict[str, Any]]:
    policy, groups = draw(users)
    rules = rules_for(policy, groups)
    part = draw(st.sampled_from(list(rules.partitions)))
    lim = rules.partitions[part].limits
    cpus = draw(st.integers(1, lim.max_cpus))
    mb = draw(st.integers(1, lim.max_memory))
    seconds = draw(st.integers(1, int(lim.max_walltime.total_seconds())))
    gpus = draw(st.integers(0, lim.max_gpus))
    form = {"partition": [part], "cpus": [str(cpus)], "memory": [format_memory_input(mb)],
            "walltime": [format_form(timedelta(seconds=seconds))], "gpus": [str(gpus)]}
    expected = {"partition": part, "cpus": cpus, "memory_mb": mb, "gpus": gpus,
                "walltime": timedelta(seconds=seconds)}
    return policy, groups, form, expected


@settings(max_examples=1500, deadline=None)
@given(valid_forms())
def test_every_value_within_the_users_limits_is_accepted_exactly(
        case: tuple[SitePolicy, list[str], dict[str, list[str]], dict[str, Any]]) -> None:
    policy, groups, form, expected = case
    req = validate_form(policy, groups, form)
    assert {k: getattr(req, k) for k in expected} == expected
