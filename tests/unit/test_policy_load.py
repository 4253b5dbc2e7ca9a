"""The policy file: the example sites load, and every mistake is reported with file, line and field."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from gateway.policy.load import PolicyFileError, load_policy, load_policy_text
from gateway.policy.model import SitePolicy
from gateway.policy.schema import describe_schema

SITES = Path(__file__).resolve().parents[2] / "site_configs"
DEMO = (SITES / "demo.yaml").read_text()


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    """1-based line of the n-th line containing `needle`."""
    hits = [i + 1 for i, line in enumerate(text.splitlines()) if needle in line]
    return hits[occurrence - 1]


def problems(text: str, tmp_path: Path, name: str = "site.yaml") -> list[str]:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(PolicyFileError) as info:
        load_policy(path)
    return [str(p) for p in info.value.problems]


@pytest.mark.parametrize("site", ["demo", "university-slurm", "pbs-site"])
def test_example_sites_load(site: str) -> None:
    policy = load_policy(SITES / f"{site}.yaml")
    assert isinstance(policy, SitePolicy)
    assert policy.partitions and policy.groups


def test_demo_matches_the_lab() -> None:
    from gateway.lab import accounts, cluster

    policy = load_policy(SITES / "demo.yaml")
    assert set(policy.partitions) == set(cluster.PARTITIONS)
    assert policy.partitions["debug"].max_walltime == timedelta(minutes=30)
    assert policy.partitions["long"].max_walltime == timedelta(days=2)
    assert policy.partitions["debug"].max_memory == 8000  # MaxMemPerNode=8000
    # Every lab group has a rule, but the leads' group, which only views the lab's activity.
    viewers = {v for groups in policy.activity.viewers.values() for v in groups}
    assert viewers == {"soundscape-leads"}
    assert set(policy.groups) == {g.name for g in accounts.GROUPS} - viewers
    assert set(policy.activity.viewers) <= set(policy.groups)
    assert "long" in policy.groups["hub-admins"].partitions
    assert policy.depots["soundscape-lab"].path == "/var/tmp/hpcgate-lab/depots/soundscape-lab"
    assert policy.depots["soundscape-lab"].group == "soundscape-lab"


def test_bad_duration_names_file_line_and_field(tmp_path: Path) -> None:
    text = DEMO.replace("max_walltime: 30m", "max_walltime: 30 minutes please")
    (found,) = problems(text, tmp_path)
    line = line_of(text, "30 minutes please")
    assert found.startswith(f"{tmp_path / 'site.yaml'}, line {line}, partitions.debug.max_walltime: ")
    assert "2:00:00" in found  # says what a duration looks like


def test_several_problems_are_all_reported(tmp_path: Path) -> None:
    text = (DEMO.replace("max_cpus: 16", "max_cpus: sixteen", 1)
                .replace("scheduler: slurm", "scheduler: lsf")
                .replace("access: rw", "access: write"))
    found = problems(text, tmp_path)
    assert len(found) == 3
    assert any(f"line {line_of(text, 'sixteen')}, partitions.debug.max_cpus: must be a whole number"
               in p for p in found)
    assert any(f"line {line_of(text, 'lsf')}, cluster.scheduler: must be one of slurm, pbs" in p
               for p in found)
    assert any(f"line {line_of(text, 'access: write')}, depots.soundscape-lab.access" in p
               for p in found)


def test_unknown_field_suggests_the_right_one(tmp_path: Path) -> None:
    text = DEMO.replace("default_walltime: 10m", "default_wall_time: 10m")
    (found,) = problems(text, tmp_path)
    assert f"line {line_of(text, 'default_wall_time')}, partitions.debug.default_wall_time" in found
    assert "did you mean 'default_walltime'" in found


def test_default_above_maximum_points_at_the_partition(tmp_path: Path) -> None:
    text = DEMO.replace("default_walltime: 10m", "default_walltime: 45m")
    (found,) = problems(text, tmp_path)
    assert f"line {line_of(text, '45m')}, partitions.debug.default_walltime:" in found
    assert "45 minutes is above the maximum 30 minutes" in found


def test_group_naming_an_unknown_partition(tmp_path: Path) -> None:
    text = DEMO.replace("partitions: [debug]\n", "partitions: [debug, gpu]\n")
    (found,) = problems(text, tmp_path)
    assert f"line {line_of(text, '[debug, gpu]')}, groups.hpc-users.partitions[1]:" in found
    assert "no partition 'gpu'" in found and "known: debug, long" in found


def test_group_override_that_breaks_the_partitions_default(tmp_path: Path) -> None:
    # soundscape-lab lowers long's max_memory below long's default (4G).
    text = DEMO.replace("        max_memory: 8G\n", "        max_memory: 2G\n")
    (found,) = problems(text, tmp_path)
    assert "the default 4 GB is above the maximum 2 GB" in found
    assert f"line {line_of(text, 'max_memory: 2G')}, groups.soundscape-lab.limits.long.max_memory:" in found


def test_duplicate_keys_are_refused_not_silently_merged(tmp_path: Path) -> None:
    text = DEMO.replace("    max_cpus: 16                # each", "    max_cpus: 4\n    max_cpus: 16 # each")
    (found,) = problems(text, tmp_path)
    assert "partitions.debug.max_cpus: appears twice" in found
    assert f"first on line {line_of(text, 'max_cpus: 4')}" in found


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    text = DEMO.replace("  name: hpcgatelab", "  name: [hpcgatelab")
    (found,) = problems(text, tmp_path)
    assert found.startswith(f"{tmp_path / 'site.yaml'}, line ")
    assert "not valid YAML" in found


def test_yaml_11_surprises_are_off() -> None:
    # YAML 1.1 reads 1:30:00 as the integer 5400 and `no` as false: here they stay text.
    text = DEMO.replace("max_walltime: 2d", "max_walltime: 1:30:00")
    assert load_policy_text(text).partitions["long"].max_walltime == timedelta(hours=1, minutes=30)
    text = DEMO.replace("access: rw", "access: no")
    with pytest.raises(PolicyFileError, match="must be one of rw, ro, not 'no'"):
        load_policy_text(text)


def test_missing_required_section(tmp_path: Path) -> None:
    text = DEMO.replace("job:\n", "jobs:\n")
    found = problems(text, tmp_path)
    assert any("jobs: unknown field 'jobs'" in p and "did you mean 'job'" in p for p in found)
    assert any(p.endswith("job: is required: How jobs start the notebook server.") for p in found)


def test_anchors_and_merge_keys_work() -> None:
    text = DEMO.replace("  debug:\n    description: Quick", "  debug: &dbg\n    description: Quick")
    text = text.replace("  long:\n    description: Long",
                        "  debug2:\n    <<: *dbg\n    max_cpus: 8\n  long:\n    description: Long")
    policy = load_policy_text(text)
    copy = policy.partitions["debug2"]
    assert copy.max_cpus == 8  # its own value wins over the merged one
    assert copy.max_walltime == timedelta(minutes=30) and copy.description.startswith("Quick")


def test_directives_must_match_the_scheduler() -> None:
    text = DEMO.replace("  path: /opt/hpcgate/venv/bin:", "  extra_directives: ['#PBS -l x']\n"
                                                          "  path: /opt/hpcgate/venv/bin:")
    with pytest.raises(PolicyFileError, match=r"job.extra_directives\[0\]: '#PBS -l x' must start with "
                                              "'#SBATCH '"):
        load_policy_text(text, "demo.yaml")


def test_names_that_would_reach_a_directive_are_checked() -> None:
    text = DEMO.replace("  long:\n    description: Long", "  'long;rm':\n    description: Long")
    with pytest.raises(PolicyFileError, match=r"partitions.long;rm: the name must be a name of letters"):
        load_policy_text(text)


def test_reverse_mode_needs_an_ssh_host() -> None:
    text = DEMO.replace("  ssh_host: 10.213.210.1\n", "")
    with pytest.raises(PolicyFileError, match="connection.ssh_host: reverse mode needs ssh_host"):
        load_policy_text(text)


def test_unreadable_and_empty_files(tmp_path: Path) -> None:
    (found,) = problems("", tmp_path)
    assert "exactly one YAML document" in found
    with pytest.raises(PolicyFileError, match="cannot be read: No such file or directory"):
        load_policy(tmp_path / "missing.yaml")


def test_schema_reference_has_help_for_every_field() -> None:
    text = describe_schema(SitePolicy)
    for needle in ("max_walltime:", "prologue:", "mode:", "bind_password_file:", "read_only_groups:",
                   "max_servers:", "default_account:"):
        assert needle in text
    lines = text.splitlines()
    assert all(lines[i + 1].startswith(" ") for i in range(0, len(lines), 2))


def test_demo_points_at_the_default_labs_c2_link() -> None:
    from gateway.lab import DEFAULT_DIR, netns

    policy = load_policy(SITES / "demo.yaml")
    assert policy.connection.ssh_host == netns.namespace_for(Path(DEFAULT_DIR).resolve(), "c2").host_addr


def test_lab_site_policy_fills_in_a_labs_endpoints(tmp_path: Path) -> None:
    from gateway.lab.site import write_lab_site

    info = {"dir": "/var/tmp/other-lab", "slurm": {"conf": "/var/tmp/other-lab/etc/slurm.conf"},
            "ldap": {"uri": "ldap://127.0.0.1:40000", "ca_cert": "/var/tmp/other-lab/tls/ca.crt"},
            "nodes": {"c1": {}, "c2": {"hub_address": "10.213.99.1"}},
            "ssh": {"port": 40001, "known_hosts": "/var/tmp/other-lab/ssh/known_hosts"}}
    path = write_lab_site(info, "/root/pw", tmp_path / "lab.yaml")
    policy = load_policy(path)
    assert policy.cluster.environment["SLURM_CONF"] == "/var/tmp/other-lab/etc/slurm.conf"
    assert policy.cluster.jobcomp_file == "/var/tmp/other-lab/log/jobcomp.txt"
    assert (policy.connection.ssh_host, policy.connection.ssh_port) == ("10.213.99.1", 40001)
    assert policy.directory is not None and policy.directory.uri == "ldap://127.0.0.1:40000"
    assert "/var/tmp/hpcgate-lab" not in path.read_text()


@pytest.mark.parametrize(("workdir", "sentence"), [
    ("/scratch/{uid}", "only {user} and {home} may stand in braces here"),
    ("/scratch/shared", "every user would share one working directory"),
    ("scratch/{user}", "must be an absolute path"),
])
def test_a_workdir_template_that_cannot_work_is_refused_in_words(workdir: str, sentence: str) -> None:
    doc = yaml.safe_load((SITES / "pbs-site.yaml").read_text())
    doc["job"]["workdir"] = workdir
    with pytest.raises(PolicyFileError, match=re.escape(sentence)):
        load_policy_text(yaml.safe_dump(doc), "site.yaml")
